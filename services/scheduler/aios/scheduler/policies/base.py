"""The one interface every policy implements (DESIGN.md §9.2). Pure: state and clock in, an order and preemption
victims out; the round (rounds.py) does quota admission and placement the same way for all of them."""

from __future__ import annotations

from typing import Callable

from aios.scheduler.state import PREEMPTING, RUNNING, PLACED, JobState, SchedulerState

Estimator = Callable[[JobState], float]
"""Predicted remaining runtime of a job, in seconds."""


class Policy:
    """Contract:

    * ``order(state, now, estimate)`` returns the pending jobs to try, best first. No I/O, no mutation.
    * ``sequential``: a job that does not fit blocks the ones after it (FIFO, priority) unless ``backfill``.
    * ``victims(state, now, job)`` names the running jobs the policy lets ``job`` preempt, the first to go first.
      Default: none. The round preempts the fewest of them, in this order, that make room for ``job``.
    * ``victims_key(job, now)``: jobs with equal keys get the same victims within a round, so the round asks
      ``victims`` once a key (asked for each of 3,000 blocked jobs, a walk of every running job each, a round of
      ``las`` took 7 s). Default: the job's id (asked once a job).
    * ``kinds_for(job)`` narrows the device kinds a job may use this round (heterogeneity-aware policies); with
      ``strict_kinds`` the job waits rather than take another kind.
    * ``displaced(state, now)`` names running jobs to preempt because the policy's allocation for this round leaves
      them out or moves them (time-sharing policies), with the reason; ``waiting_reason(job)`` says why a pending
      job the policy did not order waits.
    * ``milp``: place the round's window with the MILP (False: greedy, for policies that decide kinds themselves).
    * ``place_after_churn``: a round that preempts, releases or requeues places nothing; the round that follows at
      once places on the state those leave (time-sharing policies, which reshuffle many jobs every quantum: placing
      around devices about to be freed would be decided again a moment later).
    * ``wake_at(state, now)``: the next moment after ``now`` at which the policy would decide differently though
      nothing happened (a quantum ends, service crosses a threshold); a clock that only moves on events stops
      there. None: only events matter.
    """

    name = "base"
    sequential = False
    backfill = False
    strict_kinds = False
    milp = True
    place_after_churn = False

    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        raise NotImplementedError

    def victims(self, state: SchedulerState, now: float, job: JobState) -> list[JobState]:
        return []

    def victims_key(self, job: JobState, now: float) -> object:
        return job.job_id

    def displaced(self, state: SchedulerState, now: float) -> list[tuple[JobState, str]]:
        return []

    def waiting_reason(self, job: JobState) -> str | None:
        return None

    def kinds_for(self, job: JobState) -> frozenset[str] | None:
        return frozenset(job.spec.device_types) if job.spec and job.spec.device_types else None

    def wake_at(self, state: SchedulerState, now: float) -> float | None:
        return None


ELAPSED_SLACK_S = 1e-6
"""Float slack when a policy asks whether a span of time has passed: ``placed_at + 360 - placed_at`` can come out
a hair under 360, which would keep a job for a whole extra round."""


def running(state: SchedulerState) -> list[JobState]:
    return [j for j in state.active() if j.status in (PLACED, RUNNING)]


def compatible(job: JobState, other: JobState, state: SchedulerState) -> int:
    """Devices of ``other`` that ``job`` could use (kinds match, on a node open to jobs: preempting a job on a
    cordoned node frees nothing the blocked job may take)."""
    kinds = set(job.spec.device_types) if job.spec and job.spec.device_types else None
    count = 0
    for a in other.assignments:
        node = state.inv.nodes.get(a.node_id)
        if node is None or not node.schedulable:
            continue
        for u in a.device_uuids:
            dev = node.devices.get(u) if node else None
            if dev is not None and (kinds is None or dev.info.kind in kinds):
                count += 1
    return count
