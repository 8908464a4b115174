"""Request metrics of the gateway's API and the inference router: counted by route template and status, timed by
route, so a platform team can alert on error ratios and latency (they exported none)."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from aios.gateway.api import Api, build_app
from aios.model_registry.router import Router
from aios.model_registry.serving import start_server_app


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_the_gateway_counts_requests_by_route_template_and_status() -> None:
    registry = CollectorRegistry()
    runner, port = await start_server_app(build_app(Api(backend=None, tokens={"t0k3n-0123456789": "alice"}),
                                                    metrics=registry))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for job in ("j-1", "j-2", "j-3"):  # three jobs, one series: the route's template, not the id
                async with http.get(f"{base}/api/v1/jobs/{job}") as r:
                    assert r.status == 401
            async with http.get(f"{base}/api/v1/no-such-thing") as r:
                assert r.status == 404
            async with http.get(f"{base}/openapi.json") as r:
                assert r.status == 200
            async with http.delete(f"{base}/openapi.json") as r:  # a route, not for this method
                assert r.status == 405
    finally:
        await runner.cleanup()
    total = "aios_gateway_http_requests_total"
    assert count(registry, total, method="GET", route="/api/v1/jobs/{job}", status="401") == 3
    assert count(registry, total, method="GET", route="(no route)", status="404") == 1
    assert count(registry, total, method="GET", route="/openapi.json", status="200") == 1
    # a 405 is its route's (it was counted with the 404s of made-up paths, as "(no route)")
    assert count(registry, total, method="DELETE", route="/openapi.json", status="405") == 1
    assert count(registry, "aios_gateway_http_request_seconds_count", method="GET", route="/api/v1/jobs/{job}") == 3
    assert not [s for m in registry.collect() for s in m.samples if "j-1" in str(s.labels)]


async def test_the_router_counts_its_refusals(store: Any) -> None:
    registry = CollectorRegistry()
    runner, port = await start_server_app(Router(store, unservable=lambda *_: "no such model", metrics=registry).app())
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/v2/models/nothing/infer", json={}) as r:
                assert r.status == 404
            async with http.get(f"http://127.0.0.1:{port}/v2/health/live") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
    total = "aios_router_http_requests_total"
    assert count(registry, total, method="POST", route="/v2/models/{name}{rest}", status="404") == 1
    assert count(registry, total, method="GET", route="/v2/health/live", status="200") == 1


async def test_a_stream_is_counted_not_timed_and_a_client_that_leaves_is_no_server_error() -> None:
    """A followed log closed by its reader was counted as a 500 (the write after it left raised), and streams'
    lifetimes went into the latency histogram. A streamed answer that ends by itself (a log fetch) is a latency
    like any other: it went untimed too."""
    import asyncio

    from aiohttp import web

    from aios.common.httpmetrics import LONG_LIVED, request_metrics

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response[LONG_LIVED] = True
        await response.prepare(request)
        while True:
            await response.write(b"line\n")
            await asyncio.sleep(0.01)

    async def done(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"all\n")
        await response.write_eof()
        return response
    registry = CollectorRegistry()
    app = web.Application(middlewares=[request_metrics(registry, "t")])
    app.router.add_get("/endless", endless)
    app.router.add_get("/done", done)
    runner, port = await start_server_app(app)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/endless") as r:
                await r.content.readline()  # then leave
            async with http.get(f"http://127.0.0.1:{port}/done") as r:
                assert await r.text() == "all\n"
        deadline = asyncio.get_running_loop().time() + 5
        while not count(registry, "t_http_requests_total", method="GET", route="/endless", status="499"):
            assert asyncio.get_running_loop().time() < deadline, list(registry.collect())
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    assert count(registry, "t_http_requests_total", method="GET", route="/endless", status="500") == 0
    assert count(registry, "t_http_requests_total", method="GET", route="/done", status="200") == 1
    assert count(registry, "t_http_request_seconds_count", method="GET", route="/done") == 1
    assert count(registry, "t_http_request_seconds_count", method="GET", route="/endless") == 0


def test_metrics_are_served_in_the_format_the_scraper_asks_for() -> None:
    """The classic text went out labelled version=1.0.0 (OpenMetrics' version) whatever was asked."""
    from aiohttp.test_utils import make_mocked_request

    from aios.common.httpmetrics import exposition

    registry = CollectorRegistry()
    Counter("aios_things", "things done", registry=registry).inc()
    plain = exposition(make_mocked_request("GET", "/metrics"), registry)
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"aios_things_total 1.0" in plain.body and b"# EOF" not in plain.body
    open_metrics = exposition(make_mocked_request("GET", "/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"}), registry)
    assert open_metrics.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert open_metrics.body.endswith(b"# EOF\n")
