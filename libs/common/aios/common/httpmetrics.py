"""Prometheus metrics of an aiohttp server's requests, by route template (``/api/v1/jobs/{job}``, never the job id:
one series per route, not per job) and status: what a platform team alerts on (error ratio, latency) for the
gateway and the inference router."""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_made: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, tuple[Counter, Histogram]]] = \
    weakref.WeakKeyDictionary()

UNMATCHED = "(no route)"
"""The route label of requests no route matched (404s of any path share one series)."""
CLIENT_GONE = "499"
"""The status label of a request whose client went away before the answer was done (nginx's 499)."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted by name; any other is ``other`` (a label per made-up method would grow without bound)."""
LONG_LIVED = web.ResponseKey("aios_long_lived", bool)
"""Set (``response[LONG_LIVED] = True``) on a response that lasts as long as its client wants (followed logs, an
event stream): it is counted, not timed."""


def exposition(request: web.Request, registry: CollectorRegistry) -> web.Response:
    """``/metrics``: the text format a scraper asks for in ``Accept`` (OpenMetrics or Prometheus' 0.0.4), labelled as
    what it is (the classic text went out labelled version=1.0.0 whatever was asked)."""
    encode, content_type = choose_encoder(request.headers.get("Accept"))
    return web.Response(body=encode(registry), headers={"Content-Type": content_type})


def route_of(request: web.Request) -> str:
    """The route template; for a 405 (the path has a route, not for this method) that route's, found by path (it was
    counted with the 404s of made-up paths)."""
    info = request.match_info.route.resource if request.match_info.route is not None else None
    if info is not None:
        return info.canonical
    if request.match_info.http_exception is not None and request.match_info.http_exception.status == 405:
        for resource in request.app.router.resources():
            found = resource.get_info()
            if found.get("path") == request.path or ("pattern" in found and found["pattern"].fullmatch(request.path)):
                return resource.canonical
    return UNMATCHED


def request_metrics(registry: CollectorRegistry, prefix: str) -> web.middleware:  # type: ignore[valid-type]
    """A middleware counting requests (``<prefix>_http_requests_total``) by method, route and status, and timing
    them (``<prefix>_http_request_seconds``), but for those marked ``LONG_LIVED`` (followed logs, events): they
    last as long as their client wants, which is no latency. (Every streamed response went untimed, a log fetch
    that ends too.)"""
    made = _made.setdefault(registry, {})
    if prefix not in made:  # a server built again (its port taken, say) counts on in the same series
        made[prefix] = (
            Counter(f"{prefix}_http_requests", "HTTP requests answered, by method, route and status",
                    ["method", "route", "status"], registry=registry),
            Histogram(f"{prefix}_http_request_seconds", "HTTP request latency, by method and route",
                      ["method", "route"], registry=registry,
                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)))
    requests, seconds = made[prefix]

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status, timed = "500", True
        try:
            response = await handler(request)
            status = str(response.status)
            timed = not response.get(LONG_LIVED, False)
            return response
        except web.HTTPException as exc:
            status = str(exc.status)
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            status, timed = CLIENT_GONE, False  # the client left (a followed log closed): not a server error
            raise
        finally:
            route, method = route_of(request), request.method if request.method in METHODS else "other"
            requests.labels(method, route, status).inc()
            if timed:
                seconds.labels(method, route).observe(time.perf_counter() - start)
    return count
