"""The ``nats`` ring all-reduce against numpy's sum, through a real nats-server, for world sizes 1-8."""

from __future__ import annotations

import asyncio
import time

import nats
import numpy as np
import pytest

from aios.common.errors import StoreUnavailable
from aios.common.natsserver import NatsServer
from aios.common.wire import RawNatsConnection
from aios.trainer.collective import CollectiveError
from aios.trainer.collective.ring import NatsRing, segment_bounds


async def ranks(url: str, group: str, world: int, raw: bool = True,
                **options: object) -> tuple[list[object], list[NatsRing]]:
    # one connection per rank, as separate processes have: AIOS's own protocol connection, or a nats-py client
    conns = [await (RawNatsConnection.connect([url]) if raw else nats.connect(url)) for _ in range(world)]
    rings = await asyncio.gather(*(NatsRing.join(conns[r], group, r, world, **options) for r in range(world)))
    return conns, list(rings)


async def close(conns: list[object], rings: list[NatsRing]) -> None:
    for ring in rings:
        await ring.close()
    for nc in conns:
        closing = nc.close()  # type: ignore[attr-defined]
        if closing is not None:
            await closing


def test_segments_cover_uneven_sizes() -> None:
    assert segment_bounds(10, 3) == [0, 3, 6, 10]
    assert segment_bounds(2, 4) == [0, 0, 1, 1, 2]  # fewer elements than ranks: empty segments


@pytest.mark.parametrize("world,raw", [(1, True), (2, True), (3, True), (4, True), (5, True), (8, True), (2, False),
                                       (3, False)])
async def test_allreduce_equals_numpy_sum(nats_server: NatsServer, world: int, raw: bool) -> None:
    conns, rings = await ranks(nats_server.url, f"sum{world}{raw}", world, raw, chunk_bytes=4096, timeout_s=20)
    try:
        rng = np.random.default_rng(world)
        for size, dtype in ((1, np.float32), (world + 1, np.float64), (10_007, np.float32), (3, np.float32)):
            inputs = [rng.standard_normal(size).astype(dtype) for _ in range(world)]
            outs = await asyncio.gather(*(rings[r].allreduce(inputs[r]) for r in range(world)))
            expected = np.sum(np.stack(inputs).astype(np.float64), axis=0)
            for out in outs:
                assert out.dtype == dtype and out.shape == (size,)
                np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
        # broadcast from a non-zero root
        root = world - 1
        sent = await asyncio.gather(*(rings[r].broadcast(np.full(5, float(r)), root=root) for r in range(world)))
        assert all((s == root).all() for s in sent)
    finally:
        await close(conns, rings)


async def test_a_broadcast_reaches_a_rank_that_joined_late(nats_server: NatsServer) -> None:
    """Joining proves only that a rank's neighbours have subscribed. The root sent to every rank directly, so a
    rank two hops away that joined late missed the data and timed out (a 4-rank job hung at its start)."""
    world = 4
    conns = [await RawNatsConnection.connect([nats_server.url]) for _ in range(world)]

    async def rank(r: int) -> np.ndarray:
        if r == 2:
            await asyncio.sleep(0.5)  # starts last, as a worker on a busy node does
        ring = await NatsRing.join(conns[r], "late", r, world, timeout_s=5)
        try:
            return await ring.broadcast(np.full(3, float(r)), root=0)
        finally:
            await ring.close()
    try:
        got = await asyncio.gather(*(rank(r) for r in range(world)))
        assert all((g == 0.0).all() for g in got)
    finally:
        for nc in conns:
            nc.close()


async def test_many_operations_in_flight_do_not_mix(nats_server: NatsServer) -> None:
    """A fast rank runs ahead into the next operations; keys keep each operation's chunks apart."""
    conns, rings = await ranks(nats_server.url, "ahead", 3, chunk_bytes=1024)
    try:
        async def rank_loop(r: int) -> list[np.ndarray]:
            outs = []
            for i in range(20):
                if r == 0:
                    await asyncio.sleep(0.001)  # rank 0 lags
                outs.append(await rings[r].allreduce(np.full(777, float(r + i), dtype=np.float32)))
            return outs
        results = await asyncio.gather(*(rank_loop(r) for r in range(3)))
        for outs in results:
            for i, out in enumerate(outs):
                assert (out == 3 * i + 3).all()  # (0+i) + (1+i) + (2+i)
    finally:
        await close(conns, rings)


