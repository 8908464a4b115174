"""Checkpoint retention: ended jobs' checkpoints expire, running jobs' stay, chunks no object names are purged."""

from __future__ import annotations

import time
from typing import Any

import nats.js.errors
import pytest

from aios.common.snapshot import object_bucket, read_object
from aios.common.store import EventStore
from aios.common.wire import new_token
from aios.scheduler.state import CANCELLED, FAILED, RUNNING, SUCCEEDED, JobState
from aios.trainer.checkpoints import ChunkSubject, StoredCheckpoint, Survey, collect, plan, survey

DAY = 86400.0
NOW = 1_800_000_000.0


def job(job_id: str, status: str, ended_ago: float | None = None) -> JobState:
    return JobState(job_id, None, "t", 1, NOW - 30 * DAY, status=status,
                    finished_at=None if ended_ago is None else NOW - ended_ago)


def survey_of(objects: list[StoredCheckpoint], chunks: list[ChunkSubject] = (), complete: bool = True) -> Survey:
    return Survey(objects, list(chunks), frozenset(o.nuid for o in objects), complete)


def test_a_failed_or_cancelled_jobs_checkpoint_goes_after_the_retention_a_succeeded_jobs_stays() -> None:
    jobs = {"old": job("old", CANCELLED, 8 * DAY), "recent": job("recent", FAILED, 2 * DAY),
            "live": job("live", RUNNING), "custom": job("custom", CANCELLED, 9 * DAY),
            "trained": job("trained", SUCCEEDED, 30 * DAY)}
    objects = [StoredCheckpoint(n, f"n-{n}", 100, NOW - DAY)
               for n in ("old", "recent", "live", "custom/epoch-3", "someone-elses", "trained")]
    decided = plan(survey_of(objects), jobs, NOW, retention_s=7 * DAY)
    assert [v.name for v in decided.expired] == ["custom/epoch-3", "old"]
    why = {v.name: v.why for v in decided.verdicts}
    assert why["recent"] == "ended 2.0 d ago: kept for 5.0 d more"
    assert why["live"] == "the job is running: kept"
    assert why["someone-elses"] == "no job of that name in the log: kept"
    assert why["old"] == "ended 8.0 d ago, retention 7.0 d: deleted"
    # the job's output (for a command's job, the only one), as Determined keeps a trial's latest checkpoint
    assert why["trained"] == "the job's output: kept until deleted (aios checkpoints --delete)"
    off = plan(survey_of(objects), jobs, NOW, retention_s=None)
    assert off.expired == [] and "retention is off" in {v.name: v.why for v in off.verdicts}["old"]


def test_only_chunks_no_object_names_and_old_enough_are_orphans_and_only_when_every_meta_was_read() -> None:
    objects = [StoredCheckpoint("a", "named", 10, NOW)]
    chunks = [ChunkSubject("named", 3, DAY), ChunkSubject("dead", 2, 7200),
              ChunkSubject("writing", 1, 5), ChunkSubject("unknown-age", 1, None)]
    assert [c.nuid for c in plan(survey_of(objects, chunks), {}, NOW, orphan_grace_s=3600).orphans] == ["dead"]
    assert plan(survey_of(objects, chunks, complete=False), {}, NOW, orphan_grace_s=3600).orphans == []


async def crashed_put(store: EventStore, bucket: str, chunks: int) -> str:
    """What a worker killed in the middle of ``ObjectStore.put`` leaves: chunks on a fresh subject, no object."""
    nuid = new_token()[:22]
    for i in range(chunks):
        await store.js.publish(f"$O.{bucket}.C.{nuid}", b"x" * 1000 + bytes([i]))
    return nuid


