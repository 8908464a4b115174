"""Readers for workload traces: Gavel's 10-column trace format and its throughput table (../shared/traces)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import msgspec

from aios.common.errors import ConfigError


class TraceJob(msgspec.Struct, frozen=True):
    """One job of a workload: ``total_steps`` of work, done at ``rates[kind]`` steps/s on a GPU kind (when ``rates``
    is empty the simulator looks the job up in the throughput table by ``(job_type, gpus)``). With ``any_kind`` the
    rates are only what is known: the job also runs on the cluster's other kinds, at 1 step/s (a live job that names
    no ``device_types`` may run anywhere, including on kinds a what-if adds)."""

    job_type: str
    total_steps: float
    gpus: int
    priority_weight: float
    arrival_s: float
    rates: dict[str, float] = {}
    tenant: str = "trace"
    name: str = ""
    any_kind: bool = False


def read_gavel_trace(path: str | Path) -> list[TraceJob]:
    """Tab-separated: job_type, command, working_directory, num_steps_arg, needs_data_dir, total_steps,
    scale_factor, priority_weight, SLO, arrival_time."""
    jobs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise ConfigError(f"{path}:{n}: expected 10 tab-separated columns, found {len(cols)}")
        try:
            jobs.append(TraceJob(cols[0], float(cols[5]), int(cols[6]), float(cols[7]), float(cols[9])))
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}: {exc}") from None
    return sorted(jobs, key=lambda j: j.arrival_s)


Throughputs = dict[tuple[str, int], dict[str, float]]
"""(job_type, gpus) -> gpu kind -> steps per second (all GPUs in one server)."""


def read_gavel_throughputs(path: str | Path) -> Throughputs:
    table: Throughputs = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["consolidated"] != "1":
                continue
            table.setdefault((row["job_type"], int(row["num_gpus"])), {})[row["gpu_type"]] = float(row["steps_per_s"])
    return table


def kind_rates(job: TraceJob, throughputs: Throughputs, cluster: dict[str, int]) -> dict[str, float]:
    """Steps/s of the job on each kind of the cluster it can run on (the job's own rates, else the table's); a job
    of which nothing is known runs a step a second anywhere."""
    table = job.rates or throughputs.get((job.job_type, job.gpus), {})
    if not table:
        return {k: 1.0 for k in cluster}
    if job.any_kind and job.rates:
        return {k: job.rates.get(k, 1.0) for k in cluster if job.rates.get(k, 1.0) > 0}
    return {k: v for k, v in table.items() if k in cluster and v > 0}


def parse_cluster(spec: str, gpus_per_server: int = 4) -> dict[str, int]:
    """``v100=12,p100=12,k80=12`` -> {"v100": 12, ...} (GPUs of each kind)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"([a-z0-9-]+)=(\d+)", part)
        if not m:
            raise ConfigError(f"--cluster: {part!r} is not KIND=COUNT (e.g. v100=12)")
        out[m.group(1)] = int(m.group(2))
    if not out:
        raise ConfigError("--cluster: no GPUs given (e.g. v100=12,p100=12,k80=12)")
    return out
