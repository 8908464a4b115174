"""The device agent as a service on a real nats-server, with a simulated node behind the real pynvml wrapper."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from typing import Any, AsyncIterator

import msgspec
from nats.js.api import KeyValueConfig, StorageType
import pytest
import pytest_asyncio

from aios.common.config import Settings
from aios.common.events import (
    DeviceHealthy, DevicesLeased, DevicesReleased, DeviceUnhealthy, NodeRegistered, WorkerExited, WorkerStarted,
)
from aios.common.natsserver import NatsServer
from aios.common.runner import run_service
from aios.common.store import EventStore, connect
from aios.device_agent.protocol import HEARTBEAT_BUCKET, Heartbeat, run_subject, stop_subject, telemetry_subject
from aios.device_agent.service import AgentConfig, DeviceAgentService

NODE = "t-node"


async def until(check: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def agent(killable_nats: NatsServer) -> AsyncIterator[tuple[DeviceAgentService, EventStore]]:
    config = AgentConfig(node_id=NODE, sim="2xH100-80GB,1xV100-16GB", telemetry_interval_s=0.2,
                         heartbeat_interval_s=0.2, stop_grace_s=2.0)
    service = DeviceAgentService(config)
    ready = asyncio.Event()
    task = asyncio.ensure_future(run_service(service, Settings(nats_url=killable_nats.url), ready=ready,
                                             install_signal_handlers=False))
    await asyncio.wait_for(ready.wait(), 20)
    store = await connect([killable_nats.url])
    await until(lambda: _registered(store), what="NodeRegistered")
    yield service, store
    service.ctx.stopping.set()
    assert await asyncio.wait_for(task, 30) == 0
    await store.close()


async def _registered(store: EventStore) -> bool:
    return any(isinstance(e, NodeRegistered) for e in (await store.read(f"node.{NODE}")).events)


async def request(store: EventStore, subject: str, body: dict[str, Any] | bytes) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await store.nc.request(subject, data, timeout=10)
    return json.loads(msg.data)


async def test_registration_heartbeat_telemetry_and_metrics(agent: tuple[DeviceAgentService, EventStore]) -> None:
    service, store = agent
    [reg] = [e for e in (await store.read(f"node.{NODE}")).events if isinstance(e, NodeRegistered)]
    assert [d.kind for d in reg.devices] == ["h100", "h100", "v100"] and reg.backend == "sim"
    assert {link.level for link in reg.links} == {"nvlink", "system"} and len(reg.links) == 3
    assert reg.cpu_cores >= 48 and reg.memory_bytes >= 3 * 128 * 1024**3  # a simulated node of its size

    kv = await store.js.key_value(HEARTBEAT_BUCKET)
    beat = msgspec.json.decode((await kv.get(NODE)).value, type=Heartbeat)
    assert beat.agent_id == reg.agent_id and beat.devices == 3

    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_telemetry(msg: Any) -> None:
        if not got.done():
            got.set_result(msg.data)

    sub = await store.nc.subscribe(telemetry_subject(NODE), cb=on_telemetry)
    telemetry = json.loads(await asyncio.wait_for(got, 5))
    await sub.unsubscribe()
    assert len(telemetry["devices"]) == 3 and telemetry["devices"][0]["power_limit_w"] == 700.0

    text = await asyncio.to_thread(lambda: urllib.request.urlopen(service.ctx.http_url + "/metrics").read().decode())
    assert f'UUID="{reg.devices[2].uuid}"' in text and "DCGM_FI_DEV_FB_USED{" in text


async def test_a_worker_s_output_is_kept_up_to_its_share_of_the_log(agent: tuple[DeviceAgentService, EventStore],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: the log stream is shared and drops its oldest first, and one job printing a gigabyte wiped
    every other tenant's logs. A worker's output is kept up to a share, said once, and the rest dropped."""
    from aios.common import joblogs

    monkeypatch.setattr(joblogs, "MAX_BYTES_PER_WORKER", 100)
    service, store = agent
    history = await store.read(f"node.{NODE}")
    uuid = history.events[0].devices[0].uuid  # type: ignore[attr-defined]
    lines, sub = await _lease_and_listen(store, "loud", uuid, history.version)
    await until(lambda: _holds(service, uuid, job="loud"), what="agent to see the lease")
    script = "for i in range(50): print(f'line {i:03d} ' + 'x' * 11)"  # 50 lines of 21 bytes
    run = {"job_id": "loud", "worker": "w0", "command": [sys.executable, "-c", script], "device_uuids": [uuid]}
    assert (await request(store, run_subject(NODE), run))["ok"]
    await until(lambda: _job_events(store, "loud", 2), what="the worker's exit")

    async def all_kept() -> bool:
        return len(lines) >= 5
    await until(all_kept, what="its lines")
    await asyncio.sleep(0.5)  # anything more would have come by now
    await sub.unsubscribe()
    assert lines[:4] == [f"line {i:03d} {'x' * 11}\n".encode() for i in range(4)]
    assert lines[4:] == [b"[aios: this worker's output beyond 0 MiB is not kept; the rest of it is dropped]\n"], lines


