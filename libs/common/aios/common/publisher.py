"""Pipelined, acknowledged JetStream publishing over a :class:`RawNatsConnection`.

Every message carries its own reply subject under one wildcard inbox; the server's PubAck (or API error) for it
resolves a future. At most ``max_pending`` acknowledgements are outstanding. Parsing the ack with one msgspec
Decoder in the protocol callback keeps the per-message cost far below nats-py's ``publish_async`` (which also drops
API errors such as "wrong last sequence": its future never completes).
"""

from __future__ import annotations

import asyncio
from typing import Mapping

import msgspec

from aios.common.errors import PermissionDenied, StoreUnavailable
from aios.common.wire import RawNatsConnection, new_token


class ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct, frozen=True):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


_ack_decoder = msgspec.json.Decoder(PubAck)
NO_RESPONDERS = PubAck(error=ApiError(code=503, description="no responders: no stream is listening (JetStream not ready?)"))


def header_block(headers: Mapping[str, str]) -> bytes:
    """Headers as the NATS wire block ``NATS/1.0\\r\\nKey: value\\r\\n\\r\\n``."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


class AckedPublisher:
    def __init__(self, conn: RawNatsConnection, max_pending: int = 4000) -> None:
        self.conn = conn
        self._prefix = f"_INBOX.{new_token()}."
        self._prefix_b = self._prefix.encode()
        self._cut = len(self._prefix_b)
        self._futures: dict[bytes, asyncio.Future[PubAck]] = {}
        self._subjects: dict[bytes, bytes] = {}
        """Subject of each message awaiting its ack: a permission violation names the subject, not the message."""
        self.max_pending = max_pending
        self._room = asyncio.Event()
        self._room.set()
        self._counter = 0
        conn.subscribe(self._prefix + "*", self._on_ack)
        conn.closed.add_done_callback(self._fail_all)
        conn.on_permission_violation.append(self._on_violation)

    async def publish(self, subject: bytes, headers: bytes, payload: bytes) -> asyncio.Future[PubAck]:
        """Send one message; the returned future resolves to its PubAck (which may carry ``error``)."""
        while len(self._futures) >= self.max_pending:
            self._room.clear()
            await self._room.wait()
        if self.conn.is_closed:
            raise StoreUnavailable("NATS connection is closed")
        self._counter += 1
        token = b"%x" % self._counter
        fut: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._futures[token] = fut
        self._subjects[token] = subject
        try:
            self.conn.publish_with_headers(subject, headers, payload, self._prefix_b + token)
        except StoreUnavailable:
            self._futures.pop(token, None)
            fut.cancel()
            raise
        return fut

    def forget(self, fut: asyncio.Future[PubAck]) -> None:
        """Stop waiting for an acknowledgement (the caller timed out and will re-send); frees its slot."""
        for token, pending in list(self._futures.items()):
            if pending is fut:
                del self._futures[token]
                self._subjects.pop(token, None)
        fut.cancel()
        self._room.set()

    def _on_violation(self, message: str) -> None:
        """``Permissions Violation for Publish to "<subject>"``: the server dropped those messages; no ack will come."""
        refused = message.rpartition(" to ")[2].strip('"').encode()
        for token, subj in list(self._subjects.items()):
            if subj == refused:
                self._subjects.pop(token, None)
                fut = self._futures.pop(token, None)
                if fut is not None and not fut.done():
                    fut.set_exception(PermissionDenied(f"NATS refused to let this user publish to {subj.decode()!r}"))
        self._room.set()

    def _on_ack(self, subject: bytes, _reply: bytes | None, hdr: bytes | None, payload: bytes) -> None:
        self._subjects.pop(subject[self._cut:], None)
        fut = self._futures.pop(subject[self._cut:], None)
        if len(self._futures) < self.max_pending:
            self._room.set()
        if fut is None or fut.done():
            return
        if hdr is not None and hdr.startswith(b"NATS/1.0 503"):
            fut.set_result(NO_RESPONDERS)
            return
        try:
            fut.set_result(_ack_decoder.decode(payload))
        except msgspec.DecodeError as exc:
            fut.set_exception(StoreUnavailable(f"unreadable acknowledgement: {exc}"))

    def _fail_all(self, _closed: object) -> None:
        futures, self._futures = self._futures, {}
        self._subjects = {}
        self._room.set()
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(StoreUnavailable("NATS connection lost before the acknowledgement arrived"))

    @property
    def in_flight(self) -> int:
        return len(self._futures)
