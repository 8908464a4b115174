"""A round's plan as the commits that carry it out (pure): which events go to which aggregate, in what order,
against which expected version. The service appends them; the simulator and tests fold them directly."""

from __future__ import annotations

import msgspec

from aios.common.events import (
    DevicesLeased, DevicesReleased, Event, JobAdmitted, JobCancelled, JobPlaced, JobPreempted, JobRequeued,
)
from aios.scheduler.rounds import RoundPlan
from aios.scheduler.state import SchedulerState


class Commit(msgspec.Struct, frozen=True):
    aggregate: str
    events: list[Event]
    expected_version: int | None = None
    idempotency_key: str | None = None


def housekeeping_commits(state: SchedulerState, plan: RoundPlan) -> list[Commit]:
    out: list[Commit] = []
    by_node: dict[str, list[Event]] = {}
    for node, job in plan.releases:
        by_node.setdefault(node, []).append(DevicesReleased(aggregate_id=node, job_id=job, reason="job done"))
    for node, events in by_node.items():
        out.append(Commit(f"node.{node}", events))
    for job in plan.requeues:
        out.append(Commit(f"job.{job}", [JobRequeued(aggregate_id=job, reason="preempted: back in the queue")],
                          idempotency_key=f"requeue-{job}-{state.jobs[job].preemptions}"))
    for p in plan.preemptions:
        out.append(Commit(f"job.{p.job_id}", [JobPreempted(aggregate_id=p.job_id, reason=p.reason, for_job=p.for_job)],
                          idempotency_key=f"preempt-{p.job_id}-{state.jobs[p.job_id].attempts}"))
    for job in plan.cancels:
        out.append(Commit(f"job.{job}", [JobCancelled(aggregate_id=job, reason="cancelled on request")],
                          idempotency_key=f"cancel-{job}"))
    return out


def lease_commits(state: SchedulerState, plan: RoundPlan) -> list[Commit]:
    """All leases of the round, one commit per node against that node's version: two schedulers deciding on the
    same node version cannot both book it."""
    by_node: dict[str, list[Event]] = {}
    for p in plan.placements:
        tenant = state.jobs[p.job_id].tenant
        for a in p.assignments:
            if a.device_uuids:
                by_node.setdefault(a.node_id, []).append(
                    DevicesLeased(aggregate_id=a.node_id, job_id=p.job_id, device_uuids=a.device_uuids, tenant=tenant))
    return [Commit(f"node.{node}", events, expected_version=state.inv.versions.get(f"node.{node}", 0))
            for node, events in sorted(by_node.items())]


def placement_commits(state: SchedulerState, plan: RoundPlan, booked_nodes: set[str], policy: str) -> tuple[
        list[Commit], list[Commit]]:
    """(JobPlaced commits for jobs whose every node was booked, releases for jobs booked only in part)."""
    placed, rollback = [], []
    for p in plan.placements:
        nodes = {a.node_id for a in p.assignments if a.device_uuids}
        job = state.jobs[p.job_id]
        if nodes <= booked_nodes:
            world = sum(max(1, len(a.device_uuids)) for a in p.assignments)
            events: list[Event] = []
            if not job.admitted:
                events.append(JobAdmitted(aggregate_id=p.job_id, tenant=job.tenant, borrowed=p.borrowed))
            events.append(JobPlaced(aggregate_id=p.job_id, assignments=p.assignments, world_size=world, policy=policy,
                                    attempt=job.attempts + 1))
            placed.append(Commit(f"job.{p.job_id}", events, idempotency_key=f"place-{p.job_id}-{job.attempts + 1}"))
        else:
            for node in nodes & booked_nodes:
                rollback.append(Commit(f"node.{node}", [DevicesReleased(
                    aggregate_id=node, job_id=p.job_id, reason="gang incomplete: another node was taken")]))
    return placed, rollback
