"""Ring all-reduce over NATS (the ``nats`` backend): reduce-scatter, then all-gather, chunked and pipelined.

The array is cut into ``world`` segments (uneven when the size does not divide) and each segment into chunks of at
most the server's largest message. Rank ``r`` sends only to ``r + 1`` and receives only from ``r - 1``, so no rank
ever takes the whole tensor from one peer in one piece, and every rank sends and receives ``2 (world - 1) / world``
of the array, the bandwidth-optimal amount. A chunk is forwarded as soon as it has been added to (reduce-scatter) or
copied (all-gather), so the steps overlap instead of waiting for whole segments.

Messages go over core NATS (no JetStream: a collective is ephemeral) on subjects private to the group,
``aios.coll.<group>.<to rank>.<op>.<step>.<chunk>``; NATS keeps one publisher's order to one subscriber, and the
keys let a fast rank run ahead into the next operation without mixing data. A rank that gives up publishes on
``aios.coll.<group>.abort`` so the others fail at once; one that dies silently is noticed at the timeout. A rank
that times out first calls the roll (``aios.coll.<group>.roll``) and names the rank that holds the group up: the one
that does not answer (dead or stopped), or the one that has not reached the operation. Its ring neighbour is often
healthy and waiting like everyone else, and blaming it sent people to the wrong node.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from typing import Any, Callable

import numpy as np

from aios.common.errors import StoreUnavailable
from aios.common.wire import RawNatsConnection
from aios.trainer.collective import Collective, CollectiveError

HEADROOM = 1024
"""Bytes kept free under the server's max_payload for the protocol line."""
ROLL_CALL_S = 2.0
"""How long a rank that timed out waits for the others to answer its roll call: a live rank answers from its event
loop at once, even while it waits for data itself."""
ROLL_OP = -2
"""The op number of roll-call answers (the handshake's hellos are op -1)."""


HEAP_BYTES = 256 << 20
"""How much freed memory a ring process may keep in its heap for the next messages (see :func:`reuse_large_buffers`)."""


