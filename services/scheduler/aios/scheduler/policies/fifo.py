"""First in, first out: arrival order, and the head of the queue waits for room (no skipping)."""

from __future__ import annotations

from aios.scheduler.policies.base import Estimator, Policy
from aios.scheduler.state import JobState, SchedulerState


class Fifo(Policy):
    name = "fifo"
    sequential = True

    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        return sorted(state.pending(), key=lambda j: j.arrival)