async def test_a_sweep_deletes_ended_jobs_checkpoints_and_crashed_writes_and_keeps_the_rest(store: EventStore) -> None:
    bucket = f"CKPT_{new_token()[:8]}"
    objects = await object_bucket(store, bucket, "test checkpoints")
    try:
        for name in ("done", "busy", "fresh"):
            await objects.put(name, name.encode() * 1000)
        orphan = await crashed_put(store, bucket, 3)
        now = time.time()
        jobs = {"done": JobState("done", None, "t", 1, now - 10 * DAY, status=FAILED, finished_at=now - 8 * DAY),
                "busy": JobState("busy", None, "t", 2, now - DAY, status=RUNNING),
                "fresh": JobState("fresh", None, "t", 3, now - DAY, status=CANCELLED, finished_at=now - 60)}

        dry = await collect(store, jobs, bucket=bucket, orphan_grace_s=0, dry_run=True)
        assert dry["deleted"] == ["done"] and dry["bytes"] == 4000 and dry["orphaned_chunks"] == 3
        found = await survey(store, bucket)
        assert sorted(o.name for o in found.objects) == ["busy", "done", "fresh"]
        assert orphan in {c.nuid for c in found.chunks} and found.complete

        # a grace longer than the crashed write's age keeps its chunks: a write may be in progress
        kept = await collect(store, jobs, bucket=bucket, orphan_grace_s=3600)
        assert kept["deleted"] == ["done"] and kept["orphaned_chunks"] == 0
        with pytest.raises(nats.js.errors.NotFoundError):
            await read_object(store, bucket, "done")
        assert orphan in {c.nuid for c in (await survey(store, bucket)).chunks}

        swept = await collect(store, jobs, bucket=bucket, orphan_grace_s=0)
        assert swept["deleted"] == [] and swept["orphaned_chunks"] == 3
        found = await survey(store, bucket)
        assert sorted(o.name for o in found.objects) == ["busy", "fresh"]
        assert {c.nuid for c in found.chunks} == {o.nuid for o in found.objects}  # only live objects' chunks left
        # a deleted checkpoint leaves no tombstone (a delete marker per job ever run, read by every sweep)
        metas = (await store.js.stream_info(f"OBJ_{bucket}", subjects_filter=f"$O.{bucket}.M.>")).state.subjects
        assert len(metas or {}) == 3  # the two kept, and the sweep's mark (rewritten in place, one subject)
        assert await read_object(store, bucket, "busy") == b"busy" * 1000
        assert await read_object(store, bucket, "fresh") == b"fresh" * 1000
    finally:
        await store.js.delete_object_store(bucket)


async def test_a_write_in_progress_survives_a_sweeper_whose_clock_runs_ahead(store: EventStore) -> None:
    """Chunks' age was the sweeping node's clock minus the server's timestamps: a node an hour ahead purged the new
    chunks of a checkpoint being written, and the job lost it and the one before. Ages are the server's now."""
    bucket = f"CKPT_{new_token()[:8]}"
    objects = await object_bucket(store, bucket, "test checkpoints")
    try:
        await objects.put("job-1", b"old" * 100)
        writing = await crashed_put(store, bucket, 2)  # half-way through its chunks
        ahead = time.time() + 2 * 3600
        jobs = {"job-1": JobState("job-1", None, "t", 1, ahead - DAY, status=RUNNING)}
        swept = await collect(store, jobs, bucket=bucket, orphan_grace_s=3600, now=ahead)
        assert swept["orphaned_chunks"] == 0 and swept["deleted"] == []
        assert writing in {c.nuid for c in (await survey(store, bucket)).chunks}
    finally:
        await store.js.delete_object_store(bucket)


async def test_unreadable_metadata_stops_no_sweep_and_purges_no_chunks(store: EventStore) -> None:
    """``ObjectStore.list`` waited for ever on a meta it could not parse (the sweep hung, one consumer a period);
    and chunks of an object whose meta cannot be read are not orphans."""
    bucket = f"CKPT_{new_token()[:8]}"
    objects = await object_bucket(store, bucket, "test checkpoints")
    try:
        await objects.put("job-1", b"w" * 100)
        orphan = await crashed_put(store, bucket, 1)
        await store.js.publish(f"$O.{bucket}.M.Z2FyYmFnZQ==", b"not a meta")
        swept = await collect(store, {}, bucket=bucket, orphan_grace_s=0, timeout_s=20)
        assert swept["orphaned_chunks"] == 0 and not swept["orphans_checked"]
        found = await survey(store, bucket)
        assert [o.name for o in found.objects] == ["job-1"] and orphan in {c.nuid for c in found.chunks}
    finally:
        await store.js.delete_object_store(bucket)


