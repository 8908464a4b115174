"""A round's plan as the commits that carry it out (pure): which events go to which aggregate, in what order,
against which expected version. The service appends them; the simulator and tests fold them directly."""

from __future__ import annotations

import msgspec

from aios.common.events import (
    DevicesLeased, DevicesReleased, Event, JobAdmitted, JobCancelled, JobFailed, JobPlaced, JobPreempted,
    JobRequeued,
)
from aios.scheduler.rounds import RoundPlan
from aios.scheduler.state import PREEMPTING, TERMINAL, SchedulerState


class Commit(msgspec.Struct, frozen=True):
    aggregate: str
    events: list[Event]
    expected_version: int | None = None
    idempotency_key: str | None = None


def release_reason(state: SchedulerState, plan: RoundPlan, job_id: str) -> str:
    """Why a job's devices go back, as the node's log says it (every release read "job done", a preemption's too)."""
    if job_id in plan.requeue_reasons:
        return plan.requeue_reasons[job_id]
    job = state.jobs.get(job_id)
    if job is None:
        return "held by a job the scheduler does not know"
    if job.status == PREEMPTING:
        return "job preempted: its workers have stopped" if job.workers_running == 0 else \
            "job preempted: its workers outstayed their stop grace"
    if job.status in TERMINAL:
        return f"job {job.status}"
    return f"job {job.status}: no longer holds them"


def housekeeping_commits(state: SchedulerState, plan: RoundPlan) -> list[Commit]:
    out: list[Commit] = []
    by_node: dict[str, list[Event]] = {}
    for node, job, devices in plan.releases:
        by_node.setdefault(node, []).append(DevicesReleased(
            aggregate_id=node, job_id=job, device_uuids=list(devices),
            reason=release_reason(state, plan, job) if not devices else "stray lease"))
    version = state.inv.versions.get
    # Every commit is conditional on the version the decision was made on: a stale decision is refused, and a
    # node version we move on ourselves is one nobody else wrote in between.
    for node, events in by_node.items():
        out.append(Commit(f"node.{node}", events, version(f"node.{node}", 0)))
    for job in plan.requeues:
        reason = plan.requeue_reasons.get(job, "preempted: back in the queue")
        out.append(Commit(f"job.{job}", [JobRequeued(aggregate_id=job, reason=reason)], version(f"job.{job}", 0),
                          idempotency_key=f"sched-requeue-{job}-{state.jobs[job].attempts}"))
    for p in plan.preemptions:
        out.append(Commit(f"job.{p.job_id}", [JobPreempted(aggregate_id=p.job_id, reason=p.reason, for_job=p.for_job)],
                          version(f"job.{p.job_id}", 0),
                          idempotency_key=f"sched-preempt-{p.job_id}-{state.jobs[p.job_id].attempts}"))
    for job in plan.cancels:
        out.append(Commit(f"job.{job}", [JobCancelled(aggregate_id=job, reason="cancelled on request")],
                          version(f"job.{job}", 0), idempotency_key=f"sched-cancelled-{job}"))
    for job in plan.rejections:  # against the job's version: a later event of it (it was accepted) wins
        out.append(Commit(f"job.{job}", [JobFailed(aggregate_id=job, reason=state.jobs[job].error)],
                          version(f"job.{job}", 0), idempotency_key=f"sched-rejected-{job}"))
    return out


def claim_commits(state: SchedulerState, plan: RoundPlan, policy: str, identity: str = "") -> list[Commit]:
    """``JobPlaced`` first, against the job's version: of two schedulers placing one job, one wins. A job is
    never seen holding leases while it looks pending."""
    out = []
    for p in plan.placements:
        job = state.jobs[p.job_id]
        world = sum(max(1, len(a.device_uuids)) for a in p.assignments)
        events: list[Event] = []
        if not job.admitted:
            events.append(JobAdmitted(aggregate_id=p.job_id, tenant=job.tenant, borrowed=p.borrowed))
        events.append(JobPlaced(aggregate_id=p.job_id, assignments=p.assignments, world_size=world, policy=policy,
                                attempt=job.attempts + 1))
        out.append(Commit(f"job.{p.job_id}", events, state.inv.versions.get(f"job.{p.job_id}", 0),
                          idempotency_key=f"sched-place-{p.job_id}-{job.attempts + 1}-{identity}"))
    return out


def lease_commits(state: SchedulerState, plan: RoundPlan, claimed: set[str]) -> list[Commit]:
    """The leases of the claimed jobs, one commit per node against that node's version: two schedulers deciding on
    the same node version cannot both book it."""
    by_node: dict[str, list[Event]] = {}
    for p in plan.placements:
        if p.job_id not in claimed:
            continue
        tenant = state.jobs[p.job_id].tenant
        for a in p.assignments:
            if a.device_uuids:
                by_node.setdefault(a.node_id, []).append(
                    DevicesLeased(aggregate_id=a.node_id, job_id=p.job_id, device_uuids=a.device_uuids, tenant=tenant))
    return [Commit(f"node.{node}", events, expected_version=state.inv.versions.get(f"node.{node}", 0))
            for node, events in sorted(by_node.items())]


def failure_commits(plan: RoundPlan, claimed: set[str], booked_nodes: set[str],
                    sequential: bool = False) -> tuple[list[Commit], set[str]]:
    """Claimed jobs whose devices were not all booked go back to the queue and give back what they got. With a
    ``sequential`` policy every claimed job after the first failure goes back too, so nobody overtakes."""
    out: list[Commit] = []
    failed: set[str] = set()
    blocked = False
    for p in plan.placements:
        if p.job_id not in claimed:
            blocked = blocked or sequential
            continue
        nodes = {a.node_id for a in p.assignments if a.device_uuids}
        if blocked or not nodes <= booked_nodes:
            blocked = blocked or sequential
            failed.add(p.job_id)
            for node in sorted(nodes & booked_nodes):
                out.append(Commit(f"node.{node}", [DevicesReleased(
                    aggregate_id=node, job_id=p.job_id, reason="placement incomplete: a node moved on")]))
            out.append(Commit(f"job.{p.job_id}", [JobRequeued(
                aggregate_id=p.job_id, reason="placement lost a race for devices; back in the queue")]))
    return out, failed
