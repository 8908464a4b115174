"""A literal cluster for scheduler tests: nodes by events, jobs by events, rounds folded locally."""

from __future__ import annotations

from typing import Any

from aios.common.events import (
    JobCancelRequested, JobSubmitted, JobSucceeded, NodeLost, TenantQuotaRemoved, TenantQuotaSet, WorkerExited,
)
from aios.scheduler.local import apply, node_registration
from aios.scheduler.state import SchedulerState


def node(name: str, kind: str, count: int, cpu: int = 64) -> tuple[str, list[Any]]:
    return node_registration(name, kind, count, cpu_cores=cpu, memory_bytes=1 << 40)


class Cluster:
    def __init__(self, *nodes: tuple[str, str, int]) -> None:
        self.state = SchedulerState()
        apply(self.state, [node(*n) for n in nodes], 0.0)

    def submit(self, job: str, devices: int, tenant: str = "t", now: float = 1.0, **spec: Any) -> None:
        body = {"name": job, "tenant": tenant, "devices": devices, "command": ["run"], **spec}
        apply(self.state, [(f"job.{job}", [JobSubmitted(aggregate_id=job, tenant=tenant, spec=body)])], now)

    def finish(self, job: str, now: float) -> None:
        apply(self.state, [(f"job.{job}", [JobSucceeded(aggregate_id=job)])], now)

    def cancel(self, job: str, now: float) -> None:
        apply(self.state, [(f"job.{job}", [JobCancelRequested(aggregate_id=job)])], now)

    def workers_exited(self, job: str, now: float) -> None:
        apply(self.state, [(f"run.{job}", [WorkerExited(aggregate_id=job, node_id="-", worker="w", exit_code=0)])],
              now)

    def lose(self, node_name: str, now: float) -> None:
        apply(self.state, [(f"node.{node_name}", [NodeLost(aggregate_id=node_name, reason="test", last_seen=now)])],
              now)

    def quota(self, tenant: str, cohort: str, **nominal: int) -> None:
        apply(self.state, [(f"tenant.{tenant}", [TenantQuotaSet(aggregate_id=tenant, cohort=cohort,
                                                                 nominal=dict(nominal))])], 0.0)

    def remove_quota(self, tenant: str, now: float) -> None:
        apply(self.state, [(f"tenant.{tenant}", [TenantQuotaRemoved(aggregate_id=tenant)])], now)

    def status(self, job: str) -> str:
        return self.state.jobs[job].status

    def where(self, job: str) -> dict[str, int]:
        return {a.node_id: len(a.device_uuids) for a in self.state.jobs[job].assignments}
