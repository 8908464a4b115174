#!/usr/bin/env python
"""bench/pair_throughputs.py: how much work two single-GPU jobs sharing one GPU get done together, as a share of
what each does alone (Gavel's space-sharing throughputs). A measure of the lever AIOS does not have (fractional
device leases), quoted in bench/RESULTS.md; it runs no scheduler. Prints JSON per GPU type.

    .venv/bin/python bench/pair_throughputs.py --throughputs ../shared/traces/gavel-throughputs.json
"""

from __future__ import annotations

import argparse
import json
import statistics


def pair_gains(table: dict[str, dict[str, object]]) -> list[float]:
    """For every ordered pair of one-GPU job types with a measured colocation, the sum of both jobs' throughput
    shared divided by alone (above 1: sharing the GPU does more work than running them one after the other)."""
    gains = []
    for a, row in table.items():
        alone_a = row.get("null") if isinstance(row, dict) else None
        if not a.endswith(", 1)") or not isinstance(alone_a, (int, float)) or alone_a <= 0:
            continue
        for b, pair in row.items():
            if b == "null" or not b.endswith(", 1)") or b not in table:
                continue
            alone_b = table[b].get("null")
            if isinstance(pair, list) and len(pair) == 2 and isinstance(alone_b, (int, float)) and alone_b > 0:
                gains.append(pair[0] / alone_a + pair[1] / alone_b)  # 0: the two do not fit on one GPU together
    return sorted(gains)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughputs", default="../shared/traces/gavel-throughputs.json")
    args = parser.parse_args()
    with open(args.throughputs) as f:
        data = json.load(f)
    out = {}
    for kind in ("v100", "p100", "k80"):
        gains = pair_gains(data[kind])
        out[kind] = {"pairs": len(gains), "median": round(statistics.median(gains), 3),
                     "p25": round(gains[len(gains) // 4], 3), "p75": round(gains[3 * len(gains) // 4], 3),
                     "share_gaining": round(sum(g > 1 for g in gains) / len(gains), 3),
                     "share_not_fitting": round(sum(g == 0 for g in gains) / len(gains), 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
