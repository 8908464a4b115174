"""The log as a hostile client can write it, and reads that must stop where they were asked to (found by review:
each test fails on the code before)."""

from __future__ import annotations

import msgspec

from aios.common.events import JobCancelRequested, encode
from aios.common.snapshot import Projector, SnapshotStore
from aios.common.store import EventStore
from aios.common.wire import RawNatsConnection


def reasons() -> Projector[list[str]]:
    return Projector("reasons", list, lambda s, e: s + [e.reason], list)  # type: ignore[attr-defined]


async def test_a_message_on_a_subject_that_is_not_utf8_is_skipped(store: EventStore) -> None:
    """Any identity that may publish under the log's prefix (a node's, which its jobs' workers hold) stopped every
    rebuild and follower with a UnicodeDecodeError, skip or not, at every restart."""
    await store.append("job.a", JobCancelRequested(aggregate_id="a", reason="before"))
    conn = await RawNatsConnection.connect(store.servers)
    conn.publish(store.prefix.encode() + b".job.\xff", encode(JobCancelRequested(aggregate_id="a")), reply="_INBOX.x")
    await conn.ping()
    conn.close()
    await store.append("job.a", JobCancelRequested(aggregate_id="a", reason="after"))
    projector = reasons()
    await projector.rebuild(store)
    assert projector.state == ["before", "after"]
    sub = store.subscribe(1, on_bad_event="skip")
    try:
        seen = [(await sub.next(5)).seq for _ in range(2)]
    finally:
        await sub.close()
    assert len(seen) == 2


async def test_a_payload_nested_too_deep_to_decode_is_skipped(store: EventStore) -> None:
    await store.append("job.a", JobCancelRequested(aggregate_id="a", reason="before"))
    await store.nc.publish(f"{store.prefix}.run.a", b"[" * 2000)  # a RecursionError in the untyped decoder
    await store.nc.flush()
    await store.append("job.a", JobCancelRequested(aggregate_id="a", reason="after"))
    projector = reasons()
    await projector.rebuild(store)
    assert projector.state == ["before", "after"]
    assert (await store.read("run.a", on_bad_event="skip")).events == []


async def test_a_replay_stops_at_the_sequence_it_was_asked_to(store: EventStore) -> None:
    pipe = store.pipeline()
    for i in range(60):
        await pipe.add(f"job.a{i % 5}", JobCancelRequested(aggregate_id=f"a{i % 5}", reason=str(i)))
    await pipe.results()
    first = await store.last_seq() - 59
    seen: list[int] = []
    last = await store.replay(lambda c: seen.append(c.seq), first, to_seq=first + 4)
    assert seen == list(range(first, first + 5)) and last == first + 4  # it went on to the end: 60 commits


class Before(msgspec.Struct):
    seen: list[str] = []


class After(msgspec.Struct):
    seen: dict[str, int] = {}


async def test_a_snapshot_of_an_older_schema_is_ignored_even_when_it_does_not_decode(store: EventStore) -> None:
    """The schema was compared after the body was decoded as the new state: a snapshot whose shape changed
    (a field's type) stopped the service at every start until someone deleted it by hand."""
    snapshots = SnapshotStore(store, bucket="SNAP_" + store.stream)
    await store.append("job.a", JobCancelRequested(aggregate_id="a", reason="r"))

    def before(state: Before, ev: JobCancelRequested) -> Before:
        state.seen.append(ev.reason)
        return state

    def after(state: After, ev: JobCancelRequested) -> After:
        state.seen[ev.reason] = state.seen.get(ev.reason, 0) + 1
        return state
    old = Projector("proj", Before, before, Before, schema=1)  # type: ignore[arg-type]
    await old.rebuild(store, snapshots)
    await old.save(snapshots)
    new = Projector("proj", After, after, After, schema=2)  # type: ignore[arg-type]
    await new.rebuild(store, snapshots)
    assert new.state.seen == {"r": 1}


async def test_a_replay_survives_a_nats_server_restart_and_delivers_each_commit_once(killable_nats: object) -> None:
    """A read tried its connection once, 0.2 s after it closed: a rebuild at a service's start failed whenever
    the server was down longer (the docstring promised to wait out ``append_deadline``)."""
    import asyncio
    import time

    from tests.conftest import open_store

    server = killable_nats
    store = await open_store(server.url, append_deadline=20.0)  # type: ignore[attr-defined]
    try:
        pipe = store.pipeline()
        for i in range(5000):
            await pipe.add(f"job.a{i % 50}", JobCancelRequested(aggregate_id=f"a{i % 50}", reason=str(i)))
        assert not [r for r in await pipe.results() if isinstance(r, Exception)]
        loop = asyncio.get_running_loop()
        seen: list[int] = []

        def handler(commit: object) -> None:
            seen.append(commit.seq)  # type: ignore[attr-defined]
            if len(seen) == 1000:
                server.kill()  # type: ignore[attr-defined]
                loop.call_later(2.0, server.start)  # type: ignore[attr-defined]
            time.sleep(0.0002)
        last = await store.replay(handler)
        assert seen == sorted(set(seen)) and len(seen) == 5000 and last == seen[-1]
    finally:
        await store.close()
