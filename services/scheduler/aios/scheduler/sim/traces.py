"""Readers for workload traces: Gavel's 10-column trace format and its throughput table (../shared/traces)."""

from __future__ import annotations

import csv
import json
import math
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
    hints: dict[str, float] | None = None
    """The speeds the job tells the scheduler (its spec's ``throughput``), when they are not ``rates``: a live job
    that gave no hint for a kind runs there at some speed the scheduler was not told (None: the known rates)."""
    preemptible: bool = True
    runtime_estimate_s: float | None = None
    """The user's own estimate, as the live spec carried it (what backfill plans with); not the job's true size."""
    max_devices_per_node: int | None = None
    serve: bool = False
    """A serving deployment: it holds its devices for its run, and its "completion" is no job's completion time."""
    cpu_per_worker: float = 1.0
    memory_gib_per_worker: float = 4.0
    """What each worker takes of its node's CPU cores and memory (the job spec's fields and defaults): placement
    needs them free beside the GPUs, as live."""


SIM_CPU_CORES = 64
SIM_MEMORY_GIB = 512.0
"""CPU cores and memory of a simulated node whose own are not known (a Gavel trace's servers, an added server)."""


class SimNode(msgspec.Struct, frozen=True):
    """A node of a simulated cluster by name, as a live log registered it: its GPUs by kind, and the CPU cores and
    memory its jobs' workers share."""

    devices: dict[str, int]
    cpu_cores: int = SIM_CPU_CORES
    memory_gib: float = SIM_MEMORY_GIB


MAX_GPUS = 4096
"""Largest gang a workload may ask for: the job spec's limit (devices between 0 and 4096)."""
MAX_CLUSTER_GPUS = 1_000_000
"""Most GPUs of one kind a simulated cluster may have (a bound that keeps counts inside machine integers)."""


def read_text(path: str | Path, what: str) -> str:
    """A workload or table file's text; ConfigError when it is missing, a folder, or not UTF-8 text."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{path}: is a folder, not a {what} file")
    try:
        return p.read_text(encoding="utf-8-sig")  # a byte-order mark, as some editors write, is not content
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc}") from None


def _finite(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {text!r}")
    return value


def _gpus(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: expected a whole number of GPUs, got {text!r}") from None
    if not 1 <= value <= MAX_GPUS:
        raise ValueError(f"{name}: expected 1 to {MAX_GPUS:,} GPUs, got {value}")
    return value


MAX_ARRIVAL_S = 10 * 365 * 86400.0
"""The latest arrival a workload may have (1e300 s made a utilisation of 2,500 % and a JCT of 0)."""


def gavel_line_of(path: str | Path, job_type: str, gpus: int) -> int | None:
    """The first line of a Gavel trace with this job type and size (for an error about them)."""
    for n, line in enumerate(read_text(path, "trace").splitlines(), 1):
        cols = line.split("\t")
        if len(cols) == 10 and cols[0] == job_type and cols[6].strip() == str(gpus):
            return n
    return None


def read_gavel_trace(path: str | Path) -> list[TraceJob]:
    """Tab-separated: job_type, command, working_directory, num_steps_arg, needs_data_dir, total_steps,
    scale_factor, priority_weight, SLO, arrival_time. ConfigError names the line and the column."""
    jobs = []
    for n, line in enumerate(read_text(path, "trace").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise ConfigError(f"{path}:{n}: expected 10 tab-separated columns, found {len(cols)}")
        try:
            steps = _finite(cols[5], "total_steps")
            if steps <= 0:
                raise ValueError(f"total_steps: expected a positive number of steps, got {cols[5]!r}")
            arrival = _finite(cols[9], "arrival_time")
            if not 0 <= arrival <= MAX_ARRIVAL_S:
                raise ValueError(f"arrival_time: expected seconds from 0 to {MAX_ARRIVAL_S:,.0f} (ten years), got "
                                 f"{cols[9]!r}")
            weight = _finite(cols[7], "priority_weight")
            if abs(weight) > 1000 or not weight.is_integer():
                raise ValueError(f"priority_weight: expected a whole number from -1000 to 1000 (AIOS job priorities "
                                 f"are integers), got {cols[7]!r}")
            jobs.append(TraceJob(cols[0], steps, _gpus(cols[6], "scale_factor"), weight, arrival))
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}: {exc}") from None
    return sorted(jobs, key=lambda j: j.arrival_s)


Throughputs = dict[tuple[str, int], dict[str, float]]
"""(job_type, gpus) -> gpu kind -> steps per second (all GPUs in one server)."""


THROUGHPUT_COLUMNS = ("job_type", "num_gpus", "gpu_type", "consolidated", "steps_per_s")


def _read_gavel_json(path: str | Path, text: str) -> Throughputs:
    """Gavel's own file: kind -> "('<job type>', <GPUs>)" -> {"null": steps/s alone, "(<other job>)": [both, when
    sharing a GPU]}; the consolidated kinds (no ``_unconsolidated`` suffix), each job alone, as the CSV's rows."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected Gavel's throughputs (an object of GPU kinds), got {type(doc).__name__}")
    table: Throughputs = {}
    for kind, jobs in doc.items():
        if kind.endswith("_unconsolidated"):
            continue
        if not isinstance(jobs, dict):
            raise ConfigError(f"{path}: {kind}: expected an object of job types")
        for key, entry in jobs.items():
            found = _GAVEL_KEY.fullmatch(key)
            rate = entry.get("null") if isinstance(entry, dict) else None
            if found is None or isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                    or not math.isfinite(rate) or rate < 0:
                raise ConfigError(f"{path}: {kind}: {key}: expected \"('<job type>', <GPUs>)\" with a \"null\" "
                                  "rate >= 0 (its steps/s alone on the GPU)")
            table.setdefault((found["type"], int(found["gpus"])), {})[kind] = float(rate)
    if not table:
        raise ConfigError(f"{path}: no consolidated kind: the table gives no throughput")
    return table


