"""Snapshots: restart = snapshot + tail gives exactly the state of a full replay; stale or foreign snapshots are
never trusted blindly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random

import msgspec
import pytest

from aios.common.errors import StoreError
from aios.common.events import Event, JobCancelled, JobSubmitted
from aios.common.snapshot import Projector, SnapshotStore, decode_snapshot, encode_snapshot
from aios.common.store import Commit, EventStore


class Counts(msgspec.Struct):
    live: dict[str, str] = {}
    cancelled: int = 0


def evolve(state: Counts, ev: Event) -> Counts:
    if isinstance(ev, JobSubmitted):
        state.live[ev.aggregate_id] = ev.tenant
    elif isinstance(ev, JobCancelled):
        state.live.pop(ev.aggregate_id, None)
        state.cancelled += 1
    return state


def make() -> Projector[Counts]:
    return Projector("counts", Counts, evolve, Counts)


async def write_random(store: EventStore, rng: random.Random, jobs: range) -> None:
    pipe = store.pipeline()
    for j in jobs:
        events: list[Event] = [JobSubmitted(aggregate_id=f"{j}", tenant=rng.choice("abc"))]
        if rng.random() < 0.3:
            events.append(JobCancelled(aggregate_id=f"{j}"))
        await pipe.add(f"job.{j}", events)
    assert not [r for r in await pipe.results() if isinstance(r, Exception)]


async def test_snapshot_plus_tail_equals_full_replay(store: EventStore) -> None:
    rng = random.Random(7)
    snapshots = SnapshotStore(store, bucket=f"SNAP_{store.stream}")
    await write_random(store, rng, range(0, 800))
    writer = make()
    await writer.rebuild(store)
    info = await writer.save(snapshots)
    assert info.seq == 800
    await write_random(store, rng, range(800, 1000))

    restarted = make()
    report = await restarted.rebuild(store, snapshots)
    full = make()
    await full.rebuild(store)
    assert report.snapshot_seq == 800 and report.tail_commits == 200 and report.last_seq == 1000
    assert restarted.state == full.state and restarted.seq == full.seq
    await store.js.delete_object_store(snapshots.bucket)


async def test_a_commit_already_in_the_state_is_not_applied_twice() -> None:
    p = make()
    commit = Commit(5, "job.1", [JobCancelled(aggregate_id="1")])
    p.apply(commit)
    p.apply(commit)
    assert p.state.cancelled == 1 and p.seq == 5


async def test_snapshot_of_another_schema_is_ignored(store: EventStore) -> None:
    snapshots = SnapshotStore(store, bucket=f"SNAP_{store.stream}")
    await write_random(store, random.Random(1), range(10))
    old = Projector("counts", Counts, evolve, Counts, schema=1)
    await old.rebuild(store)
    await old.save(snapshots)
    new = Projector("counts", Counts, evolve, Counts, schema=2)
    report = await new.rebuild(store, snapshots)
    assert report.snapshot_seq == 0 and report.tail_commits == 10 and new.state == old.state
    await store.js.delete_object_store(snapshots.bucket)


def test_corrupt_snapshot_is_an_error_not_a_wrong_state() -> None:
    blob = encode_snapshot(12, 1, Counts(live={"a": "b"}, cancelled=3))
    assert decode_snapshot(blob, Counts) == (12, 1, Counts(live={"a": "b"}, cancelled=3))
    with pytest.raises(StoreError, match="bad header"):
        decode_snapshot(b"junk", Counts)
    with pytest.raises(StoreError, match="does not decode as Counts"):
        decode_snapshot(blob[:-3], Counts)


async def test_a_cancelled_follow_leaves_no_failed_read_behind(store: EventStore) -> None:
    """A service stopping cancels its projection's follow: its pending read then got the subscription's end marker
    and the event loop logged "Task exception was never retrieved" (a StopAsyncIteration traceback) on every
    graceful stop of an agent or the resource manager."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        projector = make()
        follower = asyncio.ensure_future(projector.follow(store))
        await write_random(store, random.Random(1), range(3))
        while projector.seq < 3:
            await asyncio.sleep(0.01)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await asyncio.sleep(0.05)
        del follower
        gc.collect()
        await asyncio.sleep(0)
        assert [c.get("message") for c in seen] == []
    finally:
        loop.set_exception_handler(None)


