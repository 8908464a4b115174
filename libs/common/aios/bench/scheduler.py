"""``aios bench scheduler``: the decision core in memory, decisions committed through a real nats-server, and the
latency from submit to placed at a steady submission rate."""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from aios.common.config import Settings
from aios.common.events import JobPlaced, JobSubmitted
from aios.common.natsserver import NatsServer
from aios.common.runner import run_service
from aios.common.store import Commit, EventStore, connect
from aios.scheduler.local import apply, node_registration
from aios.scheduler.placement import ClusterView, Request, fit_in_order, greedy, milp_window
from aios.scheduler.service import SchedulerConfig, SchedulerService
from aios.scheduler.state import SchedulerState

KINDS = ("h100", "a100", "v100")


def node_events(nodes: int, gpus: int) -> list[tuple[str, list[Any]]]:
    return [node_registration(f"node-{n:04d}", KINDS[n % len(KINDS)], gpus, cpu_cores=224, memory_bytes=2 << 40)
            for n in range(nodes)]


def job_spec(i: int, rng: random.Random, devices: int | None = None, any_kind: bool = False) -> dict[str, Any]:
    return {"name": f"job-{i}", "tenant": f"t{i % 5}", "devices": devices or rng.choice([1, 1, 2, 4, 8]),
            "device_types": [] if any_kind else rng.choice([[], ["h100"], ["a100", "h100"]]), "command": ["train"],
            "priority": i % 3}


def core(nodes: int, gpus: int, pending: int) -> dict[str, Any]:
    rng = random.Random(1)
    state = SchedulerState()
    apply(state, node_events(nodes, gpus), 0.0)
    for i in range(pending):
        spec = job_spec(i, rng)
        apply(state, [(f"job.job-{i}", [JobSubmitted(aggregate_id=f"job-{i}", tenant=spec["tenant"], spec=spec)])],
              1.0)
    t0 = time.perf_counter()
    view = ClusterView.from_inventory(state.inv)
    view_s = time.perf_counter() - t0
    reqs = [Request(j.job_id, j.devices, frozenset(j.spec.device_types) or None, None, True, 1.0, 4.0)
            for j in state.pending() if j.spec]
    placed = 0
    t0 = time.perf_counter()
    for req in reqs:
        plan = greedy(view, req)
        if plan is not None:
            view.take(req, plan)
            placed += 1
    greedy_s = time.perf_counter() - t0
    window = reqs[:200]
    fresh = ClusterView.from_inventory(state.inv)
    t0 = time.perf_counter()
    required = fit_in_order(fresh, window)  # as a round does: what rank order places, the MILP must place
    order_s = time.perf_counter() - t0
    result = milp_window(fresh, window, time_limit=5.0, required=required)
    return {"greedy_placements_per_s": round(placed / greedy_s), "greedy_placed": placed,
            "greedy_tried": len(reqs), "cluster_view_s": round(view_s, 4),
            "milp_window_s": round(result.seconds, 3), "milp_window_order_s": round(order_s, 3),
            "milp_window_jobs": len(window), "milp_window_required": len(required),
            "milp_window_nodes": nodes, "milp_status": result.status, "milp_placed": len(result.plans),
            "milp_variables": result.variables}


