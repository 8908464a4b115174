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
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from aios.scheduler.policies.planned import PlannedTimeShare
from aios.scheduler.state import JobState, SchedulerState, work_done


def fluid_lp(speed: np.ndarray, gpus: np.ndarray, capacity: np.ndarray, c_obj: np.ndarray,
             job_rows: list[tuple[np.ndarray, float]], extra_col: float) -> np.ndarray | None:
    """Solve over variables ``x[j, k]`` (row-major) and one scalar ``z`` (last): per kind ``sum_j gpus_j x[j, k] <=
    capacity_k * extra_col * z + (1 - extra_col) * capacity_k``; per job ``sum_k x[j, k] <= extra_col * z + (1 -
    extra_col)`` and the caller's rows ``(coefficients over j's k and z, bound)``. Returns the solution vector.

    Built with array operations and solved through ``milp`` with no integer variables (HiGHS' LP solver, as
    ``linprog`` calls it): ``linprog``'s checks of its inputs took more time than the solve on plans of a few
    hundred variables, re-solved at every arrival and finish (bench/RESULTS.md)."""
    n, m = speed.shape
    nv = n * m + 1
    z = nv - 1
    x_cols = np.arange(n * m).reshape(n, m)
    # per kind: the n jobs' columns of that kind, then z
    kind_cols = np.concatenate([x_cols.T, np.full((m, 1), z)], axis=1)
    kind_vals = np.concatenate([np.broadcast_to(np.asarray(gpus, dtype=float), (m, n)),
                                (-np.asarray(capacity, dtype=float) * extra_col)[:, None]], axis=1)
    # per job two rows: its share of time, then the caller's row
    job_cols = np.repeat(np.concatenate([x_cols, np.full((n, 1), z)], axis=1), 2, axis=0)
    job_vals = np.empty((2 * n, m + 1))
    job_vals[0::2, :m], job_vals[0::2, m] = 1.0, -extra_col
    job_vals[1::2] = [coef for coef, _ in job_rows] if n else np.zeros((0, m + 1))
    cols = np.concatenate([kind_cols.ravel(), job_cols.ravel()])
    rows = np.concatenate([np.repeat(np.arange(m), n + 1), np.repeat(np.arange(m, m + 2 * n), m + 1)])
    vals = np.concatenate([kind_vals.ravel(), job_vals.ravel()])
    b = np.empty(m + 2 * n)
    b[:m] = (1 - extra_col) * np.asarray(capacity, dtype=float)
    b[m::2] = 1 - extra_col
    b[m + 1::2] = [bound for _, bound in job_rows]
    a = coo_matrix((vals, (rows, cols)), shape=(m + 2 * n, nv)).tocsr()
    lower = np.zeros(nv)
    lower[z] = -np.inf
    upper = np.append(np.where(speed.ravel() <= 0, 0.0, np.inf), np.inf)
    res = milp(c_obj, constraints=LinearConstraint(a, -np.inf, b), bounds=Bounds(lower, upper))
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