def test_one_trainer_sweeps_the_first_online_node_by_name() -> None:
    """Every node's trainer swept, each with its own retention setting: the shortest won, all at once each hour.
    Now the first online node's trainer sweeps (place 0) and the others stand by in the order of their names."""
    from aios.common.events import NodeLost, NodeRegistered
    from aios.common.store import Commit
    from aios.trainer.launcher import LauncherService

    services = {n: LauncherService(node_id=n) for n in ("b", "c")}
    for service in services.values():
        for seq, node in enumerate(("c", "a", "b"), 1):
            service.projector.apply(Commit(seq, f"node.{node}", [NodeRegistered(
                aggregate_id=node, hostname=node, agent_id="x", cpu_cores=1, memory_bytes=1, devices=[])]))
    assert (services["b"]._sweep_rank(), services["c"]._sweep_rank()) == (1, 2)  # node a's trainer sweeps
    for service in services.values():
        service.projector.apply(Commit(9, "node.a", [NodeLost(aggregate_id="a", reason="gone", last_seen=0.0)]))
    assert (services["b"]._sweep_rank(), services["c"]._sweep_rank()) == (0, 1)
    assert LauncherService()._sweep_rank() == 0  # the one trainer of a laptop cluster


def test_a_standby_trainer_sweeps_when_the_mark_stops_changing_and_hands_back() -> None:
    """The trainer of an online node sweeps only if its own trainer runs: when that trainer was down, no sweep
    happened and nothing said so. The next in line sweeps once the mark has not changed for 1.5 periods, the one
    after it at 2.5, and hands back when the first sweeps again."""
    from aios.trainer.checkpoints import SweepMark, SweepWatch, standby_sweeps

    hour = 3600.0
    first = SweepMark(10, "node a", 0.0)
    go, watch = standby_sweeps(1, "node b", first, SweepWatch(), 0.0, hour)
    assert not go
    go, watch = standby_sweeps(1, "node b", SweepMark(12, "node a", 0.0), watch, hour, hour)  # a swept again
    assert not go and watch.since == hour
    assert not standby_sweeps(1, "node b", SweepMark(12, "node a", 0.0), watch, 2 * hour, hour)[0]
    go, watch = standby_sweeps(1, "node b", SweepMark(12, "node a", 0.0), watch, 2.5 * hour, hour)
    assert go  # a missed a sweep: b sweeps in its place
    assert not standby_sweeps(2, "node c", SweepMark(12, "node a", 0.0), SweepWatch(12, hour), 3 * hour, hour)[0]
    assert standby_sweeps(2, "node c", SweepMark(12, "node a", 0.0), SweepWatch(12, hour), 3.5 * hour, hour)[0]
    go, watch = standby_sweeps(1, "node b", SweepMark(14, "node b", 0.0), watch, 3.5 * hour, hour)
    assert go  # b's own mark: it goes on sweeping every period
    go, watch = standby_sweeps(1, "node b", SweepMark(16, "node a", 0.0), watch, 4.5 * hour, hour)
    assert not go  # a is back
    assert not standby_sweeps(1, "node b", None, SweepWatch(), 0.0, hour)[0]  # no sweep yet: waits as well
    assert standby_sweeps(1, "node b", None, SweepWatch(0, 0.0), 1.5 * hour, hour)[0]


