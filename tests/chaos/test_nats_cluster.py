"""A real 3-node nats-server cluster on loopback with the event stream at R3: one server is SIGKILLed while events
are being appended; appends go on, nothing acknowledged is lost, and the killed server catches up when it is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats.js.errors
import pytest

from aios.common.events import JobSubmitted
from aios.common.natsserver import NatsServer, free_port
from aios.common.store import EventStore, connect_nats


def cluster(tmp_path: Path) -> list[NatsServer]:
    routes = [free_port() for _ in range(3)]
    route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
    return [NatsServer(tmp_path / f"n{i}", server_name=f"n{i}",
                       extra_args=["--cluster_name", "aios", "--cluster", f"nats://127.0.0.1:{routes[i]}",
                                   "--routes", route_urls])
            for i in range(3)]


async def append_some(store: EventStore, first: int, count: int, acked: dict[str, int]) -> None:
    for i in range(first, first + count):
        job = f"j{i:05d}"
        result = await store.append(f"job.{job}", JobSubmitted(aggregate_id=job, tenant="t", name=job),
                                    expected_version=0, idempotency_key=f"submit-{job}")
        acked[job] = result.seq


async def replica_state(store: EventStore) -> dict[str, tuple[bool, int]]:
    info = await store.js.stream_info(store.stream)
    assert info.cluster is not None
    peers = {info.cluster.leader: (True, 0)}
    for r in info.cluster.replicas or []:
        peers[r.name] = (bool(r.current), int(r.lag or 0))
    return peers


async def test_killing_one_of_three_servers_loses_nothing_acknowledged(tmp_path: Path) -> None:
    servers = cluster(tmp_path)
    for s in servers:  # start all three before waiting: a member alone cannot elect a JetStream leader
        s.start()
    try:
        urls = [s.url for s in servers]
        nc = await connect_nats(urls, name="chaos")
        store = EventStore(nc, urls, stream="CHAOS", prefix="chaos.evt", replicas=3, append_deadline=60.0)
        deadline = time.monotonic() + 60
        while True:  # the JetStream meta group needs a leader before a stream can be placed
            try:
                await store.ensure_stream()
                break
            except (nats.js.errors.Error, nats.errors.Error):
                assert time.monotonic() < deadline, "no JetStream leader"
                await asyncio.sleep(0.5)
        acked: dict[str, int] = {}
        await append_some(store, 0, 300, acked)
        info = await store.js.stream_info("CHAOS")
        victim = next(s for s in servers if s.server_name != info.cluster.leader)  # type: ignore[union-attr]
        writer = asyncio.ensure_future(append_some(store, 300, 600, acked))
        await asyncio.sleep(0.3)
        victim.kill()  # SIGKILL mid-stream
        await writer  # appends go on on the two that are left
        assert len(acked) == 900
        victim.start()  # same store dir: it must catch up from the others
        deadline = time.monotonic() + 60
        while True:
            peers = await replica_state(store)
            if peers.get(victim.server_name) == (True, 0):
                break
            assert time.monotonic() < deadline, peers
            await asyncio.sleep(0.5)
        await append_some(store, 900, 100, acked)

        # every acknowledged event is there, once, at the sequence its acknowledgement named
        stored: dict[str, int] = {}

        def collect(commit) -> None:  # type: ignore[no-untyped-def]
            for ev in commit.events:
                assert ev.aggregate_id not in stored, f"{ev.aggregate_id} stored twice"
                stored[ev.aggregate_id] = commit.seq
        await store.replay(collect)  # the first reader request after a member's return may time out: it retries
        assert stored == acked
        # and the restarted server holds them too: ask it alone
        only = await connect_nats([victim.url], name="chaos-victim")
        try:
            info = await only.jetstream().stream_info("CHAOS")
            assert info.state.messages == 1000
        finally:
            await only.close()
        await store.close()
    finally:
        for s in servers:
            s.kill()


async def test_a_jobs_worker_takes_the_log_as_the_services_replicated_it(tmp_path: Path) -> None:
    """Workers and serving replicas opened the log with a service's connect, which brings the stream to this
    process's default of one replica: against the services' three, the change was refused (their NATS identity may
    not update the stream) and every worker died at start in a deployment; with rights to it, the log would have
    lost its replication. They take it as it is now."""
    from aios.common.store import connect, open_for_work

    servers = cluster(tmp_path)
    for s in servers:
        s.start()
    try:
        urls = [s.url for s in servers]
        deadline = time.monotonic() + 60
        while True:  # the services' connect, with their setting of three replicas
            try:
                service = await connect(urls, name="service", replicas=3)
                break
            except (nats.js.errors.Error, nats.errors.Error):
                assert time.monotonic() < deadline, "no JetStream leader"
                await asyncio.sleep(0.5)
        worker = await open_for_work(urls, name="worker")
        await worker.append("job.w1", JobSubmitted(aggregate_id="w1", tenant="t", name="w1"))
        assert (await service.js.stream_info(service.stream)).config.num_replicas == 3
        await worker.close()
        await service.close()
    finally:
        for s in servers:
            s.stop()


async def test_a_service_started_before_the_members_meet_waits_for_jetstream(tmp_path: Path) -> None:
    """Nomad starts every job at once: a service whose first JetStream request came before the NATS members had met
    (no meta leader) died on a 5-s timeout and lived on its restart policy's attempts. It now waits, and starts once
    they have; with nobody ever answering it stops with an error that says so, not a traceback."""
    from aios.common.errors import StoreUnavailable
    from aios.common.store import connect

    servers = cluster(tmp_path)
    servers[0].start()  # alone: its JetStream has no meta leader
    try:
        with pytest.raises(StoreUnavailable, match="did not answer within 1 s .*have they met"):
            await connect([servers[0].url], name="early", replicas=3, jetstream_wait_s=1.0)
        waiting = asyncio.ensure_future(connect([servers[0].url], name="early", replicas=3))
        await asyncio.sleep(6.0)  # past the first request's timeout
        assert not waiting.done()
        for s in servers[1:]:
            s.start()
        store = await asyncio.wait_for(waiting, 90)
        try:
            info = await store.js.stream_info(store.stream)
            assert info.config.num_replicas == 3
        finally:
            await store.close()
    finally:
        for s in servers:
            s.stop()
