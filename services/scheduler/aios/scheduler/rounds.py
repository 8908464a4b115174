"""One scheduling round as a pure function: state + policy + clock -> what to append (a :class:`RoundPlan`).

Pipeline, cheap steps first (Nomad's stack): housekeeping (release devices of jobs that no longer hold them,
requeue drained preemptions, cancels) -> policy order -> quota admission (quota.admit) -> placement (greedy per job,
or a MILP window for policies that may reorder) -> preemption when the best blocked job could start by it ->
a reason for every job left pending (``aios why``).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import msgspec
import numpy as np

from aios.common.events import Assignment
from aios.common.events.job import placement_workers, worker_name
from aios.resource_manager import quota as quotas
from aios.scheduler import visibility
from aios.scheduler.placement import BinCache, ClusterView, Request, fit_in_order, greedy, milp_window
from aios.scheduler.policies.backfill import EasyBackfill
from aios.scheduler.policies.base import Policy, compatible
from aios.scheduler.spec import JobSpec
from aios.scheduler.state import (
    HOLDING, PENDING, PLACED, PREEMPTING, RUNNING, TERMINAL, JobState, SchedulerState, inventory_shape, still_leased,
)

PREEMPT_GRACE_S = 30.0
"""How long a preempted job may take to checkpoint and stop before its devices are taken back anyway."""
DEFAULT_RUNTIME_S = 3600.0
BOOKING_GRACE_S = 30.0
"""A placed job whose devices are not all leased to it this long after placement is requeued."""
LOST_NODE_GRACE_S = 30.0
"""How long after a node of a running job is declared lost the scheduler requeues the job itself, if nobody has."""


class Placement(msgspec.Struct, frozen=True):
    job_id: str
    assignments: list[Assignment]
    borrowed: dict[str, int] = {}


class Preemption(msgspec.Struct, frozen=True):
    job_id: str
    for_job: str
    reason: str


class RoundPlan(msgspec.Struct):
    placements: list[Placement] = []
    preemptions: list[Preemption] = []
    releases: list[tuple[str, str, tuple[str, ...]]] = []
    """(node, job, devices): leases to give back (no devices: all the job holds on the node)."""
    requeues: list[str] = []
    requeue_reasons: dict[str, str] = {}
    cancels: list[str] = []
    rejections: list[str] = []
    """Jobs whose spec this version refuses, failed by no event yet (``SchedulerState.unrecorded``): recorded now."""
    reasons: dict[str, str] = {}
    order: list[str] = []
    solver: str = "greedy"


def default_estimate(job: JobState) -> float:
    spec = job.spec
    if spec is None:
        return DEFAULT_RUNTIME_S
    total = spec.runtime_estimate_s or spec.max_runtime_s or DEFAULT_RUNTIME_S
    return max(1.0, total - job.run_seconds)


def request_for(job: JobState, kinds: frozenset[str] | None, weight: float = 100.0) -> Request:
    spec = job.spec
    assert spec is not None
    return Request(job.job_id, spec.devices, kinds, spec.max_devices_per_node, spec.gang, spec.cpu_per_worker,
                   spec.memory_gib_per_worker, weight)


def assignments_of(view: ClusterView, req: Request, plan: list[tuple[int, int]]) -> list[Assignment]:
    taken = view.take(req, plan)
    out, rank = [], 0
    for node, uuids in taken.items():
        out.append(Assignment(node, uuids, list(range(rank, rank + len(uuids)))))
        rank += len(uuids)
    return out


def kinds_by_device(state: SchedulerState) -> dict[str, str]:
    """Device uuid -> kind (cached until the inventory's shape changes)."""
    return inventory_shape(state).kind_of


def _usage(state: SchedulerState) -> tuple[dict[str, dict[str, int]], dict[str, float], dict[str, float]]:
    kind_of = kinds_by_device(state)
    usage: dict[str, dict[str, int]] = {}
    cpu: dict[str, float] = {}
    mem: dict[str, float] = {}
    for job in state.active():
        if job.status not in HOLDING or job.spec is None:
            continue
        per = usage.setdefault(job.tenant, {})
        for a in job.assignments:
            workers = max(1, len(a.device_uuids))
            cpu[a.node_id] = cpu.get(a.node_id, 0.0) + job.spec.cpu_per_worker * workers
            mem[a.node_id] = mem.get(a.node_id, 0.0) + job.spec.memory_gib_per_worker * workers
            for u in a.device_uuids:
                per[kind_of.get(u, "?")] = per.get(kind_of.get(u, "?"), 0) + 1
    for job_id in state.stopping:  # ended, its workers still stopping on what is still leased to it
        job = state.jobs.get(job_id)
        if job is None or job.spec is None:
            continue
        per = usage.setdefault(job.tenant, {})
        for node_id, u in still_leased(state, job):
            cpu[node_id] = cpu.get(node_id, 0.0) + job.spec.cpu_per_worker
            mem[node_id] = mem.get(node_id, 0.0) + job.spec.memory_gib_per_worker
            per[kind_of.get(u, "?")] = per.get(kind_of.get(u, "?"), 0) + 1
    return usage, cpu, mem


def _takes_back(tenants: dict, tenant: str, other: JobState) -> bool:
    """Whether a job of ``tenant``, within its quota, may take ``other``'s devices back: ``other``'s tenant has no
    quota (it runs on what quotas leave idle), or it borrowed them from ``tenant``'s cohort (Kueue reclaims those)."""
    if other.tenant not in tenants:
        return True
    cohort = tenants[tenant].cohort if tenant in tenants else ""
    return bool(cohort and other.borrowed and other.tenant != tenant and tenants[other.tenant].cohort == cohort)


def _on_loan(state: SchedulerState, tenants: dict, tenant: str) -> dict[str, int]:
    """Devices per kind that preemptible jobs hold and a job of ``tenant`` within its quota may take back."""
    kind_of = kinds_by_device(state)
    held: dict[str, int] = {}
    for j in state.active():
        if (j.status in (PLACED, RUNNING) and j.spec is not None and j.spec.preemptible and j.devices > 0
                and _takes_back(tenants, tenant, j)):
            for a in j.assignments:
                for u in a.device_uuids:
                    held[kind_of.get(u, "?")] = held.get(kind_of.get(u, "?"), 0) + 1
    return held


def _request_kinds(job: JobState, kinds: list[str], free: Callable[[str], int]) -> dict[str, int]:
    """The quota charge of a job of a tenant without quota: its devices, counted against the kind it would most
    likely get (the one with most free devices)."""
    spec = job.spec
    assert spec is not None
    if spec.devices == 0 or not kinds:
        return {}
    return {max(kinds, key=free): spec.devices}


def _choose_kind(tenants: dict[str, quotas.Quota], usage: dict[str, dict[str, int]], job: JobState,
                 kinds: list[str], free: Callable[[str], int], on_loan: Callable[[str], int],
                 preferred: frozenset[str] | None) -> tuple[dict[str, int], quotas.Admission]:
    """Kueue's flavor assignment: the kind a job of a tenant with quota is charged against, and placed on, among
    those it accepts: one its quota admits without borrowing and with room now, else by borrowing with room, the
    policy's preferred kinds first, then more free devices; else admitted without room (it waits there), where
    most devices are free or ``on_loan`` (held by jobs it could take them back from). If none admits it, the
    refusal of a kind whose nominal quota can be reclaimed from borrowers (so it is), else of the kind its quota
    gives most of. (It was charged against the kind with most free devices and placed anywhere: a tenant with
    h100=4 waited for ever on "a100 would be 2 against nominal 0" beside four free H100s.)"""
    spec = job.spec
    assert spec is not None
    n = spec.devices
    # kinds come sorted by name: ties go by name
    ranked = sorted(kinds, key=lambda k: (preferred is not None and k not in preferred, -free(k)))
    decisions = [(k, quotas.admit(tenants, usage, job.tenant, {k: n})) for k in ranked]
    for ok in (lambda k, d: not d.borrowed and free(k) >= n, lambda k, d: free(k) >= n):
        for k, d in decisions:
            if d.admitted and ok(k, d):
                return {k: n}, d
    # Without room, the kind it waits on must not turn on who backfilled a device: ranked by free devices alone,
    # a job waited on H100s while one was free, a job without quota took it, the job turned to A100s, a later job
    # of its tenant took the H100 side and preempted the one without quota for it, and so on, round after round
    waiting = sorted(decisions, key=lambda kd: (preferred is not None and kd[0] not in preferred,
                                                -(free(kd[0]) + on_loan(kd[0]))))
    for ok in (lambda k, d: not d.borrowed, lambda k, d: True):
        for k, d in waiting:
            if d.admitted and ok(k, d):
                return {k: n}, d
    for k, d in decisions:
        if quotas.reclaim_plan(tenants, usage, job.tenant, k, n):
            return {k: n}, d
    nominal = tenants[job.tenant].nominal
    k, d = max(decisions, key=lambda kd: nominal.get(kd[0], 0))
    return {k: n}, d


def _lost_a_while(state: SchedulerState, job: JobState, now: float, seen: "StopsSeen") -> str:
    """A node of the job's placement declared lost (or registered anew) since the placement, more than
    ``LOST_NODE_GRACE_S`` ago, where the job's devices are no longer its own ("" if none): the resource manager
    requeues the job at once, and this is the fallback."""
    holder = state.inv.leases.holder
    for a in job.assignments:
        node = state.inv.nodes.get(a.node_id)
        if node is None:
            continue
        # lost since the placement, or registered again since (a new agent, its devices no longer the job's), in
        # log order: the clocks of the resource manager and the agent are not the scheduler's
        after = (node.lost_seq if node.lost_at is not None else node.registered_seq) > job.placed_seq
        # its grace from when this replica saw it, if later than the other host's stamp
        since = seen.since(f"node {a.node_id}", node.lost_at if node.lost_at is not None else node.registered_at)
        if (after and now - since > LOST_NODE_GRACE_S
                and any(holder.get(u) != job.job_id for u in a.device_uuids)):
            return a.node_id
    return ""


def _stop_hold_s(job: JobState) -> float:
    """How long the workers of a job asked to stop (preempted, cancelled, failed by a peer) may take before its
    devices are given back whether they reported their exit or not."""
    return max(PREEMPT_GRACE_S, job.spec.stop_grace_s + 10) if job.spec else PREEMPT_GRACE_S


class StopsSeen:
    """When this process first saw each job's stop begin (its preemption, or its end with workers still stopping),
    and each node's loss or new registration, on its own clock. Grace periods count from the later of that and the
    stamp, which is the clock of the host that wrote it (a trainer, the previous leader): one 40 s behind cut a
    30 s grace to nothing, and the job's devices went to the next job while its workers still ran. A new leader
    counts them from its start (longer, never shorter); Kubernetes' node controller likewise times a node's silence
    by its own clock. Only the live service keeps one; an empty one (a simulation: one clock) gives the stamps."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[object, ...], float]] = {}

    def observe(self, state: SchedulerState, now: float) -> None:
        """Before a round: note the stops not seen before, forget those that are over."""
        current: dict[str, tuple[object, ...]] = {
            j.job_id: ("preempted", j.preemptions) for j in state.active() if j.status == PREEMPTING}
        current.update((job_id, ("ended",)) for job_id in state.stopping)
        current.update((f"node {n}", ("lost", node.lost_seq) if node.lost_at is not None else
                        ("registered", node.registered_seq)) for n, node in state.inv.nodes.items()
                       if node.lost_at is not None or node.registrations > 1)
        seen = self._seen
        self._seen = {job_id: (mark, seen[job_id][1] if job_id in seen and seen[job_id][0] == mark else now)
                      for job_id, mark in current.items()}

    def since(self, job_id: str, stamped: float) -> float:
        """When the job's stop began, for its grace: its stamp, or later if this process saw it later."""
        seen = self._seen.get(job_id)
        return max(stamped, seen[1]) if seen is not None else stamped


def _stopping(state: SchedulerState, job: JobState, now: float, seen: StopsSeen) -> bool:
    """An ended job whose workers have not all exited yet (``state.stopping``), within its grace: it keeps its
    devices until they have (Slurm's COMPLETING; a job placed on them was refused by the node's agent while they
    ran)."""
    if job.job_id not in state.stopping or job.finished_at is None:
        return False
    return now - seen.since(job.job_id, job.finished_at) <= _stop_hold_s(job)


def _housekeeping(state: SchedulerState, now: float, plan: RoundPlan, seen: StopsSeen) -> None:
    whole: set[tuple[str, str]] = set()
    stray: dict[tuple[str, str], list[str]] = {}
    for uuid, job_id in state.inv.leases.holder.items():
        job = state.jobs.get(job_id)
        node = state.inv.leases.node_of[uuid]
        if job is None or job.status not in HOLDING and not _stopping(state, job, now, seen):
            whole.add((node, job_id))
        elif not any(uuid in a.device_uuids for a in job.assignments):
            stray.setdefault((node, job_id), []).append(uuid)  # booked by a placement that lost a race
    holder = state.inv.leases.holder
    for job in state.active():
        if job.status == PREEMPTING and (job.workers_running == 0 or now - seen.since(
                job.job_id, job.preempted_at if job.preempted_at is not None else now) > _stop_hold_s(job)):
            plan.requeues.append(job.job_id)
            whole.update((a.node_id, job.job_id) for a in job.assignments)
        elif job.status in (PLACED, RUNNING) and (gone := _lost_a_while(state, job, now, seen)):
            # its node was declared lost, and whoever should have requeued the job did not (the resource manager
            # died between the two appends, or its second one failed): it stayed "running" for ever, charged to
            # its tenant's quota
            plan.requeues.append(job.job_id)
            plan.requeue_reasons[job.job_id] = f"node {gone} lost; back in the queue"
            whole.update((a.node_id, job.job_id) for a in job.assignments)
        elif (job.status == PLACED and job.placed_at is not None and now - job.placed_at > BOOKING_GRACE_S
              and any(holder.get(u) != job.job_id for a in job.assignments for u in a.device_uuids)):
            # placed, but its devices never became its own (a writer died between claim and booking)
            plan.requeues.append(job.job_id)
            plan.requeue_reasons[job.job_id] = "placement was never fully booked; back in the queue"
            whole.update((a.node_id, job.job_id) for a in job.assignments)
    plan.releases = [(n, j, ()) for n, j in sorted(whole)] + [
        (n, j, tuple(sorted(u))) for (n, j), u in sorted(stray.items()) if (n, j) not in whole]
    for job in state.active():
        if job.cancel_requested and job.status not in TERMINAL and job.job_id not in plan.requeues:
            plan.cancels.append(job.job_id)


def _drain(state: SchedulerState, plan: RoundPlan) -> None:
    """Preempt the preemptible jobs of draining nodes (they checkpoint and are placed elsewhere, not there); the
    others run to their end, as under Slurm's drain."""
    for node_id, node in sorted(state.inv.nodes.items()):
        if not node.moving_jobs_off:
            continue
        for job_id in sorted(state.inv.leases.jobs_on(node_id)):
            job = state.jobs.get(job_id)
            if (job is not None and job.status in (PLACED, RUNNING) and job.spec is not None
                    and job.spec.preemptible and all(p.job_id != job_id for p in plan.preemptions)):
                plan.preemptions.append(Preemption(job_id, "", f"node {node_id} drained: {node.cordon_reason}"))


def plan_round(state: SchedulerState, policy: Policy, now: float, *,
               estimate: Callable[[JobState], float] = default_estimate, milp_max_jobs: int = 200,
               milp_time_limit: float = 0.5, cache: BinCache | None = None,
               seen: StopsSeen | None = None) -> RoundPlan:
    """``seen``: when this process first saw each stop (the live service's; grace periods count from it too)."""
    plan = RoundPlan(rejections=list(state.unrecorded))
    _housekeeping(state, now, plan, seen if seen is not None else StopsSeen())
    _drain(state, plan)
    cancelled = set(plan.cancels)
    ordered = [j for j in policy.order(state, now, estimate) if j.job_id not in cancelled]
    plan.order = [j.job_id for j in ordered]
    for job, why in policy.displaced(state, now):
        if job.job_id not in cancelled and all(p.job_id != job.job_id for p in plan.preemptions):  # drained too
            plan.preemptions.append(Preemption(job.job_id, "", why))
    listed = set(plan.order)
    for job in state.pending():
        if job.job_id not in listed and job.job_id not in cancelled:
            plan.reasons[job.job_id] = policy.waiting_reason(job) or "order: not chosen by the policy this round"
    if policy.place_after_churn and (plan.preemptions or plan.releases or plan.requeues):
        for job in ordered:
            plan.reasons.setdefault(job.job_id, "time share: placed in the round that follows this one's "
                                                "preemptions and releases, at once")
        return plan

    usage, cpu_used, mem_used = _usage(state)
    view = ClusterView.from_inventory(state.inv, cpu_used, mem_used, cache)
    tenants = {t: quotas.Quota(t, q.cohort, q.nominal, q.borrowing_limit, q.lending_limit)
               for t, q in state.inv.tenants.items()}
    all_kinds = inventory_shape(state).schedulable_kinds
    admitted: list[tuple[JobState, dict[str, int]]] = []
    free_of: dict[str, int] = {}  # free devices per kind, while the view does not change

    def free(k: str) -> int:
        if k not in free_of:
            free_of[k] = int(view.bin_free[view.kind_index[k]].sum()) if k in view.kind_index else -1
        return free_of[k]
    on_loan: dict[str, dict[str, int]] = {}  # per tenant, looked up once a round if asked
    facts = _Facts(state)  # looked up once a round, and only if a reason needs it
    kinds = _KindChoice(policy)
    # Kueue admits the jobs its quotas admit without borrowing before those that must borrow: the other way, a
    # borrower preempted so that a tenant could take its quota back was admitted again ahead of that tenant, on the
    # same devices, and preempted again, several times a second for ever. Tenants without quota, where others have
    # one, come after them too: they run on what the quotas leave idle
    borrowing: list[JobState] = []

    def consider(job: JobState, first_pass: bool) -> None:
        spec = job.spec
        assert spec is not None
        accepted = list(spec.device_types) or all_kinds
        if job.tenant in tenants and spec.devices > 0 and accepted:
            # asked here for quota tenants only: a policy's choice may be a random draw, taken in placement order
            preferred = kinds.policy_kinds(job)
            if preferred and policy.strict_kinds:
                accepted = sorted(preferred)
            # pinned only to a kind that can hold the job alone: a gang larger than any one kind is placed across
            # kinds, charged as before (pinning it made it wait for ever)
            whole = [k for k in accepted if not facts.never_fits(request_for(job, frozenset({k})))]
            never = facts.never_fits(request_for(job, frozenset(spec.device_types) or None))
            if never:  # before any charge: admitted, it held its tenant's quota (and so the cohort's lending) for
                # a start that never comes, and reclaimed borrowers' devices for it (a node of the quota lost)
                plan.reasons[job.job_id] = f"capacity: {never}"
                return
            if whole:
                if job.tenant not in on_loan:
                    on_loan[job.tenant] = _on_loan(state, tenants, job.tenant)
                lent = on_loan[job.tenant]
                charge, decision = _choose_kind(tenants, usage, job, sorted(whole), free,
                                                lambda k: lent.get(k, 0), preferred)
            else:  # larger than any one kind: placed across the kinds with free devices, and charged all it may take
                # there (charged to one kind, a tenant with no h100 quota ran on two h100s, kept a tenant whose
                # quota they were from waiting, and was reclaimed and admitted again ahead of it, for ever)
                charge = {k: min(spec.devices, free(k)) for k in sorted(accepted) if free(k) > 0}
                if sum(charge.values()) < spec.devices:
                    plan.reasons[job.job_id] = (f"capacity: a gang of {spec.devices} larger than any one kind, and "
                                                f"{sum(charge.values())} free over the kinds it accepts")
                    return
                decision = quotas.admit(tenants, usage, job.tenant, charge)
                if not decision.admitted:
                    plan.reasons[job.job_id] = (f"quota: {decision.reason} (a gang larger than any one kind is "
                                                "charged every device of each kind it may be placed on)")
                    return
            if decision.admitted and decision.borrowed and not spec.preemptible:
                # a lender takes its devices back by preempting the borrower: one that cannot be preempted kept them
                # while `why` told the lender's jobs they would be reclaimed (Kueue lends only what it can take back)
                lent = ", ".join(f"{n} {k}" for k, n in sorted(decision.borrowed.items()))
                plan.reasons[job.job_id] = (f"quota: it would borrow {lent} from its cohort, and a job with "
                                            "preemptible: false runs only within its tenant's nominal quota (lent "
                                            "devices must be able to go back)")
                return
            if decision.admitted and decision.borrowed and first_pass:
                borrowing.append(job)
                return
            if not decision.admitted:
                # a job that no wait for quota would let start says why first (a 16-device gang on 8 devices
                # read "a100 would be 16 against nominal 2")
                kinds_of_job = sorted(whole or accepted)
                # over every kind it accepts, not only those the open nodes can hold it on: with the node of a kind
                # its cohort would lend drained, it read "can never hold 4 ... a larger quota would let it start"
                installed = list(spec.device_types) or sorted(set(kinds_by_device(state).values()))
                most = {k: quotas.ceiling(tenants, job.tenant, k) for k in sorted(set(accepted) | set(installed))}
                if all(spec.devices > m for m in most.values()):  # it read as if a wait would do
                    plan.reasons[job.job_id] = (
                        f"quota: tenant {job.tenant} can never hold {spec.devices} "
                        f"{'device' if spec.devices == 1 else 'devices'} of one kind (a job is charged to one): "
                        "at most " + ", ".join(f"{m} {k}" for k, m in most.items())
                        + " with all its cohort could lend; a larger quota, or a smaller job, would let it start")
                else:
                    closed = [k for k in most if k not in whole and most[k] >= spec.devices]
                    plan.reasons[job.job_id] = f"quota: {decision.reason}" + (
                        f"; its quota, with what its cohort could lend, would admit it on {', '.join(closed)}, where "
                        "no open node can hold it now (nodes cordoned, drained or lost)" if closed and whole else "")
                if not _maybe_reclaim(state, plan, tenants, usage, job, charge, now) and first_pass:
                    # in the first pass only: there its tenant's lower-ranked jobs have not taken the quota yet
                    # this round (in the borrowers' pass they had, and a victim admitted again ahead of it was
                    # preempted again, for ever)
                    _preempt_within_quota(state, plan, policy, tenants, usage, job,
                                          [*charge, *(k for k in kinds_of_job if k not in charge)], now, facts)
                return
            if len(accepted) > 1 and (whole or len(charge) < len(accepted)):
                kinds.pinned[job.job_id] = frozenset(charge)
            borrowed = decision.borrowed
        else:
            if first_pass and tenants and spec.devices > 0:  # no quota among quotas: after them, as a borrower is
                borrowing.append(job)
                return
            if tenants and spec.devices > 0 and not spec.preemptible:
                # a tenant with a quota takes its devices back from those without one by preemption: a job that
                # cannot be preempted kept them for good, and a job within its quota waited for ever. As a borrower
                # with preemptible: false, it runs only where nobody's quota is
                quoted = {k for q in tenants.values() for k, n in q.nominal.items() if n > 0}
                free_kinds = [k for k in accepted if k not in quoted]
                if not free_kinds:
                    plan.reasons[job.job_id] = (
                        f"quota: tenant {job.tenant} has no quota, and a job with preemptible: false runs only on "
                        f"kinds no tenant's quota covers (quotas take their devices back by preemption); "
                        f"{', '.join(sorted(accepted))} {'is' if len(accepted) == 1 else 'are'} covered")
                    return
                accepted = free_kinds
                kinds.pinned[job.job_id] = frozenset(free_kinds)
            charge, borrowed = _request_kinds(job, accepted, free), {}
        admitted.append((job, borrowed))
        for k, n in charge.items():  # charge the tentative usage, so later jobs see it, and their free devices
            usage.setdefault(job.tenant, {})[k] = usage.get(job.tenant, {}).get(k, 0) + n
            free_of[k] = free(k) - n
    for job in ordered:
        consider(job, first_pass=True)
    for job in borrowing:
        consider(job, first_pass=False)

    if policy.sequential:
        _place_in_order(state, policy, now, estimate, view, admitted, plan, kinds, facts)
    else:
        _place_window(state, policy, now, view, admitted, plan, milp_max_jobs, milp_time_limit, kinds, facts)
    return plan


class _KindChoice:
    """The kinds each job may be placed on this round: the kind its quota was charged for (pinned), else the
    policy's choice, asked once a round (a policy may draw it at random: asked again, it drew again and placed the
    job on none), then, for policies that allow it, any kind the job accepts."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.pinned: dict[str, frozenset[str]] = {}
        self._chosen: dict[str, frozenset[str] | None] = {}

    def policy_kinds(self, job: JobState) -> frozenset[str] | None:
        if job.job_id not in self._chosen:
            self._chosen[job.job_id] = self.policy.kinds_for(job)
        return self._chosen[job.job_id]

    def first(self, job: JobState) -> frozenset[str] | None:
        return self.pinned.get(job.job_id) or self.policy_kinds(job)

    def choices(self, job: JobState) -> list[frozenset[str] | None]:
        first = self.first(job)
        if job.job_id in self.pinned or self.policy.strict_kinds:
            return [first]
        assert job.spec is not None
        return list(dict.fromkeys([first, frozenset(job.spec.device_types) or None]))


def _try_place(view: ClusterView, policy: Policy, job: JobState, kinds: _KindChoice) -> Placement | None:
    spec = job.spec
    assert spec is not None
    if spec.devices == 0:
        req = request_for(job, None)
        node = view.place_cpu_only(req)
        return Placement(job.job_id, [Assignment(node, [], [0])]) if node else None
    for choice in kinds.choices(job):
        req = request_for(job, choice)
        found = greedy(view, req)
        if found:
            return Placement(job.job_id, assignments_of(view, req, found))
    return None


class _Facts:
    """What capacity reasons look up beyond the free devices, once a round and only if a reason needs it."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state
        self._never = inventory_shape(state).never_fits

    @functools.cached_property
    def holders(self) -> dict[str, dict[str, int]]:
        """Devices each job holds, per kind, on online nodes: the "held by" of a capacity reason."""
        kind_of = kinds_by_device(self.state)
        leases = self.state.inv.leases
        out: dict[str, dict[str, int]] = {}
        for uuid, job_id in leases.holder.items():
            node = self.state.inv.nodes.get(leases.node_of.get(uuid, ""))
            if node is not None and node.online:
                per = out.setdefault(kind_of.get(uuid, "?"), {})
                per[job_id] = per.get(job_id, 0) + 1
        return out

    @property
    def installed(self) -> list[tuple[str, float, float, dict[str, int]]]:
        """(node, CPU cores, memory GiB, healthy devices per kind) of each node open to jobs (online, not
        cordoned), busy or not: once an inventory shape (asked for every submission, a walk of every device took
        7 ms at 1,000 nodes)."""
        return inventory_shape(self.state).installed

    @functools.cached_property
    def holdings(self) -> dict[str, dict[str, int]]:
        """Devices each live job has in its assignments, per kind. Looked up per blocked job of a full quota, a walk
        of every live job's devices each time took 7 s a round with 3,000 such jobs queued."""
        kind_of = kinds_by_device(self.state)
        out: dict[str, dict[str, int]] = {}
        for job in self.state.active():
            for a in job.assignments:
                for u in a.device_uuids:
                    per = out.setdefault(job.job_id, {})
                    kind = kind_of.get(u)
                    if kind is not None:
                        per[kind] = per.get(kind, 0) + 1
        return out

    @functools.cached_property
    def _preempting(self) -> dict[str, list[JobState]]:
        """The live jobs of each tenant that are checkpointing to leave, in the state's order."""
        out: dict[str, list[JobState]] = {}
        for job in self.state.active():
            if job.status == PREEMPTING:
                out.setdefault(job.tenant, []).append(job)
        return out

    def leaving(self, tenant: str, taken: set[str]) -> list[JobState]:
        """The tenant's live jobs that are leaving: checkpointing, or preempted earlier this round (``taken``), in
        the state's order."""
        jobs = self.state.jobs
        out = list(self._preempting.get(tenant, ()))
        more = [jobs[j] for j in taken if j in jobs and jobs[j].tenant == tenant and jobs[j].status != PREEMPTING]
        if more:
            position = self._position
            out = sorted([*out, *more], key=lambda j: position.get(j.job_id, 0))
        return out

    @functools.cached_property
    def _position(self) -> dict[str, int]:
        return {job_id: i for i, job_id in enumerate(self.state.live)}

    def never_fits(self, req: Request) -> str:
        """Why ``req`` could not start even on an empty cluster of the nodes online now ("" if it could): a kind
        no node has, a gang larger than all such devices, or workers larger than any node. Slurm refuses such a
        job at submission; here it waits, since nodes may join (Kueue, Ray), but its reason says so."""
        shape = (req.devices, req.kinds, req.max_per_node, req.gang, req.cpu, req.memory_gib)
        if shape not in self._never:  # (the inventory shape's: asked again at every submission)
            if len(self._never) >= 10_000:  # request shapes are the tenants' to choose: no unbounded growth
                self._never.clear()
            cordoned = inventory_shape(self.state).cordoned
            # with nodes cordoned, "online" said too little: all of them were online, and healthy (found by a
            # walkthrough: "no online node has any healthy device (devices online: none)")
            why = self._never_fits(req, "uncordoned" if cordoned else "online")
            self._never[shape] = why + (f" or {', '.join(cordoned[:5])} is uncordoned" if why and cordoned else "")
        return self._never[shape]

    def _never_fits(self, req: Request, open_: str) -> str:
        """``open_``: the word for the nodes open to jobs ("online", or "uncordoned" when some online are not)."""
        if req.devices == 0:  # a CPU-only job: one worker on a node with the CPU and memory
            if any(cpu + 1e-9 >= req.cpu and mem + 1e-9 >= req.memory_gib for _, cpu, mem, _ in self.installed):
                return ""
            return (f"no {open_} node has {req.cpu:g} CPU and {req.memory_gib:g} GiB for its worker; it waits until "
                    "one joins")
        kinds_here: dict[str, int] = {}
        usable = 0
        for _, cpu, mem, kinds in self.installed:
            for kind, n in kinds.items():
                kinds_here[kind] = kinds_here.get(kind, 0) + n
            n = sum(c for k, c in kinds.items() if req.kinds is None or k in req.kinds)
            if req.max_per_node is not None:
                n = min(n, req.max_per_node)
            if req.cpu > 0:  # capped before int(): 1e-320 cores per worker made it infinity, and every round raised
                n = min(n, int(min(cpu / req.cpu + 1e-9, 1e9)))
            if req.memory_gib > 0:
                n = min(n, int(min(mem / req.memory_gib + 1e-9, 1e9)))
            usable += max(n, 0)
        wanted = "/".join(sorted(req.kinds)) if req.kinds else ""
        has = ", ".join(f"{k} x{n}" for k, n in sorted(kinds_here.items())) or "none"
        if not any(req.kinds is None or k in req.kinds for k in kinds_here):
            what = f"a {wanted} device" if wanted else "any healthy device"
            return f"no {open_} node has {what} (devices {open_}: {has}); it waits until one joins"
        if usable == 0:
            return (f"no {open_} node can hold one worker ({req.cpu:g} CPU, {req.memory_gib:g} GiB with a "
                    f"{wanted or 'device'}); it waits until one joins")
        if req.gang and usable < req.devices:
            return (f"the cluster could give it at most {usable} of its {req.devices} {wanted + ' ' if wanted else ''}"
                    f"devices even if every other job left (devices {open_}: {has}); it waits until nodes join")
        return ""


def _holders_text(held_by: dict[str, int], first: str, shown: int = 3) -> str:
    """The largest holders, the job ``first`` (the one a preemption made room for) ahead of them, and how many
    more there are: "held by" named three of many and read as the whole story, leaving out the job that took the
    devices."""
    ranked = sorted(held_by.items(), key=lambda kv: (kv[0] != first, -kv[1], kv[0]))
    text = ", ".join(f"{j} ({n})" for j, n in ranked[:shown])
    rest = ranked[shown:]
    if rest:
        devices = sum(n for _, n in rest)
        text += (f" and {len(rest)} more {'job' if len(rest) == 1 else 'jobs'} "
                 f"({devices} {'device' if devices == 1 else 'devices'})")
    return text


def _capacity_reason(view: ClusterView, job: JobState, facts: _Facts | None = None) -> str:
    spec = job.spec
    assert spec is not None
    req = request_for(job, frozenset(spec.device_types) or None)
    never = facts.never_fits(req) if facts is not None else ""
    if never:
        return f"capacity: {never}"
    if spec.devices == 0:  # a worker without accelerators: CPU and memory are all it waits for
        room = np.minimum(view.node_cpu / max(req.cpu, 1e-9), view.node_mem / max(req.memory_gib, 1e-9))
        best = int(room.argmax()) if room.size else -1
        most = (f"; the most free on one node is {view.node_cpu[best]:g} CPU, {view.node_mem[best]:g} GiB "
                f"({view.node_ids[best]})" if best >= 0 else "")
        return f"capacity: its worker needs {req.cpu:g} CPU and {req.memory_gib:g} GiB on one node{most}"
    bins = view.candidates(req)
    kinds = "/".join(spec.device_types) or "any kind"
    if bins.size == 0:
        held_by: dict[str, int] = {}
        for kind, per in (facts.holders if facts is not None else {}).items():
            if not spec.device_types or kind in spec.device_types:
                for j, n in per.items():
                    held_by[j] = held_by.get(j, 0) + n
        return (f"capacity: needs {spec.devices} {'device' if spec.devices == 1 else 'devices'} ({kinds}), none "
                "free on any online node"
                + (f"; held by {_holders_text(held_by, job.preempted_for)}" if held_by else ""))
    cap = view.capacity_in(req, bins)
    total = int(cap.sum())
    best = int(cap.max())
    node = view.node_ids[int(view.bin_node[bins[int(cap.argmax())]])]
    free = view.bin_free[bins]
    idle = int((free if req.max_per_node is None else np.minimum(free, req.max_per_node)).sum())
    short_of_cpu = (f"; {idle} devices are free, but their nodes lack the CPU or memory for its workers "
                    f"({req.cpu:g} CPU, {req.memory_gib:g} GiB each)") if idle > total else ""
    if spec.gang and total < spec.devices:
        return (f"capacity: gang of {spec.devices} {kinds} devices, {total} free in the cluster "
                f"(best node {node} has {best}; short by {spec.devices - total}){short_of_cpu}")
    return (f"capacity: needs {spec.devices} {kinds} {'device' if spec.devices == 1 else 'devices'}; best node "
            f"{node} has {best} free{short_of_cpu}")


def _other_kinds(job: JobState, head_kinds: frozenset[str]) -> bool:
    """Whether ``job`` may run only on device kinds the blocked head of the queue cannot use (by their specs, not
    a policy's draw of the round): starting it cannot take devices the head waits for (four A100s stood idle
    behind a job waiting for H100s, for every tenant)."""
    mine = frozenset(job.spec.device_types) if job.spec else frozenset()
    return job.devices > 0 and bool(head_kinds) and bool(mine) and not mine & head_kinds  # (empty: any kind)


def _place_in_order(state: SchedulerState, policy: Policy, now: float, estimate: Callable[[JobState], float],
                    view: ClusterView, admitted: list[tuple[JobState, dict[str, int]]], plan: RoundPlan,
                    kinds: _KindChoice, facts: "_Facts") -> None:
    head: JobState | None = None
    head_kinds: frozenset[str] = frozenset()
    shadow, extra = float("inf"), 0
    rank = {job_id: i for i, job_id in enumerate(plan.order)}
    for job, borrowed in admitted:
        if head is not None and not policy.backfill and not _other_kinds(job, head_kinds):
            # the head may come first by admission, not by the policy: jobs within their tenants' quotas are placed
            # before borrowers and tenants without a quota (it read "behind b-1 (priority)" of a job the policy
            # ranked first, while `why` of b-1 listed that job ahead of it)
            why = policy.name if rank.get(head.job_id, 0) <= rank.get(job.job_id, 0) else (
                "within its tenant's quota: those are placed before borrowers and tenants without a quota")
            plan.reasons[job.job_id] = f"order: behind {head.job_id} ({why}), which waits for capacity"
            continue
        if head is not None:  # EASY backfill: start only if it cannot delay the head's reservation
            fits_before = now + estimate(job) <= shadow
            if not fits_before and job.devices > extra:
                plan.reasons[job.job_id] = (f"order: backfill would delay {head.job_id}, reserved at "
                                            f"t+{shadow - now:.0f}s (needs {job.devices}, {extra} spare)")
                continue
        placed = _try_place(view, policy, job, kinds)
        if placed is not None:
            plan.placements.append(Placement(job.job_id, placed.assignments, borrowed))
            if head is not None and not (now + estimate(job) <= shadow):
                extra -= job.devices
            continue
        plan.reasons[job.job_id] = _capacity_reason(view, job, facts)
        if head is None and facts.never_fits(request_for(job, frozenset(job.spec.device_types) or None)):
            continue  # it cannot start on the nodes there now, whoever leaves: holding the queue for it left the
            # cluster idle (an 8-device head on a drained half of the cluster kept every other job waiting)
        if head is None:
            head, head_kinds = job, frozenset(job.spec.device_types)
            _Preemption(state, policy, now, plan).make_room(view, job, borrowed, kinds)
            if policy.backfill:
                req = request_for(job, kinds.first(job))
                free = int(view.capacity_in(req, view.candidates(req)).sum())
                shadow, extra = EasyBackfill.reservation(state, now, job, free, estimate)


def _place_window(state: SchedulerState, policy: Policy, now: float, view: ClusterView,
                  admitted: list[tuple[JobState, dict[str, int]]], plan: RoundPlan, milp_max_jobs: int,
                  milp_time_limit: float, kinds: _KindChoice, facts: "_Facts") -> None:
    window: list[tuple[JobState, dict[str, int]]] = []  # the gangs ahead of the first job that need not start whole:
    # that one is placed in its turn, after the window, and the window's later gangs took the devices before it (a
    # job preempted others for room a later gang then got, round after round, for ever)
    for j, b in admitted:
        if j.devices > 0 and j.spec and not j.spec.gang or len(window) >= milp_max_jobs:
            break
        if j.devices > 0:
            window.append((j, b))
    placed: set[str] = set()
    if len(window) > 1 and policy.milp:
        n = len(window)
        reqs = [request_for(j, kinds.first(j), weight=100.0 + 100.0 * (n - i) / n) for i, (j, _) in
                enumerate(window)]
        result = milp_window(view, reqs, time_limit=milp_time_limit, required=fit_in_order(view, reqs))
        if result.status in ("optimal", "time-limit") and result.plans:
            plan.solver = f"milp ({result.status}, {result.seconds * 1000:.0f} ms)"
            by_id = {r.job_id: r for r in reqs}
            borrowed_of = {j.job_id: b for j, b in window}
            for job, _ in window:
                if job.job_id in result.plans:
                    req = by_id[job.job_id]
                    plan.placements.append(Placement(job.job_id, assignments_of(view, req, result.plans[job.job_id]),
                                                     borrowed_of[job.job_id]))
                    placed.add(job.job_id)
    preemption = _Preemption(state, policy, now, plan)
    failed: dict[tuple[object, ...], str] = {}  # free capacity only shrinks in this loop: a shape that failed fails
    for job, borrowed in admitted:
        if job.job_id in placed:
            continue
        spec = job.spec
        assert spec is not None
        shape = (spec.devices, kinds.first(job), tuple(spec.device_types), spec.max_devices_per_node, spec.gang,
                 spec.cpu_per_worker, spec.memory_gib_per_worker)
        found = None if shape in failed else _try_place(view, policy, job, kinds)
        if found is not None:
            plan.placements.append(Placement(job.job_id, found.assignments, borrowed))
            continue
        if shape not in failed:
            failed[shape] = _capacity_reason(view, job, facts)
        plan.reasons[job.job_id] = failed[shape]
        preemption.make_room(view, job, borrowed, kinds)


class _Preemption:
    """Room made by preemption in one round, for the blocked jobs in the policy's order (one for sequential
    policies, whose head blocks the rest; up to ``MAX_PREEMPTORS`` otherwise, as each pending pod of Kubernetes may
    preempt in its turn). A job is given the fewest of the policy's victims, in its order, that let it start,
    checked by placing it on a trial view; devices of jobs already preempted and still checkpointing count as
    coming free, and room found for an earlier job of the round is kept for it. Counting free devices instead
    preempted again every round while the victims checkpointed (a reclaim or a higher priority job evicted every
    job it could), and for one job a round a queue of newcomers waited for preemptions one at a time."""

    MAX_PREEMPTORS = 8
    MAX_CPU_VICTIMS = 32
    """Victims a CPU-only job may look through, in the policy's order."""
    MAX_TRIES = 16
    """Blocked jobs a round looks for room for: each try places on trial views, a queue of hundreds would cost
    seconds."""

    def __init__(self, state: SchedulerState, policy: Policy, now: float, plan: RoundPlan) -> None:
        self.state, self.policy, self.now, self.plan = state, policy, now, plan
        self.served: list[Request] = []  # jobs of this round that room was found for, in order
        self.victims: list[JobState] = []
        self._kind_of: dict[str, str] | None = None
        self._leaving: list[JobState] | None = None
        self._scavengers: set[str] = set()
        self._preemptible_newest: list[JobState] | None = None
        self._scavengers_by_tenant: dict[str, list[JobState]] = {}
        self._victims_by_key: dict[object, list[JobState]] = {}
        self._stays: dict[tuple[object, ...], list[JobState]] = {}
        self.tries = 0

    def make_room(self, view: ClusterView, job: JobState, borrowed: dict[str, int] | None = None,
                  kinds: "_KindChoice | None" = None) -> None:
        """``borrowed``: what the job's admission borrows (None: unknown). A job its tenant's quota admits without
        borrowing may also preempt the jobs of tenants that have no quota: they run on what quotas leave idle
        (Slurm's scavenger QOS); one took a quota tenant's guaranteed devices and kept them. ``kinds``: the kinds
        the round may place it on; room is looked for there only (room on any kind it accepts preempted a victim
        for devices the job, pinned to its quota's kind, could not start on; the victim went back, and was
        preempted again, for ever)."""
        if len(self.served) >= self.MAX_PREEMPTORS or self.tries >= self.MAX_TRIES:
            return
        spec = job.spec
        assert spec is not None
        req = request_for(job, kinds.choices(job)[-1] if kinds is not None else frozenset(spec.device_types) or None)
        taken = {p.job_id for p in self.plan.preemptions}  # this round's other preemptions (drain, reclaim)
        tenants = self.state.inv.tenants
        scavengers = self._scavengers_of(job.tenant) if (job.tenant in tenants and borrowed == {}
                                                         and spec.devices > 0) else []
        # (quotas hold devices: a CPU-only job, charged nothing, takes no one's place as a quota job)
        self._scavengers = {j.job_id for j in scavengers}
        offered = [v for v in self._victims(job) if v.job_id not in self._scavengers]
        victims = [*scavengers, *(v for v in offered if self._may_take(job, v, borrowed))]
        sheltered = [v.job_id for v in offered if not self._may_take(job, v, borrowed) and self._frees(job, v)]
        if sheltered:
            self.plan.reasons[job.job_id] = self.plan.reasons.get(job.job_id, "") + (
                f"; {', '.join(sheltered[:3])}{' ...' if len(sheltered) > 3 else ''} run within their tenants' "
                "quotas: only a job of the same tenant, itself within its quota, preempts those")
        candidates = [v for v in victims if v.status != PREEMPTING and v.job_id not in taken
                      and (self._frees(job, v) or self._frees_cpu_for(job, v))]
        if spec.devices == 0:  # no device count bounds its trials: each victim would cost one (quadratic)
            candidates = candidates[:self.MAX_CPU_VICTIMS]
        else:
            candidates = self._cpu_victims_by_node(view, req, job, candidates)
        if self._leaving is None:  # preempted and checkpointing, or ended with devices this round gives back (they
            # are still leased in the view: a job waiting for them preempted another in the round its tenant's ended)
            jobs = self.state.jobs
            ended = {j for _, j, devices in self.plan.releases if not devices and j in jobs
                     and jobs[j].status in TERMINAL}
            self._leaving = [j for j in self.state.active() if j.status == PREEMPTING and j.assignments] + [
                jobs[j] for j in sorted(ended) if jobs[j].assignments]
        if not candidates and not self._leaving:
            self._say_who_stays(job)
            return
        # a count first: the trial placements are only worth it once enough devices of its kinds would be free
        bins = view.candidates(req)
        free = int(view.capacity_in(req, bins).sum())
        if spec.devices > 0 and any(not self._frees(job, v) for v in candidates):  # CPU-only victims: the CPU they
            # hold may be all it lacks, so the free devices count whatever CPU is left beside them
            free = int(view.bin_free[bins].sum())
        coming = free + sum(self._frees(job, j) for j in self._leaving + self.victims)
        if coming + sum(self._frees(job, v) for v in candidates) < req.devices:
            self._say_who_stays(job)
            return
        self.tries += 1
        room = self._fits(view, req, []) if coming >= req.devices else None
        if room is not None:
            self._serve(view, req, room)
            mine = [j.job_id for j in self._leaving if self._frees(job, j)][:5]
            if mine:
                self.plan.reasons[job.job_id] += f"; waiting for {', '.join(mine)} to checkpoint and leave"
            return
        chosen: list[JobState] = []
        for victim in candidates:
            chosen.append(victim)
            coming += self._frees(job, victim)
            room = self._fits(view, req, chosen) if coming >= req.devices else None
            if room is not None:
                for v in reversed(chosen[:-1]):  # reprieve those it fits without (Kubernetes does the same)
                    without = self._fits(view, req, [c for c in chosen if c is not v])
                    if without is not None:
                        chosen.remove(v)
                        room = without
                self._serve(view, req, room)
                self.victims += chosen
                for v in chosen:
                    why = (f"preempted by {self.policy.name} for {job.job_id}" if v.job_id not in self._scavengers
                           else f"tenant {v.tenant} has no quota: preempted for {job.job_id}, within tenant "
                                f"{job.tenant}'s quota" if v.tenant not in tenants
                           else f"quota reclaimed by tenant {job.tenant} (lent to tenant {v.tenant}) for {job.job_id}")
                    self.plan.preemptions.append(Preemption(v.job_id, job.job_id, why))
                self.plan.reasons[job.job_id] += f"; preempting {', '.join(v.job_id for v in chosen)} to make room"
                return

    def _victims(self, job: JobState) -> list[JobState]:
        """The policy's victims for ``job``, asked once a ``victims_key`` and round."""
        key = self.policy.victims_key(job, self.now)
        if key not in self._victims_by_key:
            self._victims_by_key[key] = self.policy.victims(self.state, self.now, job)
        return self._victims_by_key[key]

    def _scavengers_of(self, tenant: str) -> list[JobState]:
        """The running preemptible jobs a job of ``tenant`` within its quota may take devices back from, newest
        first; once a tenant and round (walked again for each blocked job, 3,000 of them took 4 s a round)."""
        if self._preemptible_newest is None:
            self._preemptible_newest = sorted(
                (j for j in self.state.active() if j.status in (PLACED, RUNNING) and j.spec and j.spec.preemptible
                 and j.devices > 0), key=lambda j: -(j.placed_at or 0.0))
        if tenant not in self._scavengers_by_tenant:
            tenants = self.state.inv.tenants
            self._scavengers_by_tenant[tenant] = [j for j in self._preemptible_newest
                                                  if _takes_back(tenants, tenant, j)]
        return self._scavengers_by_tenant[tenant]

    def _may_take(self, job: JobState, other: JobState, borrowed: dict[str, int] | None = None) -> bool:
        """Kueue's rule, where quotas are set: a job that runs within its tenant's quota is taken only by a job of
        the same tenant that runs within it too; jobs on borrowed devices, and of tenants without quota, by any.
        Quotas admit jobs within them ahead of borrowers and of tenants without quota, so the victim was placed
        again, on the same devices, ahead of the job that preempted it, and preempted again: a tenant without quota
        at priority 100 preempted two quota tenants' jobs 1,900 times each in a minute, and never ran; a gang that
        had to borrow did the same to its own tenant's smaller job. ``borrowed``: what the job's admission borrows."""
        tenants = self.state.inv.tenants
        if other.tenant not in tenants or other.borrowed:
            return True
        return other.tenant == job.tenant and not borrowed

    def _say_who_stays(self, job: JobState) -> None:
        """Under a policy that preempts, a job it would have let this one preempt but for ``preemptible: false``
        is named in the reason (``aios why`` read only "short by 2", of a cluster held by such a job)."""
        if type(self.policy).victims is Policy.victims or job.spec is None:
            return
        # the same for every job of the round with the same victims, kinds and tenant (a walk of every live job, and
        # up to 20 asks of the policy, for each of 3,000 blocked jobs took 50 s a round)
        key = (self.policy.victims_key(job, self.now), frozenset(job.spec.device_types), job.spec.devices == 0,
               job.tenant)
        if key not in self._stays:
            others = [j for j in self.state.active() if j.status in (PLACED, RUNNING) and j.spec is not None
                      and not j.spec.preemptible and self._frees(job, j) and self._may_take(job, j)]
            self._stays[key] = [j for j in others[:20]  # (a policy's victims are asked once each: a bound on the cost)
                                if self._would_take(job, msgspec.structs.replace(j, spec=msgspec.structs.replace(
                                    j.spec, preemptible=True)))]
        stays = self._stays[key]
        if stays:
            self.plan.reasons[job.job_id] += ("; held by jobs its policy would preempt but for preemptible: false: "
                                              + ", ".join(f"{j.job_id} ({compatible(job, j, self.state)})"
                                                          for j in stays[:3]))

    def _would_take(self, job: JobState, other: JobState) -> bool:
        """Whether the policy would let ``job`` preempt ``other`` if ``other`` were preemptible."""
        jobs = self.state.jobs
        real = jobs[other.job_id]
        jobs[other.job_id] = other
        try:
            return any(v.job_id == other.job_id for v in self.policy.victims(self.state, self.now, job))
        finally:
            jobs[other.job_id] = real

    def _frees(self, job: JobState, other: JobState) -> int:
        """What preempting ``other`` frees for ``job``: its devices of the kinds the job accepts; for a job without
        accelerators, 1 if ``other`` runs a worker on a node open to jobs (its CPU and memory come free there). A CPU
        job was given none: it found no victim, and waited behind lower priority CPU jobs for ever."""
        if job.spec is not None and job.spec.devices == 0:
            nodes = self.state.inv.nodes
            return int(any((n := nodes.get(a.node_id)) is not None and n.schedulable for a in other.assignments))
        return compatible(job, other, self.state)

    def _cpu_victims_by_node(self, view: ClusterView, req: Request, job: JobState,
                             candidates: list[JobState]) -> list[JobState]:
        """``candidates`` with the CPU-only ones cut to those on nodes with free devices of the job's kinds (CPU
        freed elsewhere starts nothing), taken node by node in the order of each node's first victim, at most
        ``MAX_CPU_VICTIMS`` of them: CPU-only jobs spread one a node, the first 32 in the policy's order freed a
        core on each of 32 nodes, none enough, and the GPU job waited for ever."""
        cpu_only = [v for v in candidates if not self._frees(job, v)]
        if not cpu_only:
            return candidates
        open_nodes = {view.node_ids[int(view.bin_node[b])] for b in view.candidates(req)}
        by_node: dict[str, list[JobState]] = {}
        for v in cpu_only:
            node = next((a.node_id for a in v.assignments if a.node_id in open_nodes), None)
            if node is not None:
                by_node.setdefault(node, []).append(v)
        kept = [v for vs in by_node.values() for v in vs][:self.MAX_CPU_VICTIMS]
        return [v for v in candidates if self._frees(job, v)] + kept

    def _frees_cpu_for(self, job: JobState, other: JobState) -> bool:
        """Whether ``other``, a CPU-only job, runs on an open node with devices ``job`` accepts: preempting it
        frees CPU and memory beside them. A GPU job whose devices were free but whose CPU lower-priority CPU-only
        jobs held found no victim (devices were all it counted), and waited for ever."""
        spec = job.spec
        if spec is None or spec.devices == 0 or other.spec is None or other.spec.devices != 0:
            return False
        kinds = set(spec.device_types) or None
        nodes = self.state.inv.nodes
        return any((n := nodes.get(a.node_id)) is not None and n.schedulable
                   and any(kinds is None or d.info.kind in kinds for d in n.devices.values())
                   for a in other.assignments)

    def _fits(self, view: ClusterView, req: Request, chosen: list[JobState]) -> "_Room | None":
        """Where ``req`` would start once the leaving jobs, this round's victims and ``chosen`` are gone, after the
        jobs served before it take their room (None: it would not start)."""
        if self._kind_of is None:
            self._kind_of = kinds_by_device(self.state)
        trial = view.copy()
        for other in (self._leaving or []) + self.victims + chosen:
            spec = other.spec
            cpu, mem = (spec.cpu_per_worker, spec.memory_gib_per_worker) if spec else (0.0, 0.0)
            for a in other.assignments:
                if not a.device_uuids:  # a worker without accelerators: its CPU and memory
                    trial.give_back(a.node_id, "", [], cpu, mem)
                    continue
                by_kind: dict[str, list[str]] = {}
                for u in a.device_uuids:
                    by_kind.setdefault(self._kind_of.get(u, "?"), []).append(u)
                for kind, uuids in by_kind.items():
                    trial.give_back(a.node_id, kind, uuids, cpu * len(uuids), mem * len(uuids))
        for earlier in self.served:
            if earlier.devices == 0:  # its CPU was withheld from the view already (``_serve``)
                continue
            found = greedy(trial, earlier)
            if found is not None:
                trial.take(earlier, found)
        if req.devices == 0:
            node = trial.place_cpu_only(req)
            return None if node is None else _Room([], node)
        found = greedy(trial, req)
        return None if found is None else _Room([u for us in trial.take(req, found).values() for u in us], None)

    def _serve(self, view: ClusterView, req: Request, room: "_Room") -> None:
        """Keep the room the job will start on from the jobs after it this round (Kubernetes' nominated node): the
        free devices, or for a job without accelerators its CPU and memory on the node. Else the later jobs took
        them, and it preempted again next round."""
        self.served.append(req)
        if room.cpu_node is not None:
            view.withhold_cpu(req, room.cpu_node)
        else:
            view.withhold(req, set(room.devices))


class _Room(NamedTuple):
    """Where a blocked job would start once its victims are gone: devices, or the node of a CPU-only worker."""
    devices: list[str]
    cpu_node: str | None


def _preempt_within_quota(state: SchedulerState, plan: RoundPlan, policy: Policy, tenants: dict[str, quotas.Quota],
                          usage: dict[str, dict[str, int]], job: JobState, kinds: list[str], now: float,
                          facts: "_Facts") -> None:
    """Kueue's preemption within a ClusterQueue: a job its tenant's full quota turns away takes the place of the
    tenant's own jobs that the policy lets it preempt (under ``priority``, preemptible jobs of lower priority,
    lowest and newest first), the fewest that let its nominal quota admit it (borrowing would not last: the job
    would be admitted after the victims, which took the room again) on the first of ``kinds`` where they do. What
    the tenant's jobs already leaving hold counts as free: while they checkpoint nobody else is taken. The room
    is then the job's for the rest of the round (``usage`` charged as if it held it): a lower-ranked job of the
    tenant took it in the same round, the job preempted that one the next, and the two it had preempted took
    turns for ever (found by the property test)."""
    taken = {p.job_id for p in plan.preemptions}
    assert job.spec is not None
    n = job.spec.devices
    holdings = facts.holdings

    def held(j: JobState, kind: str) -> int:
        return holdings.get(j.job_id, {}).get(kind, 0)
    for kind in kinds:
        mine = usage.get(job.tenant, {})

        def admits(freed: int) -> bool:
            after = {**usage, job.tenant: {**mine, kind: mine.get(kind, 0) - freed}}
            decision = quotas.admit(tenants, after, job.tenant, {kind: n})
            return decision.admitted and not decision.borrowed
        leaving = [j for j in facts.leaving(job.tenant, taken) if held(j, kind)]
        freed = sum(held(j, kind) for j in leaving)
        if leaving and admits(freed):  # it waits for them
            plan.reasons[job.job_id] += f"; waiting for {', '.join(j.job_id for j in leaving[:5])} to leave"
            _reserve(usage, job.tenant, kind, freed, n)
            return
        chosen: list[JobState] = []
        for victim in policy.victims(state, now, job):
            if (victim.tenant != job.tenant or victim.status == PREEMPTING or victim.job_id in taken
                    or not held(victim, kind)):
                continue
            chosen.append(victim)
            freed += held(victim, kind)
            if admits(freed):
                break
        else:
            continue  # not even all of them would let it in: nobody is preempted for nothing
        for v in reversed(chosen[:-1]):  # reprieve those it is admitted without
            if admits(freed - held(v, kind)):
                chosen.remove(v)
                freed -= held(v, kind)
        for v in chosen:
            plan.preemptions.append(Preemption(v.job_id, job.job_id, (
                f"lower priority under {policy.name} within tenant {job.tenant}'s full quota: preempted for "
                f"{job.job_id}")))
        plan.reasons[job.job_id] += f"; preempting {', '.join(v.job_id for v in chosen)} to make room in its quota"
        _reserve(usage, job.tenant, kind, freed, n)
        return


def _reserve(usage: dict[str, dict[str, int]], tenant: str, kind: str, freed: int, n: int) -> None:
    """Charge ``tenant``'s usage of ``kind`` as it will be once ``freed`` devices have left and a job of ``n`` has
    come (never below what is held now: the leaving jobs hold their devices until they have gone)."""
    mine = usage.setdefault(tenant, {})
    mine[kind] = max(mine.get(kind, 0), mine.get(kind, 0) - freed + n)


def _maybe_reclaim(state: SchedulerState, plan: RoundPlan, tenants: dict[str, quotas.Quota],
                   usage: dict[str, dict[str, int]], job: JobState, charge: dict[str, int], now: float) -> bool:
    """A tenant within its nominal quota whose share is lent out takes it back from the borrowers' newest jobs.
    True if its quota can be reclaimed (preempted now, or already leaving)."""
    kind_of: dict[str, str] | None = None
    reclaims = False
    for kind, n in charge.items():
        reclaim = quotas.reclaim_plan(tenants, usage, job.tenant, kind, n)
        reclaims = reclaims or bool(reclaim)
        for tenant, count in reclaim.items():
            kind_of = kind_of if kind_of is not None else kinds_by_device(state)

            def held(j: JobState) -> int:  # devices of the reclaimed kind (an a100 job was preempted for h100s)
                return sum(1 for a in j.assignments for u in a.device_uuids if kind_of.get(u) == kind)
            borrowers = sorted((j for j in state.active() if j.tenant == tenant and j.status in HOLDING
                                and j.spec and j.spec.preemptible and j.status != PREEMPTING and held(j)),
                               key=lambda j: -(j.placed_at or 0.0))
            # what the tenant's jobs already preempted and still checkpointing hold comes back in a moment
            freed = sum(held(j) for j in state.active() if j.tenant == tenant and j.status == PREEMPTING)
            for victim in borrowers:
                if freed >= count:
                    break
                if victim.job_id in {p.job_id for p in plan.preemptions}:
                    continue
                plan.preemptions.append(Preemption(victim.job_id, job.job_id,
                                                   f"quota reclaimed by tenant {job.tenant} (lent to tenant {tenant})"))
                freed += held(victim)
            if freed:
                plan.reasons[job.job_id] += f"; reclaiming {freed} {kind} from tenant {tenant}"
    return reclaims


WORKERS_LATE_S = 30.0
"""A placed job whose workers have not all started this long after placement gets a hint in ``aios why``."""


def _slow_start(state: SchedulerState, job: JobState, now: float) -> str:
    """For a job placed a while ago whose workers have not all started: the nodes whose workers are missing. Each
    node's trainer service starts that node's workers (rank 0's node records the start): one that is down leaves
    the job placed for ever, and nothing else says so."""
    if job.status != PLACED or job.placed_at is None or now - job.placed_at < WORKERS_LATE_S:
        return ""
    holder = state.inv.leases.holder
    if any(holder.get(u) != job.job_id for a in job.assignments for u in a.device_uuids):
        return ("; its devices are not all leased to it yet (the resource manager books them; is it running?), "
                "and its workers start once they are")
    started = set(job.started_workers)
    late = sorted({node for node, rank in placement_workers(job.assignments)
                   if worker_name(rank, job.attempts) not in started})
    if not late:
        return ""
    nodes = ", ".join(late)
    return (f"; placed {now - job.placed_at:.0f} s ago, and the workers of {nodes} have not started: each node's "
            f"trainer service starts its workers (is it running on {nodes}? `aios nodes` shows the agents)")


def cannot_start_now(state: SchedulerState, spec: JobSpec) -> str:
    """Why a job of ``spec`` could not start on the nodes open now even if every other job left ("" if it could):
    a kind no node has (a typo, say), a gang larger than all such devices, workers larger than any node. Said at
    submission, where Slurm refuses such a job and Kueue marks it inadmissible; the job is kept, since nodes may
    join (an "h100x" was taken without a word, and the job waited until someone asked `aios why`)."""
    return _Facts(state).never_fits(Request("", spec.devices, frozenset(spec.device_types) or None,
                                            spec.max_devices_per_node, spec.gang, spec.cpu_per_worker,
                                            spec.memory_gib_per_worker, 100.0))


def submission_note(why: str) -> str:
    """The note a submission gets for ``cannot_start_now``'s answer ("" for none), the same from the CLI and the API."""
    return f"it cannot start on the nodes there now: {why}" if why else ""


def explain(state: SchedulerState, policy: Policy, job_id: str, now: float, viewer: str | None = None, *,
            estimate: Callable[[JobState], float] = default_estimate, cache: BinCache | None = None,
            seen: StopsSeen | None = None) -> str:
    """Why a job is where it is (``aios why``); for a ``viewer`` tenant, other tenants' jobs are not named (the
    jobs ahead, the holders of devices), as that tenant cannot see them anywhere else. ``estimate``, ``cache`` and
    ``seen``: the live rounds' (backfill's reservations are the rounds' own, the nodes' bins are not built again,
    and a stopping job's devices are held as the rounds hold them)."""
    text = _explain(state, policy, job_id, now, estimate, cache, seen)
    if viewer is None:
        return text
    return visibility.redact(text, lambda j: other.tenant if (other := state.jobs.get(j)) else None, viewer,
                             visibility.tenants_of(state))


def _explain(state: SchedulerState, policy: Policy, job_id: str, now: float,
             estimate: Callable[[JobState], float] = default_estimate, cache: BinCache | None = None,
             seen: StopsSeen | None = None) -> str:
    job = state.jobs.get(job_id)
    if job is None:
        return f"no job {job_id!r}"
    if job.status != PENDING:
        detail = f" ({job.error})" if job.error else ""
        where = ", ".join(f"{a.node_id}:{len(a.device_uuids)}" for a in job.assignments
                          if job.status in HOLDING)  # an ended job holds nothing ("cancelled on sim-2:4")
        return f"{job_id} is {job.status}{detail}" + (f" on {where}" if where else "") + _slow_start(state, job, now)
    plan = plan_round(state, policy, now, estimate=estimate, cache=cache, seen=seen)
    position = plan.order.index(job_id) + 1 if job_id in plan.order else 0
    ahead = plan.order[:position - 1][-5:] if position else []
    if any(p.job_id == job_id for p in plan.placements):
        return f"{job_id} is pending and fits now: it will be placed in the next round"
    reason = plan.reasons.get(job_id, "waiting for the next round")
    if job.spec is not None and not reason.startswith("capacity"):
        # a policy that ranks who runs next said "N jobs come first" of a job no node here can ever hold
        never = cannot_start_now(state, job.spec)
        reason = f"capacity: {never}" if never else reason
    queue = f"position {position} of {len(plan.order)} under {policy.name}"
    return f"{job_id} is pending: {reason}. {queue}" + (f"; ahead: {', '.join(ahead)}" if ahead else "")
