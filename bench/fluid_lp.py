"""Time one solve of the fluid plan the plan-following policies (gavel, maxmin, makespan) solve at every arrival and
finish: a max-min plan of N one-device jobs on three kinds of 12 devices. Prints JSON: milliseconds per solve, best
of `--repeat` batches of 20 (the machine is noisy: the best batch is the figure to compare).

    .venv/bin/python bench/fluid_lp.py --jobs 20 65 200
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from aios.scheduler.policies.makespan import fluid_lp


def plan_inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    rng = np.random.default_rng(seed)
    speed = (rng.random((n, 3)) > 0.1).astype(float)
    speed[speed.sum(axis=1) == 0, 0] = 1.0
    gpus, capacity = np.ones(n), np.array([12.0, 12.0, 12.0])
    equal = np.where(speed > 0, capacity[None, :] / (n * gpus[:, None]), 0.0)
    equal /= np.maximum(1.0, equal.sum(axis=1, keepdims=True))
    reference = np.maximum((equal * speed).sum(axis=1), 1e-12)
    c_obj = np.zeros(n * 3 + 1)
    c_obj[-1] = -1.0
    rows = [(np.append(-speed[j] / reference[j], 1.0), 0.0) for j in range(n)]
    return speed, gpus, capacity, c_obj, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[20, 65, 200])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    out = {}
    for n in args.jobs:
        inputs = plan_inputs(n)
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            for _ in range(20):
                assert fluid_lp(*inputs, extra_col=0.0) is not None
            best = min(best, (time.perf_counter() - started) / 20)
        out[f"ms_per_solve_{n}_jobs"] = round(best * 1000, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
