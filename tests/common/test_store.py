"""The event store against a real nats-server: appends, versions, idempotency, conflicts, reads, replay, tailing."""

from __future__ import annotations

import asyncio

import pytest

from aios.common.errors import ConcurrencyConflict, EventError, InvalidAggregate, MalformedEvent, UnknownEventType
from aios.common.events import JobCancelled, JobCancelRequested, JobSubmitted
from aios.common.natsserver import NatsServer
from aios.common.store import Commit, EventStore
from tests.conftest import open_store


def submitted(i: int, tenant: str = "nlp") -> JobSubmitted:
    return JobSubmitted(aggregate_id=f"j{i}", tenant=tenant, name=f"job-{i}", spec={"n": i})


async def test_round_trip_of_10000_events(store: EventStore) -> None:
    pipe = store.pipeline()
    for i in range(10_000):
        await pipe.add(f"job.j{i % 100}", JobCancelRequested(aggregate_id=f"j{i % 100}", reason=str(i)))
    results = await pipe.results()
    assert [r.seq for r in results] == list(range(1, 10_001))  # type: ignore[union-attr]

    commits: list[Commit] = []
    last = await store.replay(commits.append)
    assert last == 10_000
    assert [c.seq for c in commits] == list(range(1, 10_001))
    assert [int(c.events[0].reason) for c in commits] == list(range(10_000))  # type: ignore[attr-defined]
    assert all(c.aggregate == f"job.j{int(c.events[0].reason) % 100}" for c in commits)  # type: ignore[attr-defined]

    history = await store.read("job.j7")
    assert [int(e.reason) for e in history.events] == list(range(7, 10_000, 100))  # type: ignore[attr-defined]
    assert history.version == 9_908

    tail: list[int] = []
    await store.replay(lambda c: tail.append(c.seq), from_seq=9_990)
    assert tail == list(range(9_990, 10_001))


async def test_version_is_the_sequence_of_the_last_commit(store: EventStore) -> None:
    assert (await store.read("job.new")).version == 0
    first = await store.append("job.new", JobSubmitted(aggregate_id="new", tenant="t"), expected_version=0)
    await store.append("job.j1", submitted(1), expected_version=None)
    second = await store.append("job.new", JobCancelled(aggregate_id="new"), expected_version=first.seq)
    history = await store.read("job.new")
    assert history.version == second.seq == 3
    assert [type(e).__name__ for e in history.events] == ["JobSubmitted", "JobCancelled"]


async def test_racing_writers_one_wins_one_conflicts(store: EventStore) -> None:
    base = await store.append("job.r", JobSubmitted(aggregate_id="r", tenant="t"), expected_version=0)
    for round_ in range(20):
        version = (await store.read("job.r")).version
        a = store.append("job.r", JobCancelRequested(aggregate_id="r", requested_by=f"a{round_}"), version)
        b = store.append("job.r", JobCancelRequested(aggregate_id="r", requested_by=f"b{round_}"), version)
        outcomes = await asyncio.gather(a, b, return_exceptions=True)
        wins = [o for o in outcomes if not isinstance(o, Exception)]
        losses = [o for o in outcomes if isinstance(o, ConcurrencyConflict)]
        assert len(wins) == 1 and len(losses) == 1, outcomes
        assert losses[0].aggregate == "job.r" and losses[0].expected_version == version
    assert len((await store.read("job.r")).events) == 21
    assert base.seq == 1


async def test_new_aggregate_guard(store: EventStore) -> None:
    await store.append("job.once", JobSubmitted(aggregate_id="once", tenant="t"), expected_version=0)
    with pytest.raises(ConcurrencyConflict, match="no longer at version 0"):
        await store.append("job.once", JobSubmitted(aggregate_id="once", tenant="t"), expected_version=0)


@pytest.mark.parametrize("expected", [None, "exact"])
async def test_retry_with_same_idempotency_key_is_stored_once(store: EventStore, expected: str | None) -> None:
    v = await store.append("job.i", JobSubmitted(aggregate_id="i", tenant="t"))
    version = v.seq if expected else None
    ev = JobCancelled(aggregate_id="i", reason="retry me")
    first = await store.append("job.i", ev, version, idempotency_key="submit-123")
    again = await store.append("job.i", ev, version, idempotency_key="submit-123")
    assert not first.duplicate and again.duplicate and again.seq == first.seq
    history = await store.read("job.i")
    assert [type(e).__name__ for e in history.events] == ["JobSubmitted", "JobCancelled"]
    # A different key is a different command, and the version check applies to it as usual.
    if expected:
        with pytest.raises(ConcurrencyConflict):
            await store.append("job.i", ev, version, idempotency_key="submit-124")


async def test_commit_of_several_events_is_atomic(store: EventStore) -> None:
    events = [JobSubmitted(aggregate_id="m", tenant="t"), JobCancelRequested(aggregate_id="m"),
              JobCancelled(aggregate_id="m")]
    result = await store.append("job.m", events, expected_version=0)
    history = await store.read("job.m")
    assert history.events == events and history.version == result.seq
    seen: list[Commit] = []
    await store.replay(seen.append)
    assert len(seen) == 1 and seen[0].events == events


