"""The gateway service: the HTTP API (api.py) over the event log, on ``AIOS_GATEWAY_PORT`` (default 8080; taken:
any free port). It folds the jobs itself (the scheduler's fold, so a read after a submit sees it) and asks the
resource manager, scheduler and model registry by request/reply for the rest. Its address is announced in the
``AIOS_ENDPOINTS`` bucket under ``_gateway``.

Tokens: ``AIOS_GATEWAY_TOKENS`` (``token=tenant,...``; tenant ``*`` is an administrator). Unset, the gateway makes
one administrator token and keeps it in ``$AIOS_DATA_DIR/gateway-token`` (mode 0600) for a laptop cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

import nats.errors

from aios.common.errors import AiosError, ConfigError
from aios.common.events import JOB_AGGREGATES
from aios.common.runner import Service, ServiceContext
from aios.common.snapshot import Projector
from aios.gateway import tenant_api
from aios.gateway.api import MAX_JOBS_PER_TENANT, Api, build_app
from aios.gateway.auth import ADMIN, parse_tokens
from aios.gateway.changes import RecentChanges
from aios.resource_manager.inventory import Inventory
from aios.scheduler import visibility
from aios.scheduler.rounds import cannot_start_now
from aios.scheduler.spec import JobSpec
from aios.scheduler.state import STATE_SCHEMA, JobState, SchedulerState, fold_commit, key_index

log = logging.getLogger("aios.gateway")
LISTENER_QUEUE = 1000
"""Notifications an event stream may fall behind by before it is told to fetch everything again."""
GATEWAY_KEY = "_gateway"


def load_tokens(env: dict[str, str], data_dir: Path) -> dict[str, str]:
    raw = env.get("AIOS_GATEWAY_TOKENS", "").strip()
    if raw:
        return parse_tokens(raw)
    path = data_dir / "gateway-token"
    if path.is_file():
        token = path.read_text().strip()
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    return {token: ADMIN}


TELEMETRY_KEPT_S = 30.0
"""A device's last reading is shown this long after it came (agents report every second by default)."""
TELEMETRY_FIELDS = ("utilization_gpu", "memory_used_bytes", "memory_total_bytes", "temperature_c", "power_w")


def telemetry_readings(body: Any, nodes: dict[str, Any], received: float) -> dict[str, dict[str, Any]]:
    """The readings of a telemetry message worth keeping: devices the inventory has on the node the message names,
    with numbers as numbers (anything else None). A node's NATS identity, which its jobs' workers hold, may publish
    telemetry: a job wrote markup into a reading and the dashboard ran it, and readings of made-up devices grew the
    gateway's memory and every dashboard's fetch without bound."""
    if not isinstance(body, dict) or not isinstance(body.get("devices"), list):
        return {}
    node = nodes.get(body.get("node")) if isinstance(body.get("node"), str) else None
    if node is None:
        return {}
    ts = body.get("ts")
    out = {}
    for d in body["devices"]:
        if not isinstance(d, dict) or not isinstance(d.get("uuid"), str) or d["uuid"] not in node.devices:
            continue
        out[d["uuid"]] = {"node": body["node"], "ts": ts if _number(ts) else None, "received": received,
                          **{k: d.get(k) if _number(d.get(k)) else None for k in TELEMETRY_FIELDS}}
    return out


