#!/usr/bin/env python
"""bench/space_share_probe.py: how far space sharing (two jobs on one GPU at Gavel's measured pair throughputs)
could take a trace's JCTs, before building it (the live core leases a device to one job). A probe, quoted as such in
bench/RESULTS.md: the policy decides who runs as it does today, then a greedy pass after each decision lets jobs
share the GPUs of placed jobs through the simulator's ``co_locate`` hook; the scheduler does not see the pairs (a
job running beside another stays pending in its view, and its service there is not counted by the policy).

A pair is made when it gains in weighted speed: w_a × (pair_a − alone_a) / fastest_a + w_b × (pair_b − now_b) /
fastest_b > margin, with w = (hours run + 1) ** −power (young jobs first, as ``hetero-ts`` weighs them). Waiting
jobs pair first in the order of their weight; with ``--move`` a job on a kind slower than its fastest may move to
share a faster GPU, and with ``--refill`` the GPU it leaves goes to a waiting job of its size. Prints JSON.

    .venv/bin/python bench/space_share_probe.py --trace ../shared/traces/gavel-philly-ed69ec.trace \\
        --cluster v100=12,p100=12,k80=12 --policy hetero-gittins --move --refill
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from aios.scheduler.policies import make_policy
from aios.scheduler.sim.simulator import Run, SimJob, simulate, summary
from aios.scheduler.sim.traces import parse_cluster, read_gavel_throughputs, read_gavel_trace
from aios.scheduler.state import PENDING, SchedulerState

_KEY = re.compile(r"\('(?P<type>[^']+)', (?P<gpus>[1-9][0-9]*)\)")

Alone = dict[tuple[str, str, int], float]
"""(kind, job type, GPUs) -> steps/s alone on the kind."""
Pairs = dict[tuple[str, str, int, str], tuple[float, float]]
"""(kind, job type a, GPUs, job type b) -> (a's, b's) steps/s when the two share the GPUs (a 0: they do not fit)."""


def read_pairs(path: str) -> tuple[Alone, Pairs]:
    """Gavel's JSON: the consolidated kinds, pairs of jobs of the same size (the only ones it measured)."""
    with open(path) as f:
        doc = json.load(f)
    alone: Alone = {}
    pairs: Pairs = {}
    for kind, rows in doc.items():
        if kind.endswith("_unconsolidated"):
            continue
        for key_a, row in rows.items():
            a = _KEY.fullmatch(key_a)
            if a is None:
                continue
            gpus = int(a["gpus"])
            alone[(kind, a["type"], gpus)] = row["null"]
            for key_b, both in row.items():
                b = _KEY.fullmatch(key_b)
                if b is not None and int(b["gpus"]) == gpus:
                    pairs[(kind, a["type"], gpus, b["type"])] = (both[0], both[1])
    return alone, pairs


