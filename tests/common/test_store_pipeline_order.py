import asyncio

from aios.common.events import JobCancelRequested, JobSubmitted
from aios.common.store import EventStore


async def test_a_commit_follows_an_earlier_one_that_already_failed_on_the_same_connection(store: EventStore) -> None:
    """No monkeypatching: the first commit of job.o gets 503 (no stream listening: JetStream not ready / the
    stream's leader away), the stream comes back, the second commit of job.o goes out on the same connection
    (``before is publisher`` -> True, whatever became of the first) and is stored first; results() re-sends the
    first after it."""
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
    print(results)
    kinds = [type(e).__name__ for e in (await store.read("job.o")).events]
    print(kinds)
    assert kinds == ["JobSubmitted", "JobCancelRequested"], kinds
