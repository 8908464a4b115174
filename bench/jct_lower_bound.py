#!/usr/bin/env python
"""bench/jct_lower_bound.py: the least average JCT any schedule of a trace can reach on a cluster, clairvoyant or
not (a linear program over time slots that respects the cluster's capacity; aios.scheduler.sim.bounds says how).

    .venv/bin/python bench/jct_lower_bound.py --trace ../shared/traces/gavel-synthetic-continuous-300.trace \\
        --cluster v100=8,p100=8,k80=8 --slot-h 1
"""

from __future__ import annotations

import argparse
import json
import time

from aios.common.errors import ConfigError
from aios.scheduler.sim.bounds import jct_lower_bound
from aios.scheduler.sim.traces import parse_cluster, read_gavel_throughputs, read_gavel_trace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--throughputs", default="../shared/traces/gavel-throughputs-isolated.csv")
    p.add_argument("--slot-h", type=float, default=1.0, help="slot length, hours (finer: tighter, slower)")
    p.add_argument("--tangents", type=int, default=3, help="0: each slot's work taken at the slot's start only")
    p.add_argument("--horizon-h", type=float, default=None, help="first guess; doubled while it binds")
    args = p.parse_args()
    t0 = time.perf_counter()
    try:
        result = jct_lower_bound(read_gavel_trace(args.trace), read_gavel_throughputs(args.throughputs),
                                 parse_cluster(args.cluster), args.slot_h, args.tangents, args.horizon_h)
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:
        raise SystemExit(f"jct_lower_bound: {exc}") from None
    print(json.dumps({**result, "wall_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
