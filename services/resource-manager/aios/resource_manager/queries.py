"""Answers to inventory queries, as plain JSON-ready dicts built from the folded state (pure)."""

from __future__ import annotations

from typing import Any

from aios.resource_manager.inventory import MIG_REASON, Inventory, NodeState

QUERY_PREFIX = "aios.rm"


def node_summary(inv: Inventory, node: NodeState) -> dict[str, Any]:
    free = {d.info.uuid for d in inv.free_devices(node.node_id)}
    return {
        "node": node.node_id, "hostname": node.hostname, "online": node.online, "backend": node.backend,
        "cpu_cores": node.cpu_cores, "memory_gib": round(node.memory_bytes / 1024**3, 1),
        "devices": len(node.devices), "free": len(free),
        "unhealthy": sum(1 for d in node.devices.values() if not d.healthy),
        "mig": sum(1 for d in node.devices.values() if d.info.mig_enabled),
        "kinds": sorted({d.info.kind for d in node.devices.values()}),
        "lost_reason": node.lost_reason, "registrations": node.registrations,
        "cordon": node.cordon_reason, "draining": node.moving_jobs_off,
        # drained, as Slurm's DRAINED after DRAINING: no job holds a device there any more (it never said so)
        "drained": node.moving_jobs_off and not inv.leases.jobs_on(node.node_id),
    }


def node_detail(inv: Inventory, node: NodeState) -> dict[str, Any]:
    out = node_summary(inv, node)
    out["labels"] = node.labels
    out["devices"] = [
        {"uuid": u, "index": d.info.index, "kind": d.info.kind, "model": d.info.model,
         "memory_gib": round(d.info.memory_bytes / 1024**3, 1), "healthy": d.healthy,
         "reason": d.reason or (MIG_REASON if d.info.mig_enabled else ""),
         "job": inv.leases.holder.get(u), "mig_mode": d.info.mig_enabled, "mig": [m.uuid for m in d.info.mig_instances]}
        for u, d in sorted(node.devices.items(), key=lambda kv: kv[1].info.index)]
    out["links"] = [{"a": link.a, "b": link.b, "level": link.level} for link in node.links]
    return out


def answer(inv: Inventory, what: str, args: dict[str, Any]) -> dict[str, Any]:
    """``what``: nodes | node | capacity | tenants. Errors come back as ``{"error": ...}`` naming the field."""
    if what == "nodes":
        return {"nodes": [node_summary(inv, n) for _, n in sorted(inv.nodes.items())], "seq": inv.seq}
    if what == "node":
        node_id = args.get("node")
        if not isinstance(node_id, str):
            return {"error": "node: a node id (string) is required"}
        node = inv.nodes.get(node_id)
        if node is None:
            return {"error": f"node: no node {node_id!r} (known: {', '.join(sorted(inv.nodes)) or 'none'})"}
        return node_detail(inv, node)
    if what == "capacity":
        return {"capacity": inv.capacity(), "seq": inv.seq}
    if what == "tenants":
        usage = inv.usage_by_tenant()
        names = sorted(set(inv.tenants) | {t for t in usage if t})
        out = {}
        for t in names:
            q = inv.tenants.get(t)
            out[t] = {"cohort": q.cohort if q else "", "nominal": q.nominal if q else {},
                      "borrowing_limit": q.borrowing_limit if q else None,
                      "lending_limit": q.lending_limit if q else None, "usage": usage.get(t, {})}
        return {"tenants": out}
    return {"error": f"unknown query {what!r} (nodes, node, capacity, tenants)"}


DEVICE_STATES = ("free", "leased", "unhealthy", "mig", "cordoned", "offline")


def device_states(inv: Inventory) -> dict[tuple[str, str, str], int]:
    """Devices per (node, kind, state): unhealthy (whether a job holds it or not: what an operator alerts on, as
    `aios nodes` counts it), leased (a job holds it), mig (in MIG mode: not scheduled), offline, cordoned (its
    node is cordoned, draining or its agent shutting down: not offered to jobs) or free; the resource manager's
    gauges. Every state of every (node, kind) is there, 0 where no device is in it: a series that vanished when
    the last free device was taken made `free == 0` alerts silent."""
    out: dict[tuple[str, str, str], int] = {}
    for node_id, node in sorted(inv.nodes.items()):
        for uuid, device in node.devices.items():
            for state in DEVICE_STATES:
                out.setdefault((node_id, device.info.kind, state), 0)
            state = "unhealthy" if not device.healthy else "leased" if not inv.leases.is_free(uuid) else \
                "mig" if device.info.mig_enabled else "offline" if not node.online else \
                "cordoned" if not node.schedulable else "free"
            out[(node_id, device.info.kind, state)] += 1
    return out


def node_states(inv: Inventory) -> dict[str, int]:
    """Nodes by state: online (open to jobs), cordoned (online, closed to new jobs: cordoned, draining or its
    agent shutting down) and lost; the resource manager's ``aios_rm_nodes``."""
    out = {"online": 0, "cordoned": 0, "lost": 0}
    for node in inv.nodes.values():
        out["lost" if not node.online else "online" if node.schedulable else "cordoned"] += 1
    return out
