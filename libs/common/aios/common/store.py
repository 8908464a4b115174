"""The event store: the ``AIOS_EVENTS`` JetStream stream seen as a log of commits per aggregate.

* ``append`` publishes one commit (one or more events of one aggregate) on ``aios.evt.<aggregate>`` with
  ``Nats-Msg-Id`` (a retried append is stored once) and, when a version is expected,
  ``Nats-Expected-Last-Subject-Sequence`` (a writer that decided on stale state gets :class:`ConcurrencyConflict`).
* ``read`` returns one aggregate's events and version; ``replay`` folds the whole log fast; ``subscribe`` tails it
  live and survives reconnects and server restarts without gaps or repeats.

Writes go through :mod:`aios.common.publisher`, reads through :mod:`aios.common.consumer`, both on one raw protocol
connection; nats-py manages the stream and serves the KV and Object stores.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import Any, AsyncIterator, Callable, Iterable, Literal

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo

from aios.common import natsauth, tracing
from aios.common.consumer import OrderedConsumer
from aios.common.errors import (
    ConcurrencyConflict, ConfigError, EventError, InvalidAggregate, MalformedEvent, StoreError, StoreUnavailable,
)
from aios.common.events import JOB_AGGREGATES, Event, decoder, encode
from aios.common.publisher import AckedPublisher, PubAck, header_block
from aios.common.wire import RawNatsConnection, new_token

log = logging.getLogger("aios.store")

STREAM = "AIOS_EVENTS"
PREFIX = "aios.evt"
WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a failed Nats-Expected-Last-Subject-Sequence check
_AGGREGATE = re.compile(r"[^.\s*>]+(?:\.[^.\s*>]+)+")


class Commit(msgspec.Struct, frozen=True, gc=False):
    """One stored message: the events of one aggregate appended together, and the stream sequence they got."""

    seq: int
    aggregate: str
    events: list[Event]
    headers: bytes | None = None

    @property
    def trace_headers(self) -> dict[str, str]:
        return tracing.parse_header_block(self.headers)


class AppendResult(msgspec.Struct, frozen=True):
    seq: int
    """Stream sequence of the commit: the aggregate's new version."""
    duplicate: bool = False
    """True when the idempotency key was seen before and nothing new was stored."""


class AggregateHistory(msgspec.Struct, frozen=True):
    aggregate: str
    events: list[Event]
    version: int
    """Stream sequence of the aggregate's last commit; pass it as ``expected_version`` of the next append."""
    trace: dict[str, str] = {}
    """Trace context (``traceparent``) of its first commit that has one: for a job, the job's trace."""
    seqs: list[int] = []
    """Stream sequence of each event's commit (``events[i]`` was stored at ``seqs[i]``)."""


def check_node_id(node: str, field: str) -> str:
    """A node id is the aggregate ``node.<id>`` of the log: dots only between non-empty parts (a host name such as
    ``gpu01.lab`` is fine), no spaces, '*' or '>'. ``a..b`` was taken, and its agent died at start with the event
    store's own words (``aggregate 'node.a..b'``)."""
    try:
        validate_aggregate(f"node.{node}")
    except InvalidAggregate:
        raise ConfigError(f"{field}={node!r}: a node id has no spaces, '*', '>' or empty parts between dots") from None
    return node


def validate_aggregate(aggregate: str) -> str:
    """``<kind>.<id>`` with non-empty tokens and no wildcard or whitespace characters."""
    if isinstance(aggregate, str) and _AGGREGATE.fullmatch(aggregate):
        return aggregate
    if not isinstance(aggregate, str) or "." not in aggregate:
        raise InvalidAggregate(f"aggregate {aggregate!r}: expected '<kind>.<id>', e.g. 'job.j-42'")
    raise InvalidAggregate(f"aggregate {aggregate!r}: tokens must be non-empty and free of spaces, '*', '>'")


