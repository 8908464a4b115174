"""Serving one model over HTTP with the Open Inference Protocol v2 (what KServe and Triton clients speak), with
dynamic batching and latency figures.

- ``GET /v2/health/live|ready``, ``GET /v2``, ``GET /v2/models/<name>[/versions/<v>]``, ``GET
  /v2/models/<name>/ready``, ``POST /v2/models/<name>[/versions/<v>]/infer``, ``GET /v2/models/<name>/stats``
  (p50/p99 latency, requests, batches), ``GET /metrics`` (Prometheus).
- Requests are validated before they reach the model: a 4xx names the field and the reason (wrong tensor name,
  datatype, shape, too many rows, non-finite values, a body that is not JSON or too large).
- :class:`Batcher`: requests that arrive while a batch is being computed, or within ``max_delay_ms``, are run as
  one matrix product (up to ``max_batch`` rows) and the rows handed back to each caller.
- :meth:`ModelServer.swap` replaces the model between two batches: requests in flight finish on the version they
  started with, none is dropped (how moving an alias rolls a replica).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from aios.common import httpjson
from aios.common.httpmetrics import exposition
from aios.model_registry.nn import Model

class SignatureChanged(ValueError):
    """A version that takes or gives other shapes than the one served: not swapped in under running clients."""


MAX_ROWS = 4096
"""Rows one request may carry (more is a 413: split it)."""
MAX_BODY = 16 << 20
NUMERIC = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT8": np.int8, "INT16": np.int16,
           "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Loaded:
    name: str
    version: int
    model: Model


def _all_numbers(data: list[Any]) -> bool:
    """Every leaf of a nested list is an int or a float (not a bool, not a string); iteratively, as a request may
    nest deeply."""
    stack = [data]
    while stack:
        for item in stack.pop():
            if isinstance(item, list):
                stack.append(item)
            elif isinstance(item, bool) or not isinstance(item, (int, float)):
                return False
    return True


def parse_infer(body: Any, inputs: int) -> tuple[np.ndarray, str | None, list[str] | None]:
    """(rows as float32 [n, inputs], request id, requested output names) from an OIP v2 inference request."""
    if not isinstance(body, dict):
        raise BadRequest("body: a JSON object with 'inputs' is expected")
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or len(tensors) != 1 or not isinstance(tensors[0], dict):
        raise BadRequest("inputs: exactly one input tensor is expected")
    t = tensors[0]
    name, datatype, shape, data = t.get("name"), t.get("datatype"), t.get("shape"), t.get("data")
    if name != "input":
        raise BadRequest(f"inputs[0].name: {name!r} is not the model's input 'input'")
    if datatype not in NUMERIC:
        raise BadRequest(f"inputs[0].datatype: {datatype!r} is not a numeric type ({', '.join(NUMERIC)})")
    if (not isinstance(shape, list) or len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                  for s in shape)):
        raise BadRequest(f"inputs[0].shape: {shape!r} is not [rows, {inputs}]")
    rows, cols = shape
    if cols != inputs:
        raise BadRequest(f"inputs[0].shape: {cols} features per row, the model takes {inputs}")
    if rows < 1:
        raise BadRequest(f"inputs[0].shape: {rows} rows; at least 1 is needed")
    if rows > MAX_ROWS:
        raise BadRequest(f"inputs[0].shape: {rows} rows is more than {MAX_ROWS} per request; split it", 413)
    if not isinstance(data, list):
        raise BadRequest("inputs[0].data: a (flat or nested) list of numbers is expected")
    if not _all_numbers(data):  # numpy reads "1" and true as numbers: they were answered as if they were
        raise BadRequest(f"inputs[0].data: not all numbers (datatype {datatype})")
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadRequest(f"inputs[0].data: not all numbers (datatype {datatype})") from None
    except OverflowError:  # an integer of 400 digits: a 500 with a traceback
        raise BadRequest(f"inputs[0].data: values beyond the range of {datatype}") from None
    if array.size != rows * cols:
        raise BadRequest(f"inputs[0].data: {array.size} values for shape [{rows}, {cols}] ({rows * cols} expected)")
    if not np.isfinite(array).all():
        raise BadRequest("inputs[0].data: NaN or infinite values")
    kind = NUMERIC[datatype]
    limits = np.finfo(kind) if np.issubdtype(kind, np.floating) else np.iinfo(kind)
    fp32 = np.finfo(np.float32)  # what the model computes in: 1e39 became infinity, and NaN logits a 200
    if array.size and (array.min() < max(limits.min, fp32.min) or array.max() > min(limits.max, fp32.max)):
        raise BadRequest(f"inputs[0].data: values beyond the range of {datatype}"
                         + (" (the model computes in FP32)" if datatype == "FP64" else ""))
    if datatype.startswith(("INT", "UINT")) and not np.all(array == np.round(array)):
        raise BadRequest(f"inputs[0].data: fractional values for datatype {datatype}")
    outputs = body.get("outputs")
    names = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise BadRequest("outputs: a list of {\"name\": ...} is expected")
        names = [o.get("name") for o in outputs]
        unknown = [n for n in names if n not in ("output", "label")]
        if unknown:
            raise BadRequest(f"outputs: unknown output(s) {unknown!r} (output, label)")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id: a string is expected")
    return array.reshape(rows, cols).astype(np.float32), request_id, names


class Batcher:
    """Runs the logits of many small requests as one product; ``max_batch=1`` serves each on its own."""

    def __init__(self, server: "ModelServer", max_batch: int = 256, max_delay_ms: float = 2.0) -> None:
        self.server = server
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000
        self.queue: deque[tuple[np.ndarray, asyncio.Future[tuple[np.ndarray, Loaded]]]] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def infer(self, rows: np.ndarray) -> tuple[np.ndarray, Loaded]:
        if self.max_batch <= 1:
            loaded = self.server.loaded
            self.server.batch_rows.observe(len(rows))
            self.server.batches += 1
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is answered as a 400, not logged
                return loaded.model.logits(rows), loaded
        fut: asyncio.Future[tuple[np.ndarray, Loaded]] = asyncio.get_running_loop().create_future()
        self.queue.append((rows, fut))
        self.wakeup.set()
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())
        return await fut

    async def _run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            if not self.queue:
                continue
            if self.max_delay > 0 and sum(len(r) for r, _ in self.queue) < self.max_batch:
                await asyncio.sleep(self.max_delay)  # let the requests already on their way join
            batch, total = [], 0
            while self.queue and (not batch or total + len(self.queue[0][0]) <= self.max_batch):
                rows, fut = self.queue.popleft()
                batch.append((rows, fut))
                total += len(rows)
            if self.queue:
                self.wakeup.set()
            loaded = self.server.loaded  # one version for the whole batch
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    logits = loaded.model.logits(np.concatenate([r for r, _ in batch]))
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.server.batch_rows.observe(total)
            self.server.batches += 1
            at = 0
            for rows, fut in batch:
                if not fut.done():
                    fut.set_result((logits[at:at + len(rows)], loaded))
                at += len(rows)


class ModelServer:
    def __init__(self, name: str, version: int, model: Model, max_batch: int = 256, max_delay_ms: float = 2.0,
                 window: int = 10_000) -> None:
        self.loaded = Loaded(name, version, model)
        self.batcher = Batcher(self, max_batch, max_delay_ms)
        self.latencies: deque[float] = deque(maxlen=window)
        self.requests = 0
        self.errors = 0
        self.batches = 0
        """Model calls: fewer than requests when batching merges them."""
        self.registry = CollectorRegistry()
        self.latency = Histogram("aios_serve_request_seconds", "inference request latency", ["model"],
                                 registry=self.registry,
                                 buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2))
        self.batch_rows = Histogram("aios_serve_batch_rows", "rows per model call", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
        self.failures = Counter("aios_serve_request_errors", "rejected or failed requests", ["status"],
                                registry=self.registry)
        self.swaps = 0

    def swap(self, version: int, model: Model) -> None:
        """Serve ``version`` from the next batch on (the signature must match: clients keep their shapes)."""
        old = self.loaded.model
        if (model.inputs, model.outputs) != (old.inputs, old.outputs):
            raise SignatureChanged(f"version {version} takes {model.inputs} and gives {model.outputs}, not "
                             f"{old.inputs} -> {old.outputs} like the version being served")
        self.loaded = Loaded(self.loaded.name, version, model)
        self.swaps += 1

    def stats(self) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {"model": self.loaded.name, "version": self.loaded.version, "requests": self.requests,
                "errors": self.errors, "batches": self.batches, "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3), "window": len(self.latencies),
                "max_batch": self.batcher.max_batch, "swaps": self.swaps}

    def metadata(self) -> dict[str, Any]:
        m = self.loaded.model
        return {"name": self.loaded.name, "versions": [str(self.loaded.version)], "platform": "aios-numpy",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, m.inputs]}],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, m.outputs]},
                            {"name": "label", "datatype": "BYTES" if m.labels else "INT64", "shape": [-1]}]}

    # -- HTTP ---------------------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = httpjson.application(MAX_BODY)
        app.router.add_get("/v2/health/live", self._ok)
        app.router.add_get("/v2/health/ready", self._ok)
        app.router.add_get("/v2", self._server_meta)
        app.router.add_get("/v2/models/{name}", self._model_meta)
        app.router.add_get("/v2/models/{name}/versions/{version}", self._model_meta)
        app.router.add_get("/v2/models/{name}/ready", self._model_ready)
        app.router.add_get("/v2/models/{name}/versions/{version}/ready", self._model_ready)
        app.router.add_get("/v2/models/{name}/stats", self._stats)
        app.router.add_post("/v2/models/{name}/infer", self._infer)
        app.router.add_post("/v2/models/{name}/versions/{version}/infer", self._infer)
        app.router.add_get("/metrics", self._metrics)
        return app

    def _check_model(self, request: web.Request) -> None:
        name, version = request.match_info["name"], request.match_info.get("version")
        if name != self.loaded.name:
            raise BadRequest(f"model: {name!r} is not served here (this endpoint serves {self.loaded.name!r})", 404)
        if version is not None and version != str(self.loaded.version):
            raise BadRequest(f"version: {version} is not being served (now: {self.loaded.version})", 404)

    @staticmethod
    def _error(exc: BadRequest) -> web.Response:
        return web.json_response({"error": str(exc)}, status=exc.status)

    async def _ok(self, _request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def _server_meta(self, _request: web.Request) -> web.Response:
        return web.json_response({"name": "aios", "version": "1", "extensions": ["statistics"]})

    async def _model_meta(self, request: web.Request) -> web.Response:
        try:
            self._check_model(request)
        except BadRequest as exc:
            return self._error(exc)
        return web.json_response(self.metadata())

    async def _model_ready(self, request: web.Request) -> web.Response:
        try:
            self._check_model(request)
        except BadRequest as exc:
            return self._error(exc)
        return web.json_response({"name": self.loaded.name, "ready": True})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _metrics(self, request: web.Request) -> web.Response:
        return exposition(request, self.registry)

    async def _infer(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        self.requests += 1
        try:
            self._check_model(request)
            try:
                body = await httpjson.read_json(request, json.loads)
            except web.HTTPRequestEntityTooLarge:
                raise BadRequest(f"body: larger than {MAX_BODY} bytes; split the request", 413) from None
            except httpjson.BodyError as exc:  # a gzip header on plain JSON, or deep nesting, were a 500
                raise BadRequest(str(exc)) from None
            rows, request_id, names = parse_infer(body, self.loaded.model.inputs)
            logits, loaded = await self.batcher.infer(rows)
            if not np.isfinite(logits).all():  # in range, but the arithmetic overflowed: NaN logits, label 0, a 200
                raise BadRequest("inputs[0].data: the model's outputs overflow FP32 for these values (too large?)")
        except BadRequest as exc:
            self.errors += 1
            self.failures.labels(str(exc.status)).inc()
            return self._error(exc)
        labels = loaded.model.labels
        predicted = logits.argmax(axis=1)
        outputs = []
        if names is None or "output" in names:
            outputs.append({"name": "output", "datatype": "FP32", "shape": list(logits.shape),
                            "data": logits.astype(np.float32).ravel().tolist()})
        if names is None or "label" in names:
            outputs.append({"name": "label", "datatype": "BYTES" if labels else "INT64", "shape": [len(predicted)],
                            "data": [labels[i] for i in predicted] if labels else predicted.tolist()})
        reply = {"model_name": loaded.name, "model_version": str(loaded.version), "outputs": outputs}
        if request_id is not None:
            reply["id"] = request_id
        elapsed = time.perf_counter() - started
        self.latencies.append(elapsed)
        self.latency.labels(loaded.name).observe(elapsed)
        return web.json_response(reply)


async def start_server(server: ModelServer, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Listen on ``port`` (0: any free one); returns the runner (for cleanup) and the port."""
    return await start_server_app(server.app(), host, port)


async def start_server_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = getattr(site, "_server").sockets  # the bound port when 0 was asked
    return runner, int(sockets[0].getsockname()[1])
