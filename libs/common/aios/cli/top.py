"""``aios top``: a live view of the cluster in the terminal: devices per node (busy, free, unhealthy, utilisation),
jobs by state, and each tenant's devices in use against its quota; refreshed every second from the services and the
agents' telemetry. ``--once`` prints one frame; ``--json`` one snapshot."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from aios.cli.inspect import ask, cluster_servers
from aios.cli.output import plain
from aios.common.store import connect_once


async def snapshot(servers: list[str], telemetry: dict[str, dict[str, Any]]) -> dict[str, Any]:
    nodes = (await ask("aios.rm.nodes", servers=servers))["nodes"]
    details = [await ask("aios.rm.node", {"node": n["node"]}, servers=servers) for n in nodes]
    listed = await ask("aios.sched.jobs", {"live": True}, servers=servers)  # not the whole history: it outgrew
    jobs = listed["jobs"]  # NATS' message limit at about 2,400 jobs, and top failed for good
    tenants = (await ask("aios.rm.tenants", servers=servers))["tenants"]
    for node in details:
        for d in node["devices"]:
            d["utilization_gpu"] = telemetry.get(d["uuid"], {}).get("utilization_gpu")
    # a scheduler of an older version (during a roll) counts nothing and ignores "live": its whole list is counted
    counts = listed.get("counts") or dict(Counter(j["status"] for j in jobs))
    return {"nodes": details, "jobs": counts, "running": on_devices(jobs, details),
            "tenants": tenants}


def on_devices(jobs: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs that hold devices: those placed or running, and those that ended but whose workers still stop (a
    cancelled job keeps its devices until they have exited; its devices showed busy with no job beside them)."""
    holders = {d["job"] for n in nodes for d in n["devices"] if d.get("job")}
    out = []
    for j in jobs:
        if j["status"] in ("placed", "running", "preempting"):
            out.append(j)
        elif j["job"] in holders:
            out.append({**j, "status": f"{j['status']}, workers stopping"})
    return out


def frame(snap: dict[str, Any]) -> Group:
    nodes = Table("node", "state", "devices",
                  title="devices: ■ busy  □ free  ✗ unhealthy  M MIG mode (not scheduled)")
    for n in snap["nodes"]:
        cells = []
        for d in n["devices"]:
            mark = ("[red]✗[/]" if not d["healthy"] else "[blue]■[/]" if d["job"] else
                    "[yellow]M[/]" if d.get("mig_mode") else "□")
            util = f"{d['utilization_gpu']}%" if d.get("utilization_gpu") is not None else ""
            cells.append(f"{mark}{util}")
        state = (f"[yellow]{'drained' if n.get('drained') else 'draining' if n.get('draining') else 'cordoned'}[/]"
                 if n.get("cordon") else "online")
        nodes.add_row(plain(n["node"]), state if n["online"] else "[red]offline[/]", " ".join(cells))
    jobs = Table("job", "tenant", "status", "devices", "progress")
    for j in snap["running"]:
        progress = f"{j['step']}/{j['total_steps']}" if j["total_steps"] else ""
        jobs.add_row(plain(j["job"]), plain(j["tenant"]), j["status"], str(j["devices"]), progress)
    states = ", ".join(f"{k} {v}" for k, v in sorted(snap["jobs"].items())) or "no jobs"
    tenants = Table("tenant", "in use", "quota")
    for name, t in snap["tenants"].items():
        fmt = lambda d: ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"  # noqa: E731
        tenants.add_row(plain(name) or "(none)", plain(fmt(t["usage"])), plain(fmt(t["nominal"])))
    return Group(nodes, f"jobs: {states}", jobs, tenants)


async def run(once: bool, as_json: bool, interval: float = 1.0) -> int:
    servers = cluster_servers()
    telemetry: dict[str, dict[str, Any]] = {}
    nc = await connect_once(servers, name="aios-top")

    async def on_telemetry(msg: Any) -> None:
        try:
            for d in json.loads(msg.data).get("devices", []):
                telemetry[d["uuid"]] = d
        except (ValueError, KeyError, TypeError):
            pass
    await nc.subscribe("aios.telemetry.*", cb=on_telemetry)
    try:
        if once or as_json:
            await asyncio.sleep(min(interval, 1.5))  # one round of telemetry
            snap = await snapshot(servers, telemetry)
            if as_json:
                print(json.dumps(snap, indent=2))
            else:
                Console().print(frame(snap))
            return 0
        with Live(frame(await snapshot(servers, telemetry)), refresh_per_second=2) as live:
            while True:
                await asyncio.sleep(interval)
                live.update(frame(await snapshot(servers, telemetry)))
    finally:
        await nc.close()
