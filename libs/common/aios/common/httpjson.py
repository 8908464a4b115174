"""JSON over HTTP, alike in every server of AIOS: a request's body read into a 400 that says what is wrong with it
(never a 500), and aiohttp's own errors in the ``{"error": ...}`` shape of every other refusal.

aiohttp raises four kinds of error for a body it cannot read (its Content-Encoding lies, its charset is unknown,
its JSON is bad or nested deeper than the parser's recursion): every HTTP server of AIOS reads bodies here, so
each says the same thing of the same input (a replica answered a gzip header on plain JSON with a traceback).
A body over the server's limit still raises aiohttp's ``HTTPRequestEntityTooLarge``: that is a 413, not a 400.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from aios.common import tracing


class BodyError(ValueError):
    """A request body that cannot be read as JSON; the message starts with ``body:``."""


def unreadable(request: web.Request, exc: RequestPayloadError) -> str:
    """What to answer a body that cannot be decoded as its Content-Encoding says; the connection closes after the
    answer (aiohttp, draining the rest of such a body to keep the connection, logged a traceback and dropped it
    under the client's next request)."""
    request.content.feed_eof()  # nothing more of it can be read: not drained (that logged the traceback)
    request[_CLOSE] = True  # and the answer says "Connection: close": the rest of the body may still be on it
    return (f"body: cannot be read as its Content-Encoding says ({request.headers.get('Content-Encoding', '')}): "
            f"{exc}")


async def read_json(request: web.Request, loads: Callable[[str], Any]) -> Any:
    try:
        return await request.json(loads=loads)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or a number of over 4,300 digits
        raise BodyError(f"body: not JSON ({exc})") from None
    except RequestPayloadError as exc:  # Content-Encoding: gzip on a body that is not
        raise BodyError(unreadable(request, exc)) from None
    except LookupError as exc:  # Content-Type: application/json; charset=bogus
        raise BodyError(f"body: {exc}") from None
    except RecursionError:  # 100,000 nested brackets
        raise BodyError("body: nested too deeply") from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CLOSE = web.RequestKey("aios.close_connection", bool)


def application(max_body_bytes: int, *middlewares: Any, errors_under: str = "/") -> web.Application:
    """An aiohttp application with these rules: bodies up to ``max_body_bytes``, aiohttp's own errors under
    ``errors_under`` in JSON, and a connection closed after the answer to a body that could not be decoded."""
    app = web.Application(client_max_size=max_body_bytes,
                          middlewares=[*middlewares, json_errors(max_body_bytes, errors_under), _continue_trace])
    app.on_response_prepare.append(_close_if_asked)
    return app


@web.middleware
async def _continue_trace(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What the request does joins the caller's trace, if its headers carry one (``traceparent``)."""
    with tracing.continuing(request.headers):
        return await handler(request)


async def _close_if_asked(request: web.Request, response: web.StreamResponse) -> None:
    if request.get(_CLOSE):
        response.force_close()  # the server closes the connection after it
        response.headers["Connection"] = "close"  # and says so (the headers are made before this hook)


def json_errors(max_body_bytes: int, prefix: str = "/") -> Callable[[web.Request, Handler],
                                                                     Awaitable[web.StreamResponse]]:
    """A middleware: errors aiohttp raises itself (no such route 404, wrong method 405, body too large 413) on
    paths under ``prefix`` as ``{"error": ...}``: a client parses one kind of error body (the router's were
    plain text)."""
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or not request.path.startswith(prefix):
                raise
            detail = {404: f"no such resource: {request.path}",
                      405: f"{request.method} is not allowed on {request.path}",
                      413: f"body: larger than the {max_body_bytes >> 20} MiB accepted here"}.get(exc.status,
                                                                                             exc.reason)
            return web.json_response({"error": detail}, status=exc.status, headers={
                k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    return middleware