async def test_runs_workers_only_on_leased_devices(agent: tuple[DeviceAgentService, EventStore]) -> None:
    service, store = agent
    history = await store.read(f"node.{NODE}")
    uuid = history.events[0].devices[0].uuid  # type: ignore[attr-defined]
    script = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['AIOS_JOB_ID'])"
    run = {"job_id": "j1", "worker": "w0", "command": [sys.executable, "-c", script], "device_uuids": [uuid],
           "env": {"AIOS_JOB_ID": "j1"}}
    refused = await request(store, run_subject(NODE), run)
    assert not refused["ok"] and f"job j1 holds no lease on {uuid} on node {NODE}" == refused["error"]

    bad = await request(store, run_subject(NODE), {"job_id": 3, "worker": "w", "command": ["x"]})
    assert not bad["ok"] and "`$.job_id`" in bad["error"]
    assert "not JSON" in (await request(store, run_subject(NODE), b"{nope"))["error"]

    lines, sub = await _lease_and_listen(store, "j1", uuid, history.version)
    await until(lambda: _holds(service, uuid), what="agent to see the lease")
    started = await request(store, run_subject(NODE), run)
    assert started["ok"] and started["pid"] > 0
    events = await until(lambda: _job_events(store, "j1", 2), what="worker start and exit events")
    assert isinstance(events[0], WorkerStarted) and events[0].device_uuids == [uuid]
    assert isinstance(events[1], WorkerExited) and events[1].exit_code == 0
    await until(lambda: _truthy(lines), what="log line")
    assert lines[0] == f"{uuid} j1\n".encode()
    await sub.unsubscribe()

    sleeper = {**run, "worker": "w1", "command": [sys.executable, "-c", "import time; time.sleep(60)"]}
    assert (await request(store, run_subject(NODE), sleeper))["ok"]
    stopped = await request(store, stop_subject(NODE), {"job_id": "j1", "grace_s": 1})
    assert stopped == {"ok": True, "stopped": 1}
    events = await until(lambda: _job_events(store, "j1", 4), what="stopped worker exit")
    assert events[3].reason == "stopped on request" and events[3].message == ""

    # a failure carries the last line its worker wrote to stderr: the cause, which the job's error quotes
    failing = {**run, "worker": "w2", "command": [sys.executable, "-c", (
        "import sys; print('loading', file=sys.stderr); print('model nope is not registered', file=sys.stderr); "
        "print('bye'); print('  ', file=sys.stderr); sys.exit(1)")]}
    assert (await request(store, run_subject(NODE), failing))["ok"]
    events = await until(lambda: _job_events(store, "j1", 6), what="failed worker exit")
    assert events[5].exit_code == 1 and events[5].message == "model nope is not registered", events[5]
    unterminated = {**run, "worker": "w3", "command": [sys.executable, "-c", (
        "import sys; sys.stderr.write('fatal: no newline at the end'); sys.exit(2)")]}
    assert (await request(store, run_subject(NODE), unterminated))["ok"]
    events = await until(lambda: _job_events(store, "j1", 8), what="second failed worker exit")
    assert events[7].exit_code == 2 and events[7].message == "fatal: no newline at the end", events[7]


