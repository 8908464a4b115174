"""Least attained service, Tiresias-style: jobs sit in discretised queues by the device-seconds they have received
(thresholds in ``thresholds``); lower queues first, arrival order within a queue. A job in a lower queue that does
not fit preempts jobs of higher queues that have run at least ``min_run_s`` (so jobs are not thrashed)."""

from __future__ import annotations

from bisect import bisect_right

from aios.scheduler.policies.base import ELAPSED_SLACK_S, Estimator, Policy, running
from aios.scheduler.state import JobState, SchedulerState


class LeastAttainedService(Policy):
    name = "las"

    def __init__(self, thresholds: tuple[float, ...] = (3_600.0, 36_000.0), min_run_s: float = 300.0) -> None:
        self.thresholds = thresholds
        self.min_run_s = min_run_s

    def attained(self, job: JobState, now: float) -> float:
        live = (now - job.placed_at) * job.held_devices() if job.placed_at is not None else 0.0
        return job.attained + live

    def queue(self, job: JobState, now: float) -> int:
        return bisect_right(self.thresholds, self.attained(job, now))

    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        return sorted(state.pending(), key=lambda j: (self.queue(j, now), j.arrival))

    def victims(self, state: SchedulerState, now: float, job: JobState) -> list[JobState]:
        mine = self.queue(job, now)
        higher = [r for r in running(state) if r.spec and r.spec.preemptible and self.queue(r, now) > mine
                  and r.placed_at is not None and now - r.placed_at >= self.min_run_s - ELAPSED_SLACK_S]
        higher.sort(key=lambda r: -self.attained(r, now))
        return higher

    def victims_key(self, job: JobState, now: float) -> object:
        return self.queue(job, now)

    def wake_at(self, state: SchedulerState, now: float) -> float | None:
        """With jobs waiting: when a running job's minimum run ends or it moves to a higher queue."""
        if not state.pending():
            return None
        times = []
        for r in running(state):
            if r.placed_at is None or not r.held_devices():
                continue
            times.append(r.placed_at + self.min_run_s)
            got = self.attained(r, now)
            over = [t for t in self.thresholds if t > got]
            if over:
                times.append(now + (over[0] - got) / r.held_devices())
        return min((t for t in times if t > now + ELAPSED_SLACK_S), default=None)
