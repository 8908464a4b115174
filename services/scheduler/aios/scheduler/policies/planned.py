"""Time sharing that follows a fluid plan (the rounding half of Gavel's policies, on ``hetero-ts``'s machinery).

A subclass solves, with ``scipy.optimize.linprog``, a fluid allocation: for every active job ``j`` and device kind
``k`` the share of time ``x[j, k]`` it should run there. The plan is solved again whenever a job comes or goes.
Each quantum, jobs are ranked by their *deficit*, the time the plan has owed them on a kind so far less the time
they got there, and each takes the kind it is owed most on (or, with ``stay_quanta``, keeps the kind it runs on
while it is owed little more elsewhere); kinds the plan gives a job no time on are not used (following the plan
beats keeping every device busy). Gangs stay whole; rounding is the base class's.
"""

from __future__ import annotations

import numpy as np

from aios.scheduler.policies.timeshare import TimeSharedHeteroLAS
from aios.scheduler.state import PENDING, PLACED, PREEMPTING, RUNNING, JobState, SchedulerState

ACTIVE = (PLACED, RUNNING, PREEMPTING, PENDING)


class PlannedTimeShare(TimeSharedHeteroLAS):
    trade_singles = False
    trade_gangs = False
    stay_quanta = 0.0
    """A running job keeps its kind while the plan owes it at most this many quanta more elsewhere: the plan's shares
    are still met over time, in longer stretches, with fewer migrations (each a checkpoint and a restart)."""

    def __init__(self, **options: float) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._planned: object = None
        self._plan_start = 0.0
        self._last_now: float | None = None
        self._row: dict[str, int] = {}
        """Job id -> its row in the plan's arrays (the jobs the plan covers)."""
        self._col: dict[str, int] = {}
        """Kind -> its column."""
        self._share = np.zeros((0, 0))
        """``[row, col]``: the plan's share of time of the job on the kind."""
        self._got = np.zeros((0, 0))
        """``[row, col]``: time the job ran on the kind since the plan was made."""
        self._owed = np.zeros((0, 0))
        """``[row, col]``: the deficit up to the end of this quantum (one array operation per allocation: every key
        of the allocation asks for it)."""
        self._most = np.zeros(0)
        """``[row]``: the largest deficit of the job, over the kinds."""
        self._orders: dict[str, tuple[list[str], list[str]]] = {}

    def plan(self, state: SchedulerState, now: float, jobs: list[JobState], speed: np.ndarray, gpus: np.ndarray,
             capacity: np.ndarray) -> np.ndarray | None:
        """Time shares ``x[j, k]`` (each row sums to at most 1), or None when there is no plan.
        ``speed[j, k]``: the job's speed on kind k relative to its fastest (0: cannot run there)."""
        raise NotImplementedError

    def prepare(self, state: SchedulerState, now: float, capacity: dict[str, int]) -> None:
        jobs = [j for j in state.active() if j.status in ACTIVE and j.spec is not None and j.spec.devices > 0]
        if self._last_now is not None and now > self._last_now and self._row:
            for j in jobs:  # time each planned job received on each kind since the last allocation
                row = self._row.get(j.job_id)
                if row is not None and j.status in (PLACED, RUNNING) and j.placed_at is not None:
                    for k in self._kinds_of(state, j):
                        col = self._col.get(k)
                        if col is not None:
                            self._got[row, col] += now - max(self._last_now, j.placed_at)
        self._last_now = now
        self._orders = {}
        key = (frozenset(j.job_id for j in jobs), tuple(sorted(capacity.items())))
        if key != self._planned:  # somebody came or went (else: keep following the same plan)
            self._planned = key
            self._replan(state, now, jobs, capacity)
        self._owed = self._share * (now - self._plan_start + self.quantum_s) - self._got
        self._most = self._owed.max(axis=1) if self._owed.size else np.zeros(len(self._owed))

    def _replan(self, state: SchedulerState, now: float, jobs: list[JobState], capacity: dict[str, int]) -> None:
        self._plan_start, self._row, self._col = now, {}, {}
        self._share = self._got = np.zeros((0, 0))
        kinds = sorted(capacity)
        if not jobs or not kinds:
            return
        speed = np.zeros((len(jobs), len(kinds)))
        for i, job in enumerate(jobs):
            hints = job.spec.throughput if job.spec else {}
            best = max(hints.values(), default=0.0)
            accepts = self._accepts(job, capacity)
            # a gang gets no time on a kind with fewer devices than it needs: the fluid plan would give a 4-GPU job
            # half the time of a 2-GPU kind, which no round can place (unless no kind holds it: then it spans kinds)
            fits = [k for k in accepts if capacity[k] >= job.devices] or accepts
            for k in fits:
                speed[i, kinds.index(k)] = hints.get(k, 0.0) / best if best > 0 else 1.0
        # a job that can run on no kind here (it names one no node has) is left out of the plan: in it, a max-min
        # plan's least share was 0 whatever the others got, and the solver gave nobody any time (nothing ran)
        runnable = [i for i in range(len(jobs)) if speed[i].any()]
        if not runnable:
            return
        planned = [jobs[i] for i in runnable]
        x = self.plan(state, now, planned, speed[runnable], np.array([j.devices for j in planned], dtype=float),
                      np.array([capacity[k] for k in kinds], dtype=float))
        if x is None:
            return  # no plan (infeasible): the keys fall back to the subclass's order
        self._row = {job.job_id: i for i, job in enumerate(planned)}
        self._col = {k: c for c, k in enumerate(kinds)}
        self._share, self._got = np.asarray(x, dtype=float), np.zeros(np.shape(x))

    def planned_share(self, job_id: str) -> dict[str, float]:
        """The plan's share of time for the job on each kind (empty: the plan does not cover it)."""
        row = self._row.get(job_id)
        return {} if row is None else {k: float(self._share[row, c]) for k, c in self._col.items()}

    def kind_order(self, job: JobState, kinds: list[str]) -> list[str]:
        row = self._row.get(job.job_id)
        if row is None:
            return kinds
        cached = self._orders.get(job.job_id)
        if cached is not None and cached[0] is kinds:  # asked again in the same allocation, of the same kinds
            return cached[1]
        share, owed, col = self._share[row].tolist(), self._owed[row].tolist(), self._col
        order = sorted((k for k in kinds if k in col and share[col[k]] > 1e-6), key=lambda k: -owed[col[k]])
        if self.stay_quanta and job.status in (PLACED, RUNNING) and len(job.run_kinds) == 1 and order:
            here = job.run_kinds[0]
            if here in order and owed[col[order[0]]] - owed[col[here]] <= self.stay_quanta * self.quantum_s:
                order.remove(here)
                order.insert(0, here)
        self._orders[job.job_id] = (kinds, order)
        return order

    def unplanned_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        """Order of jobs the plan does not cover (none solved yet)."""
        return 0.0

    def rank_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        row = self._row.get(job.job_id)
        return self.unplanned_key(state, job, now) if row is None else -float(self._most[row])

    def pick_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        return self.rank_key(state, job, now)
