#!/usr/bin/env python
"""bench/sim_breakdown.py: where a policy's average JCT goes above the no-queueing bound, and whether devices were
ever left idle that a running job could have used faster.

Per group of jobs (by GPU count, by length on the fastest kind) it prints each group's share of the average excess
JCT, split into waiting (not running) and running slower than on the fastest kind. After the last decision of every
round it also counts the jobs on a kind while a kind they run faster on had room for them ("misplaced"): a
non-zero count would be capacity a policy wastes; zero means the excess comes from contention alone.

    .venv/bin/python bench/sim_breakdown.py --trace ../shared/traces/gavel-synthetic-continuous-300.trace \\
        --cluster v100=8,p100=8,k80=8 --policy hetero-ts
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from aios.scheduler.policies import make_policy
from aios.scheduler.sim.simulator import simulate, summary
from aios.scheduler.sim.traces import kind_rates, parse_cluster, read_gavel_throughputs, read_gavel_trace
from aios.scheduler.state import PLACED, SchedulerState

LENGTH_EDGES_H = (0, 1, 4, 16, 50, 200, float("inf"))


def misplaced_devices(state: SchedulerState, cluster: dict[str, int]) -> int:
    """Devices held by jobs on one kind while another kind they run faster on has room for the whole job."""
    running = [js for js in state.active() if js.status == PLACED]
    used: Counter[str] = Counter()
    for js in running:
        for kind in js.run_kinds:
            used[kind] += js.held_devices() // max(1, len(js.run_kinds))
    free = {k: cluster[k] - used[k] for k in cluster}
    count = 0
    for js in running:
        if len(js.run_kinds) != 1 or js.spec is None:
            continue
        rates = js.spec.throughput
        here = rates.get(js.run_kinds[0], 0.0)
        if any(rate > here * 1.0001 and free[k] >= js.held_devices() for k, rate in rates.items() if k in free):
            count += js.held_devices()
    return count


def breakdown(trace_path: str, cluster_spec: str, policy: str, throughputs_path: str, round_s: float) -> dict[str, Any]:
    cluster = parse_cluster(cluster_spec)
    throughputs = read_gavel_throughputs(throughputs_path)
    trace = read_gavel_trace(trace_path)
    misplaced: list[int] = []
    result = simulate(trace, throughputs, cluster, make_policy(policy), round_s=round_s,
                      on_round=lambda state, _now: misplaced.append(misplaced_devices(state, cluster)))
    n = len(trace)
    jobs = []
    for tj, rec in zip(trace, result["records"]):
        rates = kind_rates(tj, throughputs, cluster)
        best_h = tj.total_steps / max(rates.values()) / 3600
        jct_h = (rec["finish_s"] - rec["arrival_s"]) / 3600
        run_h = sum(rec["kind_time_s"].values()) / 3600
        jobs.append({"gpus": tj.gpus, "best_h": best_h, "wait_h": jct_h - run_h, "slow_h": run_h - best_h})

    def group(name: str, members: list[dict[str, float]]) -> dict[str, Any]:
        return {"group": name, "jobs": len(members),
                "wait_h_of_avg": round(sum(j["wait_h"] for j in members) / n, 3),
                "slower_kind_h_of_avg": round(sum(j["slow_h"] for j in members) / n, 3)}

    groups = [group("all", jobs)]
    groups += [group(f"{g} GPUs", [j for j in jobs if j["gpus"] == g]) for g in sorted({j["gpus"] for j in jobs})]
    for lo, hi in zip(LENGTH_EDGES_H, LENGTH_EDGES_H[1:]):
        members = [j for j in jobs if lo <= j["best_h"] < hi]
        if members:
            groups.append(group(f"{lo}-{hi} h on the fastest kind", members))
    return {"summary": summary(result), "bound_avg_jct_h": round(sum(j["best_h"] for j in jobs) / n, 2),
            "groups": groups, "rounds": len(misplaced), "misplaced_device_rounds": sum(misplaced)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--policy", default="hetero-ts")
    ap.add_argument("--throughputs", default="../shared/traces/gavel-throughputs-isolated.csv")
    ap.add_argument("--round", type=float, default=360.0)
    args = ap.parse_args()
    print(json.dumps(breakdown(args.trace, args.cluster, args.policy, args.throughputs, args.round), indent=1))


if __name__ == "__main__":
    main()
