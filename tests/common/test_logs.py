"""JSON logs: what a client's malformed request leaves in a service's log."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from aiohttp import web

from aios.common.logs import setup_logging
from aios.common.natsserver import free_port


async def test_an_over_long_url_is_one_warning_line_not_a_traceback() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    setup_logging("gateway", stream=out)
    async def jobs(_request: web.Request) -> web.Response:
        return web.json_response([])
    app = web.Application()
    app.router.add_get("/api/jobs", jobs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/jobs?tenant=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
    finally:
        await runner.cleanup()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer[:80]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    refused = [r for r in lines if r["logger"] == "aiohttp.server"]
    assert len(refused) == 1, lines
    assert refused[0]["level"] == "warning" and "exc" not in refused[0], refused[0]
    assert "malformed HTTP request refused (400)" in refused[0]["msg"]
    assert "8190 bytes" in refused[0]["msg"] and "127.0.0.1" in refused[0]["msg"]
    assert len(refused[0]["msg"]) < 400  # the client's 20 KB are not copied into the log
