"""``aios simulate``: run a trace through the scheduler core under a simulated clock (see aios.scheduler.sim)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aios.common.errors import ConfigError
from aios.scheduler.policies import POLICIES, make_policy
from aios.scheduler.sim.simulator import simulate, summary
from aios.scheduler.sim.traces import parse_cluster, read_gavel_throughputs, read_gavel_trace

RECOMMENDED = "hetero-las"
"""Lowest average JCT on the Gavel traces so far (bench/RESULTS.md)."""
DEFAULT_THROUGHPUTS = "../shared/traces/gavel-throughputs-isolated.csv"


def list_policies(as_json: bool) -> int:
    body = {"policies": sorted(POLICIES), "best": RECOMMENDED}
    if as_json:
        print(json.dumps(body))
    else:
        for name in body["policies"]:
            print(name + ("  (recommended)" if name == RECOMMENDED else ""))
    return 0


def run(trace: str, cluster: str, policy: str | None, compare: str | None, throughputs: str, round_s: float,
        gpus_per_server: int, as_json: bool, out: str | None) -> int:
    if not Path(trace).is_file():
        raise ConfigError(f"--trace: no such file {trace!r}")
    if not Path(throughputs).is_file():
        raise ConfigError(f"--throughputs: no such file {throughputs!r}")
    if round_s <= 0:
        raise ConfigError("--round: must be a positive number of seconds")
    jobs = read_gavel_trace(trace)
    table = read_gavel_throughputs(throughputs)
    gpus = parse_cluster(cluster)
    names = [p.strip() for p in compare.split(",")] if compare else [policy or RECOMMENDED]
    results: list[dict[str, Any]] = []
    for name in names:
        results.append(simulate(jobs, table, gpus, make_policy(name), round_s=round_s,
                                gpus_per_server=gpus_per_server))
    if out:
        _write_records(Path(out), results)
    if as_json:
        body: Any = summary(results[0]) if len(results) == 1 else [summary(r) for r in results]
        print(json.dumps(body, indent=2))
        return 0
    t = Table("policy", "avg JCT h", "p50 h", "p99 h", "makespan h", "util", "preemptions", "wall s",
              title=f"{Path(trace).name} on {cluster}, rounds of {round_s:g} s")
    for r in results:
        t.add_row(r["policy"], str(r["avg_jct_h"]), str(r["p50_jct_h"]), str(r["p99_jct_h"]), str(r["makespan_h"]),
                  str(r["utilization"]), str(r["preemptions"]), str(r["wall_s"]))
    Console().print(t)
    return 0


def _write_records(folder: Path, results: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        with open(folder / f"{r['policy']}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["job", "arrival_s", "start_s", "finish_s", "gpus", "kind_time_s"])
            for rec in r["records"]:
                w.writerow([rec["job"], rec["arrival_s"], rec["start_s"], rec["finish_s"], rec["gpus"],
                            json.dumps(rec["kind_time_s"])])
        (folder / f"{r['policy']}.json").write_text(json.dumps(summary(r), indent=2))
