"""Kill -9 every kind of process in turn while 150 jobs of 3 tenants run on simulated nodes, restarting each: in the
end every job has ended exactly once, no device was ever leased to two jobs (checked by folding the whole log), and
no acknowledged submit is missing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aios.cli.cluster import LocalCluster
from aios.common.events import JobCancelled, JobFailed, JobSubmitted, JobSucceeded
from aios.common.store import connect
from tests.scheduler.test_integration import _commits, _leased, check_no_double_booking
from tests.scheduler.test_resilience import start, wait_registered

JOBS = 150
VICTIMS = ["scheduler", "resource-manager", "trainer-sim-1", "agent-sim-2", "model-registry", "gateway"]
TERMINAL = (JobSucceeded, JobFailed, JobCancelled)


async def submit(store: Any, jobs: int) -> dict[str, int]:
    acked = {}
    pipe = store.pipeline()
    names = []
    for i in range(jobs):
        job = f"job-{i:03d}"
        tenant = ("vision", "nlp", "speech")[i % 3]
        spec = {"name": job, "tenant": tenant, "devices": 1 + i % 3, "command": ["sleep", str(0.2 + (i % 4) * 0.1)]}
        await pipe.add(f"job.{job}", JobSubmitted(aggregate_id=job, tenant=tenant, spec=spec), expected_version=0,
                       idempotency_key=f"submit-{job}")
        names.append(job)
    for job, result in zip(names, await pipe.results()):
        assert not isinstance(result, Exception), result
        acked[job] = result.seq  # type: ignore[union-attr]
    return acked


def ended(commits: list[Any]) -> Counter[str]:
    return Counter(c.aggregate[4:] for c in commits for e in c.events if isinstance(e, TERMINAL))


async def soak(cluster: LocalCluster, jobs: int, victims: list[str]) -> str:
    """Submit ``jobs``, kill -9 and restart each victim in turn (``nats`` = the NATS server itself) as the jobs
    end, then check: every job ended exactly once, every acknowledged submit is in the log, no double booking."""
    store = await connect([cluster.nats_url], append_deadline=60.0)
    await wait_registered(store)
    started = time.monotonic()
    acked = await submit(store, jobs)
    for i, victim in enumerate(victims):
        deadline = time.monotonic() + 120
        while sum(ended(await _commits(store)).values()) < (i + 1) * jobs // (len(victims) + 1):
            assert time.monotonic() < deadline, f"stuck before killing {victim}"
            await asyncio.sleep(0.3)
        if victim == "nats":
            assert cluster.nats is not None
            cluster.nats.kill()
            await asyncio.sleep(1.0)
            cluster.nats.restart()
        else:
            cluster.kill(victim)
            await asyncio.sleep(1.0)
            cluster.restart(victim)
    deadline = time.monotonic() + 240
    while True:
        commits = await _commits(store)
        done = ended(commits)
        # The scheduler gives a job's devices back in the round after it ended: wait for that too.
        if len(done) == jobs and not _leased(commits):
            break
        assert time.monotonic() < deadline, f"{len(done)} of {jobs} ended; stuck: " \
            f"{sorted(set(acked) - set(done))[:10]}; leases held: {_leased(commits)}"
        await asyncio.sleep(0.5)
    assert [job for job, n in done.items() if n != 1] == [], "a job ended twice"
    submitted = {c.aggregate[4:]: c.seq for c in commits for e in c.events if isinstance(e, JobSubmitted)}
    assert submitted == acked, "every acknowledged submit is in the log, at its sequence"
    check_no_double_booking(commits)
    assert cluster.exited() == {}, "every restarted process is still running"
    outcomes = Counter(type(e).__name__ for c in commits for e in c.events if isinstance(e, TERMINAL))
    await store.close()
    return (f"soak: {jobs} jobs, {len(victims)} processes killed ({', '.join(victims)}), outcomes {dict(outcomes)}, "
            f"lost 0, double bookings 0, {time.monotonic() - started:.0f} s")


async def test_every_process_killed_in_turn_loses_and_doubles_nothing(aios_env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    cluster = start(aios_env, tmp_path, "fairshare", AIOS_NODE_TIMEOUT="4", AIOS_HEARTBEAT_INTERVAL="0.5",
                    AIOS_GATEWAY_PORT="0", AIOS_ROUTER_PORT="0")
    try:
        print(await soak(cluster, JOBS, VICTIMS))
    finally:
        cluster.stop()


@pytest.mark.slow
async def test_longer_soak_under_least_privilege(aios_env: dict[str, str], tmp_path: Path) -> None:
    """make test-all / CI's test-slow: more jobs, every process killed twice, the NATS server once, and every
    process running as its own NATS user with the shipped permissions."""
    cluster = start(aios_env, tmp_path, "fairshare", secure=True, AIOS_NODE_TIMEOUT="4",
                    AIOS_HEARTBEAT_INTERVAL="0.5", AIOS_GATEWAY_PORT="0", AIOS_ROUTER_PORT="0")
    try:
        print(await soak(cluster, 240, [*VICTIMS, "nats", *VICTIMS]))  # 360 took 112 s of an 18-min CI run
    finally:
        cluster.stop()