async def _lease_and_listen(store: EventStore, job: str, uuid: str, node_version: int) -> tuple[list[bytes], Any]:
    """Lease the device to ``job`` on the node's log, and collect the job's log lines (with the subscription)."""
    await store.append(f"node.{NODE}", DevicesLeased(aggregate_id=NODE, job_id=job, device_uuids=[uuid]),
                       expected_version=node_version)
    lines: list[bytes] = []

    async def on_log(msg: Any) -> None:
        lines.append(msg.data)

    return lines, await store.nc.subscribe(f"aios.logs.{job}.>", cb=on_log)


async def _holds(service: DeviceAgentService, uuid: str, job: str = "j1") -> bool:
    return service.node.state.leases.holder.get(uuid) == job


async def _job_events(store: EventStore, job: str, n: int) -> list[Any] | None:
    events = await store.read_job(job)
    return events if len(events) >= n else None


async def _truthy(items: list[bytes]) -> bool:
    return bool(items)


async def test_critical_xids_make_devices_unhealthy(agent: tuple[DeviceAgentService, EventStore]) -> None:
    service, store = agent
    fake = service.fake
    fake.xid(1, 13)  # application error: ignored, as NVIDIA's device plugin does
    fake.xid(2, 79)  # fell off the bus
    events = await until(lambda: _unhealthy(store), what="DeviceUnhealthy")
    assert [(e.device_uuid, e.xid) for e in events] == [(fake.gpus[2].uuid, 79)]
    fake.gpus[0].lost = True
    events = await until(lambda: _unhealthy(store, 2), what="lost device")
    assert events[1].device_uuid == fake.gpus[0].uuid and "fell off the bus" in events[1].reason


async def test_a_gpu_with_an_uncorrectable_error_is_back_only_after_its_reset(
        agent: tuple[DeviceAgentService, EventStore]) -> None:
    """A double-bit ECC error takes the GPU out of service; quiet samples alone do not bring it back while NVML
    says its memory repair waits for a reset (as the operator's `nvidia-smi -r` or a reboot would apply it)."""
    from aios.common.events import DeviceHealthy
    from aios.device_agent.health import HealthTracker

    service, store = agent
    service.health = HealthTracker(quiet_s=0.5)
    fake = service.fake
    fake.double_bit_ecc(2)  # the V100: page retirement
    [bad] = await until(lambda: _unhealthy(store), what="DeviceUnhealthy")
    assert bad.device_uuid == fake.gpus[2].uuid and "double-bit" in bad.reason
    await asyncio.sleep(2.0)  # four quiet periods of clean samples
    assert await _of_type(store, DeviceHealthy) is None
    fake.reset(2)
    [back] = await until(lambda: _of_type(store, DeviceHealthy), what="DeviceHealthy after the reset")
    assert back.device_uuid == bad.device_uuid


async def test_a_device_marked_unhealthy_recovers_after_its_agent_restarts(killable_nats: NatsServer) -> None:
    """The log keeps a device's health across an agent restart, and only the agent says a device recovered; the new
    agent's tracker knew nothing of it, so a GPU repaired by the reboot stayed unschedulable for ever."""
    from aios.common.events import DeviceHealthy
    from aios.device_agent.health import HealthTracker

    config = AgentConfig(node_id=NODE, sim="1xH100-80GB", telemetry_interval_s=0.2, heartbeat_interval_s=0.2,
                         stop_grace_s=1.0)
    store = await connect([killable_nats.url])
    try:
        for life in range(2):
            service = DeviceAgentService(config)
            service.health = HealthTracker(quiet_s=1.0 if life else 3600.0)
            ready = asyncio.Event()
            task = asyncio.ensure_future(run_service(service, Settings(nats_url=killable_nats.url), ready=ready,
                                                     install_signal_handlers=False))
            await asyncio.wait_for(ready.wait(), 20)
            if life == 0:
                service.fake.xid(0, 79)
                [bad] = await until(lambda: _unhealthy(store), what="DeviceUnhealthy")
            else:
                healthy = await until(lambda: _of_type(store, DeviceHealthy), what="DeviceHealthy after the restart")
                assert [e.device_uuid for e in healthy] == [bad.device_uuid]
            service.ctx.stopping.set()
            assert await asyncio.wait_for(task, 30) == 0
    finally:
        await store.close()