async def test_bad_appends_are_refused_before_anything_is_sent(store: EventStore) -> None:
    with pytest.raises(InvalidAggregate, match="expected '<kind>.<id>'"):
        await store.append("job", submitted(1))
    with pytest.raises(InvalidAggregate, match="free of spaces"):
        await store.append("job.a b", submitted(1))
    with pytest.raises(InvalidAggregate, match="belongs to 'job.j1', not 'job.j2'"):
        await store.append("job.j2", submitted(1))
    with pytest.raises(EventError, match="at least one event"):
        await store.append("job.j1", [])
    with pytest.raises(EventError, match="is not an Event"):
        await store.append("job.j1", [{"type": "JobSubmitted"}])  # type: ignore[list-item]
    assert await store.last_seq() == 0


async def test_foreign_garbage_in_the_log_is_named_or_skipped(store: EventStore) -> None:
    await store.append("job.g", JobSubmitted(aggregate_id="g", tenant="t"))
    await store.js.publish(f"{store.prefix}.job.g", b"{not json")
    await store.js.publish(f"{store.prefix}.job.g", b'{"type":"JobFromTheFuture","aggregate_id":"g"}')
    await store.append("job.g", JobCancelled(aggregate_id="g"))
    with pytest.raises(MalformedEvent, match=f"at sequence 2 on {store.prefix}.job.g"):
        await store.replay(lambda c: None)
    seen: list[int] = []
    last = await store.replay(lambda c: seen.append(c.seq), on_bad_event="skip")
    assert seen == [1, 4] and last == 4
    with pytest.raises(UnknownEventType):
        await store.replay(lambda c: None, from_seq=3)


async def test_subscribe_tails_live_in_order(store: EventStore) -> None:
    await store.append("job.s0", JobSubmitted(aggregate_id="s0", tenant="t"))
    sub = store.subscribe(1)
    try:
        assert (await sub.next(5)).seq == 1
        for i in range(1, 50):
            await store.append(f"job.s{i}", JobSubmitted(aggregate_id=f"s{i}", tenant="t"))
        got = [(await sub.next(5)).seq for _ in range(49)]
        assert got == list(range(2, 51))
        with pytest.raises(asyncio.TimeoutError):
            await sub.next(0.3)
    finally:
        await sub.close()


async def test_stream_is_created_then_upgraded_in_place(nats_server: NatsServer) -> None:
    store = await open_store(nats_server.url, duplicate_window=30.0)
    try:
        await store.append("job.u", JobSubmitted(aggregate_id="u", tenant="t"))
        assert (await store.js.stream_info(store.stream)).config.duplicate_window == 30.0
        upgraded = EventStore(store.nc, store.servers, stream=store.stream, prefix=store.prefix,
                              duplicate_window=90.0)
        await upgraded.ensure_stream()
        info = await store.js.stream_info(store.stream)
        assert info.config.duplicate_window == 90.0 and info.state.messages == 1
    finally:
        await store.js.delete_stream(store.stream)
        await store.close()


async def test_subscription_reports_or_skips_bad_events(store: EventStore) -> None:
    await store.js.publish(f"{store.prefix}.job.x", b'{"type":"Bogus","aggregate_id":"x"}')
    await store.append("job.x", JobSubmitted(aggregate_id="x", tenant="t"))
    strict = store.subscribe(1)
    with pytest.raises(UnknownEventType, match="'Bogus'"):
        await strict.next(5)
    await strict.close()
    lenient = store.subscribe(1, on_bad_event="skip")
    assert (await lenient.next(5)).seq == 2 and lenient.skipped == 1
    await lenient.close()


async def test_replay_of_a_filter_with_nothing_in_it_returns_at_once(store: EventStore) -> None:
    await store.append("job.a", JobSubmitted(aggregate_id="a", tenant="t"))
    seen: list[Commit] = []
    started = asyncio.get_running_loop().time()
    last = await store.replay(seen.append, filter_subject=store.subject("node.nothing-here"))
    assert seen == [] and last == 0
    assert (await store.read("node.nothing-here")).events == []
    assert asyncio.get_running_loop().time() - started < 2


async def test_a_pipeline_keeps_each_aggregates_order_when_a_send_fails(store: EventStore) -> None:
    """The first commit of an aggregate could not be sent (the connection was down); the second went out on the
    connection that came back and was stored first, and the re-send of the first landed after it: the aggregate's
    history read cancel-then-submit. A commit now waits while an earlier one of its aggregate is in doubt."""
    real_writer = store._writer
    calls = 0

    async def down_once():  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            from aios.common.errors import StoreUnavailable
            raise StoreUnavailable("NATS connection is closed")
        return await real_writer()

    store._writer = down_once  # type: ignore[method-assign]
    pipe = store.pipeline()
    await pipe.add("job.o", JobSubmitted(aggregate_id="o", tenant="t"))
    await pipe.add("job.other", JobSubmitted(aggregate_id="other", tenant="t"))
    await pipe.add("job.o", JobCancelRequested(aggregate_id="o", reason="second"))
    results = await pipe.results()
    assert all(not isinstance(r, Exception) for r in results)
    assert [type(e).__name__ for e in (await store.read("job.o")).events] == ["JobSubmitted", "JobCancelRequested"]
    assert results[0].seq < results[2].seq  # type: ignore[union-attr]


