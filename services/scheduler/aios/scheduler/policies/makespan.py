"""Shortest makespan (``makespan``): finish a batch of jobs as early as possible.

Every quantum it solves, with ``scipy.optimize.linprog``, the fluid version of the problem for the work that is left:
find for each job ``j`` the time ``y[j, k]`` it should run on each kind ``k`` so that every job gets its remaining
work done, no kind is used by more GPUs than it has, no job runs longer than the horizon ``T``, and ``T`` is as
small as possible. The fluid plan is then rounded to whole gangs for this quantum: jobs that must run for the largest
share of the horizon go first, each on the kind the plan gives it most time on (Gavel's minimum-makespan policy,
on the ``hetero-ts`` machinery that re-decides each quantum and keeps gangs whole).

Remaining work comes from the users' runtime estimates (``runtime_estimate_s``, seconds on the fastest kind) less
the normalised service so far; without an estimate the service so far stands in for what is left (heavy-tailed
sizes). The simulator gives true sizes as estimates only when asked (``--oracle-estimates``) and labels the result.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from aios.scheduler.policies.timeshare import TimeSharedHeteroLAS
from aios.scheduler.state import PENDING, PLACED, PREEMPTING, RUNNING, JobState, SchedulerState, work_done

ACTIVE = (PLACED, RUNNING, PREEMPTING, PENDING)


class ShortestMakespan(TimeSharedHeteroLAS):
    name = "makespan"
    trade_singles = False

    def __init__(self, **options: float) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._share: dict[str, float] = {}
        self._kind_time: dict[str, dict[str, float]] = {}
        self._planned: object = None
        self._plan_start = 0.0
        self._last_now: float | None = None
        self._received: dict[str, dict[str, float]] = {}

    def remaining_s(self, state: SchedulerState, job: JobState, now: float) -> float:
        """Seconds left on its fastest kind; the service so far when nobody estimated the job."""
        done = work_done(state, job, now) / max(1, job.devices)
        estimate = job.spec.runtime_estimate_s if job.spec else None
        return max(1.0, estimate - done) if estimate else max(1.0, done)

    def prepare(self, state: SchedulerState, now: float, capacity: dict[str, int]) -> None:
        jobs = [j for j in state.jobs.values() if j.status in ACTIVE and j.spec is not None and j.spec.devices > 0]
        kinds = sorted(capacity)
        if self._last_now is not None and now > self._last_now:
            for j in jobs:  # time each job received on each kind since the last allocation, against the plan
                if j.status in (PLACED, RUNNING) and j.placed_at is not None:
                    for k in self._kinds_of(state, j):
                        got = self._received.setdefault(j.job_id, {})
                        got[k] = got.get(k, 0.0) + (now - max(self._last_now, j.placed_at))
        self._last_now = now
        key = (frozenset(j.job_id for j in jobs), tuple(sorted(capacity.items())))
        if key == self._planned:
            return  # nobody came or went: keep following the same plan
        self._planned = key
        self._plan_start = now
        self._received = {}
        self._share, self._kind_time = {}, {}
        if not jobs or not kinds:
            return
        n, m = len(jobs), len(kinds)
        speed = np.zeros((n, m))
        for i, job in enumerate(jobs):
            hints = job.spec.throughput if job.spec else {}
            best = max(hints.values(), default=0.0)
            for c, k in enumerate(self._accepts(job, capacity)):
                speed[i, kinds.index(k)] = hints.get(k, 0.0) / best if best > 0 else 1.0
        remaining = np.array([self.remaining_s(state, j, now) for j in jobs])
        gpus = np.array([j.devices for j in jobs], dtype=float)
        cap = np.array([capacity[k] for k in kinds], dtype=float)
        # variables: y[i, c] (row-major), then T; minimise T
        nv = n * m + 1
        rows, cols, vals = [], [], []
        b: list[float] = []
        r = 0
        for c in range(m):  # sum_i gpus_i y[i, c] - cap_c T <= 0
            rows += [r] * (n + 1)
            cols += [i * m + c for i in range(n)] + [nv - 1]
            vals += list(gpus) + [-cap[c]]
            b.append(0.0)
            r += 1
        for i in range(n):  # -sum_c speed y[i, c] <= -remaining_i ; sum_c y[i, c] - T <= 0
            rows += [r] * m + [r + 1] * (m + 1)
            cols += [i * m + c for c in range(m)] + [i * m + c for c in range(m)] + [nv - 1]
            vals += list(-speed[i]) + [1.0] * m + [-1.0]
            b += [-remaining[i], 0.0]
            r += 2
        a = coo_matrix((vals, (rows, cols)), shape=(r, nv)).tocsr()
        bounds = [(0.0, 0.0 if speed[i, c] <= 0 else None) for i in range(n) for c in range(m)] + [(0.0, None)]
        c_obj = np.zeros(nv)
        c_obj[-1] = 1.0
        res = linprog(c_obj, A_ub=a, b_ub=np.array(b), bounds=bounds, method="highs")
        if res.status != 0:
            return  # infeasible only when a job fits no kind; the keys fall back to the remaining work
        y = res.x[:-1].reshape(n, m)
        horizon = max(res.x[-1], 1e-9)
        for i, job in enumerate(jobs):
            self._share[job.job_id] = float(y[i].sum() / horizon)
            self._kind_time[job.job_id] = {k: float(y[i, c] / horizon) for c, k in enumerate(kinds)}

    def _deficit(self, job: JobState, kind: str, now: float) -> float:
        """Time the plan gave the job on ``kind`` so far, less the time it got there."""
        rate = self._kind_time.get(job.job_id, {}).get(kind, 0.0)
        return rate * (now - self._plan_start + self.quantum_s) - self._received.get(job.job_id, {}).get(kind, 0.0)

    def kind_order(self, job: JobState, kinds: list[str]) -> list[str]:
        if job.job_id not in self._kind_time:
            return kinds
        planned = self._kind_time[job.job_id]
        return sorted((k for k in kinds if planned.get(k, 0.0) > 1e-6),
                      key=lambda k: -self._deficit(job, k, self._last_now or 0.0))

    def rank_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        if job.job_id not in self._kind_time:
            return -self.remaining_s(state, job, now)
        return -max(self._deficit(job, k, now) for k in self._kind_time[job.job_id])

    def pick_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        return self.rank_key(state, job, now)
