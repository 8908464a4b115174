"""The resource manager service: folds the inventory, watches heartbeats, declares lost nodes, answers queries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge

from aios.common.errors import AiosError, ConcurrencyConflict, ConfigError
from aios.common.events import DevicesReleased, JobRequeued, NodeLost, NodeRegistered
from aios.common.runner import Service, ServiceContext
from aios.common.snapshot import Projector
from aios.common.store import Commit
from aios.common.tasks import cancel_and_wait
from aios.resource_manager.inventory import Inventory, fold_commit
from aios.resource_manager.liveness import lost_nodes, silence_reason
from aios.resource_manager.queries import QUERY_PREFIX, answer, node_states

MIN_NODE_TIMEOUT_S, MAX_NODE_TIMEOUT_S = 1.0, 86_400.0

log = logging.getLogger("aios.resource_manager")
HEARTBEAT_BUCKET = "AIOS_HEARTBEATS"


class ResourceManagerService(Service):
    name = "resource-manager"

    def __init__(self, node_timeout_s: float | None = None, check_interval_s: float = 0.5) -> None:
        if node_timeout_s is None:
            raw = os.environ.get("AIOS_NODE_TIMEOUT", "10")
            try:
                node_timeout_s = float(raw)
            except ValueError:
                node_timeout_s = math.nan
            # -1 declared every node lost twice a second, and their jobs requeued each time; nan none ever
            if not MIN_NODE_TIMEOUT_S <= node_timeout_s <= MAX_NODE_TIMEOUT_S:
                raise ConfigError(f"AIOS_NODE_TIMEOUT={raw!r}: seconds from {MIN_NODE_TIMEOUT_S:g} to "
                                  f"{MAX_NODE_TIMEOUT_S:,.0f}, above the agents' heartbeat interval (2 s unless "
                                  "AIOS_HEARTBEAT_INTERVAL says otherwise)")
        self.node_timeout_s = node_timeout_s
        self.check_interval_s = check_interval_s
        self.inventory = Projector("resource-manager", Inventory, None, Inventory, fold_commit=fold_commit)
        self.last_seen: dict[str, float] = {}
        self.heartbeats = 0
        self.suspects: dict[str, tuple[int | None, float, int]] = {}
        """Nodes past the timeout: their heartbeat's revision, when, and the node's version in the log, as they were
        when it was first found silent."""
        self._watcher: Any = None
        self.declared_lost = 0

    def healthy(self) -> tuple[bool, str]:
        inv = self.inventory.state
        online = sum(1 for n in inv.nodes.values() if n.online)
        return True, f"{online}/{len(inv.nodes)} nodes online, log at {inv.seq}"

    async def run(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.heartbeat_counter = Counter("aios_rm_heartbeats", "heartbeats received from device agents",
                                         registry=ctx.metrics)
        self.nodes_gauge = Gauge("aios_rm_nodes", "nodes known to the resource manager", ["state"],
                                 registry=ctx.metrics)
        for state in ("online", "cordoned", "lost"):  # a cordoned node counted as online, its devices as free
            self.nodes_gauge.labels(state).set_function(lambda state=state: node_states(self.inventory.state)[state])
        self.lost_counter = Counter("aios_rm_nodes_declared_lost", "NodeLost events written", registry=ctx.metrics)
        if ctx.metrics is not None:
            ctx.metrics.register(_DeviceCollector(lambda: self.inventory.state))
        started = time.monotonic()
        await self.inventory.rebuild(ctx.store)
        stop = asyncio.Event()
        follow = asyncio.ensure_future(self.inventory.follow(ctx.store, self._on_commit, stop))
        watch = asyncio.ensure_future(self._watch_heartbeats())
        sub = await ctx.nc.subscribe(f"{QUERY_PREFIX}.>", cb=self._handle_query)
        log.info("inventory ready", extra={"nodes": len(self.inventory.state.nodes), "seq": self.inventory.seq})
        try:
            while not ctx.stopping.is_set():
                await self.check_liveness(time.monotonic(), started)
                await self.release_orphans()
                try:
                    await asyncio.wait_for(ctx.stopping.wait(), self.check_interval_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            await sub.unsubscribe()
            stop.set()
            await cancel_and_wait([follow, watch])

    def _on_commit(self, commit: Commit) -> None:
        for ev in commit.events:
            if isinstance(ev, NodeRegistered):
                self.last_seen[ev.aggregate_id] = time.monotonic()

    async def _watch_heartbeats(self) -> None:
        js = self.ctx.store.js
        while True:
            try:
                kv = await js.key_value(HEARTBEAT_BUCKET)
                self._watcher = watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is not None and entry.value:
                        self.last_seen[entry.key] = time.monotonic()
                        self.heartbeats += 1
                        self.heartbeat_counter.inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - bucket not there yet, or NATS away: look again
                log.debug("heartbeat watch restarting", extra={"error": str(exc) or type(exc).__name__})
            await asyncio.sleep(1.0)  # stopped (a stale watch) or failed: watch again

    async def _revision(self, node_id: str) -> int | None:
        """The revision of the node's heartbeat in the bucket, read directly (None: none, or unreadable)."""
        try:
            kv = await self.ctx.store.js.key_value(HEARTBEAT_BUCKET)
            return int((await kv.get(node_id)).revision or 0)
        except Exception:  # noqa: BLE001 - no bucket (a restarted server), no key, NATS away: no evidence
            return None

    async def check_liveness(self, now: float, started: float) -> None:
        """Declare lost the nodes silent past the timeout, once a direct read of the bucket confirms it: the watch
        alone declared healthy nodes lost after a nats-server restart (its memory bucket gone, the watch silent for
        ever, every node lost every 10 s) and after this process was paused (the heartbeats piled up unread). A
        silent node is read twice, ``confirm_s`` apart; a heartbeat written meanwhile clears it and restarts the
        watch."""
        inv = self.inventory.state
        confirm_s = min(3.0, self.node_timeout_s / 2)
        silent_now = dict(lost_nodes(inv, self.last_seen, now, self.node_timeout_s, started))
        versions = {n: inv.versions.get(f"node.{n}", 0) for n in silent_now}  # before any await: the fold moves on
        for node_id in [n for n in self.suspects if n not in silent_now]:
            del self.suspects[node_id]
        for node_id, seen in silent_now.items():
            revision = await self._revision(node_id)
            first = self.suspects.get(node_id)
            if first is None:
                self.suspects[node_id] = (revision, now, versions[node_id])
                continue
            if revision is not None and revision != first[0]:
                del self.suspects[node_id]
                self.last_seen[node_id] = now
                log.warning("heartbeats reached the bucket but not the watch: watching again", extra={"node": node_id})
                watcher, self._watcher = self._watcher, None
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
                continue
            if now - first[1] < confirm_s:
                continue
            del self.suspects[node_id]
            jobs = inv.leases.jobs_on(node_id)
            aggregate = f"node.{node_id}"
            silent = now - seen
            reason, stopped = silence_reason(inv.nodes[node_id], silent, self.node_timeout_s)
            try:
                # against the version it had when first found silent: a node that moved on since (its agent
                # registered again, before its first heartbeat reached the bucket) is not declared lost. The version
                # of the live fold, read after the awaits above, took that registration for the silent node's own.
                result = await self.ctx.store.append(aggregate, NodeLost(
                    aggregate_id=node_id, reason=reason, last_seen=time.time() - silent, jobs=jobs),
                    expected_version=first[2])
            except ConcurrencyConflict:
                continue  # the node moved on (re-registered, or another manager acted): decide again on fresh state
            except AiosError as exc:
                log.error("could not declare node lost", extra={"node": node_id, "error": str(exc)})
                continue
            if stopped:  # a planned stop: not counted, nor logged, as a failure
                log.info("node's agent stopped", extra={"node": node_id, "jobs": jobs})
            else:
                self.declared_lost += 1
                self.lost_counter.inc()
                log.warning("node lost", extra={"node": node_id, "silent_s": round(silent, 1), "jobs": jobs})
            for job in jobs:
                try:
                    await self.ctx.store.append(f"job.{job}", JobRequeued(
                        aggregate_id=job, reason=f"node {node_id} lost", node_id=node_id,
                        node_seq=result.seq), idempotency_key=f"rm-requeue-{job}-{result.seq}")
                except AiosError as exc:
                    log.error("could not requeue job", extra={"job": job, "error": str(exc)})

    async def release_orphans(self) -> None:
        """Jobs that held devices under a node's previous agent (restarted before the liveness timeout): their
        workers died with that agent, so give the devices back and requeue the jobs, as for a lost node."""
        inv = self.inventory.state
        for node_id, listed in list(inv.orphaned.items()):
            jobs = list(listed)  # a copy: folding our own release below empties the fold's list while we loop
            aggregate = f"node.{node_id}"
            reason = f"the agent of node {node_id} restarted; its workers died with it"
            try:
                result = await self.ctx.store.append(aggregate, [
                    DevicesReleased(aggregate_id=node_id, job_id=job, reason=reason) for job in jobs],
                    expected_version=inv.versions.get(aggregate, 0))
            except ConcurrencyConflict:
                continue  # the node moved on meanwhile: decide again on the next round
            except AiosError as exc:
                log.error("could not release an old agent's leases", extra={"node": node_id, "error": str(exc)})
                continue
            log.warning("agent restarted under running jobs: requeueing", extra={"node": node_id, "jobs": jobs})
            for job in jobs:
                try:
                    await self.ctx.store.append(f"job.{job}", JobRequeued(
                        aggregate_id=job, reason=reason, node_id=node_id, node_seq=result.seq),
                        idempotency_key=f"rm-requeue-{job}-{result.seq}")
                except AiosError as exc:
                    log.error("could not requeue job", extra={"job": job, "error": str(exc)})
            await self._caught_up(result.seq)

    async def _caught_up(self, seq: int, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while self.inventory.seq < seq and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _handle_query(self, msg: Msg) -> None:
        what = msg.subject[len(QUERY_PREFIX) + 1:]
        try:
            args: dict[str, Any] = json.loads(msg.data) if msg.data else {}
            if not isinstance(args, dict):
                raise ValueError("expected a JSON object")
            body = answer(self.inventory.state, what, args)
        except ValueError as exc:
            body = {"error": f"body: {exc}"}
        except Exception as exc:  # noqa: BLE001 - a query must get an answer, never a timeout
            log.exception("query failed", extra={"query": what})
            body = {"error": f"body: cannot answer {what!r} for it ({type(exc).__name__})"}
        if msg.reply:
            await msg.respond(msgspec.json.encode(body))


def from_env() -> ResourceManagerService:
    return ResourceManagerService()


class _DeviceCollector:
    """``aios_node_devices{node, kind, state}``, read from the inventory at scrape time (nodes come and go)."""

    def __init__(self, inventory: Any) -> None:
        self.inventory = inventory

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from aios.resource_manager.queries import device_states

        family = GaugeMetricFamily("aios_node_devices", "devices by node, kind and state (free, leased, unhealthy, "
                                   "mig, cordoned, offline; 0 where none is)", labels=["node", "kind", "state"])
        for (node, kind, state), n in device_states(self.inventory()).items():
            family.add_metric([node, kind, state], n)
        yield family
