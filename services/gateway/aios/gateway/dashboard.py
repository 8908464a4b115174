"""The web dashboard: one static page (static/dashboard.html and .js) that reads the HTTP API with the caller's token
and refreshes on the server-sent events of ``/api/v1/events``. No build step, no framework: the page is served as is."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"


def add_routes(app: web.Application) -> None:
    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "dashboard.html").read_bytes(), content_type="text/html")

    async def script(_request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "dashboard.js").read_bytes(), content_type="application/javascript")

    async def style(_request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "dashboard.css").read_bytes(), content_type="text/css")
    app.router.add_get("/", page)
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard.js", script)
    app.router.add_get("/dashboard.css", style)
