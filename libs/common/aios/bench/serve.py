"""``aios bench serve``: requests per second and latency of one serving replica on loopback, batched and unbatched.

The replica (:class:`aios.model_registry.serving.ModelServer` with a digits MLP of the built-in trainer) runs in its
own process; a client process keeps ``concurrency`` requests of ``rows`` example(s) each in flight for ``seconds``
(closed loop, after a warm-up) and measures each request's latency from send to parsed reply. The same run is made
with dynamic batching (up to 256 rows, 2 ms window) and without (one model call per request).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from typing import Any

import numpy as np

MODES = {"batched": {"max_batch": 256, "max_delay_ms": 2.0}, "unbatched": {"max_batch": 1, "max_delay_ms": 0.0}}


def _model_bytes(hidden: int) -> bytes:
    from aios.model_registry import builtin
    from aios.trainer.mlp import TrainerConfig

    cfg = TrainerConfig(dataset="digits", classes=10, hidden=hidden, steps=20, samples=1000)
    return builtin.model_from_params(cfg, builtin.train_locally(cfg)).encode()


def _server_main(model: bytes, options: dict[str, Any], ready: Any, done: Any) -> None:
    from aios.model_registry import nn
    from aios.model_registry.serving import ModelServer, start_server

    async def run() -> None:
        server = ModelServer("digits", 1, nn.decode(model), **options)
        runner, port = await start_server(server)
        ready.put(port)
        while done.empty():
            await asyncio.sleep(0.1)
        done.get()
        ready.put(server.stats())
        await runner.cleanup()
    asyncio.run(run())


async def _load(port: int, seconds: float, concurrency: int, rows: int) -> dict[str, Any]:
    import aiohttp

    x = np.random.default_rng(0).random((rows, 64)).astype(np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": x.ravel().tolist()}]}
    url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                async with http.post(url, json=body) as r:
                    await r.json()
                    if r.status != 200:
                        errors += 1
                if record:
                    latencies.append(time.perf_counter() - t0)
        await asyncio.gather(*(worker(time.perf_counter() + 1.0, False) for _ in range(concurrency)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3)}


def _client_main(port: int, seconds: float, concurrency: int, rows: int, out: Any) -> None:
    out.put(asyncio.run(_load(port, seconds, concurrency, rows)))


def main(seconds: float = 10.0, concurrency: int = 32, rows: int = 1, hidden: int = 128) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    model = _model_bytes(hidden)
    report: dict[str, Any] = {"seconds": seconds, "concurrency": concurrency, "rows_per_request": rows,
                              "model": f"digits MLP 64-{hidden}-10 (aios-mlp/1)"}
    for mode, options in MODES.items():
        ready, done, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
        server = ctx.Process(target=_server_main, args=(model, options, ready, done), daemon=True)
        server.start()
        port = ready.get(timeout=60)
        client = ctx.Process(target=_client_main, args=(port, seconds, concurrency, rows, out), daemon=True)
        client.start()
        result = out.get(timeout=seconds + 120)
        client.join(30)
        done.put("stop")
        stats = ready.get(timeout=30)
        server.join(30)
        result["model_calls"] = stats["batches"]
        result["mean_rows_per_call"] = round(stats["requests"] * rows / max(1, stats["batches"]), 2)
        report[mode] = result
    report.update({k: report["batched"][k] for k in ("requests_per_s", "p50_ms", "p99_ms")})
    report["batched_over_unbatched_rps"] = round(report["batched"]["requests_per_s"]
                                                 / max(1e-9, report["unbatched"]["requests_per_s"]), 3)
    return report
