"""Least privilege, end to end: a cluster whose every process connects as its own NATS user with the shipped subject
permissions (``aios up --secure``) runs a tenant's job; a node identity cannot place a job, purge the log or slip a
decision onto a subject it may write; a tenant cannot read the event stream or another tenant's jobs."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from aios.cli.cluster import LocalCluster
from aios.common import natsauth
from aios.common.config import load_settings
from aios.common.errors import PermissionDenied
from aios.common.events import Assignment, JobPlaced, encode
from aios.common.store import connect

TENANTS = ["team-a", "team-b"]


@pytest.fixture
def secure_cluster(aios_env: dict[str, str], tmp_path: Path) -> Any:
    env = {**aios_env, "AIOS_SCHEDULER_INTERVAL": "0.1", "AIOS_GATEWAY_PORT": "0", "AIOS_ROUTER_PORT": "0"}
    cluster = LocalCluster(load_settings({**env, "AIOS_NATS_PORT": "0"}), env=env, secure=True, tenants=TENANTS,
                           agents=[("sim-1", "2xA100-40GB")]).start()
    try:
        yield cluster
    finally:
        cluster.stop()


class Client:
    """A tenant's NATS client, as docs/external-clients.md tells one to connect."""

    def __init__(self, nc: Any, tenant: str, errors: list[str]) -> None:
        self.nc, self.tenant, self.errors = nc, tenant, errors

    @classmethod
    async def connect(cls, cluster: LocalCluster, tenant: str) -> "Client":
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        role = natsauth.tenant_role(tenant)
        nc = await nats.connect(cluster.url_as(role.user), inbox_prefix=role.inbox, error_cb=on_error,
                                allow_reconnect=False)
        return cls(nc, tenant, errors)

    async def ask(self, op: str, body: dict[str, Any], tenant: str | None = None, timeout: float = 10) -> Any:
        msg = await self.nc.request(f"aios.tenant.{tenant or self.tenant}.{op}", json.dumps(body).encode(),
                                    timeout=timeout)
        return json.loads(msg.data)


async def _until(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def _gateway_up(client: Client) -> bool:
    try:
        return "jobs" in await client.ask("jobs", {}, timeout=1)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return False


async def test_each_identity_can_do_its_job_and_nothing_more(secure_cluster: LocalCluster) -> None:
    cluster = secure_cluster
    a = await Client.connect(cluster, "team-a")
    b = await Client.connect(cluster, "team-b")
    await _until("the gateway's tenant API", lambda: _gateway_up(a))

    # A tenant submits over NATS; the whole chain (gateway, scheduler, RM, trainer, agent, worker) runs it, each
    # process under its own identity.
    spec = {"name": "hello", "devices": 1, "command": [sys.executable, "-c", "print('hi')"]}
    submitted = await a.ask("submit", {"spec": spec})
    job = submitted["job"]

    async def succeeded() -> Any:
        detail = await a.ask("job", {"job": job})
        return detail if detail.get("status") == "succeeded" else None

    detail = await _until(f"{job} to succeed", succeeded)
    types = [e["type"] for e in detail["events"]]
    assert {"JobSubmitted", "JobPlaced", "WorkerStarted", "WorkerExited", "JobSucceeded"} <= set(types), types

    # The built-in trainer too: 2 ranks all-reduce and checkpoint as the node identity, the registry registers the
    # model as its own.
    trainer = {"kind": "mlp", "dataset": "digits", "classes": 10, "hidden": 32, "steps": 60, "samples": 600,
               "checkpoint_every": 30, "model_name": "digits"}
    trained = (await a.ask("submit", {"spec": {"name": "digits", "devices": 2, "trainer": trainer}}))["job"]

    async def registered() -> Any:
        detail = await a.ask("job", {"job": trained})
        assert detail["status"] not in ("failed", "cancelled"), (detail["error"], detail["events"][-4:])
        if detail["status"] != "succeeded":
            return None
        reply = json.loads((await admin.nc.request("aios.registry.show", b'{"model": "digits"}', timeout=5)).data)
        return reply if reply.get("versions") else None

    admin = await connect([cluster.url_as("admin")])
    model = await _until("the trained model in the registry", registered, timeout=120)
    assert model["versions"][0]["lineage"]["job_id"] == trained
    assert "CheckpointSaved" in [e["type"] for e in (await a.ask("job", {"job": trained}))["events"]]

    # The service refuses what the subject does not allow: a spec for another tenant, another tenant's job.
    assert (await a.ask("submit", {"spec": {**spec, "tenant": "team-b"}}))["status"] == 403
    stolen = await b.ask("job", {"job": job})
    assert stolen == {"status": 404, "error": f"job: no job {job!r}"}, stolen  # as for a job that does not exist
    assert [j["job"] for j in (await b.ask("jobs", {}))["jobs"]] == []
    bad = await a.ask("submit", {"spec": {"name": "x", "devices": "lots"}})
    assert bad["status"] == 422 and bad["error"].startswith("devices")

    # The server refuses what the identity does not allow: another tenant's subjects, the event stream.
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await b.ask("jobs", {}, tenant="team-a", timeout=1)
    await b.nc.subscribe("aios.evt.>")
    js = b.nc.jetstream(timeout=1)
    with pytest.raises(Exception):
        await js.stream_info("AIOS_EVENTS")
    await b.nc.flush()
    await asyncio.sleep(0.3)
    refused = [e.lower() for e in b.errors]
    assert 'permissions violation for publish to "aios.tenant.team-a.jobs"' in " ".join(refused), refused
    assert 'permissions violation for subscription to "aios.evt.>"' in " ".join(refused), refused
    assert '"$js.api.stream.info.aios_events"' in " ".join(refused), refused

    # A node (its agent, its workers) may report, not decide.
    node = await connect([cluster.url_as("node")])
    placed = JobPlaced(aggregate_id=job, assignments=[Assignment("sim-1", ["GPU-forged"], [0])], world_size=1)
    with pytest.raises(PermissionDenied, match="aios.evt.job"):
        await node.append(f"job.{job}", placed)
    with pytest.raises(Exception):
        await node.js.purge_stream("AIOS_EVENTS")
    # nor command the registry: a job's code deleted another tenant's model version this way
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await node.nc.request("aios.registry.delete", b'{"name": "digits", "version": 1}', timeout=1)
    assert not json.loads((await admin.nc.request("aios.registry.show", b'{"model": "digits"}', timeout=5)).data)[
        "versions"][0].get("deleted")
    # It may write run.<job>, so it tries to slip the decision in there: stored, and refused by every reader.
    await node.js.publish(f"aios.evt.run.{job}", encode([placed]))
    await asyncio.sleep(1.0)
    assert [e for e in await admin.read_job(job) if isinstance(e, JobPlaced)][0].assignments[0].node_id == "sim-1"
    assert not any("GPU-forged" in json.dumps(e) for e in (await a.ask("job", {"job": job}))["events"])
    jobs = json.loads((await admin.nc.request("aios.sched.jobs", b"{}", timeout=5)).data)["jobs"]
    assert [j["status"] for j in jobs if j["job"] == job] == ["succeeded"]

    for closing in (node, admin):
        await closing.close()
    for client in (a, b):
        await client.nc.close()


def test_the_shipped_auth_config_is_the_rendered_table() -> None:
    shipped = Path(__file__).parents[2] / "deploy" / "nats" / "auth.conf"
    assert shipped.read_text() == natsauth.render(["team-a", "team-b"]), \
        "deploy/nats/auth.conf is stale: run `aios nats-config --tenant team-a --tenant team-b > deploy/nats/auth.conf`"
