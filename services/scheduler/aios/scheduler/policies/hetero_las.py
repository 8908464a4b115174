"""Heterogeneity-aware least attained service: LAS's queues and preemption, and each job offered the device kind it
runs fastest on first (from its throughput hints), any acceptable kind when that is full."""

from __future__ import annotations

from aios.scheduler.policies.las import LeastAttainedService
from aios.scheduler.state import JobState


class HeteroLeastAttainedService(LeastAttainedService):
    name = "hetero-las"

    def kinds_for(self, job: JobState) -> frozenset[str] | None:
        spec = job.spec
        if spec is None or not spec.throughput:
            return super().kinds_for(job)
        best = max(spec.throughput.items(), key=lambda kv: kv[1])[0]
        return frozenset([best])
