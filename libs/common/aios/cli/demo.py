"""``aios demo``: a local cluster on an embedded NATS server and a real workload through the event spine.

It submits jobs from three tenants, follows the log live, crashes the NATS server (SIGKILL) in the middle and
restarts it, and then shows that nothing was lost or repeated: the live follower, a cold replay and a
snapshot-plus-tail restart all fold to the same state. Later issues extend it with scheduling and training.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from aios.bench.eventlog import JobsState, evolve, projector
from aios.cli import inspect
from aios.cli.cluster import LocalCluster
from aios.common.config import load_settings
from aios.common.events import JobCancelled, JobSubmitted
from aios.common.snapshot import SnapshotStore
from aios.common.store import connect

console = Console()
TENANTS = ("vision", "nlp", "speech")


async def submit(store, first: int, count: int) -> None:  # type: ignore[no-untyped-def]
    pipe = store.pipeline()
    for i in range(first, first + count):
        job = f"demo-{i:05d}"
        events = [JobSubmitted(aggregate_id=job, tenant=TENANTS[i % 3], name=f"train-{i}",
                               spec={"devices": 1 + i % 4, "priority": i % 3})]
        if i % 10 == 0:
            events.append(JobCancelled(aggregate_id=job, reason="superseded"))
        await pipe.add(f"job.{job}", events, expected_version=0, idempotency_key=f"submit-{job}")
    failed = [r for r in await pipe.results() if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} submits failed: {failed[0]}")


async def run(keep: bool = False, jobs: int = 3000) -> int:
    logging.getLogger("aios").setLevel(logging.ERROR)  # the expected outage warnings would drown the story
    base = Path(tempfile.mkdtemp(prefix="aios-demo-"))
    env = {k: v for k, v in os.environ.items() if k != "AIOS_NATS_URL"}
    settings = load_settings({**env, "AIOS_DATA_DIR": str(base), "AIOS_NATS_PORT": "0"})
    cluster = LocalCluster(settings, env=env, agents=[("sim-1", "4xH100-80GB"), ("sim-2", "4xA100-40GB")]).start()
    try:
        console.print(f"[bold]AIOS demo[/]: embedded NATS at {cluster.nats_url}, data in {base}")
        store = await connect([cluster.nats_url], name="aios-demo", append_deadline=30.0)
        live = projector()
        stop = asyncio.Event()
        follower = asyncio.ensure_future(live.follow(store, stop=stop))

        t0 = time.perf_counter()
        await submit(store, 0, jobs // 2)
        console.print(f"submitted {jobs // 2} jobs from {len(TENANTS)} tenants")
        assert cluster.nats is not None
        cluster.nats.kill()
        console.print("[red]NATS server killed (SIGKILL)[/] ... restarting it")

        async def restart_nats() -> None:
            await asyncio.sleep(1.0)
            cluster.nats.start()  # type: ignore[union-attr]

        restart = asyncio.ensure_future(restart_nats())
        await submit(store, jobs // 2, jobs - jobs // 2)  # acknowledged only once the server is back
        await restart
        console.print(f"submitted {jobs - jobs // 2} more jobs across the outage in {time.perf_counter() - t0:.1f}s")

        last = await store.last_seq()
        while live.seq < last:
            await asyncio.sleep(0.05)
        snapshots = SnapshotStore(store)
        await live.save(snapshots)
        await submit(store, jobs, 100)
        last = await store.last_seq()
        while live.seq < last:
            await asyncio.sleep(0.05)

        cold = projector()
        cold_report = await cold.rebuild(store)
        warm = projector()
        warm_report = await warm.rebuild(store, snapshots)
        stop.set()
        await follower

        table = Table(title="one log, three ways to fold it")
        for col in ("view", "events", "jobs", "cancelled", "per tenant", "last seq"):
            table.add_column(col)
        for label, p in (("live follower (across the crash)", live), ("cold replay", cold),
                         (f"snapshot@{warm_report.snapshot_seq} + {warm_report.tail_commits} commits", warm)):
            s: JobsState = p.state
            table.add_row(label, str(s.events), str(len(s.status)), str(sum(1 for v in s.status.values() if v == 3)),
                          ", ".join(f"{k}={v}" for k, v in sorted(s.per_tenant.items())), str(p.seq))
        console.print(table)
        same = msgspec_equal(live.state, cold.state) and msgspec_equal(cold.state, warm.state)
        expected = jobs + 100
        ok = same and len(cold.state.status) == expected
        console.print(f"cold replay {cold_report.seconds * 1000:.0f} ms, restart from snapshot "
                      f"{warm_report.seconds * 1000:.0f} ms")
        console.print("[green]no event lost, none repeated[/]" if ok else "[red]MISMATCH between folds[/]")
        console.print("[bold]inventory[/] (aios nodes): two simulated nodes, read through the real NVML wrapper")
        for _ in range(100):  # agents register within a few seconds of start
            reply = await inspect.ask("aios.rm.nodes", servers=[cluster.nats_url])
            if sum(1 for n in reply["nodes"] if n["online"]) == 2:
                break
            await asyncio.sleep(0.2)
        await inspect.nodes(None, servers=[cluster.nats_url])
        if keep:
            console.print(f"staying up: export AIOS_NATS_URL={cluster.nats_url}  (Ctrl-C to stop)")
            await asyncio.Event().wait()
        await store.close()
        return 0 if ok else 1
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def msgspec_equal(a: JobsState, b: JobsState) -> bool:
    return a.status == b.status and a.per_tenant == b.per_tenant and a.events == b.events


__all__ = ["run", "evolve"]
