"""Idempotency keys of submissions hold for the life of the job in the log, not only for the stream's duplicate
window: a client that retries after a long outage must not run its job twice."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest
import pytest_asyncio

from aios.common.events import JobSubmitted
from aios.common.natsserver import NatsServer
from aios.common.store import EventStore
from aios.scheduler import submission
from aios.scheduler.spec import validate_spec
from aios.scheduler.submission import KeyReused, keyed_job_id
from tests.conftest import open_store

SPEC = {"name": "train", "tenant": "nlp", "devices": 1, "command": ["python", "t.py"]}


@pytest_asyncio.fixture
async def short_window(nats_server: NatsServer) -> AsyncIterator[EventStore]:
    """A log whose duplicate window is one second (the deployed one is two minutes)."""
    s = await open_store(nats_server.url, duplicate_window=1.0)
    yield s
    try:
        await s.js.delete_stream(s.stream)
    finally:
        await s.close()


async def test_a_retry_after_the_duplicate_window_gets_the_first_job(short_window: EventStore) -> None:
    store = short_window
    first = await submission.submit(store, validate_spec(SPEC), "retry-1")
    assert not first.duplicate and first.job == keyed_job_id(validate_spec(SPEC), "retry-1")
    assert (await submission.submit(store, validate_spec(SPEC), "retry-1")).job == first.job  # within the window
    await asyncio.sleep(1.5)
    late = await submission.submit(store, validate_spec(SPEC), "retry-1", via="http")
    assert late.duplicate and late.job == first.job  # it was a second job, run twice
    with pytest.raises(KeyReused, match=f"already used for job {first.job} with another spec"):
        await submission.submit(store, validate_spec({**SPEC, "devices": 2}), "retry-1")
    other_tenant = await submission.submit(store, validate_spec({**SPEC, "tenant": "cv"}), "retry-1")
    assert not other_tenant.duplicate and other_tenant.job != first.job
    submitted = [e for e in (await store.read(f"job.{first.job}")).events if isinstance(e, JobSubmitted)]
    assert len(submitted) == 1 and submitted[0].idempotency_key == "retry-1"


async def test_an_id_taken_by_another_key_gets_a_fresh_one(short_window: EventStore) -> None:
    """The keyed id is a hash: should another submission hold it, the job takes a random id, not its place."""
    store = short_window
    spec = validate_spec(SPEC)
    taken = keyed_job_id(spec, "k")
    await store.append(f"job.{taken}", JobSubmitted(aggregate_id=taken, tenant="nlp", name="train", spec=SPEC,
                                                    idempotency_key="another"), expected_version=0)
    await asyncio.sleep(1.5)
    mine = await submission.submit(store, spec, "k")
    assert not mine.duplicate and mine.job != taken and mine.job.startswith("train-")


async def test_a_late_retry_under_another_name_is_refused_not_run_as_a_second_job(short_window: EventStore) -> None:
    """The keyed id carries the job's name: the same key with another name, after the duplicate window, made a
    second job. The folded log knows which job a key was first used for (the gateway asks it), and the retry is
    judged against that job."""
    from aios.scheduler.state import SchedulerState, evolve, key_index

    store = short_window
    first = await submission.submit(store, validate_spec(SPEC), "sweep-7")
    await asyncio.sleep(1.5)
    state = SchedulerState()
    history = await store.read(f"job.{first.job}")
    for ev in history.events:
        evolve(state, ev, history.version)
    earlier = state.keyed.get(key_index("nlp", "sweep-7"))
    assert earlier == first.job and state.keyed.get(key_index("cv", "sweep-7")) is None
    renamed = validate_spec({**SPEC, "name": "train-again"})
    with pytest.raises(KeyReused, match=f"already used for job {first.job} with another spec"):
        await submission.submit(store, renamed, "sweep-7", job_id=earlier)
    same = await submission.submit(store, validate_spec(SPEC), "sweep-7", job_id=earlier)
    assert same.duplicate and same.job == first.job
    # without the lookup (the CLI's path), the key goes with the name: a second job
    assert not (await submission.submit(store, renamed, "sweep-7")).duplicate
