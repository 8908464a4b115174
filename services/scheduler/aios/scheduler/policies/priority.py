"""Strict priority: higher priority first (arrival breaks ties); a blocked job preempts lower-priority
preemptible jobs, lowest priority and most recently placed first. Preempted jobs checkpoint, then requeue."""

from __future__ import annotations

from aios.scheduler.policies.base import Estimator, Policy, running
from aios.scheduler.state import JobState, SchedulerState


def _prio(job: JobState) -> int:
    return job.spec.priority if job.spec else 0


class StrictPriority(Policy):
    name = "priority"
    sequential = True

    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        return sorted(state.pending(), key=lambda j: (-_prio(j), j.arrival))

    def victims(self, state: SchedulerState, now: float, job: JobState) -> list[JobState]:
        lower = [r for r in running(state) if r.spec and r.spec.preemptible and _prio(r) < _prio(job)]
        lower.sort(key=lambda r: (_prio(r), -(r.placed_at or 0.0)))
        return lower

    def victims_key(self, job: JobState, now: float) -> object:
        return _prio(job)