async def _of_type(store: EventStore, kind: type) -> list[Any] | None:
    return [e for e in (await store.read(f"node.{NODE}")).events if isinstance(e, kind)] or None


async def _unhealthy(store: EventStore, n: int = 1) -> list[DeviceUnhealthy] | None:
    events = [e for e in (await store.read(f"node.{NODE}")).events if isinstance(e, DeviceUnhealthy)]
    return events if len(events) >= n else None


async def test_without_a_gpu_the_agent_explains_and_exits(killable_nats: NatsServer, capsys: pytest.CaptureFixture[str]) -> None:
    from aios.device_agent import fakenvml

    fakenvml.uninstall()
    service = DeviceAgentService(AgentConfig(node_id="real"))
    code = await run_service(service, Settings(nats_url=killable_nats.url), install_signal_handlers=False)
    assert code == 2
    assert "libnvidia-ml.so.1" in capsys.readouterr().err


async def test_a_fenced_agent_cut_off_from_nats_stops_its_workers_and_records_their_exit_later(
        killable_nats: NatsServer) -> None:
    """With AIOS_AGENT_FENCE_AFTER, an agent that stores no heartbeat for that long stops its node's workers: the
    cluster has declared the node lost and placed the jobs elsewhere meanwhile (Nomad's stop_on_client_after). The
    exit is recorded once NATS is back: a worker exit lost in an outage left its job running for ever."""
    config = AgentConfig(node_id=NODE, sim="1xH100-80GB", telemetry_interval_s=0.2, heartbeat_interval_s=0.2,
                         stop_grace_s=1.0, fence_after_s=1.0)
    service = DeviceAgentService(config)
    ready = asyncio.Event()
    task = asyncio.ensure_future(run_service(service, Settings(nats_url=killable_nats.url), ready=ready,
                                             install_signal_handlers=False))
    await asyncio.wait_for(ready.wait(), 20)
    store = await connect([killable_nats.url])
    try:
        await until(lambda: _registered(store), what="NodeRegistered")
        history = await store.read(f"node.{NODE}")
        uuid = history.events[0].devices[0].uuid  # type: ignore[attr-defined]
        await store.append(f"node.{NODE}", DevicesLeased(aggregate_id=NODE, job_id="j1", device_uuids=[uuid]),
                           expected_version=history.version)
        await until(lambda: _holds(service, uuid), what="agent to see the lease")
        sleeper = {"job_id": "j1", "worker": "w0", "command": [sys.executable, "-c", "import time; time.sleep(120)"],
                   "device_uuids": [uuid], "env": {}}
        assert (await request(store, run_subject(NODE), sleeper))["ok"]
        await asyncio.sleep(1.5)  # connected: no fence, whatever the time
        assert service.runner.running
        service.ctx.store.append_deadline = 0.5  # the store gives up on an append soon: the agent must not
        killable_nats.kill()

        async def stopped() -> bool:
            return not service.runner.running
        await until(stopped, timeout=15, what="the fence to stop the worker")
        await asyncio.sleep(2.0)  # the exit's append has given up at least once
        killable_nats.start()
        events = await until(lambda: _job_events(store, "j1", 2), timeout=60, what="the exit recorded after the outage")
        assert isinstance(events[1], WorkerExited) and events[1].stopped and events[1].worker == "w0"
    finally:
        service.ctx.stopping.set()
        await asyncio.wait_for(task, 60)
        await store.close()


