"""Max-min fairness over normalised throughput (``gavel``): Gavel's heterogeneity-aware fairness policy.

The fluid plan (``planned.py``) maximises the smallest, over jobs, of the job's throughput under the plan divided by
its throughput under an equal split of the cluster (the ``isolated`` reference of fairness.py) and by its priority
weight; it is then rounded to whole gangs by deficit every quantum. It exists to compare our simulator and policies
with Gavel's published figures (``max_min_fairness_perf``); ``hetero-ts`` is what we recommend.
"""

from __future__ import annotations

import numpy as np

from aios.scheduler.policies.makespan import fluid_lp
from aios.scheduler.policies.planned import PlannedTimeShare
from aios.scheduler.state import JobState, SchedulerState


class MaxMinFairness(PlannedTimeShare):
    name = "gavel"
    stay_quanta = 1.0  # same JCTs on all three traces, 14-22% fewer preemptions (maxmin: half); bench/RESULTS.md

    def plan(self, state: SchedulerState, now: float, jobs: list[JobState], speed: np.ndarray, gpus: np.ndarray,
             capacity: np.ndarray) -> np.ndarray | None:
        n, m = speed.shape
        equal = np.where(speed > 0, capacity[None, :] / (n * gpus[:, None]), 0.0)
        equal /= np.maximum(1.0, equal.sum(axis=1, keepdims=True))
        reference = np.maximum((equal * speed).sum(axis=1), 1e-12)
        weight = np.array([max(1.0, float(j.spec.priority)) if j.spec else 1.0 for j in jobs])
        c_obj = np.zeros(n * m + 1)
        c_obj[-1] = -1.0  # maximise t: t - sum_k x[j, k] speed[j, k] / (reference_j weight_j) <= 0
        rows = [(np.append(-speed[j] / (reference[j] * weight[j]), 1.0), 0.0) for j in range(n)]
        sol = fluid_lp(speed, gpus, capacity, c_obj, rows, extra_col=0.0)
        return None if sol is None else sol[:-1].reshape(n, m)


class MaxMinFairnessAgnostic(MaxMinFairness):
    """Gavel's heterogeneity-agnostic ``max_min_fairness`` (its least-attained-service baseline): the same plan with
    every kind counted as equally fast, so shares are equal time, not equal work.

    With kinds interchangeable the LP has a whole face of optimal plans; a simplex vertex puts each job on one
    arbitrary kind. Gavel's interior-point solver lands inside that face, spreading each job over the kinds; we
    pick that spread explicitly: each job's total share split over the kinds it accepts in proportion to their size
    (which keeps every kind within its capacity when all jobs accept all kinds)."""

    name = "maxmin"

    def plan(self, state: SchedulerState, now: float, jobs: list[JobState], speed: np.ndarray, gpus: np.ndarray,
             capacity: np.ndarray) -> np.ndarray | None:
        usable = (speed > 0).astype(float)
        x = super().plan(state, now, jobs, usable, gpus, capacity)
        if x is None:
            return None
        weights = usable * capacity[None, :]
        spread = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        return x.sum(axis=1, keepdims=True) * spread
