"""Kill -9 every kind of process in turn while 200 jobs of 3 tenants run on simulated nodes, restarting each: in the
end every job has ended exactly once, no device was ever leased to two jobs (checked by folding the whole log), and
no acknowledged submit is missing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aios.common.events import JobCancelled, JobFailed, JobSubmitted, JobSucceeded
from aios.common.store import connect
from tests.scheduler.test_integration import _commits, check_no_double_booking
from tests.scheduler.test_resilience import start, wait_registered

JOBS = 200
VICTIMS = ["scheduler", "resource-manager", "trainer-sim-1", "agent-sim-2", "model-registry", "gateway"]
TERMINAL = (JobSucceeded, JobFailed, JobCancelled)


async def submit(store: Any) -> dict[str, int]:
    acked = {}
    pipe = store.pipeline()
    names = []
    for i in range(JOBS):
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


async def test_every_process_killed_in_turn_loses_and_doubles_nothing(aios_env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    cluster = start(aios_env, tmp_path, "fairshare", AIOS_NODE_TIMEOUT="4", AIOS_HEARTBEAT_INTERVAL="0.5",
                    AIOS_GATEWAY_PORT="0", AIOS_ROUTER_PORT="0")
    try:
        store = await connect([cluster.nats_url], append_deadline=60.0)
        await wait_registered(store)
        acked = await submit(store)
        faults = 0
        for i, victim in enumerate(VICTIMS):
            deadline = time.monotonic() + 120
            while sum(ended(await _commits(store)).values()) < (i + 1) * JOBS // (len(VICTIMS) + 1):
                assert time.monotonic() < deadline, f"stuck before killing {victim}"
                await asyncio.sleep(0.3)
            cluster.kill(victim)
            faults += 1
            await asyncio.sleep(1.0)
            cluster.restart(victim)
        deadline = time.monotonic() + 240
        while True:
            commits = await _commits(store)
            done = ended(commits)
            if len(done) == JOBS:
                break
            assert time.monotonic() < deadline, f"{len(done)} of {JOBS} ended; stuck: " \
                f"{sorted(set(acked) - set(done))[:10]}"
            await asyncio.sleep(0.5)
        assert [job for job, n in done.items() if n != 1] == [], "a job ended twice"  # noqa: E501
        submitted = {c.aggregate[4:]: c.seq for c in commits for e in c.events if isinstance(e, JobSubmitted)}
        assert submitted == acked, "every acknowledged submit is in the log, at its sequence"
        check_no_double_booking(commits)
        outcomes = Counter(type(e).__name__ for c in commits for e in c.events if isinstance(e, TERMINAL))
        print(f"soak: {JOBS} jobs, {faults} processes killed, outcomes {dict(outcomes)}, lost 0, double bookings 0")
        await store.close()
    finally:
        cluster.stop()
