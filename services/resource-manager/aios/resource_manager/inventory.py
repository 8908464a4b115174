"""The cluster inventory: a pure fold of node, device, lease and tenant events (no I/O).

It answers what the scheduler and ``aios nodes`` need: which nodes are online, their devices, health, topology and
labels, which devices are free, who holds the rest, and each aggregate's version for the next conditional append.
"""

from __future__ import annotations

import msgspec

from aios.common.events import (
    JOB_AGGREGATES, DeviceHealthy, DeviceInfo, DevicesLeased, DevicesReleased, DeviceUnhealthy, Event, Link,
    NodeCordoned, NodeForgotten, NodeLost, NodeRegistered, TenantQuotaRemoved, TenantQuotaSet,
)
from aios.common.store import Commit
from aios.resource_manager.leases import LeaseBook, grant, release, release_node


class DeviceState(msgspec.Struct):
    info: DeviceInfo
    healthy: bool = True
    reason: str = ""

    @property
    def usable(self) -> bool:
        """Jobs may be placed on it: healthy, and not split into MIG instances (AIOS places whole GPUs, and a CUDA
        process given a MIG-mode GPU sees one of its instances at most: the job got a slice, or nothing)."""
        return self.healthy and not self.info.mig_enabled


MIG_REASON = "MIG mode is on: not scheduled (AIOS places whole GPUs; turn MIG off with nvidia-smi -i INDEX -mig 0)"


class NodeState(msgspec.Struct):
    node_id: str
    hostname: str
    agent_id: str
    online: bool
    cpu_cores: int
    memory_bytes: int
    devices: dict[str, DeviceState]
    links: list[Link] = []
    labels: dict[str, str] = {}
    backend: str = ""
    registered_at: float = 0.0
    lost_at: float | None = None
    registered_seq: int = 0
    """Log sequence of its registration: orders it against a job's placement without comparing the clocks of the
    hosts that stamped them (an agent's and the scheduler's)."""
    lost_seq: int = 0
    """Log sequence of the ``NodeLost`` (0: not lost since it registered)."""
    lost_reason: str = ""
    registrations: int = 0
    cordon: str = ""
    """An operator's reason for placing no job here ("" = none): NodeCordoned. Outlives agent restarts."""
    draining: bool = False
    """The operator's cordon also moves its preemptible jobs off."""
    shutting_down: bool = False
    """Its agent is shutting down (NodeCordoned by "agent"): cordoned and drained until it registers again. Kept
    apart from the operator's cordon, which the agent's own drain overwrote and its restart then lifted."""

    @property
    def schedulable(self) -> bool:
        """Open to new jobs: online, not cordoned, its agent not shutting down."""
        return self.online and not self.cordon and not self.shutting_down

    @property
    def moving_jobs_off(self) -> bool:
        return self.online and (self.draining or self.shutting_down)

    @property
    def cordon_reason(self) -> str:
        return self.cordon or ("its agent is shutting down" if self.shutting_down else "")