def test_the_fence_setting_is_checked() -> None:
    from aios.common.errors import ConfigError

    assert AgentConfig.from_env({"AIOS_NODE_ID": "n"}).fence_after_s is None
    assert AgentConfig.from_env({"AIOS_NODE_ID": "n", "AIOS_AGENT_FENCE_AFTER": "30"}).fence_after_s == 30.0
    for bad in ("soon", "0", "-1", "inf"):
        with pytest.raises(ConfigError, match="AIOS_AGENT_FENCE_AFTER="):
            AgentConfig.from_env({"AIOS_NODE_ID": "n", "AIOS_AGENT_FENCE_AFTER": bad})


async def test_telemetry_and_event_watch_outlive_failing_nvml(agent: tuple[DeviceAgentService, EventStore]) -> None:
    """A reading that raises ended the telemetry task for good, silently (no metrics, no health from samples, while
    heartbeats went on); an event wait failing at once each time spun a core."""
    import pynvml as N

    service, _store = agent
    real_sample = service.backend.sample

    def broken() -> Any:
        raise N.NVMLLibraryMismatchError("Unversioned function called ...")

    service.backend.sample = broken  # type: ignore[method-assign]
    await until(lambda: _async(bool(service.telemetry_error)), what="the failure noted")
    ok, text = service.healthy()
    assert not ok and "telemetry failing: NVMLLibraryMismatchError" in text
    service.backend.sample = real_sample  # type: ignore[method-assign]
    before = service.samples
    await until(lambda: _async(service.samples > before + 2), what="readings again")
    assert service.healthy()[0]

    fake = service.fake
    fake.fail("nvmlEventSetWait_v2", N.NVML_ERROR_GPU_IS_LOST)
    await until(lambda: _async(service.backend.event_wait_failing), what="the failing wait")
    calls = fake.calls["nvmlEventSetWait_v2"]
    await asyncio.sleep(1.5)
    assert fake.calls["nvmlEventSetWait_v2"] - calls <= 3  # paused a second between tries (it was thousands)
    fake.heal()
    fake.xid(2, 79)
    assert await until(lambda: _unhealthy(_store), what="events watched again once the wait works")


async def _async(value: Any) -> Any:
    return value