class Pairing:
    """The greedy pass: called after each decision with the runs the scheduler placed."""

    def __init__(self, alone: Alone, pairs: Pairs, kinds: set[str], power: float, margin: float, move: bool,
                 refill: bool, gangs: bool) -> None:
        self.alone, self.pairs, self.kinds = alone, pairs, kinds
        self.power, self.margin, self.move, self.refill = power, margin, move, refill
        self.max_gpus = 1 << 30 if gangs else 1
        self.paired = self.refilled = 0

    def weight(self, sj: SimJob) -> float:
        return (sum(sj.kind_time.values()) / 3600 + 1.0) ** -self.power

    def shared(self, kind: str, a: SimJob, b: SimJob) -> tuple[float, float] | None:
        """Steps/s of a and b sharing a's GPUs of ``kind`` (scaled to the simulation's rates), or None."""
        gpus = a.trace.gpus
        if b.trace.gpus != gpus:
            return None
        both = self.pairs.get((kind, a.trace.job_type, gpus, b.trace.job_type))
        alone_a = self.alone.get((kind, a.trace.job_type, gpus))
        alone_b = self.alone.get((kind, b.trace.job_type, gpus))
        if not both or not alone_a or not alone_b or min(both) <= 0:
            return None
        return a.rates.get(kind, 0.0) * both[0] / alone_a, b.rates.get(kind, 0.0) * both[1] / alone_b

    def __call__(self, state: SchedulerState, jobs: dict[str, SimJob], runs: list[Run], now: float) -> list[Run]:
        out = list(runs)
        hosts = [i for i, (sj, kinds, _) in enumerate(runs)
                 if sj.trace.gpus <= self.max_gpus and len(kinds) == 1 and kinds[0] in self.kinds]
        waiting = [jobs[js.job_id] for js in state.active()
                   if js.status == PENDING and js.job_id in jobs and jobs[js.job_id].trace.gpus <= self.max_gpus]
        movers: list[tuple[SimJob, float, int | None]] = [(sj, 0.0, None) for sj in waiting]
        if self.move:
            movers += [(sj, rate, i) for i, (sj, kinds, rate) in enumerate(runs)
                       if sj.trace.gpus <= self.max_gpus and len(kinds) == 1
                       and rate < max(sj.rates.values()) - 1e-12]
        movers.sort(key=lambda m: -self.weight(m[0]))
        taken: set[int] = set()
        started: set[str] = set()
        left: list[tuple[list[str], int]] = []  # GPUs movers left: (kinds, count)
        for b, rate_b, at in movers:
            if at is not None and at in taken:
                continue
            best: tuple[float, int, float, float] | None = None
            for i in hosts:
                if i in taken or i == at:
                    continue
                a, kinds, rate_a = out[i]
                rates = self.shared(kinds[0], a, b)
                if rates is None:
                    continue
                gain = (self.weight(a) * (rates[0] - rate_a) / max(a.rates.values())
                        + self.weight(b) * (rates[1] - rate_b) / max(b.rates.values()))
                if gain > self.margin and (best is None or gain > best[0]):
                    best = (gain, i, rates[0], rates[1])
            if best is None:
                continue
            _, i, pair_a, pair_b = best
            a, kinds, _ = out[i]
            out[i] = (a, kinds, pair_a)
            taken.add(i)
            if at is None:
                out.append((b, kinds, pair_b))
                started.add(b.job_id)
            else:
                left.append((out[at][1], b.trace.gpus))
                out[at] = (b, kinds, pair_b)
                taken.add(at)
            self.paired += 1
        if self.refill:
            for b in sorted(waiting, key=lambda sj: -self.weight(sj)):
                spot = next((n for n, (kinds, gpus) in enumerate(left)
                             if gpus == b.trace.gpus and b.rates.get(kinds[0], 0.0) > 0), None)
                if b.job_id in started or spot is None:
                    continue
                kinds, _ = left.pop(spot)
                out.append((b, kinds, b.rates[kinds[0]]))
                self.refilled += 1
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--policy", default="hetero-ts")
    parser.add_argument("--throughputs", default="../shared/traces/gavel-throughputs-isolated.csv")
    parser.add_argument("--pairs", default="../shared/traces/gavel-throughputs.json")
    parser.add_argument("--kinds", default="v100,p100,k80", help="GPU kinds that may be shared")
    parser.add_argument("--power", type=float, default=0.25)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--move", action="store_true", help="jobs on a slower kind may move to share a faster GPU")
    parser.add_argument("--refill", action="store_true", help="a GPU a mover left goes to a waiting job")
    parser.add_argument("--gangs", action="store_true", help="gangs share too (with gangs of their size)")
    parser.add_argument("--off", action="store_true", help="no sharing (the same run as `aios simulate`)")
    args = parser.parse_args()
    pairing = Pairing(*read_pairs(args.pairs), set(args.kinds.split(",")), args.power, args.margin, args.move,
                      args.refill, args.gangs)
    result = simulate(read_gavel_trace(args.trace), read_gavel_throughputs(args.throughputs),
                      parse_cluster(args.cluster), make_policy(args.policy),
                      co_locate=None if args.off else pairing)
    out: dict[str, Any] = {k: v for k, v in summary(result).items() if k not in ("records", "timeline")}
    out.update(paired=pairing.paired, refilled=pairing.refilled, sharing="off" if args.off else
               {"kinds": args.kinds, "power": args.power, "margin": args.margin, "move": args.move,
                "refill": args.refill, "gangs": args.gangs})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
