"""``aios bench eventlog``: how fast the event spine appends, replays and restarts, next to bare nats-py.

All figures come from one run against one private nats-server, so they can be compared as ratios on a noisy machine.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import shutil
import tempfile
import time
from typing import Any

import msgspec
import nats
from nats.js.api import DeliverPolicy, StreamConfig

from aios.common.events import Event, JobCancelled, JobCancelRequested, JobSubmitted, encode
from aios.common.natsserver import NatsServer
from aios.common.snapshot import Projector, SnapshotStore
from aios.common.store import EventStore, connect

SUBMITTED, CANCEL_REQUESTED, CANCELLED = 1, 2, 3
TENANTS = ("vision", "nlp", "speech", "research")


class JobsState(msgspec.Struct):
    """A scheduler-like fold: status of every job, jobs per tenant, events seen."""

    status: dict[str, int] = {}
    per_tenant: dict[str, int] = {}
    events: int = 0


def evolve(state: JobsState, ev: Event) -> JobsState:
    state.events += 1
    kind = type(ev)
    if kind is JobSubmitted:
        state.status[ev.aggregate_id] = SUBMITTED
        state.per_tenant[ev.tenant] = state.per_tenant.get(ev.tenant, 0) + 1  # type: ignore[attr-defined]
    elif kind is JobCancelRequested:
        state.status[ev.aggregate_id] = CANCEL_REQUESTED
    elif kind is JobCancelled:
        state.status[ev.aggregate_id] = CANCELLED
    return state


def workload_event(i: int) -> tuple[str, Event]:
    """Event ``i`` of a synthetic workload: job i//3 is submitted, asked to cancel, then cancelled."""
    job = f"j{i // 3:07d}"
    step = i % 3
    if step == 0:
        ev: Event = JobSubmitted(aggregate_id=job, tenant=TENANTS[i % 4], name=f"train-{job}",
                                 spec={"devices": 1 + i % 8, "device_types": ["h100", "a100"], "priority": i % 5,
                                       "gang": True, "command": ["python", "train.py", "--epochs", "3"]})
    elif step == 1:
        ev = JobCancelRequested(aggregate_id=job, reason="user asked", requested_by="alice")
    else:
        ev = JobCancelled(aggregate_id=job, reason="user asked")
    return f"job.{job}", ev


async def append_workload(store: EventStore, start: int, count: int, window: int = 100_000) -> float:
    """Pipelined appends with idempotency ids; every acknowledgement is checked. Returns appends per second."""
    t0 = time.perf_counter()
    for lo in range(start, start + count, window):
        pipe = store.pipeline()
        for i in range(lo, min(lo + window, start + count)):
            aggregate, ev = workload_event(i)
            await pipe.add(aggregate, ev, idempotency_key=f"bench-{i}")
        results = await pipe.results()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"{len(failed)} appends failed, first: {failed[0]}")
    return count / (time.perf_counter() - t0)


async def raw_nats_baseline(url: str, count: int, payload: bytes) -> tuple[float, float]:
    """Bare nats-py: publish_async with Nats-Msg-Id, then an ordered push consumer with a callback."""
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["benchraw.>"], duplicate_window=120))
    t0 = time.perf_counter()
    for i in range(count):
        await js.publish_async(f"benchraw.job.{i // 3}", payload, headers={"Nats-Msg-Id": f"raw-{i}"})
    await js.publish_async_completed()
    publish_rate = count / (time.perf_counter() - t0)
    done = asyncio.Event()
    seen = 0

    async def on_msg(_msg: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    t0 = time.perf_counter()
    sub = await js.subscribe("benchraw.>", cb=on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
                             pending_msgs_limit=count + 1, pending_bytes_limit=1 << 31)
    await done.wait()
    replay_rate = count / (time.perf_counter() - t0)
    await sub.unsubscribe()
    await js.delete_stream("BENCH_RAW")
    await nc.close()
    return publish_rate, replay_rate


def projector() -> Projector[JobsState]:
    return Projector("bench-jobs", JobsState, evolve, JobsState)


async def run(events: int = 100_000, restart_events: int = 1_000_000, tail: int = 50_000,
              nats_url: str | None = None, profile: bool = False) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="aios-bench-")
    server = None if nats_url else NatsServer(tmp).start()
    url = nats_url or server.url  # type: ignore[union-attr]
    try:
        store = await connect([url], name="aios-bench")
        payload = encode(workload_event(0)[1])
        raw_publish, raw_replay = await raw_nats_baseline(url, events, payload)

        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        append_rate = await append_workload(store, 0, events)
        if prof:
            prof.disable()

        fold = projector()
        t0 = time.perf_counter()
        await fold.rebuild(store)
        replay_seconds = time.perf_counter() - t0
        if fold.state.events != events or len(fold.state.status) != (events + 2) // 3:
            raise RuntimeError(f"replay folded {fold.state.events} events, expected {events}")
        replay_rate = events / replay_seconds

        # Restart: a 1,000,000-event log whose last snapshot is `tail` events old.
        await append_workload(store, events, restart_events - tail - events)
        snapshots = SnapshotStore(store)
        writer = projector()
        await writer.rebuild(store)
        snap = await writer.save(snapshots)
        await append_workload(store, restart_events - tail, tail)
        restarted = projector()
        report = await restarted.rebuild(store, snapshots)
        if restarted.state.events != restart_events:
            raise RuntimeError(f"restart folded {restarted.state.events} events, expected {restart_events}")
        cold = projector()
        cold_report = await cold.rebuild(store)
        if cold.state.status != restarted.state.status or cold.state.per_tenant != restarted.state.per_tenant:
            raise RuntimeError("snapshot + tail and a full replay folded to different states")
        result: dict[str, Any] = {
            "events": events,
            "append_per_s": round(append_rate),
            "replay_per_s": round(replay_rate),
            "restart_s": round(report.seconds, 3),
            "restart_log_events": restart_events,
            "restart_snapshot_seq": report.snapshot_seq,
            "restart_tail_events": report.tail_commits,
            "snapshot_bytes": snap.size,
            "restart_without_snapshot_s": round(cold_report.seconds, 3),
            "raw_publish_async_per_s": round(raw_publish),
            "raw_ordered_replay_per_s": round(raw_replay),
            "append_vs_raw_publish": round(append_rate / raw_publish, 2),
            "replay_vs_raw_replay": round(replay_rate / raw_replay, 2),
        }
        if prof:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
            result["append_profile"] = out.getvalue()
        await store.close()
        return result
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