@pytest.mark.parametrize("world", [2, 3, 5])
async def test_large_chunks_land_in_the_result_and_equal_numpy_sum(nats_server: NatsServer, world: int) -> None:
    """Chunks of the server's largest message: the all-gather writes them straight into the result on arrival, and
    a rank running ahead into the next operation must not get the previous one's data."""
    conns, rings = await ranks(nats_server.url, f"large{world}", world, timeout_s=30)
    try:
        rng = np.random.default_rng(world)
        for size in (3 * (1 << 18) + 7, 700_001):  # segments of several 1 MiB chunks; uneven
            inputs = [[rng.standard_normal(size).astype(np.float32) for _ in range(3)] for _ in range(world)]
            kept = [[a.copy() for a in per_rank] for per_rank in inputs]

            async def three(r: int) -> list[np.ndarray]:
                return [await rings[r].allreduce(a) for a in inputs[r]]
            outs = await asyncio.gather(*(three(r) for r in range(world)))
            for i in range(3):
                expected = np.sum(np.stack([inputs[r][i] for r in range(world)]).astype(np.float64), axis=0)
                for r in range(world):
                    np.testing.assert_allclose(outs[r][i], expected, rtol=1e-4, atol=1e-4)
            assert all((a == b).all() for per_a, per_b in zip(inputs, kept) for a, b in zip(per_a, per_b)), \
                "the inputs are left as they were"
    finally:
        await close(conns, rings)


async def test_a_rank_that_never_calls_is_named_by_every_rank_it_holds_up(nats_server: NatsServer) -> None:
    """Rank 1 waits for rank 0, which is healthy and waits for rank 2: each rank's error names rank 2, the one that
    holds the group up (rank 1's used to blame rank 0, its ring neighbour)."""
    conns, rings = await ranks(nats_server.url, "dead", 3, timeout_s=1.5)
    try:
        started = time.monotonic()
        alive = [rings[0].allreduce(np.ones(100)), rings[1].allreduce(np.ones(100))]  # rank 2 never calls
        results = await asyncio.gather(*alive, return_exceptions=True)
        assert all(isinstance(e, CollectiveError) for e in results), results
        for error in map(str, results):
            assert "rank(s) [2] have not reached operation 0" in error, error
            assert "[0]" not in error and "[1]" not in error, error
        assert time.monotonic() - started < 8  # the timeout, and at most one roll call of 2 s
    finally:
        await close(conns, rings)


async def test_a_rank_gone_silent_is_named_as_such(nats_server: NatsServer) -> None:
    """A rank that is gone (its process died, or is stopped) does not answer the roll call."""
    conns, rings = await ranks(nats_server.url, "gone", 4, timeout_s=1.5)
    try:
        await rings[3].close()  # rank 3 hears nothing more, as a dead or stopped process
        results = await asyncio.gather(*(rings[r].allreduce(np.ones(10)) for r in range(3)), return_exceptions=True)
        assert all(isinstance(e, CollectiveError) for e in results), results
        for error in map(str, results):
            assert "rank(s) [3] did not answer a roll call: died or stopped" in error, error
    finally:
        await close(conns, rings[:3])


async def test_a_ring_whose_connection_is_lost_says_so_at_once(killable_nats: NatsServer) -> None:
    """nats-server killed under a 2-rank job (a CI run): the ranks' messages went with it, a rank waited out its
    60-s timeout and failed the job as if a peer had died ("a collective failed", exit 3). A lost connection is
    now a lost connection (StoreUnavailable: the worker exits 75, and the job resumes from its checkpoint)."""
    conns, rings = await ranks(killable_nats.url, "cut", 2, timeout_s=30)
    try:
        waiting = asyncio.ensure_future(rings[0].allreduce(np.ones(100)))  # rank 1 has not called yet
        await asyncio.sleep(0.2)
        started = time.monotonic()
        killable_nats.kill()
        with pytest.raises(StoreUnavailable, match="the NATS connection of the ring was lost"):
            await waiting
        assert time.monotonic() - started < 5
    finally:
        await close(conns, rings)


async def test_abort_fails_the_peers_at_once(nats_server: NatsServer) -> None:
    conns, rings = await ranks(nats_server.url, "abort", 2, timeout_s=30)
    try:
        waiting = asyncio.ensure_future(rings[0].allreduce(np.ones(10)))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await rings[1].abort("out of memory")
        with pytest.raises(CollectiveError, match="rank 1: out of memory"):
            await waiting
        assert time.monotonic() - started < 2
        assert rings[0]._landing == {}  # no view of the failed operation's result is kept
    finally:
        await close(conns, rings)


async def test_joining_without_peers_times_out(nats_server: NatsServer) -> None:
    nc = await RawNatsConnection.connect([nats_server.url])
    try:
        with pytest.raises(CollectiveError, match="never joined"):
            await NatsRing.join(nc, "alone", 0, 2, timeout_s=0.5)
    finally:
        nc.close()