async def test_the_next_trainer_in_line_sweeps_when_the_first_sweeps_nothing(store: EventStore) -> None:
    """Nodes a and b are online; only b's trainer runs. It sweeps in a's place, and the mark names it."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from aios.common.config import load_settings
    from aios.common.events import JobCancelled, JobSubmitted, NodeRegistered
    from aios.common.runner import ServiceContext
    from aios.trainer.checkpoints import BUCKET, last_sweep
    from aios.trainer.launcher import LauncherService

    tag = new_token()[:6]
    first, second = f"a{tag}", f"b{tag}"
    for node in (first, second):
        await store.append(f"node.{node}", NodeRegistered(aggregate_id=node, hostname=node, agent_id="x",
                                                          cpu_cores=1, memory_bytes=1, devices=[]))
    ended = f"ended-{tag}"
    await store.append(f"job.{ended}", JobSubmitted(aggregate_id=ended, tenant="ml", name=ended, spec={
        "name": ended, "tenant": "ml", "devices": 1, "command": ["true"]}))
    await store.append(f"job.{ended}", JobCancelled(aggregate_id=ended))
    objects = await object_bucket(store, BUCKET, "AIOS training checkpoints")
    await objects.put(ended, b"weights")
    context = ServiceContext("trainer", load_settings({"AIOS_NATS_URL": store.servers[0]}), store.nc, store,
                             CollectorRegistry())
    service = LauncherService(node_id=second, retention_s=1.0, sweep_every_s=0.5)
    task = asyncio.ensure_future(service.run(context))
    try:
        deadline = time.monotonic() + 20
        while service.sweeps < 2:
            assert time.monotonic() < deadline, "the standby trainer never swept"
            await asyncio.sleep(0.2)
        with pytest.raises(nats.js.errors.NotFoundError):
            await read_object(store, BUCKET, ended)
        mark = await last_sweep(store)
        assert mark is not None and mark.by == f"node {second}"
        assert ended not in [o.name for o in (await survey(store)).objects]
        assert "aios:last-sweep" not in [o.name for o in (await survey(store)).objects]  # not a checkpoint
    finally:
        context.stopping.set()
        await task


async def test_a_store_without_the_bucket_has_nothing_to_sweep(store: EventStore) -> None:
    found = await survey(store, f"NONE_{new_token()[:8]}")
    assert found.objects == [] and found.chunks == [] and found.complete


async def test_the_trainer_service_sweeps_by_itself(store: EventStore) -> None:
    """The trainer service removes an ended job's checkpoint once its retention has passed, and leaves a pending
    job's alone."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from aios.common.config import load_settings
    from aios.common.events import JobCancelled, JobSubmitted
    from aios.common.runner import ServiceContext
    from aios.trainer.checkpoints import BUCKET
    from aios.trainer.launcher import LauncherService

    ended, waiting = f"ended-{new_token()[:8]}", f"waiting-{new_token()[:8]}"
    for job_id in (ended, waiting):
        await store.append(f"job.{job_id}", JobSubmitted(aggregate_id=job_id, tenant="ml", name=job_id, spec={
            "name": job_id, "tenant": "ml", "devices": 1, "command": ["true"]}))
    await store.append(f"job.{ended}", JobCancelled(aggregate_id=ended))
    objects = await object_bucket(store, BUCKET, "AIOS training checkpoints")
    for job_id in (ended, waiting):
        await objects.put(job_id, b"weights")
    context = ServiceContext("trainer", load_settings({"AIOS_NATS_URL": store.servers[0]}), store.nc, store,
                             CollectorRegistry())
    service = LauncherService(retention_s=1.0, sweep_every_s=0.5)
    task = asyncio.ensure_future(service.run(context))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                await read_object(store, BUCKET, ended)
            except nats.js.errors.NotFoundError:
                break
            assert time.monotonic() < deadline, "the ended job's checkpoint was never removed"
            await asyncio.sleep(0.2)
        swept = service.sweeps
        while service.sweeps < swept + 2:
            assert time.monotonic() < deadline + 5, "no more sweeps"
            await asyncio.sleep(0.2)
        assert await read_object(store, BUCKET, waiting) == b"weights"
    finally:
        context.stopping.set()
        await task
        await objects.delete(waiting)


def test_retention_settings_are_checked_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from aios.common.errors import ConfigError
    from aios.trainer.launcher import from_env

    monkeypatch.setenv("AIOS_CHECKPOINT_RETENTION_S", "off")
    assert from_env().retention_s is None
    monkeypatch.setenv("AIOS_CHECKPOINT_RETENTION_S", "86400")
    assert from_env().retention_s == 86400.0
    monkeypatch.setenv("AIOS_CHECKPOINT_RETENTION_S", "a week")
    with pytest.raises(ConfigError, match=r"AIOS_CHECKPOINT_RETENTION_S='a week': must be a positive number"):
        from_env()