def shown_telemetry(devices: dict[str, dict[str, Any]], nodes: dict[str, Any], now: float) -> dict[str, dict[str, Any]]:
    """The readings to show: fresh ones (``TELEMETRY_KEPT_S``) of nodes online. An offline node's devices kept
    their last utilisation on the dashboard for five minutes, as if they still worked."""
    cutoff = now - TELEMETRY_KEPT_S
    return {u: {k: v for k, v in d.items() if k != "received"} for u, d in devices.items()
            if d["received"] >= cutoff and getattr(nodes.get(d["node"]), "online", False)}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class GatewayService(Service):
    name = "gateway"

    def __init__(self) -> None:
        self.projector = Projector("gateway", SchedulerState, None, SchedulerState, STATE_SCHEMA,
                                   fold_commit=fold_commit)
        self.url = ""
        self.listeners: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()
        self.recent = RecentChanges(0)
        self.devices: dict[str, dict[str, Any]] = {}
        self._job_tenants: tuple[SchedulerState, int, frozenset[str]] | None = None
        """The tenants with jobs, and the state and job count they were taken from (jobs are never dropped here and
        never change tenant, so the same state with as many jobs has the same tenants)."""
        """Latest telemetry per device UUID (from the agents' core NATS subjects)."""

    # -- what api.py needs ------------------------------------------------------------------------------------------
    def jobs(self) -> dict[str, JobState]:
        return self.projector.state.jobs

    def inventory(self) -> Inventory:
        """Nodes, devices and leases, as this gateway has folded them from the log."""
        return self.projector.state.inv

    def live_jobs(self) -> list[JobState]:
        """The jobs not yet ended."""
        return self.projector.state.active()

    def tenants(self) -> frozenset[str]:
        """As ``visibility.tenants_of``, without a walk of every job ever submitted on each tenant's request (14 ms
        at 110,000 jobs)."""
        state = self.projector.state
        known = self._job_tenants
        if known is None or known[0] is not state or known[1] != len(state.jobs):
            known = self._job_tenants = (state, len(state.jobs), frozenset(j.tenant for j in state.jobs.values()))
        return known[2] | frozenset(state.inv.tenants)

    def cannot_start_now(self, spec: JobSpec) -> str:
        """Why a job of ``spec`` could not start on the nodes open now, whoever left ("" if it could)."""
        return cannot_start_now(self.projector.state, spec)

    def keyed_job(self, tenant: str, key: str) -> str | None:
        """The job ``tenant`` first submitted with idempotency key ``key``, if any."""
        return self.projector.state.keyed.get(key_index(tenant, key))

    async def caught_up(self, seq: int, timeout: float = 3.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.projector.seq < seq and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def caught_up_with_log(self, timeout: float = 3.0) -> None:
        """Wait (up to ``timeout``) until the state holds every commit the log holds now."""
        try:
            last = await self.ctx.store.last_seq()
        except AiosError:
            return  # no answer from JetStream: the state is what can be said
        await self.caught_up(last, timeout)

    async def ask(self, subject: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            msg = await self.ctx.nc.request(subject, json.dumps(body).encode(), timeout=timeout)
        except nats.errors.NoRespondersError:
            raise AiosError(f"nobody answers {subject}") from None
        except nats.errors.TimeoutError:
            raise AiosError(f"no answer on {subject} within {timeout:g}s") from None
        reply: dict[str, Any] = json.loads(msg.data)
        return reply

    def telemetry(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        for uuid in [u for u, d in self.devices.items() if d["received"] < now - TELEMETRY_KEPT_S]:
            del self.devices[uuid]  # a device that stopped reporting (a node gone) drops out
        return shown_telemetry(self.devices, self.projector.state.inv.nodes, now)

    def listen(self, last_event_id: str | None = None) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        """A queue of notifications for one event stream; given the ``Last-Event-ID`` of a stream that
        reconnects, it starts with the changes that stream missed, or with ``reset`` if they are not all held."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=LISTENER_QUEUE)
        if last_event_id is not None:
            missed = self.recent.since(last_event_id)
            if missed is None or len(missed) >= LISTENER_QUEUE:
                queue.put_nowait(("reset", {}))
            else:
                for data in missed:
                    queue.put_nowait(("change", data))
        self.listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        self.listeners.discard(queue)

    def _broadcast(self, kind: str, data: dict[str, Any]) -> None:
        for queue in list(self.listeners):
            if queue.full():  # a stalled client: never block the fold; it is told to fetch everything again
                while not queue.empty():
                    queue.get_nowait()
                if kind != "bye":  # (the end of the stream goes through, or the server waited a minute for it)
                    queue.put_nowait(("reset", {}))
                    continue
            queue.put_nowait((kind, data))

    def _on_commit(self, commit: Any) -> None:
        kind, _, ident = commit.aggregate.partition(".")
        data: dict[str, Any] = {"aggregate": commit.aggregate, "seq": commit.seq}
        if kind in JOB_AGGREGATES:
            job = self.projector.state.jobs.get(ident)
            data["tenant"] = job.tenant if job else None
            data["status"] = job.status if job else None
        elif kind == "tenant":  # a tenant's quota is its own business (GET /tenants shows a tenant its own only)
            data["tenant"] = ident
        data["id"] = self.recent.event_id(commit.seq)
        self.recent.add(commit.seq, data)
        self._broadcast("change", data)

    async def _on_telemetry(self, msg: Any) -> None:
        try:
            body = json.loads(msg.data)
        except (ValueError, RecursionError):
            return
        self.devices.update(telemetry_readings(body, self.projector.state.inv.nodes, time.monotonic()))

    async def _telemetry_ticks(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 3.0)
            except asyncio.TimeoutError:
                if self.listeners:
                    self._broadcast("telemetry", {"devices": len(self.devices)})

    # -- the shell ----------------------------------------------------------------------------------------------------
    async def run(self, ctx: ServiceContext) -> None:
        from aios.model_registry.replica import endpoints_bucket
        from aios.model_registry.serving import start_server_app

        self.ctx = ctx
        self.store = ctx.store
        tokens = load_tokens(dict(os.environ), ctx.settings.data_dir)
        await self.projector.rebuild(ctx.store)
        self.recent = RecentChanges(self.projector.seq, await ctx.store.incarnation())
        stop = asyncio.Event()
        follower = asyncio.ensure_future(self.projector.follow(ctx.store, self._on_commit, stop=stop))
        telemetry_sub = await ctx.nc.subscribe("aios.telemetry.*", cb=self._on_telemetry)
        ticks = asyncio.ensure_future(self._telemetry_ticks(stop))
        api = Api(self, tokens, max_jobs_per_tenant(dict(os.environ)))
        tenant_sub = await ctx.nc.subscribe(tenant_api.SUBJECTS, queue="aios-gateway",
                                            cb=tenant_api.TenantApi(api).on_request)
        app = build_app(api, metrics=ctx.metrics)
        host = os.environ.get("AIOS_GATEWAY_HOST", "127.0.0.1")
        want = int(os.environ.get("AIOS_GATEWAY_PORT", "8080"))
        try:
            runner, port = await start_server_app(app, host, want)
        except OSError:
            runner, port = await start_server_app(app, host, 0)
        self.url = f"http://{host}:{port}"
        log.info("gateway ready", extra={"url": self.url, "tenants": sorted(set(tokens.values()))})
        try:
            kv = await endpoints_bucket(ctx.store)
            while not ctx.stopping.is_set():
                try:
                    await kv.put(GATEWAY_KEY, self.url.encode())
                except Exception as exc:  # noqa: BLE001 - NATS away: announce again next round
                    log.warning("could not announce the gateway", extra={"error": str(exc)})
                try:
                    await asyncio.wait_for(ctx.stopping.wait(), 5.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            stop.set()
            self._broadcast("bye", {})  # open event streams end, so the server can stop at once
            await telemetry_sub.unsubscribe()
            await tenant_sub.unsubscribe()
            await asyncio.gather(follower, ticks)
            await runner.cleanup()

    def healthy(self) -> tuple[bool, str]:
        return True, f"{self.url or 'starting'}; {len(self.projector.state.jobs)} jobs folded"


def max_jobs_per_tenant(env: dict[str, str]) -> int | None:
    """``AIOS_GATEWAY_MAX_JOBS_PER_TENANT``: a whole number from 1, or ``off``; default ``api.MAX_JOBS_PER_TENANT``."""
    raw = env.get("AIOS_GATEWAY_MAX_JOBS_PER_TENANT", "").strip()
    if not raw:
        return MAX_JOBS_PER_TENANT
    if raw == "off":
        return None
    if not (raw.isdecimal() and len(raw) <= 9 and int(raw) >= 1):
        raise ConfigError(f"AIOS_GATEWAY_MAX_JOBS_PER_TENANT: a whole number, 1 or more, or off; got {raw[:32]!r}")
    return int(raw)


def from_env() -> GatewayService:
    return GatewayService()
