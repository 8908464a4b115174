"""Shortest makespan (``makespan``): finish a batch of jobs as early as possible.

The fluid plan (``planned.py``) is the makespan LP for the work that is left: times ``y[j, k]`` on each kind so that
every job gets its remaining work done, no kind is used by more GPUs than it has over the horizon ``T``, no job runs
longer than ``T``, and ``T`` is as small as possible; the time shares are ``y / T`` (Gavel's minimum-makespan
policy, rounded to whole gangs by deficit).

Remaining work comes from the users' runtime estimates (``runtime_estimate_s``, seconds on the fastest kind) less
the normalised service so far; without an estimate the service so far stands in for what is left (heavy-tailed
sizes). The simulator gives true sizes as estimates only when asked (``--oracle-estimates``) and labels the result.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from aios.scheduler.policies.planned import PlannedTimeShare
from aios.scheduler.state import JobState, SchedulerState, work_done


def fluid_lp(speed: np.ndarray, gpus: np.ndarray, capacity: np.ndarray, c_obj: np.ndarray,
             job_rows: list[tuple[np.ndarray, float]], extra_col: float) -> np.ndarray | None:
    """Solve over variables ``x[j, k]`` (row-major) and one scalar ``z`` (last): per kind ``sum_j gpus_j x[j, k] <=
    capacity_k * extra_col * z + (1 - extra_col) * capacity_k``; per job ``sum_k x[j, k] <= extra_col * z + (1 -
    extra_col)`` and the caller's rows ``(coefficients over j's k and z, bound)``. Returns the solution vector."""
    n, m = speed.shape
    nv = n * m + 1
    rows, cols, vals, b = [], [], [], []
    r = 0
    for c in range(m):
        rows += [r] * (n + 1)
        cols += [j * m + c for j in range(n)] + [nv - 1]
        vals += list(gpus) + [-capacity[c] * extra_col]
        b.append((1 - extra_col) * capacity[c])
        r += 1
    for j in range(n):
        rows += [r] * (m + 1)
        cols += [j * m + c for c in range(m)] + [nv - 1]
        vals += [1.0] * m + [-extra_col]
        b.append(1 - extra_col)
        r += 1
        coef, bound = job_rows[j]
        rows += [r] * (m + 1)
        cols += [j * m + c for c in range(m)] + [nv - 1]
        vals += list(coef)
        b.append(bound)
        r += 1
    a = coo_matrix((vals, (rows, cols)), shape=(r, nv)).tocsr()
    bounds = [(0.0, 0.0 if speed[j, c] <= 0 else None) for j in range(n) for c in range(m)] + [(None, None)]
    res = linprog(c_obj, A_ub=a, b_ub=np.array(b), bounds=bounds, method="highs")
    return res.x if res.status == 0 else None


class ShortestMakespan(PlannedTimeShare):
    name = "makespan"

    def remaining_s(self, state: SchedulerState, job: JobState, now: float) -> float:
        """Seconds left on its fastest kind; the service so far when nobody estimated the job."""
        done = work_done(state, job, now) / max(1, job.devices)
        estimate = job.spec.runtime_estimate_s if job.spec else None
        return max(1.0, estimate - done) if estimate else max(1.0, done)

    def plan(self, state: SchedulerState, now: float, jobs: list[JobState], speed: np.ndarray, gpus: np.ndarray,
             capacity: np.ndarray) -> np.ndarray | None:
        n, m = speed.shape
        remaining = [self.remaining_s(state, j, now) for j in jobs]
        c_obj = np.zeros(n * m + 1)
        c_obj[-1] = 1.0  # minimise the horizon T; y are times: -sum_k speed y[j, k] <= -remaining_j
        sol = fluid_lp(speed, gpus, capacity, c_obj, [(np.append(-speed[j], 0.0), -remaining[j]) for j in range(n)],
                       extra_col=1.0)
        if sol is None:
            return None
        horizon = max(float(sol[-1]), 1e-9)
        return sol[:-1].reshape(n, m) / horizon

    def unplanned_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        return -self.remaining_s(state, job, now)