async def test_no_lease_no_process_and_a_busy_device_is_a_transient_refusal(
        agent: tuple[DeviceAgentService, EventStore]) -> None:
    """Devices given back while their workers still ran (a preempted job's launcher hung past the grace) were
    leased to the next job, whose start was refused and failed it for good: the agent now stops workers whose
    devices are no longer their job's, and says a start refused for busy devices may work later."""
    from aios.common.events import DevicesReleased

    service, store = agent
    service.runner.device_wait_s = 0.5
    history = await store.read(f"node.{NODE}")
    uuid, other = (d.uuid for d in history.events[0].devices[1:])  # type: ignore[attr-defined]
    await store.append(f"node.{NODE}", DevicesLeased(aggregate_id=NODE, job_id="j2", device_uuids=[uuid, other]))
    await until(lambda: _async(service.node.state.leases.holder.get(uuid) == "j2"), what="the lease seen")
    sleeper = {"job_id": "j2", "worker": "w0", "command": [sys.executable, "-c", "import time; time.sleep(60)"],
               "device_uuids": [uuid], "env": {}}
    assert (await request(store, run_subject(NODE), sleeper))["ok"]
    busy = await request(store, run_subject(NODE), {**sleeper, "worker": "w1"})
    assert not busy["ok"] and "still in use by w0 of job j2" in busy["error"] and busy["transient"]
    unknown = await request(store, run_subject(NODE), {**sleeper, "worker": "w2", "command": ["/no/such/program"],
                                                         "device_uuids": [other]})
    assert not unknown["ok"] and not unknown.get("transient")  # not a wait away: the job fails

    await store.append(f"node.{NODE}", DevicesReleased(aggregate_id=NODE, job_id="j2", device_uuids=[uuid]))
    events = await until(lambda: _job_events(store, "j2", 2), what="the unleased worker stopped")
    exited = [e for e in events if isinstance(e, WorkerExited)]
    assert [(e.worker, e.stopped) for e in exited] == [("w0", True)]

    # a worker that ignores SIGTERM, of a job with an hour's grace: the agent's own stop gives it the agent's grace
    # (2 s here), not the hour, since the devices are another job's already
    deaf = {**sleeper, "job_id": "j4", "command": [sys.executable, "-c", "import signal, time; "
                                                    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
            "env": {"AIOS_STOP_GRACE_S": "3600"}}
    await store.append(f"node.{NODE}", DevicesLeased(aggregate_id=NODE, job_id="j4", device_uuids=[uuid]))
    await until(lambda: _async(service.node.state.leases.holder.get(uuid) == "j4"), what="the second lease seen")
    assert (await request(store, run_subject(NODE), deaf))["ok"]
    await asyncio.sleep(0.3)  # its SIGTERM handler is set
    await store.append(f"node.{NODE}", DevicesReleased(aggregate_id=NODE, job_id="j4", device_uuids=[uuid]))
    events = await until(lambda: _job_events(store, "j4", 2), timeout=15, what="the deaf worker killed")
    assert [(e.worker, e.stopped) for e in events if isinstance(e, WorkerExited)] == [("w0", True)]


async def test_a_worker_that_outlives_its_sigkill_takes_its_device_out_of_service_until_it_exits(
        agent: tuple[DeviceAgentService, EventStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker stuck in the kernel keeps its GPU after SIGKILL. The scheduler gives the device back after the
    job's grace, and every worker placed there next was refused after a wait, until its job failed as a crash loop
    (Slurm drains a node on "Kill task failed"). The agent now marks the devices such a worker holds unhealthy, so
    nothing is placed there, refuses a start there at once saying why, and puts them back when it exits. (Such a
    process cannot be made here: the kernel's side is played at the signal boundary, SIGKILL is not delivered
    until the test lets it be.)"""
    import os
    import signal

    from aios.device_agent import workloads
    from aios.device_agent.health import HELD_REASON

    delivered = {"kill": False}
    real = workloads._signal_group
    monkeypatch.setattr(workloads, "_signal_group",
                        lambda w, sig: real(w, sig) if sig != signal.SIGKILL or delivered["kill"] else None)
    service, store = agent
    service.runner.unkillable_s = 0.5
    history = await store.read(f"node.{NODE}")
    uuid = history.events[0].devices[1].uuid  # type: ignore[attr-defined]
    await store.append(f"node.{NODE}", DevicesLeased(aggregate_id=NODE, job_id="j5", device_uuids=[uuid]))
    await until(lambda: _holds(service, uuid, "j5"), what="the lease seen")
    deaf = {"job_id": "j5", "worker": "w0", "device_uuids": [uuid], "env": {}, "command": [
        sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]}
    assert (await request(store, run_subject(NODE), deaf))["ok"]
    await asyncio.sleep(0.3)  # its SIGTERM handler is set
    stop = asyncio.ensure_future(store.nc.request(stop_subject(NODE), json.dumps(
        {"job_id": "j5", "grace_s": 0.3}).encode(), timeout=30))
    [held] = await until(lambda: _of_type(store, DeviceUnhealthy), what="the device marked held")
    assert held.device_uuid == uuid and held.reason.startswith(HELD_REASON) and "job j5" in held.reason

    # the scheduler gives the device to another job after the grace: its worker is refused at once, saying why
    await store.append(f"node.{NODE}", DevicesReleased(aggregate_id=NODE, job_id="j5", device_uuids=[uuid]))
    await store.append(f"node.{NODE}", DevicesLeased(aggregate_id=NODE, job_id="j6", device_uuids=[uuid]))
    await until(lambda: _holds(service, uuid, "j6"), what="the second lease seen")
    next_one = {**deaf, "job_id": "j6", "command": [sys.executable, "-c", "print('ran')"]}
    refused = await request(store, run_subject(NODE), next_one)
    assert not refused["ok"] and refused["transient"] and HELD_REASON in refused["error"], refused
    assert not stop.done()

    delivered["kill"] = True  # the kernel lets it go at last
    os.killpg(service.runner.running[("j5", "w0")].proc.pid, signal.SIGKILL)
    assert json.loads((await stop).data) == {"ok": True, "stopped": 1}
    [back] = await until(lambda: _of_type(store, DeviceHealthy), what="the device back in service")
    assert back.device_uuid == uuid and uuid not in service.health.unhealthy
    assert [e.signal for e in await store.read_job("j5") if isinstance(e, WorkerExited)] == [9]
    assert (await request(store, run_subject(NODE), next_one))["ok"]

    # found by review: a worker of two devices that exits while the hold is being stored (its append slower than
    # the release's) left the second device held for ever: every device is held before the first append now
    delivered["kill"] = False
    real_append = service._append_health

    async def slow_hold(t: Any) -> None:
        if not t.healthy:
            await asyncio.sleep(0.3)
        await real_append(t)
    monkeypatch.setattr(service, "_append_health", slow_hold)
    pair = [d.uuid for d in history.events[0].devices if d.uuid != uuid]  # type: ignore[attr-defined]
    await store.append(f"node.{NODE}", DevicesLeased(aggregate_id=NODE, job_id="j7", device_uuids=pair))
    await until(lambda: _holds(service, pair[1], "j7"), what="the pair's lease seen")
    assert (await request(store, run_subject(NODE), {**deaf, "job_id": "j7", "device_uuids": pair}))["ok"]
    await asyncio.sleep(0.3)
    stop = asyncio.ensure_future(store.nc.request(stop_subject(NODE), json.dumps(
        {"job_id": "j7", "grace_s": 0.3}).encode(), timeout=30))
    await until(lambda: _async(pair[0] in service.health.held), what="the first device held")
    delivered["kill"] = True
    os.killpg(service.runner.running[("j7", "w0")].proc.pid, signal.SIGKILL)
    await stop
    await until(lambda: _async(not service.health.held and not service.health.unhealthy), what="both back")

    async def logged_healthy() -> bool:  # the log too: a release stored before its hold left them out there
        from aios.resource_manager.inventory import Inventory, fold_commit
        inv = Inventory()
        await store.replay(lambda c: fold_commit(inv, c), filter_subject=store.subject(f"node.{NODE}"))
        return all(inv.nodes[NODE].devices[u].healthy for u in pair)
    await asyncio.sleep(0.8)  # every append made
    assert await logged_healthy()


async def test_a_worker_whose_lease_ends_while_it_waits_for_its_devices_never_starts(
        agent: tuple[DeviceAgentService, EventStore]) -> None:
    """The lease was checked before the wait for busy devices only: released meanwhile, the worker started anyway,
    on devices no job held."""
    from aios.common.events import DevicesReleased

    service, store = agent
    service.runner.device_wait_s = 5.0
    uuid = (await store.read(f"node.{NODE}")).events[0].devices[0].uuid  # type: ignore[attr-defined]
    await store.append(f"node.{NODE}", DevicesLeased(aggregate_id=NODE, job_id="j3", device_uuids=[uuid]))
    await until(lambda: _async(service.node.state.leases.holder.get(uuid) == "j3"), what="the lease seen")
    sleeper = {"job_id": "j3", "worker": "w0", "command": [sys.executable, "-c", "import time; time.sleep(60)"],
               "device_uuids": [uuid], "env": {}}
    assert (await request(store, run_subject(NODE), sleeper))["ok"]
    waiting = asyncio.ensure_future(request(store, run_subject(NODE), {**sleeper, "worker": "w1"}))
    await asyncio.sleep(0.3)  # w1 waits for w0's device
    await store.append(f"node.{NODE}", DevicesReleased(aggregate_id=NODE, job_id="j3"))  # w0 is stopped for it
    refused = await waiting
    assert not refused["ok"] and refused["transient"] and "lease" in refused["error"] and "ended" in refused["error"]
    assert ("j3", "w1") not in service.runner.running


def test_the_shutdown_grace_setting_is_checked() -> None:
    from aios.common.errors import ConfigError

    assert AgentConfig.from_env({"AIOS_NODE_ID": "n"}).stop_grace_s == 20.0
    assert AgentConfig.from_env({"AIOS_NODE_ID": "n", "AIOS_AGENT_STOP_GRACE_S": "45"}).stop_grace_s == 45.0
    with pytest.raises(ConfigError, match=r"AIOS_AGENT_STOP_GRACE_S='soon': must be a positive number of seconds"):
        AgentConfig.from_env({"AIOS_NODE_ID": "n", "AIOS_AGENT_STOP_GRACE_S": "soon"})
    assert AgentConfig.from_env({"AIOS_NODE_ID": "n"}).unkillable_s == 10.0
    assert AgentConfig.from_env({"AIOS_NODE_ID": "n", "AIOS_AGENT_UNKILLABLE_S": "60"}).unkillable_s == 60.0
    for bad in ("0", "-1", "inf", "nan", "later"):
        with pytest.raises(ConfigError, match=rf"AIOS_AGENT_UNKILLABLE_S='{bad}': must be a positive number of "):
            AgentConfig.from_env({"AIOS_NODE_ID": "n", "AIOS_AGENT_UNKILLABLE_S": bad})


async def test_a_second_agent_for_a_node_a_live_agent_serves_is_refused(
        agent: tuple[DeviceAgentService, EventStore], killable_nats: NatsServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    """From a walkthrough: a second agent started with the same AIOS_NODE_ID registered the node again, both
    subscribed to its run requests, and every worker of the next attempt ran twice on its GPU; the copy's
    shutdown then drained the real node. A live agent (its heartbeats go on) keeps the node."""
    first, store = agent
    copy = DeviceAgentService(AgentConfig(node_id=NODE, sim="1xH100-80GB", heartbeat_interval_s=0.2))
    code = await asyncio.wait_for(run_service(copy, Settings(nats_url=killable_nats.url),
                                              install_signal_handlers=False), 20)
    assert code == 2 and f"AIOS_NODE_ID={NODE}: agent {first.agent_id} serves this node" in capsys.readouterr().err
    registered = [e for e in (await store.read(f"node.{NODE}")).events if isinstance(e, NodeRegistered)]
    assert {e.agent_id for e in registered} == {first.agent_id}


async def test_an_agent_whose_clock_is_behind_still_keeps_its_node(killable_nats: NatsServer,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Found by review: a live agent's heartbeat was taken for a dead one's when its stamp, by its host's clock,
    looked older than a few intervals by the new host's: one started 60 s ahead registered the node beside it. A
    heartbeat that moves on is a live agent, whatever its stamp says."""
    store = await connect([killable_nats.url])
    kv = await store.js.create_key_value(KeyValueConfig(bucket=HEARTBEAT_BUCKET, history=1, ttl=60,
                                                        storage=StorageType.MEMORY))
    stop = asyncio.Event()

    async def beating() -> None:  # another host's agent, its clock ten minutes behind
        while not stop.is_set():
            await kv.put(NODE, msgspec.json.encode(Heartbeat(NODE, "other-agent", time.time() - 600, 1, 0, 0)))
            await asyncio.sleep(0.1)
    beats = asyncio.ensure_future(beating())
    try:
        await asyncio.sleep(0.3)
        copy = DeviceAgentService(AgentConfig(node_id=NODE, sim="1xH100-80GB", heartbeat_interval_s=0.2))
        code = await asyncio.wait_for(run_service(copy, Settings(nats_url=killable_nats.url),
                                                  install_signal_handlers=False), 20)
        assert code == 2 and f"AIOS_NODE_ID={NODE}: agent other-agent serves this node" in capsys.readouterr().err
        assert not await _of_type(store, NodeRegistered)
    finally:
        stop.set()
        await beats
        await store.close()
