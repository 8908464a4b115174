"""A trace started where an event is appended is continued where it is consumed (same trace id, parent link)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aios.common import tracing
from aios.common.events import JobSubmitted
from aios.common.store import EventStore

_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    # The global provider can be set once per process; patch the getter instead so other tests keep the no-op one.
    monkeypatch.setattr(tracing, "tracer", lambda: _provider.get_tracer("aios"))
    _exporter.clear()
    yield _exporter


async def test_consumer_continues_the_publishers_trace(store: EventStore, spans: InMemorySpanExporter) -> None:
    sub = store.subscribe(1)
    with _provider.get_tracer("test").start_as_current_span("submit job") as root:
        await store.append("job.t1", JobSubmitted(aggregate_id="t1", tenant="nlp"))
    commit = await sub.next(5)
    with tracing.process_span(f"{store.prefix}.{commit.aggregate}", commit.trace_headers):
        pass
    await sub.close()

    by_name = {s.name: s for s in spans.get_finished_spans()}
    publish = by_name[f"publish {store.prefix}.job.t1"]
    process = by_name[f"process {store.prefix}.job.t1"]
    trace_id = root.get_span_context().trace_id
    assert publish.context.trace_id == process.context.trace_id == trace_id
    assert publish.kind == trace.SpanKind.PRODUCER and process.kind == trace.SpanKind.CONSUMER
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert publish.attributes["messaging.system"] == "nats"
    # The event itself records the trace it was written under.
    assert commit.events[0].trace_id == format(trace_id, "032x")


def test_inject_extract_round_trip() -> None:
    with _provider.get_tracer("test").start_as_current_span("x") as span:
        headers = tracing.inject({})
    assert headers["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
    ctx = trace.get_current_span(tracing.extract(headers)).get_span_context()
    assert ctx.span_id == span.get_span_context().span_id and ctx.is_remote
    assert not trace.get_current_span(tracing.extract({})).get_span_context().is_valid


def test_header_block_parsing() -> None:
    block = b"NATS/1.0\r\nNats-Msg-Id: k1\r\ntraceparent: 00-abc-def-01\r\n\r\n"
    assert tracing.parse_header_block(block) == {"Nats-Msg-Id": "k1", "traceparent": "00-abc-def-01"}
    assert tracing.parse_header_block(None) == {}


def test_setup_reads_otel_variables() -> None:
    """In a fresh process (the global provider can be set once): exporter and service name come from OTEL_*."""
    code = ("from aios.common import tracing\n"
            "p = tracing.setup_tracing('fallback-name')\n"
            "with tracing.publish_span('aios.evt.job.x', {}):\n    pass\n"
            "getattr(p, 'shutdown', lambda: None)()\n")
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "aios-from-env"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"name": "publish aios.evt.job.x"' in out.stdout and '"service.name": "aios-from-env"' in out.stdout
    assert '"kind": "SpanKind.PRODUCER"' in out.stdout
    env = {**os.environ, "OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "publish aios" not in out.stdout


async def test_a_request_that_carries_a_trace_is_continued_and_one_without_starts_its_own(
        spans: InMemorySpanExporter) -> None:
    """A job submitted over HTTP (or NATS) by a traced client began a trace of its own, unlinked to the caller's."""
    import aiohttp
    from aiohttp import web

    from aios.common import httpjson
    from aios.model_registry.serving import start_server_app

    async def submit(request: web.Request) -> web.Response:
        with tracing.job_span("submit job", "j1", None):
            return web.json_response({})
    app = httpjson.application(1024)
    app.router.add_post("/submit", submit)
    runner, port = await start_server_app(app)
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/submit", headers={"traceparent": caller}) as r:
                assert r.status == 200
            async with http.post(f"http://127.0.0.1:{port}/submit") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
    traced, alone = spans.get_finished_spans()
    assert format(traced.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert traced.parent is not None and format(traced.parent.span_id, "016x") == "b7ad6b7169203331"
    assert alone.parent is None and alone.context.trace_id != traced.context.trace_id
    with tracing.continuing({"traceparent": "garbage"}):  # a malformed header changes nothing
        with tracing.tracer().start_as_current_span("x") as span:
            assert span.parent is None


def test_a_long_runs_repeated_spans_are_thinned_and_the_rest_not_recorded(spans: InMemorySpanExporter) -> None:
    """A span per progress report and per checkpoint grew a long job's trace without bound (900 checkpoint spans in
    nine minutes; trace stores refuse such traces). Some of them are kept, dense at the start; the others' work
    records nothing, and what it sends on says it is not sampled."""
    thin = tracing.Thinned(min_gap_s=1.0, fraction=0.02)
    taken = [t for t in range(3 * 86400) if thin.take(float(t))]  # a report a second for three days
    assert taken[:5] == [0, 1, 2, 3, 4] and len(taken) < 500
    gaps = [b - a for a, b in zip(taken, taken[1:])]
    assert gaps[-1] >= 0.9 * 0.02 * taken[-1]  # late in the run, about 2% of its length apart (over an hour)

    with tracing.tracer().start_as_current_span("train") as train:
        with tracing.unsampled():
            with tracing.tracer().start_as_current_span("step 7"):
                headers: dict[str, str] = {}
                tracing.inject(headers)
        with tracing.tracer().start_as_current_span("step 8"):
            pass
    assert [s.name for s in spans.get_finished_spans()] == ["step 8", "train"]
    _, trace_id, _, flags = headers["traceparent"].split("-")
    assert trace_id == format(train.get_span_context().trace_id, "032x") and flags == "00"  # not sampled
