"""Read-only commands that ask the running cluster (``aios nodes``): request/reply over NATS, tables or JSON."""

from __future__ import annotations

import json
from typing import Any

import nats
import nats.errors
from rich.console import Console
from rich.table import Table

from aios.common.config import load_settings
from aios.common.errors import AiosError, ConfigError


async def ask(subject: str, body: dict[str, Any] | None = None, timeout: float = 5.0,
              servers: list[str] | None = None) -> dict[str, Any]:
    servers = servers or load_settings().servers
    if not servers:
        raise ConfigError("AIOS_NATS_URL is not set: point it at the cluster (`aios up` prints the export line)")
    try:
        nc = await nats.connect(servers, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False)
    except (OSError, nats.errors.Error) as exc:
        raise AiosError(f"cannot reach NATS at {','.join(servers)}: {exc or type(exc).__name__}") from None
    try:
        msg = await nc.request(subject, json.dumps(body or {}).encode(), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise AiosError(f"nobody answers {subject}: is the resource manager running?") from None
    except nats.errors.TimeoutError:
        raise AiosError(f"no answer on {subject} within {timeout:g}s") from None
    finally:
        await nc.close()
    reply: dict[str, Any] = json.loads(msg.data)
    if "error" in reply:
        raise AiosError(reply["error"])
    return reply


async def nodes(node: str | None, as_json: bool = False, servers: list[str] | None = None) -> int:
    console = Console()
    if node:
        detail = await ask("aios.rm.node", {"node": node}, servers=servers)
        if as_json:
            print(json.dumps(detail, indent=2))
            return 0
        console.print(f"[bold]{detail['node']}[/] ({detail['hostname']}, {detail['backend']}) "
                      f"{'online' if detail['online'] else '[red]lost[/]: ' + detail['lost_reason']}, "
                      f"{detail['cpu_cores']} cores, {detail['memory_gib']} GiB")
        table = Table("idx", "uuid", "kind", "model", "GiB", "health", "job")
        for d in detail["devices"]:
            table.add_row(str(d["index"]), d["uuid"], d["kind"], d["model"], str(d["memory_gib"]),
                          "ok" if d["healthy"] else f"[red]{d['reason']}[/]", d["job"] or "-")
        console.print(table)
        return 0
    reply = await ask("aios.rm.nodes", servers=servers)
    if as_json:
        print(json.dumps(reply["nodes"], indent=2))
        return 0
    table = Table("node", "state", "backend", "devices", "free", "unhealthy", "kinds", "cpu", "mem GiB")
    for n in reply["nodes"]:
        state = "online" if n["online"] else "[red]lost[/]"
        table.add_row(n["node"], state, n["backend"], str(n["devices"]), str(n["free"]), str(n["unhealthy"]),
                      ",".join(n["kinds"]), str(n["cpu_cores"]), str(n["memory_gib"]))
    console.print(table)
    return 0
