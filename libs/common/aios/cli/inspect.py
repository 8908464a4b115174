"""Read-only commands that ask the running cluster (``aios nodes``): request/reply over NATS, tables or JSON."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import nats.errors
from rich.table import Table

from aios.cli.output import plain, table_console
from aios.common import tracing
from aios.common.config import load_settings
from aios.common.errors import AiosError, ConfigError, NotFound
from aios.common.store import connect_once


def cluster_servers() -> list[str]:
    """The NATS servers the CLI talks to, or a ConfigError saying how to set them."""
    servers = load_settings().servers
    if not servers:
        raise ConfigError("AIOS_NATS_URL is not set: point it at the cluster (`aios up` prints the export line)")
    return servers


async def log_writer() -> Any:
    """The event log for one append (a quota, a cordon): it waits a moment for a cluster that is starting."""
    from aios.common.store import open_log

    return await open_log(cluster_servers(), name="aios-cli", append_deadline=5.0, wait_for_log_s=10.0)


def _answering_service(subject: str) -> str:
    """The service that answers a query subject (every error named the resource manager)."""
    for prefix, service in (("aios.sched.", "scheduler"), ("aios.rm.", "resource manager"),
                            ("aios.registry.", "model registry"), ("aios.tenant.", "gateway")):
        if subject.startswith(prefix):
            return service
    return "service answering it"


async def ask(subject: str, body: dict[str, Any] | None = None, timeout: float = 5.0,
              servers: list[str] | None = None) -> dict[str, Any]:
    nc = await connect_once(servers or cluster_servers(), name="aios-cli")
    headers: dict[str, str] = {}
    try:
        with tracing.publish_span(subject, headers):  # the service's handling (and what it appends) joins this trace
            msg = await nc.request(subject, json.dumps(body or {}).encode(), timeout=timeout, headers=headers or None)
    except nats.errors.NoRespondersError:
        raise AiosError(f"nobody answers {subject}: is the {_answering_service(subject)} running?") from None
    except nats.errors.TimeoutError:
        raise AiosError(f"no answer on {subject} within {timeout:g}s") from None
    finally:
        await nc.close()
    reply: dict[str, Any] = json.loads(msg.data)
    if "error" in reply:
        missing = reply.get("not_found") or "no node" in reply["error"] or "no job" in reply["error"]
        raise (NotFound if missing else ConfigError if reply.get("bad_input") else AiosError)(reply["error"])
    return reply


async def nodes(node: str | None, as_json: bool = False, servers: list[str] | None = None) -> int:
    console = table_console()
    if node:
        detail = await ask("aios.rm.node", {"node": node}, servers=servers)
        if as_json:
            print(json.dumps(detail, indent=2))
            return 0
        console.print(f"[bold]{plain(detail['node'])}[/] ({plain(detail['hostname'])}, {detail['backend']}) "
                      f"{'online' if detail['online'] else '[red]lost[/]: ' + plain(detail['lost_reason'])}"
                      f"{_cordon_text(detail)}, "
                      f"{detail['cpu_cores']} cores, {detail['memory_gib']} GiB")
        table = Table("idx", "uuid", "kind", "model", "GiB", "health", "job")
        for d in detail["devices"]:
            health = (f"[red]{plain(d['reason'])}[/]" if not d["healthy"] else
                      f"[yellow]{plain(d['reason'])}[/]" if d.get("mig_mode") else "ok")  # MIG: it read "ok", not scheduled
            table.add_row(str(d["index"]), plain(d["uuid"]), plain(d["kind"]), plain(d["model"]), str(d["memory_gib"]),
                          health, plain(d["job"] or "-"))
        console.print(table)
        return 0
    reply = await ask("aios.rm.nodes", servers=servers)
    if as_json:
        print(json.dumps(reply["nodes"], indent=2))
        return 0
    table = Table("node", "state", "backend", "devices", "free", "unhealthy", "kinds", "cpu", "mem GiB")
    for n in reply["nodes"]:
        state = ("online" if n["online"] else "[red]lost[/]") + _cordon_text(n)
        table.add_row(plain(n["node"]), state, n["backend"], str(n["devices"]), str(n["free"]), str(n["unhealthy"]),
                      plain(",".join(n["kinds"])), str(n["cpu_cores"]), str(n["memory_gib"]))
    console.print(table)
    return 0


async def tenants(as_json: bool = False, servers: list[str] | None = None) -> int:
    reply = await ask("aios.rm.tenants", servers=servers)
    if as_json:
        print(json.dumps(reply["tenants"], indent=2))
        return 0
    table = Table("tenant", "cohort", "nominal", "in use", "borrowing limit", "lending limit")
    fmt = lambda d: ", ".join(f"{k}={v}" for k, v in sorted(d.items())) if d else "-"  # noqa: E731

    def limit(d: dict[str, int] | None, unset: str) -> str:
        """A limit per kind; kinds it does not name are limited to 0."""
        return unset if d is None else (fmt(d) + ", 0 of other kinds") if d else "none"
    for name, t in reply["tenants"].items():
        # unset is no limit (it read "none", which is what an empty limit means: no borrowing); without a cohort
        # (or a quota: a tenant only seen using devices) there is nothing to borrow from or lend to
        cohort = bool(t["cohort"])
        table.add_row(plain(name) or "(unknown)", plain(t["cohort"] or "-"), plain(fmt(t["nominal"])),
                      plain(fmt(t["usage"])),
                      plain(limit(t["borrowing_limit"], "no limit")) if cohort else "-",
                      plain(limit(t["lending_limit"], "all unused")) if cohort else "-")
    table_console().print(table)
    return 0


def parse_counts(option: str, text: str | None) -> dict[str, int] | None:
    """``h100=8,a100=4`` -> {"h100": 8, "a100": 4}; errors name the option and the bad part."""
    if text is None:
        return None
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, count = part.partition("=")
        if not sep or not kind or not re.fullmatch(r"[0-9]{1,9}", count.strip()):  # ASCII digits ('²' passed isdigit)
            raise ConfigError(f"{option}: {part!r} is not KIND=N with N a whole number (e.g. h100=8)")
        kind = kind.strip().lower()
        if kind in out:  # h100=2,h100=3 kept the last, silently
            raise ConfigError(f"{option}: {kind} is given twice")
        out[kind] = int(count)
    return out


def _cordon_text(node: dict[str, Any]) -> str:
    if not node.get("cordon"):
        return ""
    state = "drained" if node.get("drained") else "draining" if node.get("draining") else "cordoned"
    return f", [yellow]{state}[/]: {plain(node['cordon'])}"


async def cordon(node: str, on: bool, drain: bool, reason: str) -> int:
    """``aios cordon|drain|uncordon NODE``: appends NodeCordoned to the node's history."""
    from aios.resource_manager import nodeops

    if len(reason) > nodeops.MAX_REASON:
        raise ConfigError(f"--reason: at most {nodeops.MAX_REASON} characters")
    store = await log_writer()
    try:
        await nodeops.cordon(store, node, on, drain, reason, "cli")
    finally:
        await store.close()
    print(f"{node}: " + ("open to jobs again" if not on else "draining: its preemptible jobs move elsewhere, no new "
                         "ones start there" if drain else "cordoned: no new jobs start there"))
    return 0