_GAVEL_KEY = re.compile(r"\('(?P<type>[^']+)', (?P<gpus>[1-9][0-9]*)\)")


def read_gavel_throughputs(path: str | Path) -> Throughputs:
    """The consolidated rows of a throughput CSV, or of Gavel's JSON (the same numbers); ConfigError names the
    line and the column of a bad value."""
    text = read_text(path, "throughput table")
    if text.lstrip().startswith("{"):
        return _read_gavel_json(path, text)
    rows = csv.DictReader(text.splitlines())
    missing = [c for c in THROUGHPUT_COLUMNS if c not in (rows.fieldnames or [])]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(THROUGHPUT_COLUMNS)})")
    table: Throughputs = {}
    for row in rows:
        if row["consolidated"] != "1":
            continue
        try:
            rate = _finite(row["steps_per_s"] or "", "steps_per_s")
            if rate < 0:
                raise ValueError(f"steps_per_s: expected a number >= 0, got {row['steps_per_s']!r}")
            table.setdefault((row["job_type"], _gpus(row["num_gpus"] or "", "num_gpus")), {})[row["gpu_type"]] = rate
        except ValueError as exc:
            raise ConfigError(f"{path}:{rows.line_num}: {exc}") from None
    if not table:
        raise ConfigError(f"{path}: no consolidated=1 row: the table gives no throughput")
    return table


def kind_rates(job: TraceJob, throughputs: Throughputs, cluster: dict[str, int]) -> dict[str, float]:
    """Steps/s of the job on each kind of the cluster it can run on (the job's own rates, else the table's); a job
    of which nothing is known runs a step a second anywhere."""
    table = known_rates(job, throughputs)
    if not table or job.any_kind:
        return {k: table.get(k, 1.0) for k in cluster if table.get(k, 1.0) > 0}
    return {k: v for k, v in table.items() if k in cluster and v > 0}


def known_rates(job: TraceJob, throughputs: Throughputs) -> dict[str, float]:
    """What is known of the job's speeds: its own rates, else the table's row for its type and size (a 0 there
    says the job cannot run on that kind)."""
    return job.rates or throughputs.get((job.job_type, job.gpus), {})


def hinted_rates(job: TraceJob, throughputs: Throughputs) -> dict[str, float]:
    """The speeds a job can state as its own: the known ones above 0 (a table's 0 is no speed, not a hint of 0)."""
    return {k: v for k, v in known_rates(job, throughputs).items() if v > 0}


def parse_cluster(spec: str, option: str = "--cluster") -> dict[str, int]:
    """``v100=12,p100=12,k80=12`` -> {"v100": 12, ...} (GPUs of each kind); errors name ``option``."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"([a-z0-9-]+)=(\d+)", part)
        if not m:
            raise ConfigError(f"{option}: {part!r} is not KIND=COUNT (e.g. v100=12)")
        kind, count = m.group(1), int(m.group(2))
        if kind in out:
            raise ConfigError(f"{option}: {kind!r} is given twice")
        if not 1 <= count <= MAX_CLUSTER_GPUS:
            raise ConfigError(f"{option}: {part!r}: expected 1 to {MAX_CLUSTER_GPUS:,} GPUs of a kind")
        out[kind] = count
    if not out:
        raise ConfigError(f"{option}: no GPUs given (e.g. v100=12,p100=12,k80=12)")
    return out