async def test_an_object_rewritten_while_it_is_read_is_read_whole_not_waited_for_for_ever(store: EventStore) -> None:
    """nats-py's get waits for ever on the chunks of a version purged under it (a resumed job hung in its
    checkpoint; the model registry, reading one, stopped answering). read_object reads the new version instead."""
    from aios.common.snapshot import ObjectReadError, object_bucket, read_object

    bucket = await object_bucket(store, "TEST_REWRITTEN", "test")
    versions = [bytes([i]) * (6 << 20) for i in range(1, 4)]
    await bucket.put("ck", versions[0])
    stop = asyncio.Event()

    async def rewrite() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await bucket.put("ck", versions[i % 3])

    writer = asyncio.ensure_future(rewrite())
    try:
        for _ in range(3):
            data = await asyncio.wait_for(read_object(store, "TEST_REWRITTEN", "ck", stall_s=1.0, tries=20), 60)
            assert data in versions  # one version whole, never a mix
    finally:
        stop.set()
        await writer
    assert await read_object(store, "TEST_REWRITTEN", "ck") in versions
    await bucket.delete("ck")
    import nats.js.errors

    with pytest.raises(nats.js.errors.ObjectNotFoundError):
        await read_object(store, "TEST_REWRITTEN", "ck")
    assert issubclass(ObjectReadError, StoreError)


async def test_an_object_missing_its_chunks_is_named_damaged_at_once(store: EventStore) -> None:
    """Chunks gone under an unchanged object were read again and again (50 s), then called "replaced"."""
    from aios.common.snapshot import ObjectReadError, object_bucket, read_object

    bucket = await object_bucket(store, "TEST_DAMAGED", "test")
    await bucket.put("obj", b"x" * (300 << 10))
    info = await bucket.get_info("obj")
    await store.js.purge_stream("OBJ_TEST_DAMAGED", subject=f"$O.TEST_DAMAGED.C.{info.nuid}")
    with pytest.raises(ObjectReadError, match="corrupted: its chunks stopped after 0 of 307,200 bytes"):
        await asyncio.wait_for(read_object(store, "TEST_DAMAGED", "obj", stall_s=0.5), 5)


async def test_a_snapshot_of_a_log_since_created_again_is_ignored(store: EventStore) -> None:
    """The log was deleted and created again (a fresh cluster on the same NATS), its snapshot kept: the projector
    took the old log's state at sequence 10 and folded the new log from 11, so the new log's first ten jobs were
    missing and the old ones were there."""
    snapshots = SnapshotStore(store, bucket=f"SNAP_{store.stream}")
    await write_random(store, random.Random(1), range(10))
    old = make()
    await old.rebuild(store)
    await old.save(snapshots)
    await store.js.delete_stream(store.stream)
    await asyncio.sleep(0.01)  # the new log's creation time (its name among incarnations) differs
    await store.ensure_stream()
    await write_random(store, random.Random(2), range(100, 112))
    again = make()
    report = await again.rebuild(store, snapshots)
    full = make()
    await full.rebuild(store)
    assert report.snapshot_seq == 0 and report.tail_commits == 12
    assert again.state == full.state and set(again.state.live) <= {str(j) for j in range(100, 112)}
    await store.js.delete_object_store(snapshots.bucket)


async def test_a_snapshot_ahead_of_the_log_is_ignored(store: EventStore) -> None:
    snapshots = SnapshotStore(store, bucket=f"SNAP_{store.stream}")
    await write_random(store, random.Random(1), range(5))
    p = make()
    await p.rebuild(store)
    p.seq = 50  # a snapshot claiming commits this log does not have
    await p.save(snapshots)
    again = make()
    report = await again.rebuild(store, snapshots)
    assert report.snapshot_seq == 0 and report.tail_commits == 5 and again.seq == 5
    await store.js.delete_object_store(snapshots.bucket)
