"""The device agent service: the async shell around the backend, the health tracker and the workload runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any, Callable

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType

from aios.common import joblogs, tracing
from aios.common.config import AGENT_DRAIN_S, AGENT_STOP_GRACE_S, seconds_setting
from aios.common.errors import AiosError, ConfigError, StoreError
from aios.common.events import (
    DeviceHealthy, DevicesReleased, DeviceUnhealthy, NodeCordoned, NodeLost, NodeRegistered, WorkerExited,
    WorkerStarted,
)
from aios.common.runner import Service, ServiceContext
from aios.common.snapshot import Projector
from aios.common.store import Commit, check_node_id
from aios.common.tasks import cancel_and_wait
from aios.common.wire import new_token
from aios.device_agent import fakenvml
from aios.trainer import EXIT_INTERRUPTED
from aios.device_agent.health import HELD_REASON, HealthTracker, Transition
from aios.device_agent.metrics import DcgmMetrics
from aios.device_agent.nvml import NvmlBackend, host_resources
from aios.device_agent.protocol import (
    HEARTBEAT_BUCKET, Heartbeat, Reply, RunRequest, StopRequest, log_subject, run_subject, stop_subject,
    telemetry_subject,
)
from aios.device_agent.workloads import DevicesBusy, Workload, WorkloadRunner
from aios.resource_manager.inventory import Inventory, fold_commit

log = logging.getLogger("aios.device_agent")
_encoder = msgspec.json.Encoder()


AGENT_UNKILLABLE_S = 10.0


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    sim: str | None = None
    telemetry_interval_s: float = 1.0
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 60.0
    stop_grace_s: float = AGENT_STOP_GRACE_S
    """When the agent itself stops workers (its shutdown, a fence, workers whose lease has ended), the most one gets
    to checkpoint and exit: its job's ``stop_grace_s``, up to this (``AIOS_AGENT_STOP_GRACE_S``). With ``drain_s``
    it must fit the supervisor's kill timeout (docker compose's stop_grace_period, Nomad's kill_timeout: 30 s in
    deploy/). A stop the scheduler asks for (preemption, cancel) gives the job's grace whole, as long as the job
    holds its devices: a cancelled job's are given back at once, and once another job may have them its workers
    get this at most (Slurm's KillWait after scancel)."""
    drain_s: float = AGENT_DRAIN_S
    """On shutdown, how long the scheduler may take to move the node's preemptible jobs off (they checkpoint)
    before the agent stops what is left itself."""
    labels: dict[str, str] = {}
    fence_after_s: float | None = None
    """Cut off from NATS this long (no heartbeat stored), stop the node's workers: by then the cluster has declared the
    node lost and placed its jobs elsewhere, and a worker running on would train beside its own next attempt
    (Nomad's ``stop_on_client_after``). None: never, as Nomad's and Kubernetes' default, since a NATS outage then
    stops every job. Set it above the resource manager's ``AIOS_NODE_TIMEOUT``."""
    unkillable_s: float = AGENT_UNKILLABLE_S
    """A worker still there this long after its SIGKILL is stuck in the kernel: its devices are marked unhealthy
    until it exits (``AIOS_AGENT_UNKILLABLE_S``; Slurm's UnkillableStepTimeout, after which it drains the node)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "AgentConfig":
        env = dict(os.environ if env is None else env)
        node = check_node_id(env.get("AIOS_NODE_ID") or os.uname().nodename, "AIOS_NODE_ID")
        try:
            intervals = dict(telemetry_interval_s=float(env.get("AIOS_TELEMETRY_INTERVAL", "1")),
                             heartbeat_interval_s=float(env.get("AIOS_HEARTBEAT_INTERVAL", "2")))
        except ValueError as exc:
            raise ConfigError(f"AIOS_TELEMETRY_INTERVAL / AIOS_HEARTBEAT_INTERVAL: {exc}") from None
        fence_after = seconds_setting(env, "AIOS_AGENT_FENCE_AFTER", None, unset=" (unset: never)")
        grace = seconds_setting(env, "AIOS_AGENT_STOP_GRACE_S", AGENT_STOP_GRACE_S)
        unkillable = seconds_setting(env, "AIOS_AGENT_UNKILLABLE_S", AGENT_UNKILLABLE_S)
        return cls(node_id=node, sim=env.get("AIOS_SIM") or None, fence_after_s=fence_after, stop_grace_s=grace,
                   unkillable_s=unkillable, **intervals)


def make_backend(config: AgentConfig) -> tuple[NvmlBackend, fakenvml.FakeNvml | None]:
    """The NVML backend, over the real library or, with ``sim``, over a simulated one installed in its place."""
    fake = None
    if config.sim:
        try:
            fake = fakenvml.sim_node(config.sim, config.node_id)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        fakenvml.install(fake)
    return NvmlBackend(), fake


class DeviceAgentService(Service):
    name = "device-agent"

    def __init__(self, config: AgentConfig | None = None,
                 backend_factory: Callable[[AgentConfig], tuple[NvmlBackend, Any]] = make_backend) -> None:
        self.config = config or AgentConfig.from_env()
        self.backend_factory = backend_factory
        self.agent_id = new_token()
        self.health = HealthTracker()
        self._health_appends = asyncio.Lock()
        self.node = Projector("agent-node", Inventory, None, Inventory, fold_commit=fold_commit)
        self.samples = 0
        self.registered = 0
        self._background: set[asyncio.Future[Any]] = set()
        self.last_beat = time.monotonic()
        """When a heartbeat was last stored (monotonic clock)."""
        self.fenced = False
        """Workers stopped for want of a stored heartbeat, and none stored since."""
        self.telemetry_error = ""
        """Why the last telemetry reading failed ('' when it worked): /healthz says so."""

    def healthy(self) -> tuple[bool, str]:
        text = f"node {self.config.node_id}: {self.samples} samples, {len(self.health.unhealthy)} unhealthy"
        backend = getattr(self, "backend", None)
        if backend is not None and backend.missing:
            text += f", {len(backend.missing)} unreadable (GPU {', '.join(map(str, sorted(backend.missing)))})"
        if self.telemetry_error:
            return False, f"{text}; telemetry failing: {self.telemetry_error}"
        return True, text

    async def run(self, ctx: ServiceContext) -> None:
        cfg = self.config
        backend, self.fake = self.backend_factory(cfg)
        await asyncio.to_thread(backend.start)
        self.backend = backend
        self.ctx = ctx
        hostname = backend.hostname()
        self.metrics = DcgmMetrics(ctx.metrics, hostname)
        self.devices = await asyncio.to_thread(backend.devices)
        self.metrics.describe(self.devices)
        self.links = await asyncio.to_thread(backend.links)
        self.driver = await asyncio.to_thread(backend.driver_version)
        self.runner = WorkloadRunner(self._on_output, self._on_exit, on_unkillable=self._on_unkillable,
                                     unkillable_s=cfg.unkillable_s)
        await joblogs.ensure_stream(ctx.store.js, ctx.store.replicas)
        node_subject = ctx.store.subject(f"node.{cfg.node_id}")
        await self.node.rebuild(ctx.store, filter_subject=node_subject)
        known = self.node.state.nodes.get(cfg.node_id)
        present = {d.uuid for d in self.devices}
        for uuid, device in (known.devices.items() if known else ()):
            if not device.healthy and uuid in present:  # clean samples for quiet_s, and it is healthy again
                self.health.carry(uuid, device.reason, time.monotonic())
        if known is not None and known.shutting_down:
            await self._settle_workers_of_the_last_agent(known.registered_at)
        kv = await self._heartbeat_bucket()
        other = await self._another_agent_serves(kv)
        if other:
            await asyncio.to_thread(backend.stop)
            raise ConfigError(f"AIOS_NODE_ID={cfg.node_id}: {other}; two agents of one node both started every "
                              "worker of its jobs: give this one another AIOS_NODE_ID, or stop that agent first")
        await self._register()
        stop_follow = asyncio.Event()
        tasks = [
            asyncio.ensure_future(self.node.follow(ctx.store, self._on_node_commit, stop_follow,
                                                   filter_subject=node_subject)),
            asyncio.ensure_future(self._heartbeats(kv)),
            asyncio.ensure_future(self._fence()),
            asyncio.ensure_future(self._telemetry()),
            asyncio.ensure_future(self._nvml_events()),
        ]
        subs = [await ctx.nc.subscribe(run_subject(cfg.node_id), cb=self._handle_run),
                await ctx.nc.subscribe(stop_subject(cfg.node_id), cb=self._handle_stop)]
        log.info("agent ready", extra={"node": cfg.node_id, "devices": len(self.devices), "sim": cfg.sim,
                                       "driver": self.driver, "unreadable": sorted(backend.missing)})
        await ctx.stopping.wait()
        await self._drain(cfg.drain_s)
        for sub in subs:
            await sub.unsubscribe()
        await self.runner.stop_all(cfg.stop_grace_s)  # workers get SIGTERM (checkpoint) before the node goes
        stop_follow.set()
        await cancel_and_wait(tasks)
        await asyncio.to_thread(backend.stop)

    async def _drain(self, wait_s: float) -> None:
        """Before stopping: no new jobs here, and the scheduler preempts the preemptible ones (the normal path: they
        checkpoint and are placed elsewhere; stop requests are still served). Without it a shutdown left its jobs
        on the node until the heartbeat timeout, and they were placed back on it meanwhile."""
        try:  # briefly: with NATS away, the workers must still get their SIGTERM before a supervisor's SIGKILL
            await asyncio.wait_for(self.ctx.store.append(f"node.{self.config.node_id}", NodeCordoned(
                aggregate_id=self.config.node_id, drain=True, reason="its agent is shutting down", by="agent")), 2.0)
        except (AiosError, asyncio.TimeoutError) as exc:  # the workers are stopped below all the same
            log.warning("could not drain the node before stopping", extra={"error": str(exc) or type(exc).__name__})
            return
        deadline = time.monotonic() + wait_s
        while self.runner.running and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    # -- registration and heartbeats --------------------------------------------------------------------------------
    async def _register(self) -> None:
        cores, memory = host_resources()
        cfg = self.config
        if cfg.sim:  # a simulated node gets the CPU and memory of a real one of its size, not this laptop's
            cores = max(cores, 16 * len(self.devices))
            memory = max(memory, 128 * 1024**3 * len(self.devices))
        self.registered += 1
        await self.ctx.store.append(f"node.{cfg.node_id}", NodeRegistered(
            aggregate_id=cfg.node_id, hostname=self.backend.hostname(), agent_id=self.agent_id, cpu_cores=cores,
            memory_bytes=memory, devices=self.devices, links=self.links, labels=dict(cfg.labels),
            backend="sim" if cfg.sim else "nvml", driver_version=self.driver),
            idempotency_key=f"register-{self.agent_id}-{self.registered}")
        for uuid, (reason, _since, _lost) in self.health.unhealthy.items():
            await self._append_health(Transition(uuid, False, reason))

    async def _on_node_commit(self, commit: Commit) -> None:
        if any(isinstance(ev, DevicesReleased) for ev in commit.events):
            self._stop_unleased()
        for ev in commit.events:
            if isinstance(ev, NodeLost):
                log.warning("the cluster declared this node lost; registering again", extra={"reason": ev.reason})
                # its jobs were requeued and may run elsewhere already: workers left here (this agent was hung,
                # or cut off) are stale, and trained on beside the new attempt, writing the same checkpoint
                stale = sorted({w.job_id for w in self.runner.running.values()})
                if stale:
                    log.warning("stopping the workers of jobs requeued away from this node", extra={"jobs": stale})
                    for job_id in stale:
                        task = asyncio.ensure_future(self.runner.stop(job_id, grace_s=3.0))
                        self._background.add(task)
                        task.add_done_callback(self._background.discard)
                await self._register()

    def _stop_unleased(self) -> None:
        """No lease, no process: workers on devices no longer leased to their job are stopped. Devices are given
        back without the workers' exit only when something failed (a preempted job's launcher hung past the grace,
        a cancel whose stop did not come): the next job's start on them was refused, and failed it."""
        book = self.node.state.leases
        stale = sorted({(w.job_id, w.attempt) for w in self.runner.running.values()
                        if not w.stopping and any(book.holder.get(u) != w.job_id for u in w.device_uuids)})
        for job_id, attempt in stale:
            log.warning("stopping workers whose devices are no longer leased to their job",
                        extra={"job": job_id, "attempt": attempt})
            task = asyncio.ensure_future(self.runner.stop(job_id, attempt=attempt, cap_s=self.config.stop_grace_s))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _heartbeat_bucket(self) -> Any:
        js = self.ctx.store.js
        try:
            return await js.key_value(HEARTBEAT_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            try:
                return await js.create_key_value(KeyValueConfig(
                    bucket=HEARTBEAT_BUCKET, history=1, ttl=self.config.heartbeat_ttl_s, storage=StorageType.MEMORY,
                    replicas=self.ctx.store.replicas, description="device agent heartbeats, one key per node"))
            except nats.js.errors.BadRequestError:
                return await js.key_value(HEARTBEAT_BUCKET)  # created meanwhile by another agent

    async def _another_agent_serves(self, kv: Any) -> str:
        """Who else serves this node id, if an agent of another id heartbeats for it (a second host of the same
        name, a copy started by hand): '' if none. A heartbeat of another agent may be the last of one that just
        died (a restart): it must beat again within a few of our intervals to count as alive. Judged by the entry's
        revision moving on, never by its stamp: that is the other host's clock, and a host 60 s ahead took a live
        agent's heartbeat for an old one and started beside it."""
        async def beat() -> tuple[int, Heartbeat] | None:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError, msgspec.ValidationError, msgspec.DecodeError):
                entry = await kv.get(self.config.node_id)
                return entry.revision, msgspec.json.decode(entry.value, type=Heartbeat)
            return None
        first = await beat()
        wait = max(2.5 * self.config.heartbeat_interval_s, 0.5)
        if first is None or first[1].agent_id == self.agent_id:
            return ""
        await asyncio.sleep(wait)
        again = await beat()
        if again is None or again[0] == first[0] or again[1].agent_id != first[1].agent_id:
            return ""
        return f"agent {again[1].agent_id} serves this node and heartbeats (it beat again within {wait:.1f} s)"

    async def _heartbeats(self, kv: Any) -> None:
        cfg = self.config
        while True:
            beat = Heartbeat(cfg.node_id, self.agent_id, time.time(), len(self.devices),
                             len(self.health.unhealthy), len(self.runner.running))
            try:
                await kv.put(cfg.node_id, _encoder.encode(beat))
                self.last_beat = time.monotonic()
                self.fenced = False
            except Exception as exc:  # noqa: BLE001 - NATS away: keep beating, the loss shows on the other side
                log.warning("heartbeat not stored", extra={"error": str(exc) or type(exc).__name__})
                # the bucket lives in the server's memory: a restarted nats-server has none, and every beat failed
                # for ever ("no response from stream") while the node was declared lost every few seconds
                with contextlib.suppress(Exception):
                    kv = await self._heartbeat_bucket()
            await asyncio.sleep(cfg.heartbeat_interval_s)

    async def _fence(self) -> None:
        """With ``fence_after_s``: stop every worker once no heartbeat has been stored for that long."""
        limit = self.config.fence_after_s
        if limit is None:
            return
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            silent = time.monotonic() - self.last_beat
            if silent > limit and not self.fenced and self.runner.running:
                self.fenced = True
                jobs = sorted({w.job_id for w in self.runner.running.values()})
                log.warning("cut off from the cluster: stopping this node's workers (AIOS_AGENT_FENCE_AFTER)",
                            extra={"silent_s": round(silent, 1), "jobs": jobs})
                for job_id in jobs:
                    task = asyncio.ensure_future(self.runner.stop(job_id, cap_s=self.config.stop_grace_s))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

    # -- telemetry and health -----------------------------------------------------------------------------------------
    async def _telemetry(self) -> None:
        cfg = self.config
        subject = telemetry_subject(cfg.node_id)
        errors_seen: dict[str, int] = {}
        while True:
            started = time.monotonic()
            try:
                samples = await asyncio.to_thread(self.backend.sample)
            except Exception as exc:  # noqa: BLE001 - one bad reading must not end the node's telemetry for good
                self.telemetry_error = f"{type(exc).__name__}: {exc}"
                log.exception("telemetry reading failed")
                await asyncio.sleep(max(1.0, cfg.telemetry_interval_s))
                continue
            self.telemetry_error = ""
            self.samples += 1
            now = time.monotonic()
            for s in samples:
                self.metrics.observe(s)
                for t in self.health.on_sample(s, now):
                    await self._append_health(t)
            for call, count in self.backend.error_counts.items():
                if count > errors_seen.get(call, 0):
                    self.metrics.nvml_errors.labels(call).inc(count - errors_seen.get(call, 0))
                    errors_seen[call] = count
            try:
                await self.ctx.nc.publish(subject, _encoder.encode({"node": cfg.node_id, "ts": time.time(),
                                                                    "devices": samples}))
            except Exception as exc:  # noqa: BLE001
                log.debug("telemetry not published", extra={"error": str(exc)})
            await asyncio.sleep(max(0.0, cfg.telemetry_interval_s - (time.monotonic() - started)))

    async def _nvml_events(self) -> None:
        while True:
            signals = await asyncio.to_thread(self.backend.wait_events, 1000)
            now = time.monotonic()
            for signal in signals:
                for t in self.health.on_signal(signal, now):
                    await self._append_health(t)
            if not signals and (self.backend._event_set is None or self.backend.event_wait_failing):
                await asyncio.sleep(1.0)

    async def _append_health(self, t: Transition) -> None:
        """Store a device's health after transition ``t``: one append at a time, each of the device's state as the
        tracker has it when it is stored (found by review: a stuck worker's exit, recorded while its hold was still
        being stored, could land first, and the log kept the GPU out of service while the agent had it back)."""
        node = self.config.node_id
        async with self._health_appends:
            now_state = self.health.unhealthy.get(t.uuid)
            healthy = now_state is None
            reason = (t.reason if t.healthy else "healthy again") if healthy else now_state[0]  # type: ignore[index]
            xid = None if healthy or t.healthy else t.xid
            ev = (DeviceHealthy(aggregate_id=node, device_uuid=t.uuid, reason=reason) if healthy else
                  DeviceUnhealthy(aggregate_id=node, device_uuid=t.uuid, reason=reason, xid=xid))
            self.metrics.set_health(t.uuid, healthy, xid)
            log.warning("device health changed", extra={"uuid": t.uuid, "healthy": healthy, "reason": reason})
            try:
                await self.ctx.store.append(f"node.{node}", ev)
            except AiosError as exc:
                log.error("health event not stored", extra={"error": str(exc)})

    # -- workloads ------------------------------------------------------------------------------------------------------
    async def _handle_run(self, msg: Msg) -> None:
        reply = await self.start_worker(msg.data)
        await msg.respond(_encoder.encode(reply))

    async def start_worker(self, data: bytes) -> Reply:
        try:
            req = msgspec.json.decode(data, type=RunRequest)
        except msgspec.ValidationError as exc:
            return Reply(False, error=f"invalid run request: {exc}")
        except msgspec.DecodeError as exc:
            return Reply(False, error=f"run request is not JSON: {exc}")
        if not req.command:
            return Reply(False, error="invalid run request: `command` is empty")
        node = self.config.node_id
        # decided on the node's log as it is now: a lease may be in the log but not yet in our fold, and a fold that
        # lags may still show an earlier lease of the job on these devices, since released (the worker started on
        # it, and the release, folded next, stopped it: a job requeued onto the same node was started three times)
        await self._catch_up()
        not_leased = self._not_leased(req)
        if not_leased:
            return Reply(False, error=f"job {req.job_id} holds no lease on {', '.join(not_leased)} on node {node}",
                         transient=True)
        unhealthy = [u for u in req.device_uuids if u in self.health.unhealthy]
        if unhealthy:
            return Reply(False, error="devices unhealthy: " + ", ".join(
                f"{u} ({self.health.unhealthy[u][0]})" for u in unhealthy), transient=True)
        try:
            # Workers run user code: they talk to NATS as this node, never with the launcher's credentials.
            env = {**req.env, "AIOS_NATS_URL": ",".join(self.ctx.settings.servers)}
            w = await self.runner.start(
                req.job_id, req.worker, req.command, env, req.device_uuids, req.cwd,
                # released while it waited for its devices: no lease, no process
                still_wanted=lambda: f"its lease on {', '.join(lost)} ended while it waited for them"
                if (lost := self._not_leased(req)) else "")
        except DevicesBusy as exc:
            return Reply(False, error=f"cannot start {req.command[0]!r}: {exc}", transient=True)
        except (OSError, ValueError) as exc:
            return Reply(False, error=f"cannot start {req.command[0]!r}: {exc}")

        if self.fake is not None:
            for uuid in req.device_uuids:
                gpu = self.fake.by_uuid(uuid)
                gpu.busy, gpu.processes[w.proc.pid] = 0.9, 4 * 1024**3
        w.trace = tracing.carrier_from_env(req.env)  # its start and exit were traces of their own
        with tracing.job_span(f"worker started {req.worker}", req.job_id, w.trace,
                              **{"aios.node": node, "aios.pid": w.proc.pid}):
            await self.ctx.store.append(f"run.{req.job_id}", WorkerStarted(
                aggregate_id=req.job_id, node_id=node, worker=req.worker, pid=w.proc.pid,
                device_uuids=req.device_uuids, attempt=w.attempt))
        return Reply(True, pid=w.proc.pid)

    async def _settle_workers_of_the_last_agent(self, since: float) -> None:
        """The previous agent of this node began to shut down (it stops its workers and records their exits) but
        ended before it had recorded them all (killed during its drain wait): those workers died with it. Their
        exits are recorded now, under the key the previous agent would have used, so that their jobs are requeued;
        a job with no exit of a worker stayed "running" for ever, holding its devices and its tenant's quota. (After
        a crash without a shutdown the resource manager requeues the node's jobs itself.) ``since``: when that agent
        registered (workers of agents before it are not its own: a lost node's never report their exit)."""
        node = self.config.node_id
        for job_id in self.node.state.leases.jobs_on(node):
            events = (await self.ctx.store.read(f"run.{job_id}")).events
            ended = {e.worker for e in events if isinstance(e, WorkerExited) and e.node_id == node}
            for started in events:
                if isinstance(started, WorkerStarted) and started.node_id == node and started.ts >= since and \
                        started.worker not in ended:
                    log.warning("worker of the previous agent died with it: recording its exit",
                                extra={"job": job_id, "worker": started.worker})
                    await self.ctx.store.append(f"run.{job_id}", WorkerExited(
                        aggregate_id=job_id, node_id=node, worker=started.worker, exit_code=None, signal=None,
                        reason="its node's previous agent stopped before recording its exit (it died with it)",
                        attempt=started.attempt, stopped=True), idempotency_key=f"exit-{job_id}-{started.worker}")

    def _not_leased(self, req: RunRequest) -> list[str]:
        book, node = self.node.state.leases, self.config.node_id
        return [u for u in req.device_uuids if book.holder.get(u) != req.job_id or book.node_of.get(u) != node]

    async def _catch_up(self, timeout: float = 3.0) -> None:
        target = await self.ctx.store.version(f"node.{self.config.node_id}")
        deadline = time.monotonic() + timeout
        while self.node.seq < target and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _handle_stop(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=StopRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await msg.respond(_encoder.encode(Reply(False, error=f"invalid stop request: {exc}")))
            return
        stopped = await self.runner.stop(req.job_id, req.grace_s, req.attempt)
        await msg.respond(_encoder.encode(Reply(True, stopped=stopped)))

    def _on_output(self, w: Workload, stream: str, line: bytes) -> None:
        kept = joblogs.kept_line(w.logged, line)
        w.logged += len(line)
        if kept is not None:
            asyncio.ensure_future(self.ctx.nc.publish(log_subject(w.job_id, w.worker, stream), kept))

    async def _on_unkillable(self, w: Workload) -> None:
        reason = f"{HELD_REASON} (pid {w.proc.pid}, {w.worker} of job {w.job_id}): out of service until it exits"
        now = time.monotonic()  # every device held before the first append: the worker may exit during one
        transitions = [t for uuid in w.device_uuids for t in self.health.hold(uuid, reason, now)]
        for t in transitions:
            await self._append_health(t)

    async def _on_exit(self, w: Workload, code: int | None, sig: int | None) -> None:
        released = [t for uuid in (w.device_uuids if w.unkillable else ()) for t in self.health.release(uuid)]
        for t in released:
            await self._append_health(t)
        if self.fake is not None:
            for uuid in w.device_uuids:
                gpu = self.fake.by_uuid(uuid)
                gpu.processes.pop(w.proc.pid, None)
                gpu.busy = 0.0 if not gpu.processes else gpu.busy
        reason = "stopped on request" if w.stopping else ("exited" if code is not None else f"killed by signal {sig}")
        failed = code != 0 and not w.stopping
        event = WorkerExited(aggregate_id=w.job_id, node_id=self.config.node_id, worker=w.worker, exit_code=code,
                             signal=sig, reason=reason, attempt=w.attempt, stopped=w.stopping,
                             message=w.last_error if failed else "")
        with tracing.job_span(f"worker exited {w.worker}", w.job_id, w.trace,
                              **{"aios.node": self.config.node_id, "aios.exit_code": code, "aios.signal": sig,
                                 "aios.reason": reason}) as span:
            if code not in (0, EXIT_INTERRUPTED) and not w.stopping:  # 75: interrupted, resumes from a checkpoint
                tracing.mark_failed(span, f"exit code {code}" if code is not None else f"killed by signal {sig}")
                if w.abort_subject:
                    how = f"exited with {code}" if code is not None else f"was killed by signal {sig}"
                    with contextlib.suppress(Exception):  # best effort: the peers' timeout stays the backstop
                        await self.ctx.nc.publish(w.abort_subject, f"{w.worker} on node {self.config.node_id} "
                                                                   f"{how}".encode())
            while True:  # an exit lost in a NATS outage left its job running for ever: record it when NATS is back
                try:
                    await self.ctx.store.append(f"run.{w.job_id}", event,
                                                idempotency_key=f"exit-{w.job_id}-{w.worker}")
                    return
                except StoreError as exc:  # not acknowledged within the store's deadline
                    if self.ctx.stopping.is_set():
                        raise
                    log.warning("worker exit not recorded yet; trying again",
                                extra={"job": w.job_id, "worker": w.worker, "error": str(exc)})
                    await asyncio.sleep(1.0)


def from_env() -> DeviceAgentService:
    return DeviceAgentService(AgentConfig.from_env())
