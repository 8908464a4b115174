"""Ring all-reduce over NATS (the ``nats`` backend): reduce-scatter, then all-gather, chunked and pipelined.

The array is cut into ``world`` segments (uneven when the size does not divide) and each segment into chunks of at
most the server's largest message. Rank ``r`` sends only to ``r + 1`` and receives only from ``r - 1``, so no rank
ever takes the whole tensor from one peer in one piece, and every rank sends and receives ``2 (world - 1) / world``
of the array, the bandwidth-optimal amount. A chunk is forwarded as soon as it has been added to (reduce-scatter) or
copied (all-gather), so the steps overlap instead of waiting for whole segments.

Messages go over core NATS (no JetStream: a collective is ephemeral) on subjects private to the group,
``aios.coll.<group>.<to rank>.<op>.<step>.<chunk>``; NATS keeps one publisher's order to one subscriber, and the
keys let a fast rank run ahead into the next operation without mixing data. A rank that gives up publishes on
``aios.coll.<group>.abort`` so the others fail at once; one that dies silently is noticed at the timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from aios.trainer.collective import Collective, CollectiveError

HEADROOM = 1024
"""Bytes kept free under the server's max_payload for the protocol line."""


def segment_bounds(size: int, world: int) -> list[int]:
    """Offsets of ``world`` nearly equal segments of ``size`` elements (the first ones shorter when uneven)."""
    return [(i * size) // world for i in range(world + 1)]


def chunk_bounds(start: int, stop: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, stop)) for a in range(start, stop, chunk)] or [(start, start)]


class NatsRing(Collective):
    backend = "nats"

    def __init__(self, nc: Any, group: str, rank: int, world: int, timeout_s: float = 30.0,
                 chunk_bytes: int | None = None) -> None:
        super().__init__(rank, world)
        self.nc = nc
        self.group = group
        self.timeout_s = timeout_s
        limit = int(getattr(nc, "max_payload", 0) or (1 << 20)) - HEADROOM
        self.chunk_bytes = max(64, min(chunk_bytes or limit, limit))
        self._op = 0
        self._inbox: dict[tuple[int, int, int], bytes] = {}
        self._waiting: dict[tuple[int, int, int], asyncio.Future[bytes]] = {}
        self._aborted: str | None = None
        self._subs: list[Any] = []

    @classmethod
    async def join(cls, nc: Any, group: str, rank: int, world: int, **options: Any) -> "NatsRing":
        """Subscribe before anyone sends: the caller must let every rank join before the first collective (the
        first ``barrier``'s data would otherwise be lost: core NATS does not keep messages for late subscribers),
        which :meth:`join` does by a handshake with both neighbours."""
        ring = cls(nc, group, rank, world, **options)
        ring._subs.append(await nc.subscribe(f"aios.coll.{group}.{rank}.>", cb=ring._on_data,
                                             pending_bytes_limit=1 << 30, pending_msgs_limit=1 << 20))
        ring._subs.append(await nc.subscribe(f"aios.coll.{group}.abort", cb=ring._on_abort))
        await nc.flush()
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

    async def _on_data(self, msg: Any) -> None:
        parts = msg.subject.rsplit(".", 3)
        key = (int(parts[1]), int(parts[2]), int(parts[3]))
        waiter = self._waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg.data)
        elif key[0] >= 0 or key not in self._inbox:
            self._inbox[key] = msg.data

    async def _on_abort(self, msg: Any) -> None:
        reason = msg.data.decode(errors="replace")
        self._aborted = reason
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(CollectiveError(f"rank {self.rank}: group aborted: {reason}"))
        self._waiting.clear()

    async def _recv(self, key: tuple[int, int, int], source: int) -> bytes:
        data = self._inbox.pop(key, None)
        if data is not None:
            return data
        if self._aborted is not None:
            raise CollectiveError(f"rank {self.rank}: group aborted: {self._aborted}")
        waiter = self._waiting[key] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(waiter, self.timeout_s)
        except asyncio.TimeoutError:
            self._waiting.pop(key, None)
            raise CollectiveError(f"rank {self.rank}: nothing from rank {source} for {self.timeout_s:.0f}s "
                                  f"(operation {key[0]}, step {key[1]}); a peer died or stalled") from None

    async def _send(self, to: int, key: tuple[int, int, int], view: np.ndarray) -> None:
        await self.nc.publish(f"aios.coll.{self.group}.{to}.{key[0]}.{key[1]}.{key[2]}", view.tobytes())

    async def allreduce(self, array: np.ndarray) -> np.ndarray:
        buf = np.array(array, copy=True).reshape(-1)
        op = self._op
        self._op += 1
        w, r = self.world, self.rank
        if w == 1:
            return buf
        nxt, prev = (r + 1) % w, (r - 1) % w
        seg = segment_bounds(buf.size, w)
        per = max(1, self.chunk_bytes // buf.itemsize)
        chunks = [chunk_bounds(seg[i], seg[i + 1], per) for i in range(w)]
        last_rs = w - 2  # the reduce-scatter steps are 0 .. w-2, the all-gather steps w-1 .. 2w-3

        for c, (a, b) in enumerate(chunks[r]):  # reduce-scatter step 0: our own segment goes out as it is
            await self._send(nxt, (op, 0, c), buf[a:b])
        for s in range(w - 1):
            for c, (a, b) in enumerate(chunks[(r - s - 1) % w]):
                data = await self._recv((op, s, c), prev)
                buf[a:b] += np.frombuffer(data, dtype=buf.dtype)
                # forward at once: to the next reduce-scatter step, or (fully reduced) into the all-gather
                await self._send(nxt, (op, s + 1, c), buf[a:b])
        for s in range(w - 1):
            step = last_rs + 1 + s
            for c, (a, b) in enumerate(chunks[(r - s) % w]):
                data = await self._recv((op, step, c), prev)
                buf[a:b] = np.frombuffer(data, dtype=buf.dtype)
                if s < w - 2:
                    await self._send(nxt, (op, step + 1, c), buf[a:b])
        return buf.reshape(np.shape(array))

    async def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        buf = np.array(array, copy=True).reshape(-1)
        op = self._op
        self._op += 1
        if self.world == 1:
            return buf
        per = max(1, self.chunk_bytes // buf.itemsize)
        parts = chunk_bounds(0, buf.size, per)
        if self.rank == root:
            for to in range(self.world):
                if to != root:
                    for c, (a, b) in enumerate(parts):
                        await self._send(to, (op, 0, c), buf[a:b])
            await self.nc.flush()
            return buf.reshape(np.shape(array))
        for c, (a, b) in enumerate(parts):
            buf[a:b] = np.frombuffer(await self._recv((op, 0, c), root), dtype=buf.dtype)
        return buf.reshape(np.shape(array))

    async def abort(self, reason: str) -> None:
        try:
            await self.nc.publish(f"aios.coll.{self.group}.abort", f"rank {self.rank}: {reason}".encode())
            await self.nc.flush(timeout=2)
        except Exception:  # noqa: BLE001 - the connection may be what failed; the timeout covers the peers
            pass

    async def close(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - closing a connection that is already gone
                pass
        self._subs.clear()