def reuse_large_buffers() -> bool:
    """Serve the ring's megabyte buffers from the heap instead of a fresh ``mmap`` each.

    Every chunk passes through a few short-lived 1 MiB ``bytes`` (the framed message, the socket reads, the
    reassembled payload). glibc gives allocations that large their own mapping and unmaps it on free, so each one
    costs page faults and zeroing in the kernel: measured, that was 85% of a sender's CPU (0.5 s of system time per
    256 MiB, against 0.07 s with this). Raising the mmap and trim thresholds lets freed buffers be reused. It acts
    on the whole process, which in a trainer worker is what we want; elsewhere (not glibc) it does nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(mallopt(m_trim_threshold, HEAP_BYTES))


def segment_bounds(size: int, world: int) -> list[int]:
    """Offsets of ``world`` nearly equal segments of ``size`` elements (the first ones shorter when uneven)."""
    return [(i * size) // world for i in range(world + 1)]


def chunk_bounds(start: int, stop: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, stop)) for a in range(start, stop, chunk)] or [(start, start)]


def group_name(job_id: str, attempt: int) -> str:
    """The ring of one attempt of a job (a later attempt's ranks never take an earlier one's messages)."""
    return f"{job_id}-{attempt}"


def abort_subject(group: str) -> str:
    """Where a rank that gives up says so, and where the node's agent says so for a rank that died without a word
    (killed, out of memory): the others then stop at once instead of at their timeout."""
    return f"aios.coll.{group}.abort"


class _Link:
    """What the ring needs of a NATS connection: publish, subscribe with a plain callback, flush."""

    max_payload = 1 << 20

    async def publish(self, subject: str, data: bytes) -> None:
        raise NotImplementedError

    async def subscribe(self, subject: str, on_message: Callable[[str, bytes], None],
                        land: Callable[[bytes, int], memoryview | None] | None = None) -> Any:
        """``land(subject, size)``: where a large payload may be written directly (ignored where unsupported)."""
        raise NotImplementedError

    async def unsubscribe(self, token: Any) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    def lost(self) -> "asyncio.Future[None] | None":
        """Done once the connection is gone for good (messages may have been lost): None where it reconnects."""
        return None


class _PyLink(_Link):
    """Over a nats-py client (what a user's script would have)."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.max_payload = int(getattr(nc, "max_payload", 0) or (1 << 20))

    async def publish(self, subject: str, data: bytes) -> None:
        await self.nc.publish(subject, data)

    async def subscribe(self, subject: str, on_message: Callable[[str, bytes], None],
                        land: Callable[[bytes, int], memoryview | None] | None = None) -> Any:
        async def deliver(msg: Any) -> None:
            on_message(msg.subject, msg.data)
        return await self.nc.subscribe(subject, cb=deliver, pending_bytes_limit=1 << 30, pending_msgs_limit=1 << 20)

    async def unsubscribe(self, token: Any) -> None:
        await token.unsubscribe()

    async def flush(self) -> None:
        await self.nc.flush(timeout=5)


class _RawLink(_Link):
    """Over AIOS's own protocol connection (aios.common.wire, decision 0003): messages are parsed in the
    protocol callback and handed over as they are, without nats-py's per-message task and small reads; about
    what makes the bulk data plane faster."""

    def __init__(self, conn: RawNatsConnection) -> None:
        self.conn = conn
        self.max_payload = int(conn.server_info.get("max_payload", 1 << 20))  # type: ignore[call-overload]

    high_water = 2 << 20
    """Bytes of output after which a publisher waits for the socket: without it a 64 MiB segment would be queued
    (and copied) whole before the first byte leaves, and nothing would overlap."""

    async def publish(self, subject: str, data: bytes) -> None:
        self.conn.publish(subject, data)
        while self.conn.write_buffer_size() > self.high_water and not self.conn.is_closed:
            await asyncio.sleep(0.0002)  # the loop sends (and receives) meanwhile

    async def subscribe(self, subject: str, on_message: Callable[[str, bytes], None],
                        land: Callable[[bytes, int], memoryview | None] | None = None) -> Any:
        def deliver(subj: bytes, _reply: bytes | None, _hdr: bytes | None, data: bytes) -> None:
            on_message(subj.decode(), data)
        return self.conn.subscribe(subject, deliver, takes_buffers=True, land=land)  # np.frombuffer reads any buffer

    async def unsubscribe(self, token: Any) -> None:
        self.conn.unsubscribe(token)

    async def flush(self) -> None:
        await self.conn.ping()

    def lost(self) -> "asyncio.Future[None] | None":
        return self.conn.closed


class NatsRing(Collective):
    backend = "nats"

    def __init__(self, nc: Any, group: str, rank: int, world: int, timeout_s: float = 30.0,
                 chunk_bytes: int | None = None) -> None:
        """``nc``: a :class:`RawNatsConnection` (fastest) or a nats-py client."""
        super().__init__(rank, world)
        self.nc: _Link = _RawLink(nc) if isinstance(nc, RawNatsConnection) else _PyLink(nc)
        self.group = group
        self.timeout_s = timeout_s
        limit = self.nc.max_payload - HEADROOM
        self.chunk_bytes = max(64, min(chunk_bytes or limit, limit))
        self._op = 0
        self._inbox: dict[tuple[int, int, int], bytes] = {}
        self._waiting: dict[tuple[int, int, int], asyncio.Future[bytes]] = {}
        self._aborted: str | None = None
        self._lost = False
        self._in_op: int | None = None
        """The operation this rank is in (None: between collectives), told to a roll call."""
        self._answers: set[asyncio.Future[None]] = set()
        lost = self.nc.lost()
        if lost is not None:
            lost.add_done_callback(self._on_lost)
        self._subs: list[Any] = []
        self._landing: dict[tuple[int, int, int], memoryview] = {}
        """Where all-gather chunks we expect may be written on arrival: straight into the result."""

    @classmethod
    async def join(cls, nc: Any, group: str, rank: int, world: int, **options: Any) -> "NatsRing":
        """Subscribe before anyone sends: the caller must let every rank join before the first collective (the
        first ``barrier``'s data would otherwise be lost: core NATS does not keep messages for late subscribers),
        which :meth:`join` does by a handshake with both neighbours."""
        ring = cls(nc, group, rank, world, **options)
        if world > 1:
            reuse_large_buffers()
        ring._subs.append(await ring.nc.subscribe(f"aios.coll.{group}.{rank}.>", ring._on_data, ring._land))
        ring._subs.append(await ring.nc.subscribe(abort_subject(group), ring._on_abort))
        ring._subs.append(await ring.nc.subscribe(f"aios.coll.{group}.roll", ring._on_roll))
        await ring.nc.flush()
        await ring._handshake()
        return ring

    async def _handshake(self) -> None:
        """Op -1: send hellos to both neighbours until a hello from each has arrived. A rank subscribes before it
        says hello, so a hello received proves that neighbour can take our data; a rank stops only after hearing
        from us, i.e. after we subscribed, and then says hello a few more times, so we hear it too."""
        if self.world == 1:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        neighbours = {(self.rank + 1) % self.world, (self.rank - 1) % self.world}

        async def hello() -> None:
            for n in neighbours:
                await self.nc.publish(f"aios.coll.{self.group}.{n}.-1.{self.rank}.0", b"hello")
            await self.nc.flush()
        while any((-1, n, 0) not in self._inbox for n in neighbours):
            await hello()
            if loop.time() > deadline:
                missing = sorted(n for n in neighbours if (-1, n, 0) not in self._inbox)
                raise CollectiveError(f"rank {self.rank}: rank(s) {missing} never joined group {self.group} within "
                                      f"{self.timeout_s:.0f}s")
            await asyncio.sleep(0.02)
        for _ in range(3):
            await hello()

    def _land(self, subject: bytes, size: int) -> memoryview | None:
        parts = subject.rsplit(b".", 3)
        return self._landing.get((int(parts[1]), int(parts[2]), int(parts[3])))

    def _on_data(self, subject: str, data: bytes) -> None:
        parts = subject.rsplit(".", 3)
        key = (int(parts[1]), int(parts[2]), int(parts[3]))
        waiter = self._waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(data)
        elif key[0] >= 0 or key not in self._inbox:
            self._inbox[key] = data

    def _on_abort(self, _subject: str, data: bytes) -> None:
        reason = data.decode(errors="replace")
        self._aborted = reason
        self._fail_waiters(CollectiveError(f"rank {self.rank}: group aborted: {reason}"))

    def _on_roll(self, _subject: str, data: bytes) -> None:
        """Answer a roll call: how many operations this rank has begun and the one it is in (-1: none)."""
        asker = int(bytes(data).decode())
        if asker != self.rank:
            state = f"{self._op} {-1 if self._in_op is None else self._in_op}".encode()
            answer = asyncio.ensure_future(self.nc.publish(
                f"aios.coll.{self.group}.{asker}.{ROLL_OP}.{self.rank}.0", state))
            self._answers.add(answer)
            answer.add_done_callback(self._answered)

    def _answered(self, answer: "asyncio.Future[None]") -> None:
        self._answers.discard(answer)
        if not answer.cancelled():
            answer.exception()  # an answer that could not go out (the connection is gone) is nobody's error

    async def _roll_call(self, op: int) -> str:
        """Who holds the group up in ``op``, as the others answer a roll call within ``ROLL_CALL_S``."""
        for key in [k for k in self._inbox if k[0] == ROLL_OP]:
            del self._inbox[key]
        others = [r for r in range(self.world) if r != self.rank]
        try:
            await self.nc.publish(f"aios.coll.{self.group}.roll", str(self.rank).encode())
            await asyncio.wait_for(self.nc.flush(), ROLL_CALL_S)
        except Exception:  # noqa: BLE001 - a connection that cannot call the roll cannot hear it either
            return "no roll call could be made"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROLL_CALL_S
        while loop.time() < deadline and any((ROLL_OP, r, 0) not in self._inbox for r in others):
            await asyncio.sleep(0.02)
        answers = {r: bytes(self._inbox.pop((ROLL_OP, r, 0))).decode().split() for r in others
                   if (ROLL_OP, r, 0) in self._inbox}
        silent = [r for r in others if r not in answers]
        if silent:
            return f"rank(s) {silent} did not answer a roll call: died or stopped"
        behind = [r for r, (begun, _) in answers.items() if int(begun) <= op]
        if behind:
            return f"rank(s) {behind} have not reached operation {op}: busy or stuck outside the collective"
        return f"every rank answered and is in operation {op} or past it: a message was lost"

    def _on_lost(self, _closed: object) -> None:
        """The connection is gone, and the messages on their way with it: waiting out the timeout failed the job as
        if a peer had died (exit 3); a lost connection is the worker's cut-off from NATS (it exits 75, the job
        resumes from its checkpoint)."""
        self._lost = True
        self._fail_waiters(self._lost_error())

    def _lost_error(self) -> StoreUnavailable:
        return StoreUnavailable(f"rank {self.rank}: the NATS connection of the ring was lost")

    def _fail_waiters(self, exc: Exception) -> None:
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(exc)
        self._waiting.clear()

    async def _recv(self, key: tuple[int, int, int], source: int) -> bytes:
        data = self._inbox.pop(key, None)
        if data is not None:
            return data
        if self._aborted is not None:
            raise CollectiveError(f"rank {self.rank}: group aborted: {self._aborted}")
        if self._lost:
            raise self._lost_error()
        waiter = self._waiting[key] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(waiter, self.timeout_s)
        except asyncio.TimeoutError:
            self._waiting.pop(key, None)
            held_up_by = await self._roll_call(key[0]) if self._aborted is None else f"aborted: {self._aborted}"
            raise CollectiveError(f"rank {self.rank}: nothing from rank {source} for {self.timeout_s:.0f}s "
                                  f"(operation {key[0]}, step {key[1]}); {held_up_by}") from None

    async def _send(self, to: int, key: tuple[int, int, int], view: np.ndarray) -> None:
        # a byte view of the chunk, not a copy: the connection copies it once into its output
        await self.nc.publish(f"aios.coll.{self.group}.{to}.{key[0]}.{key[1]}.{key[2]}",
                              memoryview(np.ascontiguousarray(view)).cast("B"))  # type: ignore[arg-type]

    async def allreduce(self, array: np.ndarray) -> np.ndarray:
        mine = np.ascontiguousarray(array).reshape(-1)  # our contribution, read but never written
        op = self._op
        self._op += 1
        w, r = self.world, self.rank
        if w == 1:
            return mine.copy()
        # Not a copy of ``mine``: every element of the result is written once, by the reduce-scatter step that adds
        # our contribution to a neighbour's partial sum, or by the all-gather that brings a finished segment.
        buf = np.empty_like(mine)
        nxt, prev = (r + 1) % w, (r - 1) % w
        seg = segment_bounds(buf.size, w)
        per = max(1, self.chunk_bytes // buf.itemsize)
        chunks = [chunk_bounds(seg[i], seg[i + 1], per) for i in range(w)]
        last_rs = w - 2  # the reduce-scatter steps are 0 .. w-2, the all-gather steps w-1 .. 2w-3
        # no all-gather chunk of this operation can come before our reduce-scatter data has gone out: say now
        # where each should land
        for s in range(w - 1):
            for c, (a, b) in enumerate(chunks[(r - s) % w]):
                if b > a:
                    self._landing[(op, last_rs + 1 + s, c)] = memoryview(buf[a:b]).cast("B")

        self._in_op = op
        try:
            for c, (a, b) in enumerate(chunks[r]):  # reduce-scatter step 0: our own segment goes out as it is
                await self._send(nxt, (op, 0, c), mine[a:b])
            for s in range(w - 1):
                for c, (a, b) in enumerate(chunks[(r - s - 1) % w]):
                    data = await self._recv((op, s, c), prev)
                    np.add(np.frombuffer(data, dtype=buf.dtype), mine[a:b], out=buf[a:b])
                    # forward at once: to the next reduce-scatter step, or (fully reduced) into the all-gather
                    await self._send(nxt, (op, s + 1, c), buf[a:b])
            for s in range(w - 1):
                step = last_rs + 1 + s
                for c, (a, b) in enumerate(chunks[(r - s) % w]):
                    data = await self._recv((op, step, c), prev)
                    if data is not self._landing.pop((op, step, c), None):  # not written in place on arrival
                        buf[a:b] = np.frombuffer(data, dtype=buf.dtype)
                    if s < w - 2:
                        await self._send(nxt, (op, step + 1, c), buf[a:b])
        finally:
            self._in_op = None
            if self._landing:  # a failed operation leaves no view of its result behind
                for key in [k for k in self._landing if k[0] == op]:
                    del self._landing[key]
        return buf.reshape(np.shape(array))

    async def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        buf = np.array(array, copy=True).reshape(-1)
        op = self._op
        self._op += 1
        if self.world == 1:
            return buf
        per = max(1, self.chunk_bytes // buf.itemsize)
        parts = chunk_bounds(0, buf.size, per)
        # along the ring, chunk by chunk, each rank passing on what it got: only neighbours talk, as in the
        # all-reduce. The root sent to every rank, but join proves only that the neighbours have subscribed: a
        # rank two hops away that subscribed late lost the data (core NATS keeps nothing) and waited for ever
        left, right = (self.rank - 1) % self.world, (self.rank + 1) % self.world
        self._in_op = op
        try:
            for c, (a, b) in enumerate(parts):
                if self.rank != root:
                    buf[a:b] = np.frombuffer(await self._recv((op, 0, c), left), dtype=buf.dtype)
                if right != root:
                    await self._send(right, (op, 0, c), buf[a:b])
        finally:
            self._in_op = None
        await self.nc.flush()
        return buf.reshape(np.shape(array))

    async def abort(self, reason: str) -> None:
        try:
            await self.nc.publish(abort_subject(self.group), f"rank {self.rank}: {reason}".encode())
            await asyncio.wait_for(self.nc.flush(), 2)
        except Exception:  # noqa: BLE001 - the connection may be what failed; the timeout covers the peers
            pass

    async def close(self) -> None:
        try:  # the last operation's final chunks may still be on their way to the next rank: see them out first
            await asyncio.wait_for(self.nc.flush(), 5)
        except Exception:  # noqa: BLE001 - a broken connection has nothing left to send
            pass
        for sub in self._subs:
            try:
                await self.nc.unsubscribe(sub)
            except Exception:  # noqa: BLE001 - closing a connection that is already gone
                pass
        self._subs.clear()
