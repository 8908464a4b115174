"""Integration through real NATS: 120 jobs from 3 tenants on 2 simulated nodes run to completion, in the order each
policy promises. Every process is real: nats-server, resource manager, scheduler, launcher, two device agents."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from aios.cli.cluster import LocalCluster
from aios.common.config import load_settings
from aios.common.events import JobPlaced, JobSubmitted, JobSucceeded
from aios.common.store import Commit, connect

TENANTS = ("nlp", "vision", "speech")


def workload(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"name": f"job-{i:03d}", "tenant": TENANTS[i % 3], "devices": rng.choice([1, 1, 2, 2, 4]),
             "priority": rng.randint(0, 3), "command": ["sleep", "0.05"], "runtime_estimate_s": 1,
             "cpu_per_worker": 1} for i in range(n)]


async def run_policy(policy: str, env: dict[str, str], tmp: Path, n: int = 120) -> tuple[list[Commit], dict]:
    env = {**env, "AIOS_SCHEDULER_POLICY": policy, "AIOS_SCHEDULER_INTERVAL": "0.1", "AIOS_DATA_DIR": str(tmp)}
    cluster = LocalCluster(load_settings({**env, "AIOS_NATS_PORT": "0"}), env=env,
                           agents=[("sim-1", "4xH100-80GB"), ("sim-2", "4xA100-40GB")]).start()
    try:
        store = await connect([cluster.nats_url])
        deadline = time.monotonic() + 30
        while len([c for c in await _commits(store) if c.aggregate.startswith("node.")]) < 2:
            assert time.monotonic() < deadline, "agents did not register"
            await asyncio.sleep(0.2)
        pipe = store.pipeline()
        for spec in workload(n, seed=7):
            job = spec["name"]
            await pipe.add(f"job.{job}", JobSubmitted(aggregate_id=job, tenant=spec["tenant"], name=job, spec=spec),
                           expected_version=0, idempotency_key=f"submit-{job}")
        assert not [r for r in await pipe.results() if isinstance(r, Exception)]
        deadline = time.monotonic() + 150
        while True:
            commits = await _commits(store)
            done = {c.aggregate for c in commits if any(isinstance(e, JobSucceeded) for e in c.events)}
            if len(done) == n and not _leased(commits):
                break  # every job finished and the round after the last one gave its devices back
            assert time.monotonic() < deadline, f"{len(done)} of {n} jobs finished; leases held: {_leased(commits)}"
            await asyncio.sleep(0.5)
        specs = {s["name"]: s for s in workload(n, seed=7)}
        await store.close()
        return commits, specs
    finally:
        cluster.stop()


def _leased(commits: list[Commit]) -> dict[str, str]:
    from aios.scheduler.state import SchedulerState, fold_commit

    state = SchedulerState()
    for c in commits:
        fold_commit(state, c)
    return dict(state.inv.leases.holder)


async def _commits(store: Any) -> list[Commit]:
    out: list[Commit] = []
    await store.replay(out.append)
    return out


def placed_order(commits: list[Commit]) -> list[tuple[int, str]]:
    return [(c.seq, c.aggregate[4:]) for c in commits if any(isinstance(e, JobPlaced) for e in c.events)]


def check_no_double_booking(commits: list[Commit]) -> None:
    from aios.scheduler.state import SchedulerState, fold_commit

    state = SchedulerState()
    for c in commits:
        fold_commit(state, c)
    assert not state.inv.leases.violations
    assert all(j.status == "succeeded" for j in state.jobs.values())
    assert not state.inv.leases.holder  # every device given back


async def test_fifo_runs_its_jobs_in_arrival_order(aios_env: dict[str, str], tmp_path: Path) -> None:
    commits, _ = await run_policy("fifo", aios_env, tmp_path)
    order = [job for _, job in placed_order(commits)]
    assert order == sorted(order)  # job-000, job-001, ... : nobody overtakes under FIFO
    check_no_double_booking(commits)


async def test_priority_runs_its_jobs_highest_priority_first(aios_env: dict[str, str], tmp_path: Path) -> None:
    commits, specs = await run_policy("priority", aios_env, tmp_path)
    order = [job for _, job in placed_order(commits)]
    # all jobs were queued before the first placement: no job may start before a waiting job of higher priority
    for i, job in enumerate(order):
        assert all(specs[later]["priority"] <= specs[job]["priority"] for later in order[i + 1:]), job
    check_no_double_booking(commits)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["fairshare", "las", "hetero", "backfill"])
async def test_other_policies_run_their_jobs_to_completion(policy: str, aios_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    commits, specs = await run_policy(policy, aios_env, tmp_path)
    order = [job for _, job in placed_order(commits)]
    assert len(set(order)) == 120
    if policy == "fairshare":  # tenants interleave from the start instead of in submission blocks
        first = [specs[j]["tenant"] for j in order[:12]]
        assert set(first) == set(TENANTS)
    check_no_double_booking(commits)
