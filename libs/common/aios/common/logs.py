"""Structured JSON logs: one object per line with time, level, logger, message, service, trace id and the ``extra``
fields a call passes. Machines parse them; ``jq`` makes them readable."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

from aios.common import tracing

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
            "service": self.service,
        }
        trace_id = tracing.current_trace_id()
        if trace_id:
            out["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return _encoder.encode(out).decode()
        except (TypeError, msgspec.EncodeError):
            return _encoder.encode({k: v if _plain(v) else repr(v) for k, v in out.items()}).decode()


def _plain(value: Any) -> bool:
    try:
        _encoder.encode(value)
        return True
    except (TypeError, msgspec.EncodeError):
        return False


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (a test harness may swap and close the one we started with)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request its parser refuses (a URL or header over 8 KB, a broken request line) as an error with
    the parser's traceback, though the fault is the client's and aiohttp has answered it with a 400: anyone could
    fill the logs with tracebacks. Such a record becomes one warning line with the reason (and the client, where
    aiohttp's message names it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import BadHttpMessage

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage) and record.levelno >= logging.ERROR:  # (a debug record stays one)
            reason = " ".join(str(exc.message).split())
            record.msg, record.args = "malformed HTTP request refused (400): %s (%s)", (
                reason[:200] + ("..." if len(reason) > 200 else ""), record.getMessage())
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def setup_logging(service: str, level: str = "INFO", stream: Any = None) -> None:
    """Route all logging through one JSON handler on stderr (or ``stream``)."""
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server.filters):
        server.addFilter(_MalformedRequests())
