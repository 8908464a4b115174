"""Time-shared, heterogeneity-aware least attained service (``hetero-ts``).

Every quantum the policy decides afresh which jobs hold devices and of which kind, as Gavel re-solves its allocation
every round, instead of letting a placement stick until the job ends:

1. **Who runs**: all jobs that may move (pending ones, and running ones past their quantum) are ranked by normalised
   attained service times size (two-dimensional LAS, Tiresias; service counted in fastest-kind seconds, see
   ``state.work_done``). In that order each is admitted while enough devices of a kind it accepts remain. Running
   jobs inside their quantum keep their devices and are counted first, so nothing thrashes within a quantum.
2. **Which kind**: among the admitted, a job that gains most from a fast kind over a slow one (ratio of its fastest to
   its slowest throughput hint) picks first and takes its fastest kind with room left; a job this leaves without a
   kind it accepts gets one by moving others aside. Then the kinds are traded to lose the least speed over all jobs:
   with gangs among them as a small integer program (``milp``), one-device jobs alone with the Hungarian method.

Running jobs left out, or admitted on another kind, are preempted (to be resumed from their checkpoint): that is the
time sharing and the migration to faster kinds. Under heavy-tailed job sizes (the Philly traces) the young jobs,
most of which are short, run first and leave, while the long ones share what remains.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linear_sum_assignment, milp
from scipy.sparse import coo_matrix

from aios.scheduler.policies.base import ELAPSED_SLACK_S, Estimator, Policy
from aios.scheduler.state import (PENDING, PLACED, PREEMPTING, RUNNING, JobState, SchedulerState, devices_by_kind,
                                  kinds_held, work_done)


UNUSABLE = 1e12
UNKNOWN_SPEED = 0.05
"""Relative speed assumed on a kind the job accepts but has no throughput hint for: usable, but the last choice."""
ANY_KIND = "*"
"""Allocation of a gang larger than any one kind: it runs across kinds, at the pace of the slowest."""


def left_weight(left_s: float | np.ndarray, power: float, offset_s: float) -> float | np.ndarray:
    """The weight in the kind trades of a job with ``left_s`` seconds of work left (per device, on its fastest kind):
    ``((left + offset) / 1 h) ** -power``, more for jobs near their end, where a fast device shortens a completion
    soonest. Policies differ in what they take for the work left; arrays give one weight each."""
    return np.maximum((left_s + offset_s) / 3600.0, 1 / 3600.0) ** -power


class _Lazy(dict):  # type: ignore[type-arg]
    """A dict that computes a missing entry on first use (most queued jobs are never reached in a round)."""

    def __init__(self, make: Callable[[str], list[str]]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: str) -> list[str]:
        value = self[key] = self._make(key)
        return value


def _gain(job: JobState) -> float:
    """How much faster the job runs on its fastest kind than on its slowest (1.0 without hints)."""
    hints = [v for v in (job.spec.throughput.values() if job.spec else ()) if v > 0]
    return max(hints) / min(hints) if hints else 1.0


class TimeSharedHeteroLAS(Policy):
    name = "hetero-ts"
    milp = False
    strict_kinds = True
    trade_singles = True
    trade_gangs = True
    place_after_churn = True

    def __init__(self, quantum_s: float = 360.0, youth: float = 0.25, young_s: float = 3600.0,
                 assignment_max_jobs: int = 400, gang_power: float = 0.5) -> None:
        self.gang_power = gang_power
        self.quantum_s = quantum_s
        self.youth = youth
        self.young_s = young_s
        self.assignment_max_jobs = assignment_max_jobs
        self._kind: dict[str, str] = {}
        self._displaced: list[tuple[JobState, str]] = []
        self._rank: dict[str, int] = {}
        self._accepts_cache: dict[str, tuple[list[str], bool]] = {}
        self._slowdown_cache: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        self._capacity_at: tuple[int, object, dict[str, int]] | None = None
        self._gain_cache: dict[str, float] = {}
        self._allocated_at: float | None = None
        self._allocated_for: object = None
        self._traded: tuple[object, dict[str, str]] | None = None

    # -- the allocation -------------------------------------------------------------------------------------------
    def gain(self, job: JobState) -> float:
        g = self._gain_cache.get(job.job_id)
        if g is None:
            if len(self._gain_cache) > 100_000:
                self._gain_cache.clear()
            g = self._gain_cache[job.job_id] = _gain(job)
        return g

    def _capacity(self, state: SchedulerState) -> dict[str, int]:
        """Healthy devices per kind on online nodes (cached until the inventory's shape changes)."""
        if self._capacity_at is None or self._capacity_at[0] != state.inv.shape or self._capacity_at[1] is not state.inv:
            capacity = {k: row["healthy"] for k, row in state.inv.capacity().items() if row["healthy"]}
            self._capacity_at = (state.inv.shape, state.inv, capacity)
        return dict(self._capacity_at[2])

    def _kinds_of(self, state: SchedulerState, job: JobState) -> set[str]:
        return set(job.run_kinds) if job.run_kinds or not job.assignments else set(kinds_held(state, job))

    def _accepts(self, job: JobState, capacity: dict[str, int]) -> list[str]:
        """Kinds of ``capacity`` the job may run on, fastest first (throughput hints; without them, any kind)."""
        spec = job.spec
        assert spec is not None
        cached = self._accepts_cache.get(job.job_id)
        if cached is None:
            hints = spec.throughput
            kinds = sorted(spec.device_types or hints, key=lambda k: -hints.get(k, 0.0))
            if len(self._accepts_cache) > 100_000:
                self._accepts_cache.clear()
            cached = self._accepts_cache[job.job_id] = (kinds, not spec.device_types)
        kinds, any_kind = cached
        out = [k for k in kinds if k in capacity]
        return out + [k for k in sorted(capacity) if k not in kinds] if any_kind else out

    def allocate(self, state: SchedulerState, now: float) -> dict[str, str]:
        capacity = self._capacity(state)
        chosen: dict[str, str] = {}
        movable: list[JobState] = []
        self.prepare(state, now, dict(capacity))
        for job in state.active():
            if job.status not in (PLACED, RUNNING, PENDING, PREEMPTING) or job.spec is None or job.spec.devices == 0:
                continue
            if job.status in (PLACED, RUNNING):
                pinned = (not job.spec.preemptible or job.placed_at is None
                          or now - job.placed_at < self.quantum_s - ELAPSED_SLACK_S)
                if pinned:
                    kinds = self._kinds_of(state, job)
                    held = devices_by_kind(state, job) or {k: job.held_devices() // max(1, len(kinds)) for k in kinds}
                    for k, n in held.items():
                        capacity[k] = capacity.get(k, 0) - n
                    if kinds:
                        chosen[job.job_id] = min(kinds)
                    continue
                movable.append(job)
            else:  # pending, or preempted and about to be requeued: both compete for this quantum
                movable.append(job)
        movable.sort(key=lambda j: (self.rank_key(state, j, now), j.arrival))
        accepts = _Lazy(lambda job_id: self._accepts(state.jobs[job_id], capacity))  # left keeps capacity's keys
        self._rank = {j.job_id: i for i, j in enumerate(movable)}
        admitted: list[JobState] = []
        left = dict(capacity)
        spanning: list[JobState] = []
        room = sum(max(0, v) for v in left.values())
        for job in movable:
            if room <= 0:
                break  # the cluster is spoken for: the rest wait
            accepted = accepts[job.job_id]
            fits = [k for k in accepted if left[k] >= job.devices]
            if fits:
                admitted.append(job)
                left[min(fits, key=lambda k: left[k])] -= job.devices  # provisional: reserves room, kind comes next
                room -= job.devices
            elif job.devices > max((capacity.get(k, 0) for k in accepted), default=0) and \
                    sum(max(0, left[k]) for k in accepted) >= job.devices:
                spanning.append(job)  # larger than any one kind: it may only ever run across kinds
                need = job.devices
                for k in accepted:
                    take = min(need, max(0, left[k]))
                    left[k] -= take
                    need -= take
                    room -= take
        left = dict(capacity)
        for job in spanning:
            need = job.devices
            for k in accepts[job.job_id]:
                take = min(need, max(0, left[k]))
                left[k] -= take
                need -= take
            chosen[job.job_id] = ANY_KIND

        # greedy: the job that gains most from a fast kind picks first; a job left without a kind gets room; then
        # the kinds are traded (all admitted jobs in one MILP when gangs are among them, else the one-device jobs)
        greedy: dict[str, str] = {}
        for job in sorted(admitted, key=lambda j: (self.pick_key(state, j, now), self._rank[j.job_id])):
            for k in self.kind_order(job, accepts[job.job_id]):
                if left[k] >= job.devices:
                    left[k] -= job.devices
                    greedy[job.job_id] = k
                    break
        stranded = [j for j in admitted if j.job_id not in greedy]
        if stranded:
            giving_way = [j for j in reversed(movable) if j.job_id in greedy]  # the last in rank move first
            for job in stranded:
                self._make_room(job, giving_way, greedy, left, accepts)
        traded: dict[str, str] | None = None
        if self.trade_gangs and len(admitted) <= self.assignment_max_jobs and any(j.devices > 1 for j in admitted):
            traded = self._assign_all(state, admitted, greedy, left, accepts, now)
            if traded is not None:
                greedy = dict(traded)
        room = sum(max(0, v) for v in left.values())
        attempts = 8  # moving others aside costs a pass over the admitted jobs: a few tries per allocation
        was_admitted = {j.job_id for j in admitted}
        for job in movable:  # work conserving: room that admission left over goes to the next jobs in rank order
            if room <= 0:
                break
            if job.job_id in greedy or job.job_id in chosen:
                continue
            for k in self.kind_order(job, accepts[job.job_id]):
                if left[k] >= job.devices:
                    left[k] -= job.devices
                    greedy[job.job_id] = k
                    break
            else:
                if room >= job.devices and attempts > 0:  # the room is on kinds it cannot use: others may move
                    attempts -= 1
                    giving_way = [j for j in reversed(movable) if j.job_id in greedy]
                    self._make_room(job, giving_way, greedy, left, accepts)
            if job.job_id in greedy:
                room -= job.devices
                if job.job_id not in was_admitted:  # one admitted but stranded above, given room now: listed once
                    # (twice, its kind was traded twice, and the allocation raised on its second removal, every round)
                    admitted.append(job)
        # one-device jobs the MILP placed are where they should be; the rest trade among themselves
        singles = [j for j in admitted if j.devices == 1 and j.job_id in greedy and not (traded and j.job_id in traded)]
        pool: dict[str, int] = {}
        for job in singles:
            pool[greedy[job.job_id]] = pool.get(greedy[job.job_id], 0) + 1
        chosen.update(greedy)
        if not self.trade_singles:
            return chosen
        for job in singles:
            del chosen[job.job_id]
        chosen.update(self._assign_singles(state, singles, pool, now))
        return chosen

    def trade_weight(self, state: SchedulerState, job: JobState, now: float) -> float:
        """How much a job's lost speed counts in the kind trades: its service so far stands in for the work left
        (heavy tails), so young jobs, the likeliest to finish soon, count most."""
        return float(left_weight(work_done(state, job, now) / max(1, job.devices), self.youth, self.young_s))

    def relative_speed(self, job: JobState, kind: str) -> float:
        """Its speed on a kind it accepts, relative to its fastest (1.0 without hints; ``UNKNOWN_SPEED`` for a
        kind it has no hint for)."""
        hints = job.spec.throughput if job.spec else {}
        best = max(hints.values(), default=0.0)
        if best <= 0:
            return 1.0
        return hints.get(kind, 0.0) / best or UNKNOWN_SPEED

    def speed_cost(self, speed: float) -> float:
        """What running at ``speed`` (of its fastest kind) costs a job in the kind trades: -log, so halving any
        job's speed costs the same (proportional fairness over jobs)."""
        return -math.log(speed)

    def _assign_all(self, state: SchedulerState, admitted: list[JobState], greedy: dict[str, str],
                    left: dict[str, int], accepts: dict[str, list[str]], now: float) -> dict[str, str] | None:
        """Kinds for all admitted jobs, gangs too, as one small integer program (``scipy.optimize.milp``): each job
        gets one kind it accepts, no kind gives more devices than it has, and the sum over jobs of ``weight *
        -log(relative_speed)`` is least. The weight is ``trade_weight`` times ``devices ** gang_power``: a gang on a
        slow kind holds all its devices longer. The greedy picks (fastest kind by gain) can strand a gang on a slow
        kind while singles that lose little there hold the fast one. Weights are rounded to 1/8 octave so that a
        round like the last reuses its answer."""
        jobs = [j for j in admitted if j.job_id in greedy]
        if not jobs:
            return None
        kinds = sorted(left)
        pool = dict(left)
        for j in jobs:
            pool[greedy[j.job_id]] += j.devices
        weight = np.array([self.trade_weight(state, j, now) * j.devices ** self.gang_power for j in jobs])
        octave = np.round(np.log2(weight) * 8).astype(int)
        rows = []
        for job, w in zip(jobs, octave):
            here = min(self._kinds_of(state, job)) if job.status in (PLACED, RUNNING) and job.run_kinds else ""
            rows.append((job.job_id, job.devices, tuple(accepts[job.job_id]), int(w), here))
        key = (tuple(rows), tuple(pool.items()))
        if self._traded is not None and self._traded[0] == key:
            out = self._traded[1]
        else:
            out = self._solve_kinds(jobs, rows, kinds, pool)
            if out is None:
                return None
            self._traded = (key, out)
        for k in kinds:
            left[k] = pool[k] - sum(j.devices for j in jobs if out[j.job_id] == k)
        return dict(out)

    def _solve_kinds(self, jobs: list[JobState], rows: list[tuple[str, int, tuple[str, ...], int, str]],
                     kinds: list[str], pool: dict[str, int]) -> dict[str, str] | None:
        n, m = len(jobs), len(kinds)
        cost = np.zeros((n, m))
        upper = np.zeros((n, m))
        for i, (job, (_, _, accepted, w, here)) in enumerate(zip(jobs, rows)):
            for k in accepted:
                c = kinds.index(k)
                upper[i, c] = 1.0
                # staying where it runs breaks ties: no migration for nothing
                cost[i, c] = 2.0 ** (w / 8) * self.speed_cost(self.relative_speed(job, k)) - (1e-3 if k == here else 0)
        one_kind = coo_matrix((np.ones(n * m), (np.repeat(np.arange(n), m), np.arange(n * m))), shape=(n, n * m))
        per_kind = coo_matrix((np.repeat([float(j.devices) for j in jobs], m), (np.tile(np.arange(m), n),
                                                                                 np.arange(n * m))), shape=(m, n * m))
        room = np.array([max(0, pool[k]) for k in kinds], dtype=float)
        res = milp(cost.ravel(), integrality=np.ones(n * m), bounds=Bounds(np.zeros(n * m), upper.ravel()),
                   constraints=[LinearConstraint(one_kind.tocsr(), 1.0, 1.0),
                                LinearConstraint(per_kind.tocsr(), 0.0, room)],
                   options={"time_limit": 1.0, "disp": False})
        if res.x is None:
            return None  # the greedy picks stand
        x = np.round(res.x).reshape(n, m)
        return {job.job_id: kinds[int(np.argmax(x[i]))] for i, job in enumerate(jobs)}

    def _make_room(self, job: JobState, giving_way: list[JobState], greedy: dict[str, str], left: dict[str, int],
                   accepts: dict[str, list[str]]) -> None:
        """Find a kind for an admitted job the picking left without one: jobs on a kind it accepts move to another
        kind with room, the lowest ranked first. Without this, a gang that cannot run on some kind (a ResNet-50 too
        big for a K80) waits behind jobs ranked below it while devices of that kind idle."""
        for k in self.kind_order(job, accepts[job.job_id]):
            need = job.devices - left[k]
            moves: list[tuple[JobState, str]] = []
            spare = dict(left)
            for other in giving_way:
                if need <= 0:
                    break
                if greedy.get(other.job_id) != k:
                    continue
                to = next((k2 for k2 in self.kind_order(other, accepts[other.job_id])
                           if k2 != k and spare[k2] >= other.devices), None)
                if to is not None:
                    spare[to] -= other.devices
                    moves.append((other, to))
                    need -= other.devices
            if need <= 0:
                for other, to in moves:
                    left[k] += other.devices
                    left[to] -= other.devices
                    greedy[other.job_id] = to
                left[k] -= job.devices
                greedy[job.job_id] = k
                return

    def prepare(self, state: SchedulerState, now: float, capacity: dict[str, int]) -> None:
        """Work done once per allocation before the keys are asked (subclasses: a plan for the whole round)."""

    def kind_order(self, job: JobState, kinds: list[str]) -> list[str]:
        """The kinds a job tries, best first (here: fastest first)."""
        return kinds

    def rank_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        """Who runs first: least normalised service times size (2D-LAS)."""
        return work_done(state, job, now) * job.devices

    def pick_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        """Who picks its kind first: the job that gains most from a fast kind."""
        return -self.gain(job)

    def _assign_singles(self, state: SchedulerState, jobs: list[JobState], left: dict[str, int],
                        now: float) -> dict[str, str]:
        """One-device jobs onto kinds as an assignment problem (Hungarian method): maximise the sum over jobs of
        ``trade_weight * log(speed on the kind / speed on its fastest kind)``."""
        kinds = [k for k in sorted(left) if left[k] > 0]
        if not jobs or not kinds:
            return {}
        if len(jobs) > self.assignment_max_jobs:  # large rounds: the greedy order of the gangs
            out: dict[str, str] = {}
            for job in sorted(jobs, key=lambda j: (-self.gain(j), self._rank[j.job_id])):
                k = next((k for k in self._accepts(job, left) if left[k] >= 1), None)
                if k is not None:
                    left[k] -= 1
                    out[job.job_id] = k
            return out
        key = tuple(kinds)
        rows = []
        for job in jobs:
            row = self._slowdown_cache.get((job.job_id, key))
            if row is None:
                accepted = set(self._accepts(job, left))
                row = np.full(len(kinds), UNUSABLE)
                for c, k in enumerate(kinds):
                    if k in accepted:
                        row[c] = self.speed_cost(self.relative_speed(job, k))
                if len(self._slowdown_cache) > 200_000:
                    self._slowdown_cache.clear()
                self._slowdown_cache[(job.job_id, key)] = row
            rows.append(row)
        weight = np.array([self.trade_weight(state, j, now) for j in jobs])
        per_kind = np.minimum(weight[:, None] * np.array(rows), UNUSABLE)
        repeat = [min(left[k], len(jobs)) for k in kinds]
        slot_kind = [k for k, n in zip(kinds, repeat) for _ in range(n)]
        cost = np.repeat(per_kind, repeat, axis=1)
        rows, cols = linear_sum_assignment(cost)
        out = {}
        for i, c in zip(rows, cols):
            if cost[i, c] < UNUSABLE / 4:
                out[jobs[i].job_id] = slot_kind[c]
                left[slot_kind[c]] -= 1
        return out

    # -- the policy interface ---------------------------------------------------------------------------------------
    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        if now != self._allocated_at or state is not self._allocated_for:
            # one allocation per instant: the rounds that follow at once (on the releases and requeues of this one's
            # preemptions) carry it out rather than decide again
            self._kind = self.allocate(state, now)
            self._allocated_at, self._allocated_for = now, state
        self._displaced = []
        for job in state.active():
            if job.status not in (PLACED, RUNNING) or job.spec is None or job.devices == 0:
                continue
            want = self._kind.get(job.job_id)
            have = self._kinds_of(state, job)
            if want is None:
                self._displaced.append((job, "time share: jobs with less attained service take its turn"))
            elif want != ANY_KIND and want not in have:
                self._displaced.append((job, f"migrating to {want}, where it runs faster"))
        pending = [j for j in state.pending() if j.devices == 0 or j.job_id in self._kind]
        return sorted(pending, key=lambda j: self._rank.get(j.job_id, -1))

    def displaced(self, state: SchedulerState, now: float) -> list[tuple[JobState, str]]:
        """Running jobs to preempt this round (computed by the last ``order``)."""
        return self._displaced

    def waiting_reason(self, job: JobState) -> str | None:
        rank = self._rank.get(job.job_id)
        if rank is None:
            return None
        return (f"time share: {rank} jobs with less attained service come first; it runs when one of them "
                "finishes or its quantum ends")

    def wake_at(self, state: SchedulerState, now: float) -> float | None:
        """With jobs waiting: when the next running job's quantum ends (its devices may then go to another)."""
        if not state.pending():
            return None
        ends = (job.placed_at + self.quantum_s for job in state.active()
                if job.status in (PLACED, RUNNING) and job.placed_at is not None and job.spec is not None
                and job.spec.preemptible)
        return min((t for t in ends if t > now + ELAPSED_SLACK_S), default=None)

    def kinds_for(self, job: JobState) -> frozenset[str] | None:
        want = self._kind.get(job.job_id)
        return frozenset([want]) if want and want != ANY_KIND else super().kinds_for(job)
