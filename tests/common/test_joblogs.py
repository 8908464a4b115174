"""Worker output kept in JetStream, read back by job, worker and stream."""

from __future__ import annotations

from aios.common import joblogs
from aios.common.store import EventStore
from aios.common.wire import new_token


async def test_a_job_whose_name_has_dots_keeps_its_worker_and_stream_labels(store: EventStore) -> None:
    """Job names may hold dots ("v1.2"): the log subject was split from the left, so its lines showed worker
    "2-751535" and none of them was marked stderr (`aios logs`, the HTTP API, the dashboard)."""
    job = f"v1.2-{new_token()[:6]}"
    await joblogs.ensure_stream(store.js)
    await store.nc.publish(joblogs.subject_of(job, "rank0-a1", "stdout"), b"out\n")
    await store.nc.publish(joblogs.subject_of(job, "rank0-a1", "stderr"), b"err\n")
    await store.nc.publish(joblogs.subject_of(job.replace(".", "-"), "rank0-a1", "stdout"), b"another job\n")
    await store.nc.flush()
    got = [line async for line in joblogs.lines(store.js, job)]
    assert got == [("rank0-a1", "stdout", "out"), ("rank0-a1", "stderr", "err")]
    assert joblogs.parse_subject(joblogs.subject_of(job, "rank1-a2-r1", "stderr")) == (job, "rank1-a2-r1", "stderr")
