"""Bad input against running services (hypothesis): job specs through the tenant API, garbage request bodies to
every service, garbage and forged payloads on the event stream itself. Each bad spec is refused with an error that
names the field; nothing refused reaches the log; no process dies; a good job still runs afterwards."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any, Awaitable, Iterator, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aios.cli.cluster import LocalCluster
from aios.common.config import load_settings
from aios.common.events import JobSubmitted
from aios.common.store import connect
from tests.deploy.test_permissions import Client, _gateway_up, _until

T = TypeVar("T")
FIELD_ERROR = re.compile(r"^(\S.*?): \S", re.S)
"""``<field>: <reason>``: a path (``trainer.steps``, ``env.X``, ``command[0]``), ``body``/``spec``, or an unknown key."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
FIELDS = ["name", "tenant", "priority", "devices", "device_types", "command", "trainer", "serve", "env", "gang",
          "max_runtime_s", "runtime_estimate_s", "preemptible", "max_devices_per_node", "checkpoint_interval_s"]
GOOD = {"name": "ok", "devices": 1, "command": [sys.executable, "-c", "pass"]}
specs = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=6),  # anything at all
    st.builds(lambda k, v: {**GOOD, k: v}, st.sampled_from(FIELDS), json_values),  # one field broken
    st.builds(lambda k: {f: v for f, v in GOOD.items() if f != k}, st.sampled_from(list(GOOD))),  # one missing
    json_values)  # not even an object


def names_a_field(error: str, spec: Any) -> bool:
    m = FIELD_ERROR.match(error)
    if not m:
        return False
    field = m.group(1)
    keys = {str(k) for k in spec} | {repr(str(k)[:64]) for k in spec} if isinstance(spec, dict) else set()
    return re.split(r"[.\[]", field)[0] in {*FIELDS, "spec", "body", "job", "status"} or field in keys


class Live:
    """A secure cluster and an event loop on a thread, so hypothesis (synchronous) can drive async clients."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def live(aios_env: dict[str, str], tmp_path: Path) -> Iterator[Live]:
    env = {**aios_env, "AIOS_SCHEDULER_INTERVAL": "0.1", "AIOS_GATEWAY_PORT": "0", "AIOS_ROUTER_PORT": "0"}
    cluster = LocalCluster(load_settings({**env, "AIOS_NATS_PORT": "0"}), env=env, secure=True, tenants=["t"],
                           agents=[("sim-1", "1xA100-40GB")]).start()
    live = Live(cluster)
    try:
        yield live
    finally:
        live.close()
        cluster.stop()


def _submitted(live: Live) -> set[str]:
    async def read() -> set[str]:
        store = await connect([live.cluster.url_as("admin")])
        out: set[str] = set()
        await store.replay(lambda c: out.update(e.aggregate_id for e in c.events if isinstance(e, JobSubmitted)),
                           on_bad_event="skip")
        await store.close()
        return out
    return live.run(read())


def _good_job_succeeds(live: Live, client: Client) -> None:
    job = live.run(client.ask("submit", {"spec": GOOD}))["job"]

    async def done() -> Any:
        detail = await client.ask("job", {"job": job})
        return detail if detail["status"] == "succeeded" else None
    live.run(_until(f"{job} to succeed after the bad input", done), timeout=90)


def test_bad_specs_and_bodies_are_refused_by_field_and_nothing_partial_is_stored(live: Live) -> None:
    client = live.run(Client.connect(live.cluster, "t"))
    live.run(_until("the gateway", lambda: _gateway_up(client)))
    accepted: set[str] = set()
    refused: list[str] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(spec=specs)
    def submit(spec: Any) -> None:
        reply = live.run(client.ask("submit", {"spec": spec}))
        if "job" in reply:
            accepted.add(reply["job"])
            return
        assert 400 <= reply["status"] < 500 and names_a_field(reply["error"], spec), reply
        refused.append(reply["error"].split(":", 1)[0])

    submit()
    assert refused and len(set(refused)) > 5, "hypothesis found many ways to be wrong"

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(op=st.sampled_from(["submit", "job", "cancel", "jobs"]), body=st.binary(max_size=64) | json_values.map(
        lambda v: json.dumps(v).encode()))
    def garbage(op: str, body: bytes) -> None:
        async def ask() -> Any:
            msg = await client.nc.request(f"aios.tenant.t.{op}", body, timeout=10)
            return json.loads(msg.data)
        reply = live.run(ask())
        if "error" in reply:
            try:
                sent = json.loads(body)
            except ValueError:
                sent = None
            sent = sent.get("spec", sent) if isinstance(sent, dict) else sent
            assert 400 <= reply["status"] < 500 and names_a_field(reply["error"], sent), reply
        elif op == "submit":
            accepted.add(reply["job"])

    garbage()
    submitted = _submitted(live)
    assert submitted == accepted, "the log holds exactly the accepted submissions"
    assert live.cluster.exited() == {}
    _good_job_succeeds(live, client)
    live.run(client.nc.close())


def test_garbage_requests_and_events_kill_no_service(live: Live) -> None:
    async def inject() -> list[dict[str, Any]]:
        store = await connect([live.cluster.url_as("admin")])
        for subject in ("aios.sched.jobs", "aios.rm.nodes", "aios.registry.list"):
            async def answers(subject: str = subject) -> bool:
                try:
                    return bool(await store.nc.request(subject, b"{}", timeout=1))
                except Exception:  # noqa: BLE001 - not up yet
                    return False
            await _until(f"{subject} to answer", answers)
        replies = []
        bodies = [b"", b"{", b"[]", b"null", b'{"job": 7}', b'{"node": {"a": 1}}', b'{"model": "\xff\xfe"}',
                  json.dumps({"job": "x" * 100_000}).encode(), "{\"job\": \"\u2603\ud7ff\"}".encode()]
        for subject in ("aios.sched.why", "aios.sched.jobs", "aios.rm.node", "aios.rm.nodes", "aios.registry.show",
                        "aios.registry.list", "aios.registry.nope"):
            for body in bodies:
                msg = await store.nc.request(subject, body, timeout=10)
                replies.append(json.loads(msg.data))
        payloads = [b"not json", b"{}", b"[]", b'{"type": "NoSuchEvent", "aggregate_id": "bad-1"}',
                    b'{"type": "JobSubmitted", "aggregate_id": "bad-2"}',  # no tenant
                    b'{"type": "JobSubmitted", "aggregate_id": "bad-3", "tenant": 5}',
                    json.dumps({"type": "JobSubmitted", "aggregate_id": "bad-4", "tenant": "t",
                                "spec": {"devices": 10**30, "name": "\u2603" * 1000}}).encode(),
                    b'{"type": "JobPlaced", "aggregate_id": "bad-5", "assignments": "all", "world_size": -1}',
                    b'[{"type": "JobSubmitted", "aggregate_id": "bad-6", "tenant": "t"}, 42]']
        for i, payload in enumerate(payloads):
            await store.js.publish(f"aios.evt.job.bad-{i + 1}", payload)
        await store.close()
        return replies

    replies = live.run(inject())
    assert all(isinstance(r, dict) for r in replies)
    client = live.run(Client.connect(live.cluster, "t"))
    live.run(_until("the gateway", lambda: _gateway_up(client)))
    _good_job_succeeds(live, client)
    assert live.cluster.exited() == {}
    jobs = {j["job"]: j for j in live.run(client.ask("jobs", {}))["jobs"]}
    assert jobs.get("bad-4", {}).get("status") in (None, "failed"), "a spec no validator passed is never run"
    live.run(client.nc.close())