async def forget(node: str) -> int:
    """``aios forget NODE``: removes a lost (decommissioned) node from the inventory."""
    from aios.resource_manager import nodeops

    store = await log_writer()
    try:
        await nodeops.forget(store, node, "cli")
    finally:
        await store.close()
    print(f"{node}: forgotten (an agent that starts there again registers it again)")
    return 0


async def remove_quota(tenant: str) -> int:
    from aios.common.errors import ConcurrencyConflict, InvalidAggregate
    from aios.scheduler.tenancy import remove_quota as remove

    store = await log_writer()
    try:  # any name a quota was stored under (older rules took "NLP"), not only one a new quota may have
        result = await remove(store, tenant)
    except InvalidAggregate:
        raise ConfigError(f"tenant {tenant[:64]!r}: cannot name a quota (no spaces, '*', '>' or '..')") from None
    except ConcurrencyConflict:
        raise ConfigError(f"tenant {tenant}: its quota was set again meanwhile; nothing removed") from None
    finally:
        await store.close()
    if result is None:
        raise NotFound(f"tenant {tenant} has no quota")
    print(f"quota of {tenant} removed (event {result.seq}); it now runs on what quotas leave idle")
    return 0


async def set_quota(tenant: str, cohort: str, nominal: str, borrowing: str | None, lending: str | None) -> int:
    from aios.scheduler.spec import SpecError, validate_quota
    from aios.scheduler.tenancy import absent_kinds_note

    options = {"cohort": "--cohort", "nominal": "--nominal", "borrowing_limit": "--borrowing-limit",
               "lending_limit": "--lending-limit"}
    if not parse_counts("--nominal", nominal):  # "" was taken as a quota of nothing: every job of the tenant waited
        raise ConfigError("--nominal: no KIND=N given (e.g. h100=8; h100=0 for a quota of none)")
    try:  # the rules of the HTTP API: a quota for "NLP" or of kind "h1 00" would hold no job
        event = validate_quota(tenant, {"cohort": cohort, "nominal": parse_counts("--nominal", nominal) or {},
                                        "borrowing_limit": parse_counts("--borrowing-limit", borrowing),
                                        "lending_limit": parse_counts("--lending-limit", lending)})
    except SpecError as exc:
        field, _, rest = exc.field.partition(".")
        where = f"tenant {tenant!r}" if field == "tenant" else options.get(field, field) + (f" {rest}" if rest else "")
        raise ConfigError(f"{where}: {exc.reason}") from None
    store = await log_writer()
    try:
        result = await store.append(f"tenant.{tenant}", event)
    finally:
        await store.close()
    print(f"quota of {tenant} set (event {result.seq})")
    try:
        nodes = await ask("aios.rm.nodes", timeout=2.0)
    except (AiosError, OSError):
        return 0  # the resource manager is not there to ask: the quota is set all the same
    note = absent_kinds_note(event, nodes["nodes"]) if "nodes" in nodes else None
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0