class EventStore:
    """Append to and read from the event log. One per process; cheap to share between tasks."""

    def __init__(self, nc: nats.NATS, servers: list[str], *, stream: str = STREAM, prefix: str = PREFIX,
                 replicas: int = 1, ack_timeout: float = 2.0, append_deadline: float = 15.0,
                 duplicate_window: float = 120.0, max_pending: int = 4000) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.servers = servers
        self.stream = stream
        self.prefix = prefix
        self.replicas = replicas
        self.ack_timeout = ack_timeout
        self.append_deadline = append_deadline
        self.duplicate_window = duplicate_window
        self.max_pending = max_pending
        self._conn: RawNatsConnection | None = None
        self._publisher: AckedPublisher | None = None
        self._conn_lock = asyncio.Lock()

    # -- stream management ------------------------------------------------------------------------------------------
    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream, subjects=[f"{self.prefix}.>"], storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD, num_replicas=self.replicas,
            duplicate_window=self.duplicate_window, allow_direct=True, max_msgs_per_subject=-1,
            description="AIOS event log: one subject per aggregate, the source of truth",
        )

    async def ensure_stream(self) -> None:
        """Create the stream, or bring an existing one to the configuration this code expects."""
        want = self.stream_config()
        try:
            info = await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(want)
            log.info("created stream", extra={"stream": self.stream})
            return
        have = info.config
        if have.storage != want.storage:
            raise StoreError(f"stream {self.stream} uses {have.storage} storage, expected {want.storage}: "
                             "storage cannot be changed in place; migrate the stream")
        changed = (sorted(have.subjects or []) != sorted(want.subjects or []) or have.num_replicas != want.num_replicas
                   or have.duplicate_window != want.duplicate_window or not have.allow_direct)
        if changed:
            await self.js.update_stream(want)
            log.info("upgraded stream", extra={"stream": self.stream})

    def subject(self, aggregate: str) -> str:
        return f"{self.prefix}.{validate_aggregate(aggregate)}"

    async def _stream_info(self) -> StreamInfo:
        try:
            return await self.js.stream_info(self.stream)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError) as exc:  # not nats-py's own errors: callers handle StoreError
            raise StoreUnavailable(f"event log {self.stream}: no answer from JetStream ({type(exc).__name__})") from None
        except nats.js.errors.NotFoundError:  # deleted under a running service: said as the store's error, which
            # services handle, not as nats-py's
            raise StoreError(f"event log {self.stream}: the stream does not exist (deleted?); a service restart "
                             "creates it again, empty") from None

    async def last_seq(self) -> int:
        """Sequence of the newest message in the log (0 for an empty log)."""
        return (await self._stream_info()).state.last_seq

    async def incarnation(self) -> str:
        """Names this log among logs of the same name (its creation time, in hex milliseconds): a sequence number
        means something only with it, since a log created again counts from 1."""
        return (await self.position())[0]

    async def position(self) -> tuple[str, int]:
        """(incarnation, last sequence) of the log, read together."""
        info = await self._stream_info()
        created = info.created
        return (f"{int(created.timestamp() * 1000):x}" if created is not None else "", info.state.last_seq)

    async def version(self, aggregate: str) -> int:
        """The aggregate's current version: sequence of its last commit, 0 when it has none."""
        try:
            msg = await self.js.get_last_msg(self.stream, self.subject(aggregate))
        except nats.js.errors.NotFoundError:
            return 0
        return int(msg.seq)  # type: ignore[arg-type]

    # -- writing ----------------------------------------------------------------------------------------------------
    def _prepare(self, aggregate: str, events: Event | Iterable[Event], expected_version: int | None,
                 idempotency_key: str | None) -> tuple[str, bytes, dict[str, str]]:
        subject = self.subject(aggregate)
        batch = [events] if isinstance(events, Event) else list(events)
        if not batch:
            raise EventError("append needs at least one event")
        trace_id = tracing.current_trace_id()
        for i, ev in enumerate(batch):
            if not isinstance(ev, Event):
                raise EventError(f"event {i}: {type(ev).__name__} is not an Event")
            if ev.AGGREGATE and ev.aggregate != aggregate:
                raise InvalidAggregate(f"event {i} ({type(ev).__name__}) belongs to {ev.aggregate!r}, not {aggregate!r}")
            if trace_id and ev.trace_id is None:
                batch[i] = msgspec.structs.replace(ev, trace_id=trace_id)
        headers = {"Nats-Msg-Id": idempotency_key or new_token()}
        if expected_version is not None:
            if expected_version < 0:
                raise StoreError(f"expected_version {expected_version}: must be >= 0")
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_version)
        return subject, encode(batch), headers

    async def append(self, aggregate: str, events: Event | Iterable[Event], expected_version: int | None = None, *,
                     idempotency_key: str | None = None) -> AppendResult:
        """Append one commit and wait for the server's acknowledgement.

        ``expected_version``: ``None`` appends unconditionally, ``0`` only if the aggregate has no events yet, ``n``
        only if its last commit is still at sequence ``n``. Lost acknowledgements are retried with the same
        idempotency key until ``append_deadline``, then :class:`StoreUnavailable` is raised: never a silent loss.
        """
        subject, payload, headers = self._prepare(aggregate, events, expected_version, idempotency_key)
        with tracing.publish_span(subject, headers):
            return await self._publish_until_acked(aggregate, subject, payload, headers, expected_version)

    async def _publish_until_acked(self, aggregate: str, subject: str, payload: bytes, headers: dict[str, str],
                                   expected_version: int | None) -> AppendResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.append_deadline
        delay = 0.05
        subject_b, block = subject.encode(), header_block(headers)
        while True:
            try:
                publisher = await self._writer()
                fut = await publisher.publish(subject_b, block, payload)
                try:
                    ack = await asyncio.wait_for(asyncio.shield(fut), self.ack_timeout)
                except asyncio.TimeoutError:
                    publisher.forget(fut)
                    raise
                try:
                    result = _result_of(ack, aggregate, expected_version)
                except ConcurrencyConflict:
                    earlier = await self._already_stored(subject, expected_version or 0, headers["Nats-Msg-Id"])
                    if earlier is None:
                        raise
                    return earlier
                if result is not None:
                    return result
                problem = ack.error.description if ack.error else "no stream answered"
            except asyncio.TimeoutError:
                problem = f"no acknowledgement within {self.ack_timeout}s"
            except StoreUnavailable as exc:
                problem = str(exc)
            if loop.time() + delay > deadline:
                raise StoreUnavailable(f"append to {aggregate!r} not acknowledged within {self.append_deadline}s "
                                       f"({problem}); retry with idempotency key {headers['Nats-Msg-Id']!r}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _already_stored(self, subject: str, after_seq: int, msg_id: str) -> AppendResult | None:
        """The commit carrying ``msg_id`` after ``after_seq``, if one exists.

        JetStream checks ``Nats-Expected-Last-Subject-Sequence`` before its duplicate window, so the retry of an
        append whose acknowledgement was lost comes back as a conflict. It is a duplicate if our message is there.
        """
        needle = f"Nats-Msg-Id: {msg_id}\r\n".encode()
        found: list[int] = []

        def look(seq: int, _subject: bytes, hdr: bytes | None, _payload: bytes, _pending: int) -> None:
            if hdr is not None and needle in hdr:
                found.append(seq)

        await self._consume(subject, after_seq, await self.last_seq(), look)
        return AppendResult(found[0], duplicate=True) if found else None

    def pipeline(self) -> "AppendPipeline":
        """Many appends in flight at once, acknowledgements collected at the end (bulk import, benchmarks)."""
        return AppendPipeline(self)

    # -- reading ----------------------------------------------------------------------------------------------------
    async def _reader_conn(self) -> RawNatsConnection:
        """The store's own protocol connection (reads and writes), reopened after a loss."""
        async with self._conn_lock:
            if self._conn is None or self._conn.is_closed:
                self._conn = await RawNatsConnection.connect(self.servers, name="aios-store")
                self._publisher = AckedPublisher(self._conn, self.max_pending)
            return self._conn

    async def _writer(self) -> AckedPublisher:
        if self._publisher is not None and self._conn is not None and not self._conn.is_closed:
            return self._publisher
        await self._reader_conn()
        assert self._publisher is not None
        return self._publisher

    async def _consume(self, filter_subject: str, after_seq: int, until_seq: int,
                       on_message: Callable[[int, bytes, bytes | None, bytes, int], None]) -> int:
        """Deliver messages after ``after_seq`` up to ``until_seq`` (or until caught up) in order; returns the last
        sequence delivered. Survives consumer loss and reconnects within ``append_deadline`` per stall."""
        if until_seq <= after_seq:
            return after_seq
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        delivered = [after_seq]

        def deliver(seq: int, subject: bytes, hdr: bytes | None, payload: bytes, pending: int) -> None:
            if done.done() or seq > until_seq:
                if not done.done():
                    done.set_result(None)
                return
            delivered[0] = seq
            on_message(seq, subject, hdr, payload, pending)
            if (seq >= until_seq or pending == 0) and not done.done():
                done.set_result(None)

        stalled_since = loop.time()
        while True:
            conn = await self._reader_conn()
            consumer = OrderedConsumer(conn, self.stream, filter_subject, delivered[0], deliver)
            try:
                await consumer.start()
                break
            except StoreUnavailable:
                # seen right after a cluster member came back: the first JetStream call times out, the next works
                consumer._drop_sub()
                if loop.time() - stalled_since > self.append_deadline:
                    raise
                log.warning("reader not created yet; retrying", extra={"stream": self.stream})
                await asyncio.sleep(0.5)
        try:
            if consumer.initial_pending == 0:
                return delivered[0]  # nothing (more) matches the filter
            while not done.done():
                progress = consumer.last_seq
                trouble = asyncio.ensure_future(consumer.wait_trouble())
                try:
                    await asyncio.wait({done, trouble, conn.closed}, timeout=consumer.heartbeat,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    trouble.cancel()
                if consumer.error is not None:
                    raise consumer.error
                if done.done():
                    break
                if consumer.last_seq != progress:
                    stalled_since = loop.time()
                elif loop.time() - stalled_since > self.append_deadline:
                    raise StoreUnavailable(f"reading {filter_subject} stalled at sequence {consumer.last_seq}")
                consumer.check_idle()
                if conn.is_closed or consumer.needs_reset:
                    try:
                        if conn.is_closed:
                            consumer._sid = None  # it named a subscription of the dead connection
                            await asyncio.sleep(0.2)
                            conn = await self._reader_conn()
                            consumer.conn = conn
                        await consumer.restart()
                    except StoreUnavailable:
                        if loop.time() - stalled_since > self.append_deadline:
                            raise
                        consumer._trouble.set()
                        await asyncio.sleep(0.5)
                        continue
                    if consumer.initial_pending == 0:
                        break
        finally:
            await consumer.stop()
        return delivered[0]

    async def read(self, aggregate: str, *, on_bad_event: Literal["raise", "skip"] = "raise") -> AggregateHistory:
        """All events of one aggregate, oldest first, with its version."""
        subject = self.subject(aggregate)
        version = await self.version(aggregate)
        events: list[Event] = []
        seqs: list[int] = []
        decode = decoder()
        trace: dict[str, str] = {}

        def collect(seq: int, _subject: bytes, hdr: bytes | None, payload: bytes, _pending: int) -> None:
            if hdr and not trace and b"traceparent" in hdr.lower():
                trace.update((k, v) for k, v in tracing.parse_header_block(hdr).items()
                             if k in ("traceparent", "tracestate"))
            try:
                decoded = _decode_at(decode, payload, seq, subject, aggregate)
            except EventError as exc:
                if on_bad_event == "raise":
                    raise
                log.error("skipped a bad event while reading", extra={"problem": str(exc)})
                return
            events.extend(decoded)
            seqs.extend([seq] * len(decoded))

        await self._consume(subject, 0, version, collect)
        return AggregateHistory(aggregate, events, version, trace, seqs)

    async def commit_at(self, seq: int) -> Commit | None:
        """The commit stored at ``seq`` (None if there is none, or it is not an aggregate's): what a duplicate
        append's acknowledgement points at, the original of a retried command."""
        try:
            msg = await self.js.get_msg(self.stream, seq)
        except nats.js.errors.NotFoundError:
            return None
        subject = msg.subject or ""
        if not subject.startswith(f"{self.prefix}."):
            return None
        aggregate = subject[len(self.prefix) + 1:]
        return Commit(seq, aggregate, _decode_at(decoder(), msg.data or b"", seq, subject, aggregate))

    async def read_job(self, job_id: str) -> list[Event]:
        """A job's whole story: its decisions (``job.<id>``) and its nodes' reports (``run.<id>``), in the order the
        log stored them (their stamps are the clocks of several hosts: sorted by them, a trainer 5 minutes behind
        put JobStarted and JobSucceeded before JobSubmitted); events that do not belong where they are stored are
        left out (and logged)."""
        histories = [await self.read(f"{kind}.{job_id}", on_bad_event="skip") for kind in JOB_AGGREGATES]
        stored = sorted((seq, i, ev) for h in histories for i, (seq, ev) in enumerate(zip(h.seqs, h.events)))
        return [ev for _, _, ev in stored]

    async def replay(self, handler: Callable[[Commit], Any], from_seq: int = 1, to_seq: int | None = None, *,
                     filter_subject: str | None = None, on_bad_event: Literal["raise", "skip"] = "raise") -> int:
        """Call ``handler(commit)`` for every commit from ``from_seq`` to ``to_seq`` (default: the log's end now).

        The handler runs synchronously inside the reader (no task per message), so it must not block. Returns the
        last sequence seen, which is what a snapshot of the folded state should record.
        """
        until = await self.last_seq() if to_seq is None else to_seq
        subject_filter = filter_subject or f"{self.prefix}.>"
        decode = decoder()
        cut = len(self.prefix) + 1
        bad: list[str] = []

        def on_message(seq: int, subject: bytes, hdr: bytes | None, payload: bytes, _pending: int) -> None:
            aggregate = subject[cut:].decode(errors="surrogateescape")
            try:
                events = _decode_at(decode, payload, seq, subject, aggregate)
            except EventError as exc:
                if on_bad_event == "raise":
                    raise
                bad.append(str(exc))
                return
            handler(Commit(seq, aggregate, events, hdr))

        last = await self._consume(subject_filter, from_seq - 1, until, on_message)
        for problem in bad:
            log.error("skipped a bad event during replay", extra={"problem": problem})
        return max(last, from_seq - 1)

    def subscribe(self, from_seq: int = 1, *, filter_subject: str | None = None,
                  on_bad_event: Literal["raise", "skip"] = "raise") -> "Subscription":
        """Live tail: an async iterator of commits from ``from_seq`` on, forever, each exactly once, in order.

        A payload that is not a valid event ends the iteration with its error (``raise``) or is logged and passed
        over (``skip``)."""
        return Subscription(self, filter_subject or f"{self.prefix}.>", from_seq - 1, on_bad_event=on_bad_event)

    async def close(self) -> None:
        """Close the store's connections (the nats-py one too)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if not self.nc.is_closed:
            await self.nc.close()


def _decode_at(decode: Callable[[bytes], list[Event]], payload: bytes, seq: int, subject: bytes | str,
               aggregate: str) -> list[Event]:
    """The commit's events, each checked to belong to the aggregate it was stored on: subject permissions decide who
    may write an aggregate, so a writer allowed on ``run.j-1`` must not slip a ``JobPlaced`` in there. (The check
    compares attributes, no strings built: it runs for every event of every replay.)"""
    try:
        events = decode(payload)
    except EventError as exc:
        if not isinstance(exc, MalformedEvent):
            raise
        raise type(exc)(f"at sequence {seq} on {_text(subject)}: {exc}") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep for the untyped decoder, and the like
        raise MalformedEvent(f"at sequence {seq} on {_text(subject)}: not a valid event payload: {exc}") from None
    kind, _, ident = aggregate.partition(".")
    for ev in events:
        if ev.AGGREGATE and not (ev.aggregate_id == ident and (ev.AGGREGATE == kind or _legacy_run_event(ev, kind))):
            raise MalformedEvent(f"at sequence {seq} on {_text(subject)}: {type(ev).__name__} belongs to "
                                 f"{ev.aggregate!r}, not to this subject")
    return events


def _text(subject: bytes | str) -> str:
    return subject.decode(errors="backslashreplace") if isinstance(subject, bytes) else subject


def _legacy_run_event(ev: Event, kind: str) -> bool:
    """Worker and progress reports were stored on the job's own subject before they got ``run.<job>`` (0011)."""
    return kind == "job" and ev.AGGREGATE == "run"


def _result_of(ack: PubAck, aggregate: str, expected_version: int | None) -> AppendResult | None:
    """The append's result; None when it should be retried (no stream answered); raises when it was rejected."""
    err = ack.error
    if err is None:
        return AppendResult(ack.seq, ack.duplicate)
    if err.code == 503:
        return None
    if err.err_code == WRONG_LAST_SEQUENCE:
        raise ConcurrencyConflict(aggregate, expected_version or 0, err.description)
    raise StoreError(f"append to {aggregate!r} rejected: {err.description} (err_code {err.err_code})")


class AppendPipeline:
    """Appends sent back to back with up to ``max_pending`` unacknowledged; :meth:`results` waits for them all,
    re-sending (same idempotency key) any whose acknowledgement was lost.

    Commits of one aggregate keep their order: one connection delivers in order, so a commit follows an earlier one
    of its aggregate at once only on the connection that one went out on (or once it is stored). Otherwise (the
    earlier one could not be sent, or went out on a connection since lost) it waits, and :meth:`results` sends it
    after the earlier one, which a re-send would else have stored after it."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._sent: list[tuple[str, str, bytes, dict[str, str], int | None]] = []
        self._futures: list[asyncio.Future[PubAck] | None] = []
        self._last: dict[str, tuple[AckedPublisher | None, asyncio.Future[PubAck] | None]] = {}
        """aggregate -> the publisher and acknowledgement of its latest commit in this batch (None: not sent)"""

    async def add(self, aggregate: str, events: Event | Iterable[Event], expected_version: int | None = None, *,
                  idempotency_key: str | None = None) -> None:
        subject, payload, headers = self.store._prepare(aggregate, events, expected_version, idempotency_key)
        if tracing.current_trace_id() is not None:
            tracing.inject(headers)
        self._sent.append((aggregate, subject, payload, headers, expected_version))
        publisher: AckedPublisher | None = None
        fut: asyncio.Future[PubAck] | None = None
        try:
            publisher = await self.store._writer()
            if self._may_follow(aggregate, publisher):
                fut = await publisher.publish(subject.encode(), header_block(headers), payload)
        except StoreUnavailable:
            fut = None  # sent by results()
        self._last[aggregate] = (publisher, fut)
        self._futures.append(fut)

    def _may_follow(self, aggregate: str, publisher: AckedPublisher) -> bool:
        """Whether a commit of ``aggregate`` may go out now on ``publisher`` behind the batch's earlier one."""
        if aggregate not in self._last:
            return True
        before, fut = self._last[aggregate]
        if fut is None:
            return False
        failed = fut.done() and (fut.cancelled() or fut.exception() is not None or fut.result().error is not None)
        if before is publisher:  # in order behind it, unless it already came back refused (a 503: re-sent later)
            return not failed
        return fut.done() and not failed

    def __len__(self) -> int:
        return len(self._sent)

    async def results(self) -> list[AppendResult | StoreError]:
        """One entry per ``add``, in order: the result, or the error for that append (nothing raised here)."""
        store = self.store
        waiting = [f for f in self._futures if f is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=store.ack_timeout * 4)
        out: list[AppendResult | StoreError] = []
        for (aggregate, subject, payload, headers, expected), fut in zip(self._sent, self._futures):
            try:
                if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                    result = _result_of(fut.result(), aggregate, expected)
                    if result is not None:
                        out.append(result)
                        continue
                if fut is not None and not fut.done() and store._publisher is not None:
                    store._publisher.forget(fut)
                # Lost or failed acknowledgement: the same idempotency key makes a re-send safe.
                out.append(await store._publish_until_acked(aggregate, subject, payload, headers, expected))
            except StoreError as err:
                out.append(err)
        self._sent.clear()
        self._futures.clear()
        self._last.clear()
        return out


class Subscription:
    """A live tail of the log. Iterate with ``async for``; :meth:`close` when done.

    Backpressure: when the consumer of this iterator falls ``high_water`` commits behind, reading from the socket
    pauses until it catches up, so a slow service cannot run out of memory.
    """

    def __init__(self, store: EventStore, filter_subject: str, after_seq: int, *, high_water: int = 10_000,
                 on_bad_event: Literal["raise", "skip"] = "raise") -> None:
        self.store = store
        self.on_bad_event = on_bad_event
        self.skipped = 0
        self.filter_subject = filter_subject
        self.last_seq = after_seq
        self.high_water = high_water
        self.reconnects = 0
        self._queue: asyncio.Queue[Commit | BaseException] = asyncio.Queue()
        self._conn: RawNatsConnection | None = None
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._decode = decoder()
        self._cut = len(store.prefix) + 1

    def __aiter__(self) -> AsyncIterator[Commit]:
        self._start()
        return self

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._run())

    async def __anext__(self) -> Commit:
        self._start()
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if self._paused and self._queue.qsize() < self.high_water // 2 and self._conn and self._conn.transport:
            self._conn.transport.resume_reading()
            self._paused = False
        if isinstance(item, BaseException):
            raise item
        self.last_seq = item.seq
        return item

    async def next(self, timeout: float) -> Commit:
        """The next commit, or :class:`asyncio.TimeoutError` after ``timeout`` seconds."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def _on_message(self, seq: int, subject: bytes, hdr: bytes | None, payload: bytes, _pending: int) -> None:
        aggregate = subject[self._cut:].decode(errors="surrogateescape")
        try:
            events = _decode_at(self._decode, payload, seq, subject, aggregate)
        except EventError as exc:
            if self.on_bad_event == "raise":
                raise
            self.skipped += 1
            log.error("skipped a bad event", extra={"problem": str(exc)})
            return
        self._queue.put_nowait(Commit(seq, aggregate, events, hdr))
        if not self._paused and self._queue.qsize() >= self.high_water and self._conn and self._conn.transport:
            self._conn.transport.pause_reading()
            self._paused = True

    async def _run(self) -> None:
        consumer: OrderedConsumer | None = None
        delay = 0.1
        while not self._closed:
            try:
                if self._conn is None or self._conn.is_closed:
                    self._conn = await RawNatsConnection.connect(self.store.servers, name="aios-subscriber")
                    self._paused = False
                    if consumer is not None:
                        self.reconnects += 1
                if consumer is None:
                    consumer = OrderedConsumer(self._conn, self.store.stream, self.filter_subject, self.last_seq,
                                               self._on_message)
                    await consumer.start()
                else:
                    consumer.conn = self._conn
                    await consumer.restart()
                delay = 0.1
                while not self._closed:
                    trouble = asyncio.ensure_future(consumer.wait_trouble())
                    try:
                        await asyncio.wait({trouble, self._conn.closed}, timeout=consumer.heartbeat,
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        trouble.cancel()
                    if consumer.error is not None:
                        self._queue.put_nowait(consumer.error)
                        self._closed = True
                        return
                    if not self._paused:
                        consumer.check_idle()
                    if self._conn.is_closed or consumer.needs_reset:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the tail must outlive any single failure
                level = logging.WARNING if isinstance(exc, StoreError) else logging.ERROR
                log.log(level, "subscription interrupted, retrying", exc_info=not isinstance(exc, StoreError),
                        extra={"error": str(exc), "after_seq": self.last_seq})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                if consumer is not None and self._conn is not None and not self._conn.is_closed:
                    self._conn.close()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None:
            self._conn.close()
        self._queue.put_nowait(StopAsyncIteration())


JETSTREAM_WAIT_S = 300.0
"""How long a service that starts waits for JetStream to answer (a cluster whose members have not met yet has no
meta leader, and every JetStream request times out)."""
_NOT_READY = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError)


async def ensure_stream_when_ready(store: EventStore, wait_s: float = JETSTREAM_WAIT_S) -> None:
    """``store.ensure_stream()``, waiting up to ``wait_s`` for a JetStream that does not answer yet: started beside
    the NATS servers (Nomad starts every job at once), a service died on its first request, before the members had
    elected a meta leader, and lived on its restart policy's attempts."""
    deadline, delay = time.monotonic() + wait_s, 0.5
    while True:
        try:
            await store.ensure_stream()
            return
        except _NOT_READY as exc:
            if time.monotonic() + delay >= deadline:
                raise StoreUnavailable(f"JetStream on {natsauth.redacted(store.servers)} did not "
                                       f"answer within {wait_s:g} s ({type(exc).__name__}): are its servers up, and "
                                       "have they met (a meta leader)?") from None
            log.warning("JetStream not answering yet (no meta leader?); waiting",
                        extra={"error": type(exc).__name__, "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def connect(servers: list[str], *, name: str = "aios", jetstream_wait_s: float = JETSTREAM_WAIT_S,
                  **store_options: Any) -> EventStore:
    """Connect nats-py with unbounded reconnects and return an :class:`EventStore` over it (stream ensured, waited
    for as :func:`ensure_stream_when_ready` does): for the services, which own the stream's configuration."""
    nc = await connect_nats(servers, name=name)
    store = EventStore(nc, servers, **store_options)
    try:
        await ensure_stream_when_ready(store, jetstream_wait_s)
    except BaseException:
        await store.close()
        raise
    return store


async def open_log(servers: list[str], *, name: str = "aios", timeout_s: float = 3.0, follow: bool = False,
                   wait_for_log_s: float = 0.0, **store_options: Any) -> EventStore:
    """An :class:`EventStore` for a command a person runs: a server nobody answers on is a :class:`StoreError` at
    once, and the stream is neither created nor changed (a wrong URL must not grow an empty AIOS log on somebody's
    server, and a command's defaults must not reset the replication the services set). ``follow``: reconnect
    through server restarts, as a command that waits on a job must. ``wait_for_log_s``: how long to wait for the
    services of a cluster that is starting to create the log. Errors name the server and the reason."""
    where = natsauth.redacted(servers)  # errors are printed: a tenant's password was
    nc = await connect_once(servers, name=name, timeout_s=timeout_s)
    if follow:  # the probe answered: now the connection that rides out restarts
        await nc.close()
        nc = await connect_nats(servers, name=name)
    store = EventStore(nc, servers, **store_options)
    try:
        await _log_exists(store, where, time.monotonic() + wait_for_log_s)
    except BaseException:
        await store.close()
        raise
    return store


async def open_for_work(servers: list[str], *, name: str) -> EventStore:
    """The cluster's log for a process a job runs (a training worker, a serving replica): it reconnects through
    server restarts as a service does, and takes the stream as the services configured it, never creating or
    changing it. Workers used ``connect``, which brings the stream to this process's defaults: one replica against
    a cluster's three, a change their NATS identity may not make; every worker died at start in a deployment."""
    return await open_log(servers, name=name, follow=True, wait_for_log_s=10.0)


async def _log_exists(store: EventStore, where: str, deadline: float) -> None:
    """Return once the store's stream exists (waiting until ``deadline`` for it), or raise StoreError saying why."""
    while True:
        try:
            await store.js.stream_info(store.stream)
            return
        except nats.js.errors.NotFoundError:
            if time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                continue
            raise StoreError(f"NATS at {where} holds no AIOS event log (no stream {store.stream}): is it the "
                             "cluster's server, and are its services up?") from None
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise StoreError(f"NATS at {where} runs without JetStream, where AIOS keeps its event log") from None
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise StoreError(f"NATS at {where}: cannot read the event log: {str(exc) or type(exc).__name__}") \
                from None


async def connect_once(servers: list[str], *, name: str = "aios", timeout_s: float = 3.0) -> nats.NATS:
    """A nats-py connection for a one-shot command: each server tried twice, then :class:`StoreError` naming the
    servers and the last reason. (nats-py's ``max_reconnect_attempts=0`` means *no limit* on the first connect:
    a command pointed at a dead port retried for ever, logging a traceback each time.)"""
    seen: list[BaseException] = []

    async def remember(exc: Exception) -> None:  # raised below, once, with the server named
        seen.append(exc)

    try:
        return await nats.connect(servers, name=f"{name}-{os.getpid()}", connect_timeout=timeout_s,
                                  max_reconnect_attempts=1, reconnect_time_wait=0.2, allow_reconnect=False,
                                  error_cb=remember)
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
        last = seen[-1] if seen else exc
        raise StoreError(f"cannot reach NATS at {natsauth.redacted(servers)}: {str(last) or type(last).__name__}") from None


async def connect_nats(servers: list[str], *, name: str = "aios", **options: Any) -> nats.NATS:
    """nats-py connection that retries forever with jittered backoff; connection events are logged."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": str(exc) or type(exc).__name__})

    client: list[nats.NATS] = []

    async def on_disconnect() -> None:
        if client and client[0].is_closed:
            return  # our own close at the end of a command, not an outage
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    params: dict[str, Any] = dict(
        servers=servers, name=f"{name}-{os.getpid()}", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        connect_timeout=2, allow_reconnect=True, error_cb=on_error, disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    params.update(options)
    client.append(await nats.connect(**params))
    return client[0]
