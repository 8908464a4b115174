"""OpenTelemetry at the bus seam: tracer set-up from ``OTEL_*`` variables and W3C ``traceparent`` in NATS headers.

Spans follow the messaging conventions: ``publish <subject>`` (PRODUCER) where a message is sent, ``process
<subject>`` (CONSUMER) where it is handled, the consumer's span a child of the producer's through the header.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Iterator, Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN
from opentelemetry.propagators.textmap import DefaultGetter, DefaultSetter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_setter = DefaultSetter()
_getter = DefaultGetter()
TRACER_NAME = "aios"


def setup_tracing(service_name: str, env: Mapping[str, str] | None = None) -> trace.TracerProvider:
    """Install an SDK tracer provider configured by the standard variables.

    ``OTEL_SDK_DISABLED=true`` keeps the no-op provider. ``OTEL_TRACES_EXPORTER`` picks ``otlp`` (the default when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set), ``console`` or ``none``.
    ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the resource; ``OTEL_TRACES_SAMPLER`` and the
    ``OTEL_BSP_*`` batch settings are read by the SDK itself.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return trace.get_tracer_provider()
    attrs = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attrs))
    has_endpoint = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    exporters = env.get("OTEL_TRACES_EXPORTER", "otlp" if has_endpoint else "none")
    for name in (e.strip().lower() for e in exporters.split(",")):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write the current span's ``traceparent`` (and ``tracestate``) into message headers."""
    _propagator.inject(headers, setter=_setter)
    return headers


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The remote context carried by message headers (an empty context when there is none)."""
    return _propagator.extract(headers or {}, getter=_getter)


def parse_header_block(block: bytes | None) -> dict[str, str]:
    """Headers of a raw NATS ``HMSG`` (``NATS/1.0\\r\\nKey: value\\r\\n...``) as a dict (last value wins)."""
    if not block:
        return {}
    out: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def current_trace_id() -> str | None:
    """The active trace id as 32 hex digits, or None outside any recorded span."""
    span = trace.get_current_span()
    if span is INVALID_SPAN:
        return None
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


@contextmanager
def publish_span(subject: str, headers: MutableMapping[str, str]) -> Iterator[trace.Span]:
    """A PRODUCER span around sending one message; its context goes into ``headers``."""
    with tracer().start_as_current_span(
        f"publish {subject}", kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject,
                    "messaging.operation.type": "publish"},
    ) as span:
        inject(headers)
        yield span


@contextmanager
def process_span(subject: str, headers: Mapping[str, str] | None) -> Iterator[trace.Span]:
    """A CONSUMER span around handling one message, continuing the trace its headers carry."""
    with tracer().start_as_current_span(
        f"process {subject}", context=extract(headers), kind=trace.SpanKind.CONSUMER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject,
                    "messaging.operation.type": "process"},
    ) as span:
        yield span


class Thinned:
    """Which of a long run's repeated occurrences (a job's progress reports, its checkpoints) get a span: the first,
    then each at least ``max(min_gap_s, fraction * time since the first)`` after the last one taken. A span per
    report grew a job's trace without bound (900 checkpoint spans in nine minutes: trace stores refuse such
    traces); thinned, a run of ``T`` seconds keeps about ``ln(T) / fraction`` of them, dense at its start."""

    def __init__(self, min_gap_s: float = 1.0, fraction: float = 0.02) -> None:
        self.min_gap_s, self.fraction = min_gap_s, fraction
        self.first: float | None = None
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.first is None or self.last is None:
            self.first = self.last = now
            return True
        if now - self.last >= max(self.min_gap_s, self.fraction * (now - self.first)):
            self.last = now
            return True
        return False


@contextmanager
def unsampled() -> Iterator[None]:
    """Spans begun inside are not recorded: their parent is the current span, marked not sampled (the SDK's
    parent-based sampler then drops them, and what they send on says so to its consumers)."""
    here = trace.get_current_span().get_span_context()
    if not here.is_valid:
        here = trace.SpanContext(random.getrandbits(128) or 1, random.getrandbits(64) or 1, False)
    quiet = trace.NonRecordingSpan(trace.SpanContext(here.trace_id, here.span_id, False, trace.TraceFlags(0)))
    with _within(trace.set_span_in_context(quiet)):
        yield


@contextmanager
def continuing(headers: Mapping[str, str] | None) -> Iterator[None]:
    """Spans begun inside continue the caller's trace when its request carries one (a W3C ``traceparent`` header,
    over HTTP or in a NATS request's headers); without one, nothing changes. A job submitted from a traced client
    began a trace of its own, unlinked to the caller's."""
    remote = extract(headers) if headers else None
    if remote is None or not trace.get_current_span(remote).get_span_context().is_valid:
        yield
        return
    with _within(remote):
        yield


@contextmanager
def _within(context: otel_context.Context) -> Iterator[None]:
    """``context`` is the current one inside."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def job_span(name: str, job_id: str, parent: Mapping[str, str] | None, **attributes: object) -> Iterator[trace.Span]:
    """A span about one job, continuing the job's trace from ``parent`` (the trace context stored with one of its
    commits, or handed to a worker in ``TRACEPARENT``); events appended inside carry it on."""
    with tracer().start_as_current_span(
        name, context=extract(parent) if parent else None,
        attributes={"aios.job": job_id, **{k: v for k, v in attributes.items() if v is not None}},  # type: ignore[dict-item]
    ) as span:
        yield span


def mark_failed(span: trace.Span, description: str) -> None:
    """Give ``span`` an error status: trace viewers colour and filter by it (a failed job's trace looked like a
    success)."""
    span.set_status(trace.Status(trace.StatusCode.ERROR, description))


def carrier() -> dict[str, str]:
    """The current span's context as headers (``traceparent``), e.g. for a child process's environment."""
    return dict(inject({}))


def carrier_from_env(env: Mapping[str, str]) -> dict[str, str] | None:
    """The trace context a launcher hands a worker in its environment (``TRACEPARENT``, ``TRACESTATE``), as
    headers for :func:`job_span`; None without one."""
    if not env.get("TRACEPARENT"):
        return None
    return {k.lower(): env[k] for k in ("TRACEPARENT", "TRACESTATE") if env.get(k)}


def flush(timeout_ms: int = 5000) -> None:
    """Send what the batch processor still holds (a short-lived process must call this before it exits)."""
    provider = trace.get_tracer_provider()
    force = getattr(provider, "force_flush", None)
    if force is not None:
        force(timeout_ms)
