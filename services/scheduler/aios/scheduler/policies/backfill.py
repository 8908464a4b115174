"""FIFO with EASY backfill: the head job gets a reservation at the earliest time enough devices free up (from the
running jobs' predicted ends); a later job may start now if it fits and ends before that time, or if it only uses
devices the head will not need then."""

from __future__ import annotations

from aios.scheduler.policies.base import Estimator, Policy, compatible, running
from aios.scheduler.state import JobState, SchedulerState


class EasyBackfill(Policy):
    name = "backfill"
    sequential = True
    backfill = True

    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        return sorted(state.pending(), key=lambda j: j.arrival)

    @staticmethod
    def reservation(state: SchedulerState, now: float, head: JobState, free_now: int,
                    estimate: Estimator) -> tuple[float, int]:
        """(shadow time, extra devices): when the head can start, and how many devices of its kinds will be free
        beyond its need at that time."""
        ends = sorted((now + remaining(r, now, estimate), compatible(head, r, state)) for r in running(state))
        available = free_now
        for end, freed in ends:
            available += freed
            if available >= head.devices:
                return end, available - head.devices
        return float("inf"), 0


def remaining(job: JobState, now: float, estimate: Estimator) -> float:
    """Seconds a running job has left: the estimators count the service of its earlier runs only, and this run's
    so far comes off too (without it the head's reservation was as late as the running jobs had already run, and
    a later job was backfilled into the head's time: an 8-device job started 500 s late)."""
    ran = now - job.placed_at if job.placed_at is not None else 0.0
    return max(0.0, estimate(job) - ran)
