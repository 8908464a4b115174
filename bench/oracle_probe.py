#!/usr/bin/env python
"""bench/oracle_probe.py: how far `hetero-ts`'s machinery gets when it knows every job's true size (an oracle, which
the trace rules forbid in a result: this is a probe of the headroom, quoted as such in bench/RESULTS.md).

Who runs: least true remaining work times devices first. Kind trades: each job's lost speed weighted by
(remaining hours + 1) ** -power instead of the young-job weight. Prints the simulation summary as JSON.

    .venv/bin/python bench/oracle_probe.py --trace ../shared/traces/gavel-philly-ed69ec.trace \\
        --cluster v100=12,p100=12,k80=12 --power 0.25
"""

from __future__ import annotations

import argparse
import json

from aios.scheduler.policies.timeshare import TimeSharedHeteroLAS, left_weight
from aios.scheduler.sim.simulator import simulate, summary
from aios.scheduler.sim.traces import parse_cluster, read_gavel_throughputs, read_gavel_trace
from aios.scheduler.state import JobState, SchedulerState, work_done


class OracleTimeShare(TimeSharedHeteroLAS):
    name = "hetero-ts (oracle probe)"

    def __init__(self, power: float) -> None:
        super().__init__()
        self.power = power

    def remaining_s(self, state: SchedulerState, job: JobState, now: float) -> float:
        assert job.spec is not None and job.spec.runtime_estimate_s is not None, "run with oracle estimates"
        return max(0.0, job.spec.runtime_estimate_s - work_done(state, job, now) / max(1, job.devices))

    def rank_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        return self.remaining_s(state, job, now) * job.devices

    def trade_weight(self, state: SchedulerState, job: JobState, now: float) -> float:
        return float(left_weight(self.remaining_s(state, job, now), self.power, 3600.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--throughputs", default="../shared/traces/gavel-throughputs-isolated.csv")
    parser.add_argument("--power", type=float, default=0.25)
    args = parser.parse_args()
    result = simulate(read_gavel_trace(args.trace), read_gavel_throughputs(args.throughputs),
                      parse_cluster(args.cluster), OracleTimeShare(args.power), oracle_estimates=True)
    print(json.dumps({k: v for k, v in summary(result).items() if k not in ("records", "timeline")}, indent=2))


if __name__ == "__main__":
    main()
