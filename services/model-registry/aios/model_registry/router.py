"""One HTTP endpoint in front of every serving replica, round robin over the live replicas announced in
``AIOS_ENDPOINTS``, and on to the next one if a replica does not answer (a replica restarting or moving to another
node costs a retry, not a failed request):

- ``/serve/<job>/v2/models/<name>/...``: the replicas of one serving job (a deployment: what ``aios serve`` prints);
- ``/v2/models/<name>/versions/<v>/...``: replicas serving version ``v`` now, whichever job;
- ``/v2/models/<name>/...``: any replica of the model.

Without a replica, a request that can never succeed (a model the registry does not hold, a version it has not, a
serving job that ended or serves another model) is a 404. Any other is held up to ``hold_s`` (10 s) for a replica
to come up, as Knative's activator holds requests for a revision scaling up: a deployment restarting or moving (a
drained node, a replica that died) costs a wait, not a failed request; then it is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from typing import Any, Callable

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry

from aios.common import httpjson
from aios.common.httpmetrics import request_metrics
from aios.common.store import EventStore
from aios.model_registry.replica import EndpointBook
from aios.model_registry.serving import MAX_BODY

ROUTER_KEY = "_router"


class Router:
    def __init__(self, store: EventStore,
                 unservable: Callable[[str, str | None, str | None], str | None] | None = None,
                 metrics: CollectorRegistry | None = None, timeout_s: float = 30.0, hold_s: float = 10.0) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.hold_s = hold_s
        self.metrics = metrics
        self.unservable = unservable
        """Why a request for (model, job, version) can never be served, or None (None: assume it can)."""
        self.book = EndpointBook(store)
        self._turn = itertools.count()
        self.session: aiohttp.ClientSession | None = None

    async def replicas(self, model: str, job: str | None = None, version: str | None = None,
                       fresh: bool = False) -> list[str]:
        if fresh:  # the watch brings announcements as they are made: give a just-started replica a moment
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.book.changed.wait(), 0.5)
        return [e["url"] for e in self.book.endpoints(model) if (job is None or e.get("job") == job)
                and (version is None or str(e.get("version")) == version)]

    def app(self) -> web.Application:
        counted = [request_metrics(self.metrics, "aios_router")] if self.metrics is not None else []
        app = httpjson.application(MAX_BODY, *counted)  # as a replica takes
        app.router.add_get("/v2", self._metadata)
        app.router.add_get("/v2/health/live", self._ok)
        app.router.add_get("/v2/health/ready", self._ok)
        app.router.add_route("*", "/serve/{job}/v2/models/{name}{rest:.*}", self._forward)
        app.router.add_route("*", "/v2/models/{name}{rest:.*}", self._forward)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _ok(self, _request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def _metadata(self, _request: web.Request) -> web.Response:
        """The Open Inference Protocol's server metadata."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("aios")
        except PackageNotFoundError:
            ours = "unknown"
        return web.json_response({"name": "aios-router", "version": ours, "extensions": []})

    async def _open(self, _app: web.Application) -> None:
        self.book.start()

    async def _close(self, _app: web.Application) -> None:
        await self.book.stop()
        if self.session is not None:
            await self.session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        name, job = request.match_info["name"], request.match_info.get("job")
        pinned = re.match(r"^/versions/([^/]+)", request.match_info.get("rest", ""))
        version = pinned.group(1) if pinned else None
        path = request.path_qs[len(f"/serve/{job}"):] if job else request.path_qs
        try:
            body = await request.read()
        except RequestPayloadError as exc:  # Content-Encoding: gzip on a body that is not: a 500 and a traceback
            return web.json_response({"error": httpjson.unreadable(request, exc)}, status=400)
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold_s
        tried: list[str] = []
        urls: list[str] = []
        while True:
            urls = await self.replicas(name, job, version)
            untried = [u for u in urls if u not in tried]
            if not untried:
                never = self.unservable(name, job, version) if not urls and self.unservable else None
                if never:
                    return web.json_response({"error": f"model: {never}"}, status=404)
                if loop.time() >= deadline:
                    break
                # none up (starting, moving), or every one refused: wait for the replicas to change, then try again
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.book.changed.wait(), min(0.5, deadline - loop.time()))
                tried.clear()
                continue
            url = untried[next(self._turn) % len(untried)]
            tried.append(url)
            try:
                async with self.session.request(request.method, url + path, data=body,
                                                headers={"Content-Type": request.content_type}) as r:
                    payload = await r.read()
                    return web.Response(body=payload, status=r.status, content_type=r.content_type,
                                        headers={"X-AIOS-Replica": url})
            except TimeoutError:  # (aiohttp's read timeout too) there but slow: sending it again only waits longer
                return web.json_response({"error": f"model: replica {url} did not answer within {self.timeout_s:g} s"},
                                         status=504)
            except aiohttp.ClientConnectionError:  # gone (restarting, moving): the next one
                continue
        what = f"{name!r}" + (f" in job {job}" if job else "") + (f" at version {version}" if version else "")
        if urls:  # announced, but refusing connections all along
            return web.json_response({"error": f"model: no replica of {what} answered within {self.hold_s:g} s "
                                               f"(tried {', '.join(urls)})"}, status=503)
        return web.json_response({"error": f"model: no replica serves {what} (waited {self.hold_s:g} s; aios models "
                                           "endpoints)"}, status=503)


async def announce_router(store: EventStore, url: str) -> None:
    from aios.model_registry.replica import endpoints_bucket

    kv = await endpoints_bucket(store)
    await kv.put(ROUTER_KEY, url.encode())


async def router_url(store: EventStore) -> str | None:
    import nats.js.errors

    from aios.model_registry.replica import endpoints_bucket

    kv = await endpoints_bucket(store)
    try:
        entry = await kv.get(ROUTER_KEY)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.value.decode() if entry.value else None


