"""Ordered reading of a JetStream stream over a :class:`RawNatsConnection`.

An ephemeral, ack-less push consumer (memory storage, one replica, flow control, idle heartbeats) delivers messages in
stream order. We keep our own cursor, as nats.go's ordered consumer does: the last stream sequence handed out and the
consumer sequence expected next. A gap in the consumer sequence, a silent consumer (no heartbeat) or a lost
connection means "recreate the consumer from last + 1"; anything at or below the last sequence is dropped. So a
reader never misses and never repeats a message, whatever happens underneath.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

from aios.common.errors import StoreError, StoreUnavailable
from aios.common.wire import RawNatsConnection, new_token

Delivery = Callable[[int, bytes, "bytes | None", bytes, int], None]
"""on_message(stream_seq, subject, headers, payload, pending); synchronous."""


def parse_ack_reply(reply: bytes) -> tuple[int, int, int]:
    """(stream seq, consumer seq, pending) from a JetStream delivery reply subject (v1 and v2 token layouts)."""
    t = reply.split(b".")
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        return int(t[5]), int(t[6]), int(t[8])
    # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>.<token>
    return int(t[7]), int(t[8]), int(t[10])


ACCEPT, DUPLICATE, GAP = 0, 1, 2


def cursor_step(last_seq: int, expected_dseq: int, sseq: int, dseq: int) -> int:
    """The ordered-consumer rule as a pure function (the hot loop inlines it)."""
    if dseq != expected_dseq:
        return GAP
    if sseq <= last_seq:
        return DUPLICATE
    return ACCEPT


class OrderedConsumer:
    """Deliver every message of ``filter_subject`` with stream sequence > ``last_seq``, once, in order."""

    def __init__(self, conn: RawNatsConnection, stream: str, filter_subject: str, last_seq: int,
                 on_message: Delivery, *, heartbeat: float = 2.0, inactive_threshold: float = 30.0) -> None:
        self.conn = conn
        self.stream = stream
        self.filter_subject = filter_subject
        self.last_seq = last_seq
        self.on_message = on_message
        self.heartbeat = heartbeat
        self.inactive_threshold = inactive_threshold
        self.name = ""
        self.resets = 0
        self.error: BaseException | None = None
        self.initial_pending: int | None = None
        """Messages matching the filter after the start sequence when the consumer was (re)created."""
        self.last_activity = time.monotonic()
        self._sid: bytes | None = None
        self._dseq = 0
        self._trouble = asyncio.Event()

    @property
    def needs_reset(self) -> bool:
        return self._trouble.is_set()

    async def wait_trouble(self) -> None:
        await self._trouble.wait()

    async def start(self) -> None:
        """Create the consumer at ``last_seq + 1`` and start receiving."""
        self._trouble.clear()
        self._dseq = 0
        self.name = f"aios_rd_{new_token()}"
        deliver = f"_AIOS.rd.{self.name}"  # natsauth.READER_INBOX: every reading identity may subscribe there
        self._sid = self.conn.subscribe(deliver, self._on_raw)
        start = self.last_seq + 1
        config: dict[str, object] = {
            "name": self.name, "deliver_subject": deliver, "filter_subject": self.filter_subject,
            "ack_policy": "none", "flow_control": True, "idle_heartbeat": int(self.heartbeat * 1e9),
            "mem_storage": True, "num_replicas": 1, "replay_policy": "instant",
            "inactive_threshold": int(self.inactive_threshold * 1e9),
        }
        if start > 1:
            config.update(deliver_policy="by_start_sequence", opt_start_seq=start)
        else:
            config["deliver_policy"] = "all"
        body = json.dumps({"stream_name": self.stream, "config": config, "action": "create"}).encode()
        self.last_activity = time.monotonic()
        _, data = await self.conn.request(f"$JS.API.CONSUMER.CREATE.{self.stream}.{self.name}", body)
        reply = json.loads(data)
        if "error" in reply:
            self._drop_sub()
            err = reply["error"]
            raise StoreError(f"cannot create a reader on {self.stream}: {err.get('description')} "
                             f"(err_code {err.get('err_code')})")
        self.initial_pending = reply.get("num_pending")

    def _drop_sub(self) -> None:
        if self._sid is not None:
            sid, self._sid = self._sid, None
            if not self.conn.is_closed:
                try:
                    self.conn.unsubscribe(sid)
                except StoreUnavailable:  # closing under us: the server forgets the subscription with it
                    pass

    async def stop(self) -> None:
        """Unsubscribe and delete the consumer (best effort: it also expires by itself when inactive)."""
        self._drop_sub()
        if self.name and not self.conn.is_closed:
            try:
                await self.conn.request(f"$JS.API.CONSUMER.DELETE.{self.stream}.{self.name}", b"", timeout=2.0)
            except StoreUnavailable:
                pass

    async def restart(self) -> None:
        self.resets += 1
        await self.stop()
        await self.start()

    def check_idle(self) -> None:
        """Flag a reset when neither data nor a heartbeat arrived for three heartbeat periods."""
        if time.monotonic() - self.last_activity > 3 * self.heartbeat:
            self._trouble.set()

    def _on_raw(self, subject: bytes, reply: bytes | None, hdr: bytes | None, payload: bytes) -> None:
        self.last_activity = time.monotonic()
        if hdr is not None and hdr.startswith(b"NATS/1.0 1"):
            # Status message: a flow-control request (has a reply subject) or an idle heartbeat.
            if reply is not None:
                self.conn.publish(reply, b"")
            elif b"Nats-Consumer-Stalled" in hdr:
                stalled = hdr.split(b"Nats-Consumer-Stalled:")[1].split(b"\r\n")[0].strip()
                self.conn.publish(stalled, b"")
            return
        if reply is None or self._trouble.is_set():
            return
        sseq, dseq, pending = parse_ack_reply(reply)
        decision = cursor_step(self.last_seq, self._dseq + 1, sseq, dseq)
        if decision == GAP:
            self._trouble.set()  # a message went missing between server and us: start over from last + 1
            return
        self._dseq = dseq
        if decision == DUPLICATE:
            return
        self.last_seq = sseq
        try:
            self.on_message(sseq, subject, hdr, payload, pending)
        except BaseException as exc:  # surfaced to the awaiting caller, never into the protocol parser
            self.error = exc
            self._trouble.set()
