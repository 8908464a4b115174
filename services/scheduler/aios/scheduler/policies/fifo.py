"""First in, first out: arrival order, and the head of the queue waits for room (no skipping)."""

from __future__ import annotations

import random

from aios.scheduler.policies.base import Estimator, Policy
from aios.scheduler.state import JobState, SchedulerState


class Fifo(Policy):
    name = "fifo"
    sequential = True

    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        return sorted(state.pending(), key=lambda j: j.arrival)


class FifoAnyKind(Fifo):
    """FIFO as Gavel's simulator runs it: each job, in arrival order, on a kind drawn at random (seeded) among the
    kinds with room for it, and kept there. Heterogeneity-blind by design: it exists to check our simulator against
    Gavel's published FIFO figures, not to be used."""

    name = "fifo-anykind"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._free: dict[str, int] = {}

    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        self._free = {k: row["free"] for k, row in state.inv.capacity().items()}
        return super().order(state, now, estimate)

    def kinds_for(self, job: JobState) -> frozenset[str] | None:
        spec = job.spec
        if spec is None or spec.devices == 0:
            return super().kinds_for(job)
        allowed = [k for k in sorted(self._free) if (not spec.device_types or k in spec.device_types)
                   and (not spec.throughput or spec.throughput.get(k, 0.0) > 0) and self._free[k] >= spec.devices]
        if not allowed:
            return super().kinds_for(job)
        kind = self._rng.choice(allowed)
        self._free[kind] -= spec.devices
        return frozenset([kind])
