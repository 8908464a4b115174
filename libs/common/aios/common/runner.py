"""The service runner: the thin async shell every AIOS service runs in.

It loads settings, sets up JSON logs and tracing, connects to NATS (reconnecting forever with backoff), opens the
event store, serves ``/healthz`` and ``/metrics`` over aiohttp, runs the service, and on SIGTERM/SIGINT drains:
the service stops taking work and finishes what is in flight, then NATS is drained and the process exits 0.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import logging
import random
import signal
import sys
import time
from typing import Any

import nats
import nats.errors
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from aios.common import natsauth, tracing
from aios.common.httpmetrics import exposition
from aios.common.config import Settings, load_settings
from aios.common.errors import AiosError
from aios.common.logs import setup_logging
from aios.common.store import EventStore, connect_nats, ensure_stream_when_ready

log = logging.getLogger("aios.runner")


class ServiceContext:
    """What a running service gets: settings, the NATS connection, the event store, a metrics registry, and the
    ``stopping`` event it should watch to wind down."""

    def __init__(self, name: str, settings: Settings, nc: nats.NATS, store: EventStore,
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.settings = settings
        self.nc = nc
        self.store = store
        self.metrics = registry
        self.stopping = asyncio.Event()
        self.http_url = ""


class Service(abc.ABC):
    """One AIOS service. ``run`` does the work until ``ctx.stopping`` is set, then finishes in-flight work and
    returns; ``healthy`` answers /healthz (cheap, no I/O)."""

    name: str = "service"

    @abc.abstractmethod
    async def run(self, ctx: ServiceContext) -> None: ...

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"


async def _serve_http(ctx: ServiceContext, service: Service) -> web.AppRunner:
    started = time.time()

    async def healthz(_request: web.Request) -> web.Response:
        connected = ctx.nc.is_connected
        ok, detail = service.healthy()
        body = {"service": ctx.name, "nats": "connected" if connected else "disconnected", "detail": detail,
                "uptime_s": round(time.time() - started, 1), "stopping": ctx.stopping.is_set()}
        healthy = ok and connected and not ctx.stopping.is_set()
        return web.json_response(body, status=200 if healthy else 503)

    async def metrics(request: web.Request) -> web.Response:
        return exposition(request, ctx.metrics)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ctx.settings.http_host, ctx.settings.http_port)
    try:
        await site.start()
    except OSError as exc:  # taken (another process got the free port a launcher picked for it): any free port,
        if exc.errno != errno.EADDRINUSE or not ctx.settings.http_port:  # as the gateway's and the router's
            raise
        log.warning("http port taken; serving /healthz and /metrics on another",
                    extra={"port": ctx.settings.http_port})
        site = web.TCPSite(runner, ctx.settings.http_host, 0)
        await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    port = sockets[0].getsockname()[1] if sockets else ctx.settings.http_port
    ctx.http_url = f"http://{ctx.settings.http_host}:{port}"
    return runner


async def connect_with_backoff(servers: list[str], name: str, max_delay: float = 5.0) -> nats.NATS:
    """The first connection, retried with jittered exponential backoff until a server answers (nats-py only
    reconnects forever once it has connected)."""
    delay = 0.2
    while True:
        try:
            return await connect_nats(servers, name=name)
        except (OSError, nats.errors.Error, asyncio.TimeoutError) as exc:
            log.warning("NATS not reachable yet, retrying", extra={"servers": servers, "error": str(exc) or
                                                                     type(exc).__name__, "retry_in_s": round(delay, 2)})
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, max_delay)


async def run_service(service: Service, settings: Settings | None = None, *,
                      install_signal_handlers: bool = True, ready: asyncio.Event | None = None) -> int:
    """Run ``service`` until it returns or a stop signal arrives; returns the process exit code."""
    settings = settings or load_settings()
    setup_logging(service.name, settings.log_level)
    tracing.setup_tracing(f"aios-{service.name}")
    if not settings.servers:
        log.error("AIOS_NATS_URL is not set: a service needs a NATS server (use `aios up` for a local cluster)")
        return 2
    registry = CollectorRegistry()
    up = Gauge("aios_service_up", "1 while the service runs", ["service"], registry=registry)
    nats_connected = Gauge("aios_nats_connected", "1 while connected to NATS", ["service"], registry=registry)
    nc = await connect_with_backoff(settings.servers, f"aios-{service.name}")
    store = EventStore(nc, settings.servers, replicas=settings.stream_replicas)
    try:
        await ensure_stream_when_ready(store)
    except AiosError as exc:  # JetStream never answered, or the stream cannot be brought to what this code needs
        log.error("service cannot start", extra={"error": str(exc)})
        print(f"aios {service.name}: {exc}", file=sys.stderr, flush=True)
        await store.close()
        return 1
    ctx = ServiceContext(service.name, settings, nc, store, registry)
    nats_connected.labels(service.name).set_function(lambda: 1.0 if nc.is_connected else 0.0)
    http = await _serve_http(ctx, service)
    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ctx.stopping.set)
    up.labels(service.name).set(1)
    log.info("service started", extra={"http": ctx.http_url, "nats": natsauth.redacted(settings.servers)})
    if ready is not None:
        ready.set()
    code = 0
    try:
        await service.run(ctx)
    except AiosError as exc:
        log.error("service cannot run", extra={"error": str(exc)})
        print(f"aios {service.name}: {exc}", file=sys.stderr, flush=True)
        code = 2
    except Exception:
        log.exception("service failed")
        code = 1
    finally:
        up.labels(service.name).set(0)
        ctx.stopping.set()
        await http.cleanup()
        try:
            await asyncio.wait_for(nc.drain(), 10)
        except (asyncio.TimeoutError, nats.errors.Error):
            pass
        await store.close()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("service stopped", extra={"exit_code": code})
    return code


def main_for(service: Service) -> None:
    """Entry point helper: ``aios <service>`` calls this."""
    raise SystemExit(asyncio.run(run_service(service)))


def run_blocking(service: Service, **kwargs: Any) -> int:
    return asyncio.run(run_service(service, **kwargs))
