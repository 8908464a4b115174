"""The scheduler service's round against a real store whose versions moved on after the round's plan was made."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from aios.common.config import load_settings
from aios.common.events import DeviceHealthy, JobRequeued, JobSubmitted, JobSucceeded
from aios.common.runner import ServiceContext
from aios.common.store import EventStore
from aios.common.wire import new_token
from aios.scheduler.local import node_registration
from aios.scheduler.service import REFIT_EVERY, SchedulerConfig, SchedulerService
from aios.scheduler.state import MAX_HISTORY, Finished, SchedulerState


async def scheduler_on(store: EventStore) -> SchedulerService:
    """A scheduler that has read the log up to now and folds nothing more by itself (no follower runs)."""
    service = SchedulerService(SchedulerConfig(policy="fifo", leader_election=False))
    service.ctx = ServiceContext("scheduler", load_settings({"AIOS_NATS_URL": store.servers[0]}), store.nc, store,
                                CollectorRegistry())
    service._metrics(service.ctx)
    await service.projector.rebuild(store)
    return service


async def submit(store: EventStore, job: str, devices: int) -> None:
    await store.append(f"job.{job}", JobSubmitted(aggregate_id=job, tenant="t", name=job, spec={
        "name": job, "tenant": "t", "devices": devices, "command": ["true"]}))


async def test_a_job_whose_lease_lost_a_race_goes_back_to_the_queue_beside_a_cpu_job(store: EventStore) -> None:
    """The round counted the node of every CPU-only placement as booked: a GPU job whose lease on that node was
    refused (the node moved on) stayed placed with no lease, and the next round gave its device to another job."""
    tag = new_token()[:6]
    node, gpu_job, cpu_job = f"x{tag}", f"gpu-{tag}", f"cpu-{tag}"
    aggregate, events = node_registration(node, "h100", 1)
    await store.append(aggregate, events)
    await submit(store, gpu_job, 1)
    await submit(store, cpu_job, 0)
    scheduler = await scheduler_on(store)
    device = next(iter(scheduler.projector.state.inv.nodes[node].devices))
    await store.append(f"node.{node}", DeviceHealthy(aggregate_id=node, device_uuid=device))  # the node moves on
    await scheduler.round()
    history: Any = await store.read(f"job.{gpu_job}")
    assert [type(e) for e in history.events].count(JobRequeued) == 1, history.events
    leases: Any = await store.read(f"node.{node}")
    assert not [e for e in leases.events if type(e).__name__ == "DevicesLeased"]


async def test_the_runtime_predictor_is_refitted_after_the_history_is_full(store: EventStore) -> None:
    """The refit waited for the history's length to be a multiple of 50: a round that saw 49 -> 51 skipped it,
    and once the history held its cap (5,000 jobs) its length never moved again, so no job after that was learned
    from."""
    scheduler = await scheduler_on(store)
    state = scheduler.projector.state
    fits: list[int] = []
    scheduler.predictor.fit = lambda finished: fits.append(len(finished))  # type: ignore[method-assign]
    await scheduler.round()
    assert fits == [0]  # the first round fits on what the log holds
    state.finished = [Finished("t", "j", 1, [], 60.0)] * MAX_HISTORY
    state.finished_total = MAX_HISTORY + 7
    await scheduler.round()
    assert fits == [0, MAX_HISTORY]
    state.finished_total += REFIT_EVERY - 1
    await scheduler.round()
    assert fits == [0, MAX_HISTORY]
    state.finished_total += 2  # jumped past the next refit point between two rounds: fitted all the same
    await scheduler.round()
    assert fits == [0, MAX_HISTORY, MAX_HISTORY]


async def test_the_fold_counts_every_succeeded_job(store: EventStore) -> None:
    tag = new_token()[:6]
    for i in range(3):
        await submit(store, f"done-{i}-{tag}", 0)
        await store.append(f"job.done-{i}-{tag}", JobSucceeded(aggregate_id=f"done-{i}-{tag}"))
    scheduler = await scheduler_on(store)
    assert scheduler.projector.state.finished_total == 3 == len(scheduler.projector.state.finished)


async def test_a_snapshot_the_store_refuses_does_not_stop_the_scheduler(store: EventStore) -> None:
    """The save ran outside the loop's error guard: a full snapshot bucket ended the scheduler's loop, and no
    job was placed again until a restart. It is said, and tried again after as many commits more."""
    from nats.js.api import ObjectStoreConfig

    from aios.common.snapshot import SnapshotStore

    await submit(store, f"snap-{new_token()[:6]}", 0)
    full = f"SNAP_FULL_{new_token()[:6].upper()}"
    await store.js.create_object_store(full, config=ObjectStoreConfig(max_bytes=64))
    scheduler = await scheduler_on(store)
    scheduler.config = SchedulerConfig(policy="fifo", leader_election=False, snapshot_every=1,
                                       snapshot_min_interval_s=0.0)
    seq = scheduler.projector.seq
    assert seq > 0
    assert await scheduler.snapshot_due(SnapshotStore(store, full), seq - 1) == seq  # refused, said, not raised
    ok = SnapshotStore(store, f"SNAP_OK_{new_token()[:6].upper()}")
    assert await scheduler.snapshot_due(ok, seq) == seq  # not due: not tried
    assert await ok.load(scheduler.projector.name, SchedulerState, scheduler.projector.schema) is None
    assert await scheduler.snapshot_due(ok, seq - 1) == seq
    loaded = await ok.load(scheduler.projector.name, SchedulerState, scheduler.projector.schema)
    assert loaded is not None and loaded[0] == seq


async def test_snapshots_are_taken_at_most_once_a_minute(store: EventStore) -> None:
    """Found by a scale probe: snapshots were due every 5,000 commits of any kind, and training jobs' progress
    reports (about one a second each) made one due every 5 s on a busy cluster, each a pause of the scheduler's
    loop and a blob of the whole history. Due by count, a snapshot waits until a minute has passed since the last."""
    from aios.common.snapshot import SnapshotStore

    await submit(store, f"snap-{new_token()[:6]}", 0)
    scheduler = await scheduler_on(store)
    scheduler.config = SchedulerConfig(policy="fifo", leader_election=False, snapshot_every=1)
    seq = scheduler.projector.seq
    snapshots = SnapshotStore(store, f"SNAP_RATE_{new_token()[:6].upper()}")
    assert await scheduler.snapshot_due(snapshots, seq - 1) == seq  # the first is taken
    await submit(store, f"snap-{new_token()[:6]}", 0)
    await scheduler.projector.rebuild(store)
    later = scheduler.projector.seq
    assert later > seq
    assert await scheduler.snapshot_due(snapshots, seq) == seq  # due by count, not by time: not taken
    assert (await snapshots.load(scheduler.projector.name, SchedulerState, scheduler.projector.schema))[0] == seq
    scheduler._snapshot_tried -= 60.0  # a minute on
    assert await scheduler.snapshot_due(snapshots, seq) == later


def test_progress_reports_wake_no_round() -> None:
    """Found by a scale probe: every training job reports its progress about once a second, and each report woke a
    round; with a few jobs training, rounds ran back to back (a core busy, the scheduler's replies queued behind
    them). Reports are folded and wake nothing; a worker's start or exit, a submit, a node's change still do."""
    from aios.common.events import CheckpointSaved, JobProgress, WorkerExited
    from aios.common.store import Commit

    service = SchedulerService(SchedulerConfig(policy="fifo", leader_election=False))

    def wakes(aggregate: str, *events: Any) -> bool:
        service._wake.clear()
        service._on_commit(Commit(1, aggregate, list(events)))
        return service._wake.is_set()
    assert not wakes("run.j1", JobProgress(aggregate_id="j1", step=10, total_steps=100))
    assert not wakes("run.j1", CheckpointSaved(aggregate_id="j1", step=10, bucket="b", name="n"))
    assert wakes("run.j1", WorkerExited(aggregate_id="j1", node_id="n1", worker="w", exit_code=0))
    assert wakes("run.j1", JobProgress(aggregate_id="j1", step=11), WorkerExited(
        aggregate_id="j1", node_id="n1", worker="w", exit_code=0))
    assert wakes("job.j2", JobSubmitted(aggregate_id="j2", tenant="t", spec={}))
    assert wakes("node.n1", DeviceHealthy(aggregate_id="n1", device_uuid="u", reason="ok"))
    assert not wakes("model.m1")
