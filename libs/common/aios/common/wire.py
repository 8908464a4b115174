"""A minimal NATS protocol connection for reading JetStream fast.

nats-py turns every delivered message into a task-scheduled coroutine, a ``Msg`` object and a parsed header dict.
Replaying a million-event log that way costs most of the time in the client. This connection parses the protocol
synchronously as it arrives and hands each message to a plain callback as bytes: no task, no header parsing
unless the caller wants it. Bulk data (the ``nats`` all-reduce) may opt into buffers instead of bytes: a message of
``LARGE`` bytes or more is then read by the kernel straight into its own buffer (or one the subscriber names), and a
large publish goes to the socket without being joined into a new ``bytes`` first, which saves two or three copies
of every byte. It speaks only what reading needs: CONNECT (user/password or token), SUB/UNSUB, PUB, request/reply,
PING/PONG. Publishing and stream management stay with nats-py.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections import deque
from typing import Callable
from urllib.parse import unquote, urlsplit

from aios.common.errors import StoreUnavailable

try:  # the transport of a plain TCP connection, which copies on write whatever it cannot send at once
    from asyncio.selector_events import _SelectorSocketTransport as _SOCKET_TRANSPORT
except ImportError:  # pragma: no cover - another event loop: every payload is copied into the message
    _SOCKET_TRANSPORT = ()  # type: ignore[assignment,misc]

MessageHandler = Callable[[bytes, "bytes | None", "bytes | None", bytes], None]
"""handler(subject, reply, headers or None, payload); called synchronously, must not block or raise."""

_CRLF = b"\r\n"

LARGE = 64 << 10
"""Messages at least this big are received into, or sent from, their own buffer instead of being copied around."""

_SCRATCH = 256 << 10
"""Bytes read per receive while parsing protocol lines and small messages (asyncio's own read size)."""


LandingZone = Callable[[bytes, int], "memoryview | None"]
"""land(subject, size): where the payload of a large message should be written (a writable byte view of exactly
``size`` bytes), or None for a buffer of its own."""


class _LargeMessage:
    """A message whose header line has been parsed and whose payload the kernel is writing into ``view`` (then its
    CRLF into ``tail``)."""

    __slots__ = ("subject", "reply", "hdr_len", "handler", "view", "tail", "got")

    def __init__(self, subject: bytes, reply: bytes | None, hdr_len: int, total: int, handler: MessageHandler | None,
                 first: bytes, land: LandingZone | None) -> None:
        self.subject, self.reply, self.hdr_len, self.handler = subject, reply, hdr_len, handler
        view = land(subject, total) if land is not None and hdr_len < 0 else None
        if view is None or len(view) != total:
            import numpy as np  # not zero-filled: every byte is written by the socket before the handler sees it

            view = memoryview(np.empty(total, dtype=np.uint8)).cast("B")
        self.view, self.tail = view, memoryview(bytearray(2))
        self.got = 0
        self.take(first)

    def take(self, data: bytes) -> None:
        """Bytes of the message that arrived with its header line."""
        total = len(self.view)
        payload = min(len(data), max(0, total - self.got))
        if payload:
            self.view[self.got:self.got + payload] = data[:payload]
        if len(data) > payload:
            at = self.got + payload - total
            self.tail[at:at + len(data) - payload] = data[payload:]
        self.got += len(data)

    def buffer(self) -> memoryview:
        total = len(self.view)
        return self.view[self.got:] if self.got < total else self.tail[self.got - total:]

    @property
    def complete(self) -> bool:
        return self.got == len(self.view) + 2

    def deliver(self) -> None:
        if self.handler is None:  # unsubscribed while it arrived
            return
        headers = bytes(self.view[:self.hdr_len]) if self.hdr_len >= 0 else None
        self.handler(self.subject, self.reply, headers, self.view if headers is None else self.view[self.hdr_len:])


def new_token() -> str:
    return os.urandom(9).hex()


class RawNatsConnection(asyncio.BufferedProtocol):
    """One client connection. Create with :meth:`connect`; every message is dispatched by subscription id."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.server_info: dict[str, object] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = b""
        self._pending_parts: list[bytes] = []
        self._pending_len = 0
        self._need = 0
        self._subs: dict[bytes, MessageHandler] = {}
        self._next_sid = 0
        self._pongs: deque[asyncio.Future[None]] = deque()
        self._info: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self._error: str | None = None
        self.on_permission_violation: list[Callable[[str], None]] = []
        """Called with the server's message (``Permissions Violation for Publish to "<subject>"``)."""
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._scratch = memoryview(bytearray(_SCRATCH))  # a view: asyncio's TLS reader fills slices of it
        self._large: _LargeMessage | None = None
        self._takes_buffers: dict[bytes, LandingZone | None] = {}
        """Subscriptions whose handler accepts any buffer (a memoryview) for a large payload, not only bytes."""
        self._write_through = False
        """Large payloads go to the socket as they are: only on a plain socket, whose transport copies what it cannot
        send at once (a TLS transport keeps a reference, and the caller may change the buffer after publishing)."""

    # -- life cycle ------------------------------------------------------------------------------------------------
    @classmethod
    async def connect(cls, servers: list[str], *, name: str = "aios-reader", timeout: float = 5.0,
                      tls: ssl.SSLContext | None = None) -> "RawNatsConnection":
        """Connect to the first server of ``servers`` that answers; raise :class:`StoreUnavailable` if none does."""
        errors = []
        for url in servers:
            try:
                return await asyncio.wait_for(cls._connect_one(url, name, tls), timeout)
            except (OSError, asyncio.TimeoutError, ConnectionError, StoreUnavailable) as exc:
                errors.append(f"{url}: {exc or type(exc).__name__}")
        raise StoreUnavailable("cannot connect to NATS: " + "; ".join(errors))

    @classmethod
    async def _connect_one(cls, url: str, name: str, tls: ssl.SSLContext | None) -> "RawNatsConnection":
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(cls, host, port)
        info = await conn._info
        if info.get("tls_required") or parts.scheme == "tls":
            ctx = tls or ssl.create_default_context()
            transport = await loop.start_tls(transport, conn, ctx, server_hostname=host)  # type: ignore[assignment]
            conn.transport = transport  # type: ignore[assignment]
        else:
            conn._write_through = isinstance(transport, _SOCKET_TRANSPORT)
        opts: dict[str, object] = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                                   "protocol": 1, "lang": "python-aios", "version": "1", "name": name}
        if parts.username and parts.password is not None:
            opts.update(user=unquote(parts.username), **{"pass": unquote(parts.password)})
        elif parts.username:
            opts["auth_token"] = unquote(parts.username)
        conn._write(b"CONNECT " + json.dumps(opts).encode() + _CRLF)
        await conn.ping(timeout=5.0)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        reason = StoreUnavailable(f"NATS connection lost: {exc or self._error or 'closed by server'}")
        for fut in (self._info, *self._pongs):
            if not fut.done():
                fut.set_exception(reason)
        self._pongs.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        """Close after sending what was written (the transport drains its buffer before closing)."""
        if self.transport is not None:
            self._flush()
            self.transport.close()

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    # -- client operations -------------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        """Queue bytes for the socket; everything written in one event-loop turn goes out in one send."""
        if self.transport is None or self.transport.is_closing():
            raise StoreUnavailable("NATS connection is closed")
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def write_buffer_size(self) -> int:
        """Bytes written but not yet handed to the kernel (ours for this loop turn, and the transport's)."""
        queued = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return queued + sum(map(len, self._out))

    def subscribe(self, subject: str, handler: MessageHandler, takes_buffers: bool = False,
                  land: LandingZone | None = None) -> bytes:
        """``takes_buffers``: the handler may be given a payload of ``LARGE`` bytes or more as a memoryview of a
        buffer of its own (saves a copy), instead of bytes. ``land`` (implies it) names that buffer per message, so
        the kernel writes the payload where the caller wants it (the handler then gets that very view)."""
        self._next_sid += 1
        sid = str(self._next_sid).encode()
        self._subs[sid] = handler
        if takes_buffers or land is not None:
            self._takes_buffers[sid] = land
        self._write(b"SUB " + subject.encode() + b" " + sid + _CRLF)
        return sid

    def unsubscribe(self, sid: bytes) -> None:
        self._takes_buffers.pop(sid, None)
        if self._subs.pop(sid, None) is not None and not self.is_closed:
            self._write(b"UNSUB " + sid + _CRLF)

    def publish(self, subject: bytes | str, payload: bytes | memoryview = b"", reply: str | None = None) -> None:
        """The payload may be any contiguous byte buffer; it is copied or sent before this returns, so the caller
        may change it afterwards."""
        if isinstance(payload, memoryview) and payload.format != "B":
            payload = payload.cast("B")  # the protocol counts bytes, not items
        subj = subject.encode() if isinstance(subject, str) else subject
        head = b"PUB " + subj + (b" " + reply.encode() if reply else b"") + b" " + str(len(payload)).encode()
        if len(payload) < LARGE or not self._write_through:
            self._write(head + _CRLF + payload + _CRLF)
            return
        self._write(head + _CRLF)
        self._flush()  # in order: what was queued, then the payload straight from the caller's buffer
        self.transport.write(payload)  # type: ignore[union-attr]  # sends what it can, copies only the rest
        self.transport.write(_CRLF)  # type: ignore[union-attr]  # now: a PONG must not come between

    def publish_with_headers(self, subject: bytes, headers: bytes, payload: bytes, reply: bytes) -> None:
        """HPUB; ``headers`` is a complete block (``NATS/1.0\r\n...\r\n\r\n``)."""
        hl = len(headers)
        self._write(b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, hl, hl + len(payload), headers, payload))

    async def ping(self, timeout: float = 5.0) -> None:
        """Round trip to the server: everything written before is processed when this returns."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(fut)
        self._write(b"PING\r\n")
        await asyncio.wait_for(fut, timeout)

    async def request(self, subject: str, payload: bytes, timeout: float = 5.0) -> tuple[bytes | None, bytes]:
        """Request/reply; returns (headers, payload) of the first reply."""
        fut: asyncio.Future[tuple[bytes | None, bytes]] = asyncio.get_running_loop().create_future()

        def on_reply(_s: bytes, _r: bytes | None, hdr: bytes | None, data: bytes) -> None:
            if not fut.done():
                fut.set_result((hdr, data))

        inbox = f"_INBOX.{new_token()}"
        sid = self.subscribe(inbox, on_reply)
        try:
            self.publish(subject, payload, reply=inbox)
            closed = self.closed
            done, _ = await asyncio.wait({fut, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if fut in done:
                hdr, data = fut.result()
                if hdr is not None and hdr.startswith(b"NATS/1.0 503"):
                    raise StoreUnavailable(f"no responders for {subject} (JetStream not ready?)")
                return hdr, data
            if closed in done:
                raise StoreUnavailable(f"NATS connection lost during request to {subject}")
            raise StoreUnavailable(f"request to {subject} timed out after {timeout}s")
        finally:
            self.unsubscribe(sid)

    # -- protocol parsing --------------------------------------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        large = self._large
        return self._scratch if large is None else large.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        large = self._large
        if large is None:
            self.data_received(bytes(self._scratch[:nbytes]))
            return
        large.got += nbytes
        if large.complete:
            self._large = None
            large.deliver()

    def data_received(self, data: bytes) -> None:
        if self._need:
            # A large message is still arriving: collect chunks without re-copying the buffer each time.
            self._pending_parts.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._need:
                return
            data = b"".join(self._pending_parts)
            self._pending_parts, self._pending_len, self._need = [], 0, 0
            buf = data
        else:
            buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        subs = self._subs
        find = buf.find
        while pos < n:
            eol = find(_CRLF, pos)
            if eol < 0:
                break
            op = buf[pos:pos + 4]
            if op == b"HMSG" or op == b"MSG ":
                head = buf[pos + (5 if op == b"HMSG" else 4):eol].split(b" ")
                total = int(head[-1])
                start = eol + 2
                end = start + total
                if end + 2 > n:
                    if total >= LARGE and head[1] in self._takes_buffers:
                        reply = head[2] if len(head) == (5 if op == b"HMSG" else 4) else None
                        self._large = _LargeMessage(head[0], reply, int(head[-2]) if op == b"HMSG" else -1, total,
                                                    subs.get(head[1]), buf[start:], self._takes_buffers[head[1]])
                        pos = n
                        break
                    self._need = end + 2 - pos
                    break
                handler = subs.get(head[1])
                if op == b"HMSG":
                    hdr_len = int(head[-2])
                    reply = head[2] if len(head) == 5 else None
                    if handler is not None:
                        handler(head[0], reply, buf[start:start + hdr_len], buf[start + hdr_len:end])
                else:
                    reply = head[2] if len(head) == 4 else None
                    if handler is not None:
                        handler(head[0], reply, None, buf[start:end])
                pos = end + 2
                continue
            if op == b"PING":
                self.transport.write(b"PONG\r\n")  # type: ignore[union-attr]
            elif op == b"PONG":
                if self._pongs:
                    fut = self._pongs.popleft()
                    if not fut.done():
                        fut.set_result(None)
            elif op == b"INFO":
                self.server_info = json.loads(buf[pos + 5:eol])
                if not self._info.done():
                    self._info.set_result(self.server_info)
            elif op == b"-ERR":
                message = buf[pos + 5:eol].decode(errors="replace").strip(" '")
                if message.lower().startswith("permissions violation"):
                    for callback in self.on_permission_violation:  # the connection stays up
                        callback(message)
                    pos = eol + 2
                    continue
                self._error = message
                err = StoreUnavailable(f"NATS error: {self._error}")
                while self._pongs:
                    fut = self._pongs.popleft()
                    if not fut.done():
                        fut.set_exception(err)
            pos = eol + 2
        if self._need:
            self._pending_parts = [buf[pos:]]
            self._pending_len = n - pos
            self._buf = b""
            if self._pending_len >= self._need:  # pragma: no cover - cannot happen: we broke out for lack of bytes
                self._need = 0
        else:
            self._buf = buf[pos:] if pos < n else b""
