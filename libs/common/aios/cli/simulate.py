"""``aios simulate``: run a workload through the scheduler core under a simulated clock (see aios.scheduler.sim).

Workloads come from a Gavel trace, a native JSONL workload (sim/native.py) or, with ``--from-log``, from the job
events of a live AIOS cluster: the same arrivals replayed under another policy or on another cluster
(counterfactual replay).
"""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aios.common.errors import ConfigError
from aios.scheduler.policies import POLICIES, make_policy
from aios.scheduler.sim.native import LogWorkload, load_log_workload, read_native_trace, write_native_trace
from aios.scheduler.sim.simulator import simulate, summary
from aios.scheduler.sim.traces import (TraceJob, kind_rates, parse_cluster, read_gavel_throughputs,
                                      read_gavel_trace)

RECOMMENDED = "hetero-ts"
"""Lowest average JCT on the continuous Gavel trace and the static batch, 1.3% behind ``hetero-gittins`` on ed69ec,
where finished jobs teach that policy sizes; a batch starts with no history (bench/RESULTS.md). Needing none makes
``hetero-ts`` the safer default."""
DEFAULT_THROUGHPUTS = "../shared/traces/gavel-throughputs-isolated.csv"
DEFAULT_REPORT = "simulate-report"


def list_policies(as_json: bool) -> int:
    body = {"policies": sorted(POLICIES), "best": RECOMMENDED}
    if as_json:
        print(json.dumps(body))
    else:
        for name in body["policies"]:
            print(name + ("  (recommended)" if name == RECOMMENDED else ""))
    return 0


def read_trace(path: str) -> list[TraceJob]:
    """A Gavel trace, or a native JSONL workload (recognised by a first line that is JSON or a ``#`` comment)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--trace: no such file {path!r}")
    with open(p) as fh:
        head = next((line.strip() for line in fh if line.strip()), "")
    if head.startswith(("{", "#")):
        return read_native_trace(p)
    return read_gavel_trace(p)


async def _log_workload(servers: list[str] | None) -> LogWorkload:
    from aios.common.config import load_settings
    from aios.common.errors import AiosError
    from aios.common.store import connect

    servers = servers or load_settings().servers
    if not servers:
        raise ConfigError("--from-log: AIOS_NATS_URL is not set (`aios up` prints the export line)")
    try:
        store = await asyncio.wait_for(connect(servers, name="aios-simulate"), 10)
    except (OSError, asyncio.TimeoutError) as exc:
        raise AiosError(f"--from-log: cannot reach NATS at {','.join(servers)}: {exc or type(exc).__name__}") from None
    try:
        return await load_log_workload(store)
    finally:
        await store.close()


def add_gpus(cluster: dict[str, int], extra: str | None) -> dict[str, int]:
    """``--add h100=8``: the cluster with more GPUs (what-if)."""
    out = dict(cluster)
    for kind, n in (parse_cluster(extra) if extra else {}).items():
        out[kind] = out.get(kind, 0) + n
    return out


def run(trace: str | None, cluster: str | None, policy: str | None, compare: str | None, throughputs: str | None,
        round_s: float, gpus_per_server: int, as_json: bool, out: str | None, *, from_log: bool = False,
        add: str | None = None, export: str | None = None, servers: list[str] | None = None,
        oracle_estimates: bool = False, on_events: bool | None = None) -> int:
    if round_s <= 0:
        raise ConfigError("--round: must be a positive number of seconds")
    if bool(trace) == from_log:
        raise ConfigError("give exactly one workload: --trace FILE or --from-log")
    skipped: list[str] = []
    if from_log:
        workload = asyncio.run(_log_workload(servers))
        jobs, skipped = workload.jobs, list(workload.skipped)
        base = parse_cluster(cluster) if cluster else dict(workload.cluster)
        if not jobs:
            raise ConfigError("--from-log: the log holds no job that ran or has a runtime estimate")
        if not base:
            raise ConfigError("--from-log: the log registers no GPU node; give --cluster")
        source = "the live event log"
    else:
        assert trace is not None
        jobs = read_trace(trace)
        base = parse_cluster(cluster or "v100=12,p100=12,k80=12")
        source = Path(trace).name
    gpus = add_gpus(base, add)
    if export:
        write_native_trace(export, jobs)
    table = {}
    if throughputs and Path(throughputs).is_file():
        table = read_gavel_throughputs(throughputs)
    elif throughputs and throughputs != DEFAULT_THROUGHPUTS:
        raise ConfigError(f"--throughputs: no such file {throughputs!r}")
    for kind in parse_cluster(add) if add else {}:
        if not any(kind in kind_rates(job, table, gpus) for job in jobs):
            raise ConfigError(f"--add: no job of the workload can run on {kind!r} (it has no rate there, in the "
                              "workload or the throughput table): the added GPUs would only stand idle")
    names = [p.strip() for p in compare.split(",") if p.strip()] if compare else [policy or RECOMMENDED]
    policies = [make_policy(name) for name in names]  # unknown names fail before any simulation runs
    results = [simulate(jobs, table, gpus, p, round_s=round_s, gpus_per_server=gpus_per_server,
                        oracle_estimates=oracle_estimates, on_events=from_log if on_events is None else on_events)
               for p in policies]
    cluster_text = ",".join(f"{k}={v}" for k, v in sorted(gpus.items()))
    folder = out or (DEFAULT_REPORT if compare else None)
    report = _write_outputs(Path(folder), results, f"{source} on {cluster_text}") if folder else None
    if as_json:
        body: Any = summary(results[0]) if len(results) == 1 else [summary(r) for r in results]
        print(json.dumps(body, indent=2))
        return 0
    t = Table("policy", "avg JCT h", "p50 h", "p99 h", "makespan h", "util", "mean ρ", "max ρ", "preemptions",
              "wall s", title=f"{source} on {cluster_text}, rounds of {round_s:g} s"
                            + (", and a decision at every arrival and finish" if results[0]["on_events"] else ""))
    for r in results:
        t.add_row(r["policy"], str(r["avg_jct_h"]), str(r["p50_jct_h"]), str(r["p99_jct_h"]), str(r["makespan_h"]),
                  str(r["utilization"]), str(r["mean_rho"]), str(r["max_rho"]), str(r["preemptions"]),
                  str(r["wall_s"]))
    console = Console()
    console.print(t)
    if skipped:
        console.print(f"{len(skipped)} job(s) of the log left out (never ran, no runtime estimate)")
    if report:
        console.print(f"report: {report}")
    return 0


def _write_outputs(folder: Path, results: list[dict[str, Any]], title: str) -> Path:
    """Per-job CSV and summary JSON per policy, and the Markdown report with its plots."""
    from aios.scheduler.sim.report import write_report

    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        name = r["policy"].replace(" (oracle estimates)", "-oracle")
        with open(folder / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["job", "arrival_s", "start_s", "finish_s", "gpus", "preemptions", "rho", "kind_time_s"])
            for rec in r["records"]:
                w.writerow([rec["job"], rec["arrival_s"], rec["start_s"], rec["finish_s"], rec["gpus"],
                            rec["preemptions"], rec["rho"], json.dumps(rec["kind_time_s"])])
        (folder / f"{name}.json").write_text(json.dumps(summary(r), indent=2))
    return write_report(folder, results, title)
