"""``aios bench inventory``: heartbeats the resource manager sustains, and the CPU one device agent costs.

Both run as real processes against one private nats-server: the resource manager folds an inventory of
``nodes`` x ``gpus_per_node`` registered devices and watches the heartbeat bucket while a load generator puts
heartbeats for every node as fast as the server takes them; the agent polls a simulated 8-GPU node through the real
pynvml wrapper at 1 Hz with telemetry, health events and metrics on (scraped every 15 s, as Prometheus would).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import msgspec
import nats
from nats.js.api import KeyValueConfig, StorageType

from aios.common.events import DeviceInfo, NodeRegistered
from aios.common.natsserver import NatsServer, die_with_parent, free_port
from aios.common.store import connect
from aios.device_agent.protocol import HEARTBEAT_BUCKET, Heartbeat


def _metric(url: str, name: str) -> float:
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return -1.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn(argv: list[str], url: str, port: int, env_extra: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AIOS_NATS_URL": url, "AIOS_HTTP_PORT": str(port), "AIOS_LOG_LEVEL": "WARNING", **env_extra}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "aios.cli.main", *argv], env=env, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent)


async def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _metric(url, "aios_service_up") < 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        await asyncio.sleep(0.2)


async def heartbeat_rate(url: str, tmp: str, nodes: int, gpus: int, beats_per_node: int) -> dict[str, Any]:
    store = await connect([url], name="bench-inventory")
    pipe = store.pipeline()
    for n in range(nodes):
        node = f"bench-{n:04d}"
        devices = [DeviceInfo(uuid=f"GPU-{n:04d}-{g}", index=g, kind="h100", model="NVIDIA H100 80GB HBM3",
                              memory_bytes=80 << 30) for g in range(gpus)]
        await pipe.add(f"node.{node}", NodeRegistered(aggregate_id=node, hostname=node, agent_id="bench",
                                                      cpu_cores=64, memory_bytes=1 << 40, devices=devices))
    assert not [r for r in await pipe.results() if isinstance(r, Exception)]
    await store.js.create_key_value(KeyValueConfig(bucket=HEARTBEAT_BUCKET, history=1, ttl=60,
                                                   storage=StorageType.MEMORY))
    port = free_port()
    rm = _spawn(["service", "resource-manager"], url, port, {"AIOS_NODE_TIMEOUT": "30"}, f"{tmp}/rm.log")
    metrics = f"http://127.0.0.1:{port}/metrics"
    try:
        await _wait_http(metrics)
        while _metric(metrics, 'aios_rm_nodes{state="online"}') < nodes:
            await asyncio.sleep(0.2)
        nodes_before = _metric(metrics, "aios_rm_heartbeats_total")
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=4000)
        total = nodes * beats_per_node
        encoder = msgspec.json.Encoder()
        t0 = time.perf_counter()
        for i in range(total):
            n = i % nodes
            beat = encoder.encode(Heartbeat(f"bench-{n:04d}", "bench", time.time(), gpus))
            await js.publish_async(f"$KV.{HEARTBEAT_BUCKET}.bench-{n:04d}", beat)
        await js.publish_async_completed()
        published = time.perf_counter() - t0
        # The bucket keeps one value per node: a manager that falls behind sees only the newest beat of each node
        # (which is all liveness needs). Count what it processed until it goes quiet.
        seen, quiet_since = -1.0, time.perf_counter()
        while time.perf_counter() - quiet_since < 1.0:
            now = _metric(metrics, "aios_rm_heartbeats_total")
            if now != seen:
                seen, quiet_since, last_change = now, time.perf_counter(), time.perf_counter()
            await asyncio.sleep(0.05)
        processed = seen - nodes_before
        lost = _metric(metrics, "aios_rm_nodes_declared_lost_total")
        await nc.close()
        return {"heartbeats_published": total, "heartbeats_processed": int(processed),
                "heartbeats_per_s": round(processed / (last_change - t0)),
                "publish_per_s": round(total / published), "nodes_declared_lost": lost,
                "rm_cpu_s": round(_cpu_seconds(rm.pid), 2)}
    finally:
        rm.terminate()
        rm.wait(20)
        await store.close()


async def agent_cpu(url: str, tmp: str, gpus: int, seconds: int) -> dict[str, Any]:
    port = free_port()
    agent = _spawn(["agent", "--node", "bench-agent", "--sim", f"{gpus}xH100-80GB", "--telemetry-interval", "1"],
                   url, port, {}, f"{tmp}/agent.log")
    metrics = f"http://127.0.0.1:{port}/metrics"
    try:
        await _wait_http(metrics)
        await asyncio.sleep(3.0)  # past start-up (imports, registration)
        c0, t0 = _cpu_seconds(agent.pid), time.monotonic()
        next_scrape = t0
        while time.monotonic() - t0 < seconds:
            if time.monotonic() >= next_scrape:
                _metric(metrics, "DCGM_FI_DEV_GPU_UTIL")
                next_scrape += 15
            await asyncio.sleep(0.5)
        c1, t1 = _cpu_seconds(agent.pid), time.monotonic()
        return {"agent_cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 3), "agent_seconds": round(t1 - t0, 1),
                "agent_gpus": gpus}
    finally:
        agent.terminate()
        agent.wait(20)


async def run(nodes: int = 1000, gpus_per_node: int = 8, agent_seconds: int = 20,
              beats_per_node: int = 100) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="aios-bench-inv-")
    server = NatsServer(tmp + "/nats").start()
    try:
        result = {"nodes": nodes, "gpus_per_node": gpus_per_node}
        result.update(await heartbeat_rate(server.url, tmp, nodes, gpus_per_node, beats_per_node))
        result.update(await agent_cpu(server.url, tmp, 8, agent_seconds))
        return result
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