class Inventory(msgspec.Struct):
    nodes: dict[str, NodeState] = {}
    tenants: dict[str, TenantQuotaSet] = {}
    leases: LeaseBook = msgspec.field(default_factory=LeaseBook)
    tenant_of: dict[str, str] = {}
    """job id -> tenant, from the leases (for usage per tenant)."""
    versions: dict[str, int] = {}
    """aggregate -> stream sequence of its last commit (the expected_version of the next append)."""
    seq: int = 0
    orphaned: dict[str, list[str]] = {}
    """node -> jobs whose leases there belong to the node's previous agent: the agent restarted (a new agent id)
    without the node being declared lost, and its workers died with it. The resource manager releases and requeues
    them; until then they are listed here."""
    shape: int = 0
    """Bumped whenever the set of usable devices changes (a node registers or is lost, a device's health flips),
    not on leases: what a cache of the cluster's capacity keys on."""

    # -- queries -----------------------------------------------------------------------------------------------------
    def free_devices(self, node_id: str) -> list[DeviceState]:
        node = self.nodes.get(node_id)
        if node is None or not node.online:
            return []
        return [d for u, d in node.devices.items() if d.usable and self.leases.is_free(u)]

    def capacity(self) -> dict[str, dict[str, int]]:
        """Per device kind: total, healthy, free, on the nodes open to jobs (online and not cordoned: the policies
        that plan over kinds read it, and planned onto a cordoned node's devices a job that could never go there)."""
        out: dict[str, dict[str, int]] = {}
        for node in self.nodes.values():
            if not node.schedulable:
                continue
            for uuid, dev in node.devices.items():
                row = out.setdefault(dev.info.kind, {"total": 0, "healthy": 0, "free": 0})
                row["total"] += 1
                if dev.usable:
                    row["healthy"] += 1
                    if self.leases.is_free(uuid):
                        row["free"] += 1
        return out

    def usage_by_tenant(self, tenant_of_job: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
        """Leased devices per tenant and device kind (jobs without a known tenant count under "")."""
        tenant_of_job = self.tenant_of if tenant_of_job is None else tenant_of_job
        kinds = {u: d.info.kind for n in self.nodes.values() for u, d in n.devices.items()}
        usage: dict[str, dict[str, int]] = {}
        for uuid, job in self.leases.holder.items():
            tenant = tenant_of_job.get(job, "")
            per = usage.setdefault(tenant, {})
            per[kinds.get(uuid, "unknown")] = per.get(kinds.get(uuid, "unknown"), 0) + 1
        return usage


_NOT_INVENTORY = tuple(f"{kind}." for kind in (*JOB_AGGREGATES, "model"))
"""Aggregates no inventory event is stored on (the shared JOB_AGGREGATES keeps it in step with where jobs live)."""


def fold_commit(inv: Inventory, commit: Commit) -> Inventory:
    if not commit.aggregate.startswith(_NOT_INVENTORY):  # most of a busy log: nothing here reads job events
        for ev in commit.events:
            evolve(inv, ev, commit.seq)
    inv.versions[commit.aggregate] = commit.seq
    inv.seq = commit.seq
    return inv


def evolve(inv: Inventory, ev: Event, seq: int = 0) -> Inventory:
    """``seq``: the log sequence of the commit the event is in (0: not from the log, a decision's trial)."""
    kind = type(ev)
    if (kind is NodeRegistered or kind is DeviceUnhealthy or kind is DeviceHealthy or kind is NodeLost
            or kind is NodeCordoned or kind is NodeForgotten):
        inv.shape += 1
    if kind is NodeRegistered:
        _registered(inv, ev, seq)  # type: ignore[arg-type]
    elif kind is DevicesLeased:
        node = inv.nodes.get(ev.aggregate_id)
        unknown = [u for u in ev.device_uuids if node is None or u not in node.devices]  # type: ignore[attr-defined]
        if node is None or not node.online or unknown:
            inv.leases.violations.append(f"lease of job {ev.job_id} on node {ev.aggregate_id} refused: "  # type: ignore[attr-defined]
                                         + ("node offline or unknown" if not unknown else f"no devices {unknown}"))
        else:
            grant(inv.leases, ev.aggregate_id, ev.job_id, ev.device_uuids)  # type: ignore[attr-defined]
            if ev.tenant:  # type: ignore[attr-defined]
                inv.tenant_of[ev.job_id] = ev.tenant  # type: ignore[attr-defined]
    elif kind is DevicesReleased:
        release(inv.leases, ev.aggregate_id, ev.job_id, ev.device_uuids)  # type: ignore[attr-defined]
        _forget_orphan(inv, ev.aggregate_id, ev.job_id)  # type: ignore[attr-defined]
    elif kind is DeviceUnhealthy or kind is DeviceHealthy:
        node = inv.nodes.get(ev.aggregate_id)
        dev = node.devices.get(ev.device_uuid) if node else None  # type: ignore[attr-defined]
        if dev is not None:
            dev.healthy = kind is DeviceHealthy
            dev.reason = ev.reason  # type: ignore[attr-defined]
    elif kind is NodeLost:
        node = inv.nodes.get(ev.aggregate_id)
        if node is not None:
            node.online = False
            node.lost_at = ev.ts
            node.lost_seq = seq
            node.lost_reason = ev.reason  # type: ignore[attr-defined]
        release_node(inv.leases, ev.aggregate_id)
        inv.orphaned.pop(ev.aggregate_id, None)
    elif kind is NodeForgotten:
        inv.nodes.pop(ev.aggregate_id, None)
        release_node(inv.leases, ev.aggregate_id)
        inv.orphaned.pop(ev.aggregate_id, None)
    elif kind is NodeCordoned:
        node = inv.nodes.get(ev.aggregate_id)
        if node is not None and ev.by == "agent":  # type: ignore[attr-defined]
            node.shutting_down = ev.cordoned  # type: ignore[attr-defined]
        elif node is not None:
            on = ev.cordoned  # type: ignore[attr-defined]
            # a cordon without a reason keeps the one given before (Slurm's does): it read "cordoned" after
            node.cordon = (ev.reason or node.cordon or "cordoned") if on else ""  # type: ignore[attr-defined]
            node.draining = on and ev.drain  # type: ignore[attr-defined]
    elif kind is TenantQuotaSet:
        inv.tenants[ev.aggregate_id] = ev  # type: ignore[assignment]
    elif kind is TenantQuotaRemoved:
        inv.tenants.pop(ev.aggregate_id, None)
    return inv


def decide_forget(inv: Inventory, node_id: str) -> str:
    """Why the node cannot be forgotten ("" if it can): only a lost one can (an online node's agent would keep
    sending heartbeats for a node the inventory no longer has)."""
    node = inv.nodes.get(node_id)
    if node is None:
        return f"no node {node_id!r}"
    if node.online:
        return (f"{node_id} is online: only a lost node can be forgotten (drain it, stop its agent, and forget it "
                "once it is lost)")
    return ""


def _forget_orphan(inv: Inventory, node_id: str, job_id: str) -> None:
    jobs = inv.orphaned.get(node_id)
    if jobs and job_id in jobs and job_id not in inv.leases.jobs_on(node_id):
        jobs.remove(job_id)
        if not jobs:
            del inv.orphaned[node_id]


def _registered(inv: Inventory, ev: NodeRegistered, seq: int = 0) -> None:
    old = inv.nodes.get(ev.aggregate_id)
    if old is not None and old.online and old.agent_id != ev.agent_id and not old.shutting_down:
        # a restart the liveness check did not see (quicker than the timeout): the old agent's workers are gone.
        # (Not after a shutdown that drained the node: that agent stopped its workers and reported their exits, and
        # its jobs leave by preemption or the trainer's requeue; requeueing them here cut off a checkpoint in flight
        # on their other nodes.)
        held = inv.leases.jobs_on(ev.aggregate_id)
        if held:
            inv.orphaned[ev.aggregate_id] = sorted(set(inv.orphaned.get(ev.aggregate_id, [])) | set(held))
    devices = {d.uuid: DeviceState(d) for d in ev.devices}
    if old is not None:
        for uuid, state in devices.items():  # health known before a restart stays until the agent says otherwise
            if uuid in old.devices and not old.devices[uuid].healthy:
                state.healthy, state.reason = False, old.devices[uuid].reason
        gone = set(old.devices) - set(devices)
        for uuid in gone:
            if uuid in inv.leases.holder:
                job = inv.leases.holder[uuid]
                release(inv.leases, ev.aggregate_id, job, [uuid])
    inv.nodes[ev.aggregate_id] = NodeState(
        node_id=ev.aggregate_id, hostname=ev.hostname, agent_id=ev.agent_id, online=True, cpu_cores=ev.cpu_cores,
        memory_bytes=ev.memory_bytes, devices=devices, links=list(ev.links), labels=dict(ev.labels),
        backend=ev.backend, registered_at=ev.ts, registered_seq=seq,
        registrations=(old.registrations if old else 0) + 1)
    if old is not None and old.cordon:  # an operator's cordon outlives restarts; the agent's own drain ends here
        new = inv.nodes[ev.aggregate_id]
        new.cordon, new.draining = old.cordon, old.draining