async def test_a_log_that_does_not_answer_is_a_store_error_not_a_timeout_traceback() -> None:
    """``last_seq`` let nats-py's own error through (a NATS without JetStream, or one that does not answer), and
    callers that handle StoreError printed a traceback instead of saying what was wrong."""
    import subprocess

    from aios.common.errors import StoreUnavailable
    from aios.common.natsserver import find_nats_server, free_port
    from aios.common.store import connect_nats

    port = free_port()
    proc = subprocess.Popen([find_nats_server(), "-a", "127.0.0.1", "-p", str(port)],  # no JetStream
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"nats://127.0.0.1:{port}"
        for _ in range(100):
            try:
                nc = await connect_nats([url], name="aios-test")
                break
            except Exception:  # noqa: BLE001 - not listening yet
                await asyncio.sleep(0.05)
        store = EventStore(nc, [url], stream="T_nojs", prefix="tnojs.evt")
        with pytest.raises(StoreUnavailable, match="T_nojs"):
            await store.last_seq()
        with pytest.raises(StoreUnavailable, match="T_nojs"):
            await store.incarnation()
        await store.close()
    finally:
        proc.kill()
        proc.wait()


async def test_a_log_deleted_under_a_reader_is_a_store_error(nats_server: NatsServer) -> None:
    """``position`` let nats-py's NotFoundError through when the stream was deleted under a running service."""
    from aios.common.errors import StoreError

    gone = await open_store(nats_server.url)
    try:
        await gone.js.delete_stream(gone.stream)
        with pytest.raises(StoreError, match=f"event log {gone.stream}: the stream does not exist"):
            await gone.position()
        with pytest.raises(StoreError, match="does not exist"):
            await gone.last_seq()
    finally:
        await gone.close()


async def test_a_pipeline_keeps_each_aggregates_order_when_a_commit_comes_back_refused(store: EventStore) -> None:
    """The first commit of job.o comes back 503 (no stream listening: JetStream starting, or the stream's leader
    away); the stream is back when the second goes out on the same connection. It was stored first, and the
    re-send of the first landed after it."""
    await store.js.delete_stream(store.stream)
    pipe = store.pipeline()
    await pipe.add("job.o", JobSubmitted(aggregate_id="o", tenant="t"))
    first = pipe._futures[0]
    assert first is not None
    await asyncio.wait_for(asyncio.shield(first), 5)
    assert first.result().error is not None
    await store.ensure_stream()  # the log answers again
    await pipe.add("job.o", JobCancelRequested(aggregate_id="o", reason="second"))
    results = await pipe.results()
    kinds = [type(e).__name__ for e in (await store.read("job.o")).events]
    assert kinds == ["JobSubmitted", "JobCancelRequested"], kinds


async def test_errors_that_name_a_server_hide_its_password(nats_server: NatsServer) -> None:
    """Found by review: `aios logs` with a tenant's AIOS_NATS_URL printed the tenant's password in its error (the
    docs promise `***`)."""
    from aios.common.errors import StoreError
    from aios.common.natsserver import free_port
    from aios.common.store import open_log

    with_password = nats_server.url.replace("nats://", "nats://tenant-a:s3cret@")
    with pytest.raises(StoreError) as no_log:  # a server that answers, without the log
        await open_log([with_password], stream="NO_SUCH_LOG")
    nobody = f"nats://tenant-a:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(StoreError) as no_server:
        await open_log([nobody], timeout_s=0.5)
    for exc in (no_log.value, no_server.value):
        assert "tenant-a:***@" in str(exc) and "s3cret" not in str(exc), str(exc)


async def test_a_job_s_story_is_told_in_log_order_whatever_its_writers_clocks_say(store: EventStore) -> None:
    """Found by review: `aios job` and the API sorted a job's events by their stamps, which are the clocks of
    several hosts; a trainer 5 minutes behind put JobStarted and JobSucceeded before JobSubmitted."""
    import time

    from aios.common.events import JobStarted, JobSucceeded, WorkerStarted

    now = time.time()
    await store.append("job.j", JobSubmitted(aggregate_id="j", tenant="t", name="j", spec={}, ts=now))
    await store.append("run.j", WorkerStarted(aggregate_id="j", node_id="n1", worker="w0", pid=1, ts=now - 299))
    await store.append("job.j", [JobStarted(aggregate_id="j", world_size=1, ts=now - 298),
                                 JobSucceeded(aggregate_id="j", ts=now - 280)])
    assert [type(e).__name__ for e in await store.read_job("j")] == [
        "JobSubmitted", "WorkerStarted", "JobStarted", "JobSucceeded"]
    history = await store.read("job.j")
    assert len(history.seqs) == len(history.events) == 3 and history.seqs[1] == history.seqs[2] == history.version