def test_aios_checkpoints_lists_says_and_sweeps(killable_nats: Any, aios_env: dict[str, str]) -> None:
    """`aios checkpoints` shows what the sweep would do with each checkpoint; `--dry-run` deletes nothing;
    `--sweep` deletes; a bad option is named."""
    import asyncio
    import json
    import subprocess
    import sys

    from aios.common.events import JobCancelled, JobSubmitted
    from aios.common.store import connect
    from aios.trainer.checkpoints import BUCKET

    async def prepare() -> None:
        s = await connect([killable_nats.url], name="test")
        try:
            for job_id in ("old", "live"):
                await s.append(f"job.{job_id}", JobSubmitted(aggregate_id=job_id, tenant="ml", name=job_id, spec={
                    "name": job_id, "tenant": "ml", "devices": 1, "command": ["true"]}))
            await s.append("job.old", JobCancelled(aggregate_id="old"))
            objects = await object_bucket(s, BUCKET, "AIOS training checkpoints")
            for job_id in ("old", "live"):
                await objects.put(job_id, b"w" * 2048)
        finally:
            await s.close()
    asyncio.run(prepare())
    env = {**aios_env, "AIOS_NATS_URL": killable_nats.url}

    def aios(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aios.cli.main", "checkpoints", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    listed = aios("--json")
    assert listed.returncode == 0, listed.stderr
    why = {c["name"]: c["why"] for c in json.loads(listed.stdout)["checkpoints"]}
    assert why["live"] == "the job is pending: kept" and why["old"].startswith("ended 0 min ago: kept for 7.0 d")
    assert json.loads(listed.stdout)["last_sweep"] is None
    assert "no sweep recorded yet" in aios().stdout
    off = aios("--json", "--retention-h", "off")
    assert "retention is off" in {c["name"]: c["why"] for c in json.loads(off.stdout)["checkpoints"]}["old"]
    # retention of a thousandth of an hour (3.6 s): the cancelled job's checkpoint expires, the pending job's stays
    time.sleep(4)
    dry = aios("--dry-run", "--retention-h", "0.001")
    assert dry.returncode == 0 and dry.stdout.startswith("would delete 1 checkpoint of ended jobs (2,048 bytes): old")
    assert json.loads(aios("--json").stdout)["checkpoints"][1]["name"] == "old"  # still there
    swept = aios("--sweep", "--retention-h", "0.001", "--json")
    assert swept.returncode == 0 and json.loads(swept.stdout)["deleted"] == ["old"], swept.stdout
    assert [c["name"] for c in json.loads(aios("--json").stdout)["checkpoints"]] == ["live"]
    assert json.loads(aios("--json").stdout)["last_sweep"]["by"] == "aios checkpoints --sweep"
    assert "by aios checkpoints --sweep" in aios().stdout.splitlines()[-1]
    bad = aios("--sweep", "--orphan-grace-s", "5")
    assert bad.returncode != 0 and "--orphan-grace-s: at least 60 s" in bad.stderr and "Traceback" not in bad.stderr
    bad = aios("--sweep", "--retention-h", "a week")
    assert bad.returncode != 0 and "--retention-h: 'a week' is not a positive number of hours, or 'off'" in bad.stderr
    # a running (here pending) job's checkpoint is its resume point: not deleted by hand either
    refused = aios("--delete", "live")
    assert refused.returncode != 0 and "'live' is the checkpoint of job live, which is pending" in refused.stderr
    gone = aios("--delete", "old")
    assert gone.returncode == 3 and "no checkpoint named old" in gone.stderr, (gone.stdout, gone.stderr)


async def test_deleting_from_a_store_that_never_held_a_checkpoint_says_it_was_not_there(store: EventStore) -> None:
    from aios.trainer.checkpoints import delete

    assert await delete(store, "nope", bucket=f"NONE_{new_token()[:8]}") is False  # it was a traceback
