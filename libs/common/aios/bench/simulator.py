"""``aios bench simulator``: how long the trace simulator takes on a large synthetic cluster and workload.

The workload follows Gavel's generator for Philly-like jobs: job types drawn uniformly from the throughput table,
1/2/4/8 GPUs with probabilities 0.7/0.1/0.15/0.05, durations 10^U(1.5, 3) minutes (80%) or 10^U(3, 4) minutes (20%)
on a V100, Poisson arrivals at the rate that loads the cluster to ``load`` (in fastest-kind GPU time). The cluster
splits its GPUs evenly over the table's kinds. Prints the simulator's summary plus the time per round, as JSON.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np

from aios.scheduler.policies import make_policy
from aios.scheduler.sim.simulator import simulate, summary
from aios.scheduler.sim.traces import Throughputs, TraceJob, read_gavel_throughputs

SIZES = (1, 2, 4, 8)
SIZE_P = (0.7, 0.1, 0.15, 0.05)


def workload(table: Throughputs, jobs: int, gpus: int, load: float, seed: int = 0) -> list[TraceJob]:
    rng = np.random.default_rng(seed)
    types = sorted({t for t, _ in table})
    out: list[TraceJob] = []
    sizes = rng.choice(SIZES, size=jobs, p=SIZE_P)
    long = rng.random(jobs) < 0.2
    minutes = np.where(long, 10 ** rng.uniform(3, 4, jobs), 10 ** rng.uniform(1.5, 3, jobs))
    picks = rng.integers(0, len(types), jobs)
    mean_gpu_s = float((sizes * minutes * 60).mean())
    gap = mean_gpu_s / (load * gpus)  # arrivals that keep `load` of the GPUs busy on average
    t = 0.0
    for i in range(jobs):
        job_type, size = types[picks[i]], int(sizes[i])
        rates = table.get((job_type, size)) or {}
        if not rates:  # this type was not measured at this size: take a size it was measured at
            size = 1
            rates = table[(job_type, 1)]
        fastest = max(rates.values())
        out.append(TraceJob(job_type, float(minutes[i] * 60 * fastest), size, 1.0, t))
        t += float(rng.exponential(gap))
    return out


def run(gpus: int, jobs: int, policy: str, load: float, throughputs: str, round_s: float = 360.0) -> dict[str, Any]:
    table = read_gavel_throughputs(throughputs)
    kinds = sorted({k for rates in table.values() for k in rates})
    cluster = {k: gpus // len(kinds) + (1 if i < gpus % len(kinds) else 0) for i, k in enumerate(kinds)}
    trace = workload(table, jobs, gpus, load)
    started = time.perf_counter()
    result = simulate(trace, table, cluster, make_policy(policy), round_s=round_s, gpus_per_server=8)
    wall = time.perf_counter() - started
    body = summary(result)
    body.update({"gpus": gpus, "cluster": cluster, "load": load, "wall_s": round(wall, 1),
                 "target_wall_s": 600, "ms_per_round": round(1000 * wall / max(1, result["rounds"]), 2)})
    return body


def main(gpus: int, jobs: int, policies: str, load: float, throughputs: str) -> int:
    out = [run(gpus, jobs, p.strip(), load, throughputs) for p in policies.split(",") if p.strip()]
    print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
    return 0


__all__ = ["workload", "run", "main", "math"]