def blocked_queue(blocked: int, nodes: int = 100, gpus: int = 8, rounds: int = 3) -> dict[str, Any]:
    """One round's time with the cluster full and ``blocked`` jobs queued that cannot start, per policy: a round
    visits every queued job (admission, placement, the search for room by preemption), so its cost per queued job
    bounds how long a queue the scheduler keeps up with. ``fairshare+quotas``: each of 4 tenants has a quota of a
    quarter of the cluster more in a cohort, so every queued job is admitted and then looks for room."""
    from aios.common.events import TenantQuotaSet
    from aios.scheduler.local import step
    from aios.scheduler.policies import make_policy
    from aios.scheduler.rounds import plan_round

    out: dict[str, Any] = {"blocked_queue_jobs": blocked, "blocked_queue_devices": nodes * gpus}
    for label, policy_name, quotas in (("fairshare", "fairshare", False), ("fairshare+quotas", "fairshare", True),
                                       ("priority", "priority", False), ("las", "las", False)):
        state = SchedulerState()
        apply(state, [node_registration(f"node-{n:04d}", "h100", gpus) for n in range(nodes)], 0.0)
        if quotas:
            apply(state, [(f"tenant.t{t}", [TenantQuotaSet(aggregate_id=f"t{t}", cohort="all",
                                                            nominal={"h100": nodes * gpus // 2})]) for t in range(4)],
                  0.0)
        policy = make_policy(policy_name)

        def submit(i: int, priority: int, now: float, preemptible: bool = True) -> None:
            spec = {"name": f"job-{i}", "tenant": f"t{i % 4}", "devices": 1, "command": ["train"],
                    "priority": priority, "preemptible": preemptible}
            apply(state, [(f"job.job-{i}", [JobSubmitted(aggregate_id=f"job-{i}", tenant=spec["tenant"],
                                                         spec=spec)])], now)
        for i in range(nodes * gpus):  # the running jobs, which may not be preempted (serving, say): no queued job
            # finds room, and each one looks
            submit(i, 1, 1.0, preemptible=False)
        step(state, policy, 2.0)
        for i in range(nodes * gpus, nodes * gpus + blocked):  # ahead of them by priority and by service
            submit(i, 2, 3.0)
        t0 = time.perf_counter()
        for _ in range(rounds):  # past LAS's first threshold (1 h) for the running jobs
            plan_round(state, policy, 3_700.0)
        out[f"blocked_queue_round_ms_{label}"] = round((time.perf_counter() - t0) / rounds * 1000, 1)
    return out


async def _log_placed(store: EventStore) -> list[Commit]:
    out: list[Commit] = []
    await store.replay(lambda c: out.append(c) if c.aggregate.startswith("job.") else None)
    return out


async def committed(url: str, nodes: int, gpus: int, pending: int) -> dict[str, Any]:
    store = await connect([url], name="bench-scheduler")
    rng = random.Random(2)
    pipe = store.pipeline()
    for aggregate, events in node_events(nodes, gpus):
        await pipe.add(aggregate, events)
    for i in range(pending):
        spec = job_spec(i, rng, devices=1, any_kind=True)
        await pipe.add(f"job.job-{i}", JobSubmitted(aggregate_id=f"job-{i}", tenant=spec["tenant"], spec=spec),
                       expected_version=0)
    assert not [r for r in await pipe.results() if isinstance(r, Exception)]
    service = SchedulerService(SchedulerConfig(policy="fifo", round_interval_s=0.05, leader_election=False))
    ready = asyncio.Event()
    task = asyncio.ensure_future(run_service(service, Settings(nats_url=url, log_level="WARNING"), ready=ready,
                                             install_signal_handlers=False))
    await ready.wait()
    # Decisions start at the first round; measured until placements stop for a second (the cluster is full).
    t0 = time.perf_counter()
    last_change, placed = t0, 0
    while (placed == 0 or time.perf_counter() - last_change < 1.0) and time.perf_counter() - t0 < 300:
        if service.placed != placed:
            placed, last_change = service.placed, time.perf_counter()
        await asyncio.sleep(0.005)
    elapsed = last_change - t0
    service.ctx.stopping.set()
    await task
    commits = await _log_placed(store)
    in_log = sum(1 for c in commits for e in c.events if isinstance(e, JobPlaced))
    await store.close()
    return {"committed_placements_per_s": round(placed / elapsed), "committed_placements": placed,
            "placements_in_log": in_log, "commit_rounds": service.rounds, "conflicts": service.conflicts}


async def latency(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Submissions at ``rate``/s on the cluster left by ``committed`` plus fresh capacity; submit -> placed."""
    store = await connect([url], name="bench-latency")
    service = SchedulerService(SchedulerConfig(policy="fairshare", round_interval_s=0.5, leader_election=False))
    ready = asyncio.Event()
    task = asyncio.ensure_future(run_service(service, Settings(nats_url=url, log_level="WARNING"), ready=ready,
                                             install_signal_handlers=False))
    await ready.wait()
    submitted: dict[str, float] = {}
    placed_at: dict[str, float] = {}
    sub = store.subscribe(await store.last_seq() + 1)

    async def watch() -> None:
        async for c in sub:
            if any(isinstance(e, JobPlaced) for e in c.events):
                placed_at.setdefault(c.aggregate[4:], time.perf_counter())

    watcher = asyncio.ensure_future(watch())
    n = int(rate * seconds)
    start = time.perf_counter()
    for i in range(n):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        job = f"lat-{i}"
        spec = {"name": job, "tenant": f"t{i % 5}", "devices": 1, "command": ["serve"]}
        submitted[job] = time.perf_counter()
        await store.append(f"job.{job}", JobSubmitted(aggregate_id=job, tenant=spec["tenant"], spec=spec),
                           expected_version=0)
    deadline = time.perf_counter() + 30
    while len(placed_at) < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    watcher.cancel()
    await sub.close()
    service.ctx.stopping.set()
    await task
    await store.close()
    lat = sorted((placed_at[j] - submitted[j]) * 1000 for j in placed_at if j in submitted)
    return {"submit_rate_per_s": rate, "submitted": n, "placed": len(lat),
            "submit_to_placed_p50_ms": round(statistics.median(lat), 2) if lat else None,
            "submit_to_placed_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None}


async def run(nodes: int = 1000, gpus_per_node: int = 8, pending: int = 10_000, rate: float = 100.0,
              seconds: float = 10.0, blocked: int = 3_000) -> dict[str, Any]:
    result: dict[str, Any] = {"nodes": nodes, "gpus_per_node": gpus_per_node, "pending": pending}
    result.update(core(nodes, gpus_per_node, pending))
    result.update(blocked_queue(blocked))
    tmp = tempfile.mkdtemp(prefix="aios-bench-sched-")
    server = NatsServer(tmp).start()
    try:
        result.update(await committed(server.url, nodes, gpus_per_node, pending))
        lat_tmp = tempfile.mkdtemp(prefix="aios-bench-lat-")
        lat_server = NatsServer(lat_tmp).start()
        try:
            store = await connect([lat_server.url])
            pipe = store.pipeline()
            for aggregate, events in node_events(nodes, gpus_per_node):
                await pipe.add(aggregate, events)
            await pipe.results()
            await store.close()
            result.update(await latency(lat_server.url, rate, seconds))
        finally:
            lat_server.stop()
            shutil.rmtree(lat_tmp, ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return result
