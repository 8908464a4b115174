"""The scheduler survives its own crash, shares the log with a second active scheduler without double booking,
and hands leadership over when the leader stops."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aios.cli.cluster import LocalCluster
from aios.common.config import load_settings
from aios.common.events import JobPlaced, JobRequeued, JobSubmitted, JobSucceeded
from aios.common.natsserver import NatsServer
from aios.common.snapshot import Projector, SnapshotStore
from aios.common.store import Commit, connect
from aios.scheduler.leadership import Leadership
from aios.scheduler.policies import make_policy
from aios.scheduler.rounds import plan_round
from aios.scheduler.state import SchedulerState, fold_commit
from tests.scheduler.test_integration import _commits, _leased, check_no_double_booking


def start(env: dict[str, str], tmp: Path, policy: str, secure: bool = False, **extra: str) -> LocalCluster:
    env = {**env, "AIOS_SCHEDULER_POLICY": policy, "AIOS_SCHEDULER_INTERVAL": "0.1", "AIOS_DATA_DIR": str(tmp),
           **extra}
    return LocalCluster(load_settings({**env, "AIOS_NATS_PORT": "0"}), env=env, secure=secure,
                        agents=[("sim-1", "4xH100-80GB"), ("sim-2", "4xA100-40GB")]).start()


async def submit_all(store: Any, n: int, seconds: float) -> None:
    pipe = store.pipeline()
    for i in range(n):
        job = f"job-{i:03d}"
        spec = {"name": job, "tenant": ("a", "b")[i % 2], "devices": 1 + i % 3, "command": ["sleep", str(seconds)]}
        await pipe.add(f"job.{job}", JobSubmitted(aggregate_id=job, tenant=spec["tenant"], spec=spec),
                       expected_version=0, idempotency_key=f"submit-{job}")
    assert not [r for r in await pipe.results() if isinstance(r, Exception)]


async def wait_done(store: Any, n: int, at_least: int | None = None, timeout: float = 120) -> list[Commit]:
    deadline = time.monotonic() + timeout
    while True:
        commits = await _commits(store)
        done = {c.aggregate for c in commits if any(isinstance(e, JobSucceeded) for e in c.events)}
        # all done: their devices are given back too (a round after the last success: returning at the success,
        # the check that every device came back raced the scheduler's release of the last job)
        if len(done) >= at_least if at_least is not None else len(done) >= n and not _leased(commits):
            return commits
        assert time.monotonic() < deadline, f"{len(done)} of {n} done; leases held: {_leased(commits)}"
        await asyncio.sleep(0.3)


async def wait_registered(store: Any) -> None:
    deadline = time.monotonic() + 30
    while len({c.aggregate for c in await _commits(store) if c.aggregate.startswith("node.")}) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


def assert_fifo_claims(commits: list[Commit], n: int) -> None:
    """FIFO held across a crash: jobs were first claimed in submit order, and a job was placed again only after it
    went back to the queue. (A scheduler killed between claiming a job and booking its devices leaves the claim;
    its successor requeues it after the booking grace and places it again, behind the jobs claimed meanwhile.)"""
    first: list[str] = []
    requeued: set[str] = set()
    for c in commits:
        for e in c.events:
            if isinstance(e, JobPlaced):
                if c.aggregate not in first:
                    first.append(c.aggregate)
                else:
                    assert c.aggregate in requeued, f"{c.aggregate} placed twice without a requeue in between"
                    requeued.discard(c.aggregate)
            elif isinstance(e, JobRequeued):
                requeued.add(c.aggregate)
    assert first == sorted(first) and len(first) == n


async def test_scheduler_killed_mid_run(aios_env: dict[str, str], tmp_path: Path) -> None:
    cluster = start(aios_env, tmp_path, "fifo")
    try:
        store = await connect([cluster.nats_url])
        await wait_registered(store)
        await submit_all(store, 80, 0.2)
        await wait_done(store, 80, at_least=15)
        sched = cluster.procs["scheduler"]
        sched.kill()
        sched.wait()
        cluster._spawn("scheduler", ["service", "scheduler"])
        commits = await wait_done(store, 80)
        check_no_double_booking(commits)
        assert_fifo_claims(commits, 80)

        # the restarted scheduler's view equals a fresh fold of the log
        env = {**aios_env, "AIOS_NATS_URL": cluster.nats_url}
        out = subprocess.run([sys.executable, "-m", "aios.cli.main", "jobs", "--json"], env=env, capture_output=True,
                             text=True, timeout=30)
        live = {j["job"]: j["status"] for j in json.loads(out.stdout)}
        fresh = SchedulerState()
        for c in await _commits(store):
            fold_commit(fresh, c)
        assert live == {j.job_id: j.status for j in fresh.jobs.values()}
        await store.close()
    finally:
        cluster.stop()


async def test_two_active_schedulers_never_double_book(aios_env: dict[str, str], tmp_path: Path) -> None:
    cluster = start(aios_env, tmp_path, "fairshare", AIOS_SCHEDULER_LEADER="off")
    cluster._spawn("scheduler-2", ["service", "scheduler"])
    try:
        store = await connect([cluster.nats_url])
        await wait_registered(store)
        await submit_all(store, 80, 0.05)
        commits = await wait_done(store, 80)
        check_no_double_booking(commits)
        placed: dict[str, int] = {}
        for c in commits:
            for e in c.events:
                if isinstance(e, JobPlaced):
                    placed[c.aggregate] = placed.get(c.aggregate, 0) + 1
        assert len(placed) == 80  # a placement that lost a race is requeued and placed again, never twice at once
        succeeded = [c.aggregate for c in commits for e in c.events if isinstance(e, JobSucceeded)]
        assert sorted(succeeded) == sorted(set(succeeded))
        await store.close()
    finally:
        cluster.stop()


async def test_leadership_moves_when_the_leader_stops(killable_nats: NatsServer) -> None:
    store = await connect([killable_nats.url])
    a = Leadership(store.js, "a", ttl_s=1.0)
    b = Leadership(store.js, "b", ttl_s=1.0)
    assert await a.step() and not await b.step()
    assert await a.step() and not await b.step()  # the leader keeps it by refreshing
    deadline = time.monotonic() + 5
    while not await b.step():  # a stops refreshing (it died): after the TTL, b takes over
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert not await a.step()  # and the old leader knows it lost
    await store.close()


async def test_a_leader_that_resigned_does_not_take_the_key_back(killable_nats: NatsServer) -> None:
    """A campaign step that ran just after the resignation (the service resigned before stopping its campaign)
    created the key again, and the standby waited out the whole TTL instead of taking over at once."""
    store = await connect([killable_nats.url])
    a = Leadership(store.js, "a", ttl_s=30.0)
    b = Leadership(store.js, "b", ttl_s=30.0)
    assert await a.step() and not await b.step()
    await a.resign()
    assert not await a.step()
    assert await b.step()  # at once, not after 30 s
    await store.close()


async def test_snapshot_plus_tail_gives_the_same_decisions(killable_nats: NatsServer) -> None:
    from tests.scheduler.helpers import node

    store = await connect([killable_nats.url])
    for aggregate, events in [node("n1", "h100", 4), node("n2", "a100", 4)]:
        await store.append(aggregate, events)
    for i in range(30):
        spec = {"name": f"j{i}", "tenant": "t", "devices": 1 + i % 4, "command": ["x"]}
        await store.append(f"job.j{i}", JobSubmitted(aggregate_id=f"j{i}", tenant="t", spec=spec))
    snapshots = SnapshotStore(store)
    first = Projector("scheduler", SchedulerState, None, SchedulerState, fold_commit=fold_commit)
    await first.rebuild(store)
    await first.save(snapshots)
    for i in range(30, 40):
        spec = {"name": f"j{i}", "tenant": "t", "devices": 2, "command": ["x"]}
        await store.append(f"job.j{i}", JobSubmitted(aggregate_id=f"j{i}", tenant="t", spec=spec))
    warm = Projector("scheduler", SchedulerState, None, SchedulerState, fold_commit=fold_commit)
    report = await warm.rebuild(store, snapshots)
    cold = Projector("scheduler", SchedulerState, None, SchedulerState, fold_commit=fold_commit)
    await cold.rebuild(store)
    assert report.snapshot_seq == 32 and report.tail_commits == 10
    assert warm.state == cold.state
    for name in ("fifo", "fairshare", "hetero"):
        a, b = plan_round(warm.state, make_policy(name), 100.0), plan_round(cold.state, make_policy(name), 100.0)
        assert (a.placements, a.preemptions, a.releases, a.reasons, a.order) == (
            b.placements, b.preemptions, b.releases, b.reasons, b.order)
        assert a.placements or name == "fifo"
    await store.close()
