"""The HTTP API against a running cluster: tokens per tenant, validation that names the field, the job life cycle
through HTTP, streamed logs, and an OpenAPI document that matches the real routes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterator
from unittest.mock import ANY

import pytest

from aios.cli.cluster import LocalCluster
from aios.common.config import load_settings
from aios.common.events import TenantQuotaSet
from aios.common.store import connect
from aios.gateway.api import ROUTES, Api, build_app, openapi

ALICE, BOB, ADMIN = "alice-token-0123456789", "bob-token-0123456789ab", "admin-token-0123456789"


def call(base: str, method: str, path: str, token: str | None = None, body: Any = None,
         raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {}),
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
            return r.status, json.loads(text) if r.headers.get_content_type() == "application/json" else text.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LocalCluster]]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOS_", "OTEL_"))}
    env.update({"AIOS_DATA_DIR": str(tmp_path_factory.mktemp("gw")), "AIOS_GATEWAY_PORT": "0",
                "AIOS_ROUTER_PORT": "0", "AIOS_SCHEDULER_POLICY": "fifo", "AIOS_SCHEDULER_INTERVAL": "0.1",
                "AIOS_GATEWAY_TOKENS": f"{ALICE}=alice,{BOB}=bob,{ADMIN}=*"})
    cluster = LocalCluster(load_settings({**env, "AIOS_NATS_PORT": "0"}), env=env,
                           agents=[("sim-a", "2xA100-40GB")]).start()

    async def find() -> str | None:
        from aios.gateway.service import GATEWAY_KEY
        from aios.model_registry.replica import endpoints_bucket

        store = await connect([cluster.nats_url])
        try:
            kv = await endpoints_bucket(store)
            try:
                return (await kv.get(GATEWAY_KEY)).value.decode()
            except Exception:  # noqa: BLE001 - not announced yet
                return None
        finally:
            await store.close()
    deadline = time.monotonic() + 60
    while (url := asyncio.run(find())) is None:
        assert time.monotonic() < deadline, "the gateway never announced itself"
        time.sleep(0.5)
    try:
        yield url, cluster
    finally:
        cluster.stop()


def test_openapi_describes_exactly_the_routes_served() -> None:
    app = build_app(Api(backend=None, tokens={}))
    served = {(r.method, r.resource.canonical) for r in app.router.routes()  # type: ignore[union-attr]
              if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    documented = {(method.upper(), path) for path, ops in openapi()["paths"].items() for method in ops}
    assert served == documented and len(served) == len(ROUTES)
    for path, ops in openapi()["paths"].items():  # every path parameter is declared
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == {seg.strip("{}") for seg in path.split("/") if seg.startswith("{")}


def test_openapi_documents_every_spec_field_and_status() -> None:
    """The submission's body schema was written by hand and listed 9 of JobSpec's 18 fields; routes left out the
    401 every one of them answers without a token, and listing jobs its 422."""
    import msgspec

    from aios.scheduler.spec import JobSpec

    doc = openapi()
    body = doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {f.name for f in msgspec.structs.fields(JobSpec)}
    assert body["required"] == ["name"] and body["additionalProperties"] is False
    assert body["properties"]["devices"]["maximum"] == 4096 and body["properties"]["gang"]["default"] is True
    # an optional value's bound sits on its non-null branch, where generators read it
    assert body["properties"]["max_devices_per_node"]["anyOf"] == [{"type": "integer", "minimum": 1}, {"type": "null"}]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "401" in op["responses"], (method, path)
    assert "422" in doc["paths"]["/api/v1/jobs"]["get"]["responses"]
    assert "403" in doc["paths"]["/api/v1/tenants/{tenant}/quota"]["put"]["responses"]


def test_tokens_and_tenants(gateway: tuple[str, LocalCluster]) -> None:
    url, _ = gateway
    assert call(url, "GET", "/api/v1/jobs")[0] == 401
    assert call(url, "GET", "/api/v1/jobs", token="not-a-token")[0] == 401
    spec = {"name": "private", "devices": 1, "command": [sys.executable, "-c", "import time; time.sleep(30)"]}
    status, made = call(url, "POST", "/api/v1/jobs", ALICE, spec)
    assert status == 201 and "note" not in made, made
    job = made["job"]
    assert call(url, "GET", f"/api/v1/jobs/{job}", ALICE)[0] == 200
    # a kind no node has is taken (nodes may join), and the reply says so at once
    typoed = {**spec, "name": "typo", "device_types": ["h100x"]}
    status, typo = call(url, "POST", "/api/v1/jobs", ALICE, typoed, headers={"Idempotency-Key": "typo-1"})
    assert status == 201 and typo["note"].startswith("it cannot start on the nodes there now: no online node has "
                                                     "a h100x device"), typo
    status, again = call(url, "POST", "/api/v1/jobs", ALICE, typoed, headers={"Idempotency-Key": "typo-1"})
    assert again["duplicate"] and again["job"] == typo["job"] and "note" not in again, again  # as the CLI: once
    assert call(url, "POST", f"/api/v1/jobs/{typo['job']}/cancel", ALICE)[0] == 202
    # every node's devices in one request (the dashboard asked once a node), holders hidden from other tenants
    deadline = time.monotonic() + 30
    while job not in [d["job"] for n in call(url, "GET", "/api/v1/nodes?detail=true", ADMIN)[1]["nodes"]
                      for d in n["devices"]]:
        assert time.monotonic() < deadline, "the job's devices never shown"
        time.sleep(0.2)
    one = call(url, "GET", "/api/v1/nodes/sim-a", ADMIN)[1]
    listed = call(url, "GET", "/api/v1/nodes?detail=true", ADMIN)[1]["nodes"]
    assert [n["node"] for n in listed] == ["sim-a"] and [(d["uuid"], d["kind"]) for d in listed[0]["devices"]] == [
        (d["uuid"], d["kind"]) for d in one["devices"]] and "links" not in listed[0]
    for who, shown in ((ALICE, job), (BOB, "a job of another tenant")):
        seen = call(url, "GET", "/api/v1/nodes?detail=true", who)[1]["nodes"][0]["devices"]
        assert shown in [d["job"] for d in seen] and (who == ALICE or job not in json.dumps(seen)), seen
    # another tenant's job answers as an unknown one does, word for word: the id's existence stays secret
    unknown = job[:-1] + ("0" if job[-1] != "0" else "1")
    for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/logs"), ("GET", "/why")):
        status, denied = call(url, method, f"/api/v1/jobs/{job}{path}", BOB)
        status_unknown, said = call(url, method, f"/api/v1/jobs/{unknown}{path}", BOB)
        assert (status, status_unknown) == (404, 404), (path, denied, said)
        assert denied["error"].replace(job, "<id>") == said["error"].replace(unknown, "<id>"), (denied, said)
    assert job not in [j["job"] for j in call(url, "GET", "/api/v1/jobs", BOB)[1]["jobs"]]
    assert job in [j["job"] for j in call(url, "GET", "/api/v1/jobs", ADMIN)[1]["jobs"]]
    assert job in [j["job"] for j in call(url, "GET", "/api/v1/jobs?status=pending", ALICE)[1]["jobs"]
                   + call(url, "GET", "/api/v1/jobs?status=running", ALICE)[1]["jobs"]
                   + call(url, "GET", "/api/v1/jobs?status=placed", ALICE)[1]["jobs"]]
    status, err = call(url, "GET", "/api/v1/jobs?status=runing", ALICE)  # a typo listed nothing, as if none ran
    assert status == 422 and err["error"].startswith("status: 'runing' is no job state (one of pending, placed")
    listed = call(url, "GET", "/api/v1/jobs?tenant=alice", ADMIN)[1]["jobs"]
    assert job in [j["job"] for j in listed] and {j["tenant"] for j in listed} == {"alice"}
    status, err = call(url, "GET", "/api/v1/jobs?tenant=Ab%20c", ADMIN)  # no tenant has that name: listed nothing
    assert status == 422 and err["error"].startswith("tenant: lowercase letters"), err
    status, err = call(url, "GET", "/api/v1/jobs?page=5", ADMIN)  # answered every job, as if it had been applied
    assert status == 400 and err["error"] == "page: not a parameter of this request (known: status, tenant, limit)"
    # the newest N, and how many in all (with thousands in history the whole list was megabytes on every change)
    every = call(url, "GET", "/api/v1/jobs", ADMIN)[1]
    status, newest = call(url, "GET", "/api/v1/jobs?limit=1", ADMIN)
    assert status == 200 and newest == {"jobs": every["jobs"][-1:], "matched": every["matched"]}, newest
    assert every["matched"] == len(every["jobs"]) >= 1
    for bad in ("0", "-1", "x", "1.5", "9" * 5000):  # 5,000 digits: int() raised, a 500
        status, err = call(url, "GET", f"/api/v1/jobs?limit={bad}", ADMIN)
        assert status == 400 and err["error"].startswith("limit: a whole number, 1 or more"), (bad, err)
    # ?tail=2 gave the whole log, follow=True meant "do not follow", the second status was dropped
    status, err = call(url, "GET", f"/api/v1/jobs/{job}/logs?tail=2", ALICE)
    assert status == 400 and err["error"] == "tail: not a parameter of this request (known: follow, worker)"
    status, err = call(url, "GET", f"/api/v1/jobs/{job}/logs?follow=maybe", ALICE)
    assert status == 400 and err["error"] == "follow: true or false (or 1, 0, yes, no), got 'maybe'"
    status, err = call(url, "GET", "/api/v1/jobs?status=failed&status=running", ALICE)
    assert status == 400 and err["error"] == "status: given 2 times; give it once"
    status, err = call(url, "GET", "/api/v1/nodes?verbose=1", ALICE)
    assert status == 400 and err["error"] == "verbose: not a parameter of this request (known: detail)"
    status, err = call(url, "POST", "/api/v1/jobs", BOB, {**spec, "tenant": "alice"})
    assert status == 403 and "tenant: 'alice' is not yours" in err["error"]
    status, err = call(url, "PUT", "/api/v1/tenants/bob/quota", BOB, {"nominal": {"a100": 8}})
    assert status == 403 and "administrators only" in err["error"]
    deadline = time.monotonic() + 30  # no warning once the node's A100s are known (a cluster just started may not
    while [n["node"] for n in call(url, "GET", "/api/v1/nodes", ADMIN)[1].get("nodes", [])] != ["sim-a"]:  # have)
        assert time.monotonic() < deadline, "node sim-a never registered"
        time.sleep(0.2)
    assert call(url, "PUT", "/api/v1/tenants/bob/quota", ADMIN, {"nominal": {"a100": 1}}) == (
        200, {"tenant": "bob", "seq": ANY, "warnings": []})
    # a kind no node has is set, with a warning (the CLI's note): a typo (tpu for h100) would look the same
    status, reply = call(url, "PUT", "/api/v1/tenants/carol/quota", ADMIN, {"nominal": {"a100": 1, "tpu": 4}})
    assert status == 200 and reply["warnings"] == [
        "no node has tpu devices now; that part of the quota holds nothing until one joins"], reply
    # a quota can be taken away again (there was no way but a huge one), by an administrator, once
    status, err = call(url, "DELETE", "/api/v1/tenants/bob/quota", BOB)
    assert status == 403 and "administrators only" in err["error"]
    status, reply = call(url, "DELETE", "/api/v1/tenants/bob/quota", ADMIN)
    assert status == 200 and reply["tenant"] == "bob" and reply["seq"] > 0, reply
    status, err = call(url, "DELETE", "/api/v1/tenants/bob/quota", ADMIN)
    assert status == 404 and err["error"] == "tenant bob has no quota", err
    assert call(url, "DELETE", "/api/v1/tenants/B%20B/quota", ADMIN)[0] == 400
    # a quota stored under older rules (they took "NLP") can be removed too: it still counted in its cohort
    _, cluster = gateway

    async def old_quota() -> None:
        store = await connect([cluster.nats_url])
        try:
            await store.append("tenant.NLP", TenantQuotaSet(aggregate_id="NLP", nominal={"a100": 1}))
        finally:
            await store.close()
    asyncio.run(old_quota())
    assert call(url, "DELETE", "/api/v1/tenants/NLP/quota", ADMIN)[0] == 200
    assert call(url, "POST", f"/api/v1/jobs/{job}/cancel", ALICE)[0] == 202


@pytest.mark.parametrize("tenant, body, status, message", [
    ("a%20b", {"nominal": {"a100": 1}}, 400, "tenant: lowercase letters"),  # was a 500 (no subject token)
    ("%2A", {"nominal": {"a100": 1}}, 400, "tenant: lowercase letters"),
    ("NLP", {"nominal": {"a100": 1}}, 400, "tenant: lowercase letters"),  # would hold no job: job tenants are lower
    ("nlp", {"nominal": {"A100": 1}}, 422, "nominal.A100: not a device kind"),
    ("nlp", {"nominal": {"a100": 1}, "nominall": {}}, 422, "nominall: unknown field"),
    ("nlp", {"nominal": {"a100": 10 ** 23}}, 422, "nominal.a100: expected a whole number from 0 to 1,000,000"),
    ("nlp", {"cohort": "../x y*"}, 422, "cohort: lowercase letters"),
])
def test_bad_quotas_name_the_field(gateway: tuple[str, LocalCluster], tenant: str, body: Any, status: int,
                                   message: str) -> None:
    url, _ = gateway
    got, reply = call(url, "PUT", f"/api/v1/tenants/{tenant}/quota", ADMIN, body)
    assert got == status and message in reply["error"], reply


def test_a_bad_worker_name_is_refused_before_the_log_stream_begins(gateway: tuple[str, LocalCluster]) -> None:
    """`?worker=a%20b` began a 200 reply and broke it half-way (an invalid subject), with a traceback in the log."""
    url, _ = gateway
    spec = {"name": "quiet", "devices": 0, "command": [sys.executable, "-c", "pass"]}
    job = call(url, "POST", "/api/v1/jobs", ALICE, spec)[1]["job"]
    for worker in ("a%20b", "%3E", "a.b"):
        got, reply = call(url, "GET", f"/api/v1/jobs/{job}/logs?worker={worker}", ALICE)
        assert got == 400 and reply["error"].startswith("worker "), (worker, reply)
    deadline = time.monotonic() + 60
    while call(url, "GET", f"/api/v1/jobs/{job}", ALICE)[1]["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert call(url, "GET", f"/api/v1/jobs/{job}/logs?worker=rank0-a1", ALICE)[0] == 200
    status, err = call(url, "GET", f"/api/v1/jobs/{job}/logs?worker=rank0", ALICE)  # a 200 with nothing in it
    assert status == 404 and err["error"] == f"job {job} has no worker 'rank0'; its workers: rank0-a1", err


def test_errors_of_the_web_server_itself_are_json_too(gateway: tuple[str, LocalCluster]) -> None:
    """No such route, a wrong method, a body over the limit: plain text before, so a client's JSON parse failed."""
    url, _ = gateway
    assert call(url, "GET", "/api/v1/nope", ALICE) == (404, {"error": "no such resource: /api/v1/nope"})
    status, reply = call(url, "DELETE", "/api/v1/jobs", ALICE)
    assert status == 405 and reply["error"] == "DELETE is not allowed on /api/v1/jobs"
    status, reply = call(url, "POST", "/api/v1/jobs", ALICE, raw=b"{" + b" " * (5 << 20) + b"}")
    assert status == 413 and reply["error"].startswith("body: larger than the 4 MiB")


def test_cancelling_a_job_that_ended_is_a_conflict(gateway: tuple[str, LocalCluster]) -> None:
    url, _ = gateway
    job = call(url, "POST", "/api/v1/jobs", ALICE, {"name": "brief", "devices": 0, "command": ["true"]})[1]["job"]
    deadline = time.monotonic() + 60
    while call(url, "GET", f"/api/v1/jobs/{job}", ALICE)[1]["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    status, reply = call(url, "POST", f"/api/v1/jobs/{job}/cancel", ALICE)
    assert status == 409 and "has already ended (succeeded)" in reply["error"]  # was 202 "cancel requested"


def test_a_retry_with_an_idempotency_key_gets_the_first_job(gateway: tuple[str, LocalCluster]) -> None:
    """A retry got a new job id that did not exist (404), and the same key with another spec dropped that job
    silently; keys are each tenant's own."""
    url, _ = gateway
    spec = {"name": "once", "devices": 1, "command": [sys.executable, "-c", "pass"]}
    key = {"Idempotency-Key": "retry-1"}
    status, first = call(url, "POST", "/api/v1/jobs", ALICE, spec, headers=key)
    assert status == 201 and not first["duplicate"], first
    status, again = call(url, "POST", "/api/v1/jobs", ALICE, spec, headers=key)
    assert status == 201 and again["duplicate"] and again["job"] == first["job"], again
    assert call(url, "GET", f"/api/v1/jobs/{again['job']}", ALICE)[0] == 200
    status, err = call(url, "POST", "/api/v1/jobs", ALICE, {**spec, "devices": 2}, headers=key)
    assert status == 409 and "Idempotency-Key" in err["error"] and first["job"] in err["error"], err
    status, bobs = call(url, "POST", "/api/v1/jobs", BOB, spec, headers=key)
    assert status == 201 and not bobs["duplicate"] and bobs["job"] != first["job"], bobs
    status, err = call(url, "POST", "/api/v1/jobs", ALICE, {**spec, "name": "renamed"}, headers=key)
    assert status == 409 and first["job"] in err["error"], err
    # a key that cannot be one: a non-UTF-8 header was a 500, and any length was stored with the job
    for bad, reason in (("k" * 256, "1 to 255 characters, got 256"), ("caf\xe9", "not valid Unicode"),
                        ("", "1 to 255 characters, got 0")):
        status, err = call(url, "POST", "/api/v1/jobs", ALICE, spec, headers={"Idempotency-Key": bad})
        assert status == 400 and err["error"].startswith("Idempotency-Key: ") and reason in err["error"], (bad, err)


@pytest.mark.parametrize("body, status, message", [
    ({"name": "x", "devices": -1, "command": ["true"]}, 422, "devices"),
    ({"name": "x", "devices": "two", "command": ["true"]}, 422, "devices"),
    ({"name": "x", "command": ["true"], "trainer": {"kind": "mlp"}}, 422, "exactly one of"),
    ({"name": "x", "trainer": {"kind": "mlp", "steps": 0}}, 422, "trainer.steps"),
    ({"name": "Bad Name", "command": ["true"]}, 422, "name"),
    ({"name": "x", "command": ["true"], "colour": "blue"}, 422, "colour"),
    ([1, 2], 400, "body: a JSON object"),
    ({"name": "x", "command": ["true"], "cpu_per_worker": float("nan")}, 422, "cpu_per_worker: must be a finite"),
    ({"name": "x", "command": ["true"], "tenant": None}, 422, "tenant: a string is expected, got null"),  # was 403
    ({"name": "x", "command": ["true"], "tenant": 5}, 422, "tenant: a string is expected, got 5"),
    ({"name": "x", "command": ["true"], "env": {"BIG": "x" * (1536 << 10)}}, 422, "more than the 262,144"),  # 500
])
def test_bad_submissions_name_the_field(gateway: tuple[str, LocalCluster], body: Any, status: int,
                                        message: str) -> None:
    url, _ = gateway
    got, reply = call(url, "POST", "/api/v1/jobs", ALICE, body)
    assert got == status and message in reply["error"], reply
    got, reply = call(url, "POST", "/api/v1/jobs", ALICE, raw=b"{not json")
    assert got == 400 and reply["error"].startswith("body: not JSON")
    got, reply = call(url, "POST", "/api/v1/jobs", ALICE, raw=b"[" * 100_000)  # was a 500 (RecursionError)
    assert got == 400 and reply["error"] == "body: nested too deeply"
    got, reply = call(url, "POST", "/api/v1/jobs", ALICE, raw=b'{"devices": ' + b"9" * 5000 + b"}")  # was a 500
    assert got == 400 and reply["error"].startswith("body: not JSON"), reply
    got, reply = call(url, "POST", "/api/v1/jobs", ALICE, raw=b"{}",  # was a 500 (LookupError)
                      headers={"Content-Type": "application/json; charset=bogus"})
    assert got == 400 and "bogus" in reply["error"], reply
    got, reply = call(url, "POST", "/api/v1/jobs", ALICE, raw=b'{"name": "x"}',  # was a 500 (RequestPayloadError)
                      headers={"Content-Encoding": "gzip"})
    assert got == 400 and reply["error"].startswith("body: cannot be read as its Content-Encoding says (gzip)"), reply
    # a key given twice: the last was taken, and a spec asking for 4 devices then 1 ran on one
    got, reply = call(url, "POST", "/api/v1/jobs", ALICE,
                      raw=b'{"name": "x", "command": ["true"], "devices": 4, "devices": 1}')
    assert got == 400 and "'devices' is given twice" in reply["error"], reply
    # a field missing is a bad field like any other (a 400 there, a 422 for every other field)
    got, reply = call(url, "POST", "/api/v1/jobs", ADMIN, {"name": "x", "command": ["true"]})
    assert got == 422 and reply["error"].startswith("tenant: an administrator must name"), reply


def test_a_job_through_http_with_its_timeline_logs_and_the_cluster(gateway: tuple[str, LocalCluster]) -> None:
    url, _ = gateway
    script = "import os; print('hello from rank', os.environ['RANK']); print('bye', flush=True)"
    status, made = call(url, "POST", "/api/v1/jobs", ALICE, {"name": "hello", "devices": 1,
                                                              "command": [sys.executable, "-c", script]})
    assert status == 201
    job = made["job"]
    deadline = time.monotonic() + 60
    while (described := call(url, "GET", f"/api/v1/jobs/{job}", ALICE)[1])["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, described
        time.sleep(0.3)
    assert described["status"] == "succeeded" and described["tenant"] == "alice"
    kinds = [e["type"] for e in described["events"]]
    assert kinds[0] == "JobSubmitted" and "JobPlaced" in kinds and kinds[-1] == "JobSucceeded"
    status, text = call(url, "GET", f"/api/v1/jobs/{job}/logs", ALICE)
    assert status == 200 and "[rank0-a1] hello from rank 0" in text and "[rank0-a1] bye" in text
    assert call(url, "GET", f"/api/v1/jobs/{job}/logs?follow=1", ALICE) == (200, text)  # ends with the job
    status, nodes = call(url, "GET", "/api/v1/nodes", BOB)
    assert status == 200 and [n["node"] for n in nodes["nodes"]] == ["sim-a"]
    assert call(url, "GET", "/api/v1/nodes/sim-x", BOB)[0] == 404
    # an operator's node commands over HTTP (they were CLI only), administrators only
    assert call(url, "POST", "/api/v1/nodes/sim-a/cordon", BOB, {"reason": "fan"})[0] == 403
    assert call(url, "POST", "/api/v1/nodes/sim-a/cordon", ADMIN, {"reason": "fan", "drain": False})[0] == 200
    assert call(url, "POST", "/api/v1/nodes/sim-x/cordon", ADMIN, {})[0] == 404
    assert call(url, "POST", "/api/v1/nodes/sim-a/cordon", ADMIN, {"reason": 5})[0] == 422
    deadline = time.monotonic() + 20
    while call(url, "GET", "/api/v1/nodes/sim-a", ADMIN)[1]["cordon"] != "fan":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    status, err = call(url, "POST", "/api/v1/nodes/sim-a/uncordon", ADMIN, {"bogus": 1})  # was ignored: a 200
    assert status == 422 and err["error"] == "bogus: unknown field (this takes none)", err
    assert call(url, "POST", "/api/v1/nodes/sim-a/uncordon", ADMIN)[0] == 200
    status, err = call(url, "DELETE", "/api/v1/nodes/sim-a", ADMIN)
    assert status == 409 and "sim-a is online" in err["error"], err
    while call(url, "GET", "/api/v1/nodes/sim-a", ADMIN)[1]["cordon"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    status, tenants = call(url, "GET", "/api/v1/tenants", ALICE)
    assert status == 200 and set(tenants["tenants"]) <= {"alice"}
    status, models = call(url, "GET", "/api/v1/models", ALICE)
    assert status == 200 and models["models"] == []
    assert call(url, "GET", "/api/v1/models/nothing", ALICE)[0] == 404
    status, doc = call(url, "GET", "/openapi.json")
    assert status == 200 and "/api/v1/jobs/{job}/logs" in doc["paths"]


def test_a_model_shows_its_training_job_to_that_jobs_tenant_only(gateway: tuple[str, LocalCluster]) -> None:
    """A tenant sees its own jobs only; the model its job trained showed the job's spec, environment values
    included, to every tenant. Now other tenants see the model without the spec, and nobody sees the values."""
    url, _cluster = gateway
    spec = {"name": "secret-train", "devices": 1, "env": {"WANDB_API_KEY": "alice-secret-value"},
            "trainer": {"kind": "mlp", "dataset": "digits", "classes": 10, "hidden": 16, "steps": 20,
                        "samples": 600, "model_name": "alice-digits"}}
    status, made = call(url, "POST", "/api/v1/jobs", ALICE, spec)
    assert status == 201
    deadline = time.monotonic() + 120
    while (status := call(url, "GET", "/api/v1/models/alice-digits", ALICE))[0] != 200:
        assert time.monotonic() < deadline, call(url, "GET", f"/api/v1/jobs/{made['job']}", ALICE)[1]
        time.sleep(0.5)
    own = status[1]["versions"][0]["lineage"]
    assert own["spec"]["env"] == {"WANDB_API_KEY": "<redacted>"} and own["spec"]["trainer"]["steps"] == 20
    for path in ("/api/v1/models/alice-digits", "/api/v1/models/models:%2Falice-digits%2F1"):
        status, seen = call(url, "GET", path, BOB)
        assert status == 200 and "alice-secret-value" not in json.dumps(seen)
        lineage = seen["versions"][0]["lineage"] if "versions" in seen else seen["lineage"]
        assert lineage["spec"] == {} and lineage["spec_hidden"] == "trained by a job of another tenant"
        # nor the job's id, which no route shows another tenant (the lineage, the tags, the description named it)
        assert made["job"] not in json.dumps(seen), seen
        assert lineage["job_id"] == "a job of another tenant"
    assert made["job"] in json.dumps(call(url, "GET", "/api/v1/models/alice-digits", ALICE)[1])
    assert call(url, "GET", "/api/v1/models/alice-digits", ADMIN)[1]["versions"][0]["lineage"]["spec"]["env"]
    # nor does the list filter by the job tag confirm the id (a hit for the right one, none for a wrong one)
    for token, listed in ((ALICE, ["alice-digits"]), (ADMIN, ["alice-digits"]), (BOB, [])):
        status, models = call(url, "GET", f"/api/v1/models?tag=job={made['job']}", token)
        assert status == 200 and [m["name"] for m in models["models"]] == listed, (token, models)
    # the registry's commands over HTTP, as MLflow's REST API has them (administrators only, as quotas)
    base = "/api/v1/models/alice-digits"
    status, err = call(url, "PUT", f"{base}/aliases/production", BOB, {"version": 1})
    assert status == 403 and "administrators only" in err["error"]
    status, moved = call(url, "PUT", f"{base}/aliases/production", ADMIN, {"version": 1})
    assert status == 200 and moved["changed"] and moved["previous"] is None, moved
    assert call(url, "PUT", f"{base}/aliases/production", ADMIN, {"version": "one"})[0] == 422
    status, err = call(url, "PUT", f"{base}/aliases/production", ADMIN, {"version": 1, "expected": 7})
    assert status == 409 and "moved meanwhile" in err["error"], err
    status, version = call(url, "GET", f"{base}/versions/1", BOB)  # it was a 404: only models:%2F... worked
    assert status == 200 and version["version"] == 1 and version["aliases"] == ["production"]
    status, tagged = call(url, "PATCH", f"{base}/versions/1", ADMIN, {"tags": {"stage": "qa"}, "description": "first"})
    assert status == 200 and tagged["tags"]["stage"] == "qa" and tagged["description"] == "first", tagged
    status, err = call(url, "PATCH", f"{base}/versions/1", ADMIN, {"tags": {"stage": "prod"}, "description": "x" * 10001})
    assert status == 422 and "description" in err["error"], err
    assert call(url, "GET", f"{base}/versions/1", BOB)[1]["tags"]["stage"] == "qa"  # nothing of it applied
    assert call(url, "GET", f"{base}/versions/%C2%B2", BOB)[0] == 404  # "²": isdigit() took it, int() raised
    assert call(url, "GET", f"{base}/versions/0", BOB) == (404, {"error": "version: 0 is no version (versions are "
                                                                  "numbered from 1)"})  # it was a 422
    status, small = call(url, "POST", f"{base}/versions/1/compress", ADMIN, {"method": "int8"})
    assert status == 200 and small["version"] == 2 and small["deltas"]["size_ratio"] < 0.5, small
    assert call(url, "POST", f"{base}/versions/1/compress", ADMIN, {"method": "zip"})[0] == 422
    status, evaluated = call(url, "POST", f"{base}/versions/2/evaluate", ADMIN, {})
    assert status == 200 and 0 <= evaluated["metrics"]["accuracy"] <= 1, evaluated
    assert call(url, "DELETE", f"{base}/versions/2", ADMIN)[0] == 200
    assert call(url, "DELETE", f"{base}/versions/9", ADMIN)[0] == 404
    assert call(url, "DELETE", f"{base}/aliases/production", ADMIN)[0] == 200

    def names(query: str) -> list[str]:
        return [m["name"] for m in call(url, "GET", "/api/v1/models?" + query, BOB)[1]["models"]]
    assert names("metric=accuracy&min=0") == ["alice-digits"]
    assert names("metric=accuracy&min=1.01") == []  # `min` was dropped: every model with the metric was listed
    assert call(url, "GET", "/api/v1/models?metric=accuracy&min=high", BOB) == (
        422, {"error": "min: 'high' is not a number"})
    assert call(url, "GET", "/api/v1/models?min=0.5", BOB) == (
        422, {"error": "min: needs metric (the metric to compare)"})
    assert call(url, "GET", "/api/v1/models?limit=5", BOB) == (
        400, {"error": "limit: not a parameter of this request (known: tag, metric, min, name)"})


def test_tokens_are_refused_at_start_unless_each_names_a_tenant_that_can_submit() -> None:
    """A token for tenant 'teamA' was accepted, and then every submission with it was a 422 on the tenant name."""
    from aios.common.errors import ConfigError
    from aios.gateway.auth import parse_tokens

    assert parse_tokens(f"{ALICE}=alice,{ADMIN}=*") == {ALICE: "alice", ADMIN: "*"}
    with pytest.raises(ConfigError, match="item 2: tenant 'teamA' is not a tenant name"):
        parse_tokens(f"{ALICE}=alice,{BOB}=teamA")
    with pytest.raises(ConfigError, match="shorter than 16"):
        parse_tokens("short=alice")


def _read_events(base: str, token: str, seconds: float, headers: dict[str, str] | None = None,
                 query: str = "", until: Any = None, after_hello: Any = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of the server-sent events a stream sends in ``seconds`` (or until ``until(events)``);
    ``after_hello()`` runs once the stream is open."""
    import aiohttp

    async def run() -> list[tuple[str, str, dict[str, Any]]]:
        events: list[tuple[str, str, dict[str, Any]]] = []
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/v1/events?token={token}{query}", headers=headers or {}) as r:
                assert r.status == 200
                fields: dict[str, str] = {}
                loop = asyncio.get_running_loop()
                deadline = loop.time() + seconds
                while loop.time() < deadline and not (until and until(events)):
                    try:
                        line = (await asyncio.wait_for(r.content.readline(), deadline - loop.time())).decode()
                    except asyncio.TimeoutError:
                        break
                    if line.strip() == "":
                        if "event" in fields:
                            events.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
                            if fields["event"] == "hello" and after_hello:
                                await loop.run_in_executor(None, after_hello)
                        fields = {}
                    elif not line.startswith(":"):
                        key, _, value = line.rstrip("\n").partition(": ")
                        fields[key] = value
        return events
    return asyncio.run(run())


def test_an_event_stream_that_reconnects_gets_the_changes_it_missed(gateway: tuple[str, LocalCluster]) -> None:
    """A dashboard or client whose stream dropped (a proxy's idle timeout, a laptop's sleep) showed a stale page
    until something else changed: events had no id to resume from. Changes now carry the event log's sequence;
    reconnecting with Last-Event-ID first replays what came after it, and an id the gateway cannot resume from
    gets ``reset`` (fetch everything again)."""
    url, _ = gateway

    def tenant_changes(events: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
        return [d["aggregate"] for _, kind, d in events if kind == "change" and d["aggregate"].startswith("tenant.")]
    def set_quota() -> None:
        assert call(url, "PUT", "/api/v1/tenants/sse-a/quota", ADMIN, {"nominal": {"a100": 1}})[0] == 200
    seen = _read_events(url, ADMIN, 10.0, after_hello=set_quota, until=lambda ev: "tenant.sse-a" in tenant_changes(ev))
    last = [i for i, kind, d in seen if kind == "change" and d["aggregate"] == "tenant.sse-a"][-1]
    log, _, seq = last.rpartition("-")
    assert log and int(seq) > 0  # the log's incarnation and its sequence
    for tenant in ("sse-b", "sse-c"):  # while nobody listens
        assert call(url, "PUT", f"/api/v1/tenants/{tenant}/quota", ADMIN, {"nominal": {"a100": 1}})[0] == 200
    time.sleep(0.5)
    for how in ({"headers": {"Last-Event-ID": last}}, {"query": f"&last_event_id={last}"}):
        replayed = _read_events(url, ADMIN, 10.0, **how,  # type: ignore[arg-type]
                                until=lambda ev: "tenant.sse-c" in tenant_changes(ev))
        assert tenant_changes(replayed) == ["tenant.sse-b", "tenant.sse-c"], (how, replayed)
        ids = [int(i.rpartition("-")[2]) for i, kind, _ in replayed if kind == "change"]
        assert ids == sorted(ids) and ids[0] > int(seq)
    fresh = _read_events(url, ADMIN, 1.5)  # a new stream starts from now
    assert fresh[0][1] == "hello" and tenant_changes(fresh) == []
    # not an id of this log's: garbage, one from its future, or the same sequence of a log since created again
    for bad in ("yesterday", f"{log}-999999999", f"0{log}-{seq}", seq):
        events = _read_events(url, ADMIN, 3.0, headers={"Last-Event-ID": bad}, until=lambda ev: len(ev) >= 2)
        assert [kind for _, kind, _ in events[:2]] == ["hello", "reset"], (bad, events)
    for tenant in ("sse-a", "sse-b", "sse-c"):  # the module's cluster is shared: leave no quota behind
        assert call(url, "DELETE", f"/api/v1/tenants/{tenant}/quota", ADMIN)[0] == 200


def test_a_stream_too_far_behind_is_told_to_fetch_everything_again() -> None:
    """Only the last changes are held: a client whose last change was evicted gets ``reset``, not a partial replay
    that would look complete."""
    from aios.gateway.changes import RecentChanges

    recent = RecentChanges(floor=10, log="ab", size=3)
    for seq in (11, 12, 13):
        recent.add(seq, {"seq": seq})
    assert [d["seq"] for d in recent.since("ab-10") or []] == [11, 12, 13] and recent.since("ab-13") == []
    recent.add(15, {"seq": 15})  # 11 is evicted: a client that saw 10 missed it
    assert recent.since("ab-10") is None and [d["seq"] for d in recent.since("ab-11") or []] == [12, 13, 15]
    assert recent.since("ab-9") is None and recent.since("ab-16") is None and recent.since("") is None
    assert recent.since("cd-12") is None and recent.since("12") is None  # another log's, or no log named


def test_a_stalled_stream_gets_reset_and_still_hears_the_end() -> None:
    """A client that stops reading is told to fetch everything again instead of silently losing its oldest
    changes; the gateway's shutdown still reaches it (it waited a minute for such a stream)."""
    from aios.gateway.service import LISTENER_QUEUE, GatewayService

    gateway = GatewayService()
    queue = gateway.listen()
    for seq in range(LISTENER_QUEUE + 1):
        gateway._broadcast("change", {"seq": seq})
    assert [queue.get_nowait()[0] for _ in range(queue.qsize())] == ["reset"]
    for seq in range(LISTENER_QUEUE):
        gateway._broadcast("change", {"seq": seq})
    gateway._broadcast("bye", {})
    assert [queue.get_nowait()[0] for _ in range(queue.qsize())] == ["bye"]


def test_a_serving_job_of_a_model_the_registry_lacks_is_refused(gateway: tuple[str, LocalCluster]) -> None:
    """It was accepted, and its replicas failed to load the model until the crash-loop cap failed the job (``aios
    serve`` refused it up front); the NATS tenant API submits through the same path."""
    url, _ = gateway
    status, reply = call(url, "POST", "/api/v1/jobs", ALICE, {"name": "ghost", "serve": {"model": "models:/ghost/2"}})
    assert status == 422 and reply["error"] == "serve.model: model 'ghost' is not registered", reply
    assert "ghost" not in [j["name"] for j in call(url, "GET", "/api/v1/jobs", ALICE)[1]["jobs"]]


def test_a_lone_surrogate_is_named_as_bad_input_everywhere(gateway: tuple[str, LocalCluster]) -> None:
    """``"\\ud800"`` is valid JSON but no Unicode: it was accepted, then failed where it was stored. A 500 with a
    traceback for a job spec or a cordon reason, a 409 "internal error" for a model's tags, and no answer at all
    from the NATS tenant API (its client waited 10 s)."""
    url, cluster = gateway
    for body, field in [({"name": "sur", "command": ["echo", "\ud800"]}, "command[1]"),
                        ({"name": "sur", "command": ["true"], "env": {"A": "\udfff"}}, "env.A"),
                        ({"name": "sur", "command": ["true"], "\ud800": 1}, "\\ud800"),
                        ({"name": "sur", "serve": {"model": "\ud800"}}, "serve.model")]:
        status, reply = call(url, "POST", "/api/v1/jobs", ALICE, body)
        assert status == 422 and reply["error"].startswith(f"{field}: ") and "not valid Unicode" in reply["error"], \
            (body, status, reply)
    status, reply = call(url, "POST", "/api/v1/nodes/sim-a/cordon", ADMIN, {"reason": "fan \ud800"})
    assert status == 422 and reply["error"].startswith("reason: not valid Unicode"), reply
    status, reply = call(url, "PATCH", "/api/v1/models/digits/versions/1", ADMIN, {"tags": {"k": "\ud800"}})
    assert status == 422 and reply["error"].startswith("tags.k: not valid Unicode"), reply

    async def over_nats() -> tuple[dict[str, Any], dict[str, Any]]:
        import nats

        nc = await nats.connect(cluster.nats_url)
        try:
            submitted = await nc.request("aios.tenant.alice.submit", b'{"name": "sur", "command": ["echo", "\\ud800"]}',
                                         timeout=10)
            tagged = await nc.request("aios.registry.tag", b'{"name": "m", "version": 1, "tags": {"k": "\\udfff"}}',
                                      timeout=10)
            listed = await nc.request("aios.tenant.alice.jobs", b'{"tenant": "bob", "limit": 1}', timeout=10)
            assert json.loads(listed.data) == {"error": "tenant: not a field of jobs (known: status, limit)",
                                               "status": 400}
            blank = await nc.request("aios.tenant.alice.job", b'{"": null}', timeout=10)  # it read ": not a field"
            assert json.loads(blank.data) == {"error": "'': not a field of job (known: job)", "status": 400}
            return json.loads(submitted.data), json.loads(tagged.data)
        finally:
            await nc.close()
    submitted, tagged = asyncio.run(over_nats())
    assert submitted["status"] == 422 and submitted["error"].startswith("command[1]: not valid Unicode"), submitted
    assert tagged.get("bad_input") and tagged["error"].startswith("tags.k: not valid Unicode"), tagged


def test_a_tenant_is_not_told_other_tenants_jobs_or_quotas(gateway: tuple[str, LocalCluster]) -> None:
    """`why` named other tenants' jobs (the jobs ahead, the holders of devices) to a tenant that gets a 403 on each,
    and the event stream sent every tenant's quota changes to every tenant."""
    url, _ = gateway
    spec = {"devices": 2, "command": [sys.executable, "-c", "import time; time.sleep(300)"]}
    status, holder = call(url, "POST", "/api/v1/jobs", ALICE, {"name": "holder", **spec})
    assert status == 201
    deadline = time.monotonic() + 30
    while call(url, "GET", f"/api/v1/jobs/{holder['job']}", ALICE)[1]["status"] not in ("placed", "running"):
        assert time.monotonic() < deadline, "the holder never started"
        time.sleep(0.3)
    status, waiting = call(url, "POST", "/api/v1/jobs", BOB, {"name": "waiting", **spec})
    try:
        assert status == 201
        deadline = time.monotonic() + 30
        while "pending:" not in (why := call(url, "GET", f"/api/v1/jobs/{waiting['job']}/why", BOB)[1]["why"]):
            assert time.monotonic() < deadline, why
            time.sleep(0.3)
        assert holder["job"] not in why and "a job of another tenant" in why, why
        assert holder["job"] in call(url, "GET", f"/api/v1/jobs/{waiting['job']}/why", ADMIN)[1]["why"]
        node = call(url, "GET", f"/api/v1/jobs/{holder['job']}", ALICE)[1]["nodes"][0]
        holders = {who: [d["job"] for d in call(url, "GET", f"/api/v1/nodes/{node}", who)[1]["devices"]]
                   for who in (ALICE, BOB, ADMIN)}
        assert holders[ALICE].count(holder["job"]) == 2 and holders[ADMIN] == holders[ALICE], holders
        assert holder["job"] not in holders[BOB] and holders[BOB].count("a job of another tenant") == 2, holders

        def quota() -> None:
            assert call(url, "PUT", "/api/v1/tenants/secret-customer/quota", ADMIN, {"nominal": {"a100": 1}})[0] == 200
            assert call(url, "PUT", "/api/v1/tenants/bob/quota", ADMIN, {"nominal": {"a100": 2}})[0] == 200
        seen = _read_events(url, BOB, 10.0, after_hello=quota,
                            until=lambda ev: any(d.get("aggregate") == "tenant.bob" for _, _, d in ev))
        tenants = [d["aggregate"] for _, kind, d in seen if kind == "change" and d["aggregate"].startswith("tenant.")]
        assert tenants == ["tenant.bob"], seen
    finally:
        for job, token in ((holder["job"], ALICE), (waiting.get("job"), BOB)):
            if job:
                call(url, "POST", f"/api/v1/jobs/{job}/cancel", token)
        for tenant in ("secret-customer", "bob"):
            call(url, "DELETE", f"/api/v1/tenants/{tenant}/quota", ADMIN)


def test_telemetry_keeps_numbers_of_known_devices_only(gateway: tuple[str, LocalCluster]) -> None:
    """A node's NATS identity, which its jobs' workers hold, may publish telemetry: a job wrote markup into a
    reading and the dashboard ran it as the administrator (stealing the token), and readings of made-up devices
    grew every dashboard's fetch without bound."""
    import asyncio
    import time

    import nats

    url, cluster = gateway
    node = call(url, "GET", "/api/v1/nodes/sim-a", ADMIN)[1]
    real = node["devices"][0]["uuid"]

    async def publish() -> None:
        nc = await nats.connect(cluster.url_as("admin"))
        body = {"node": "sim-a", "ts": time.time(), "devices": [
            {"uuid": real, "utilization_gpu": '1"><img src=x onerror="alert(1)">', "temperature_c": 51.0},
            *({"uuid": f"made-up-{i}", "utilization_gpu": 5} for i in range(100))]}
        await nc.publish("aios.telemetry.sim-a", json.dumps(body).encode())
        await nc.publish("aios.telemetry.nowhere", json.dumps({**body, "node": "nowhere"}).encode())
        await nc.flush()
        await nc.close()
    asyncio.run(publish())
    time.sleep(1.0)  # the gateway has read them (core NATS, the same connection order)
    devices = call(url, "GET", "/api/v1/telemetry", BOB)[1]["devices"]
    assert set(devices) <= {d["uuid"] for d in node["devices"]}, sorted(devices)
    assert all(isinstance(d["utilization_gpu"], (int, float, type(None))) for d in devices.values()), devices


def test_a_telemetry_reading_is_kept_only_for_a_device_of_its_node_and_as_numbers() -> None:
    from aios.gateway.service import telemetry_readings
    from aios.scheduler.local import apply, node_registration
    from aios.scheduler.state import SchedulerState

    state = SchedulerState()
    apply(state, [node_registration("n1", "h100", 2)], 0.0)
    nodes = state.inv.nodes
    [a, b] = sorted(nodes["n1"].devices)
    body = {"node": "n1", "ts": 5.0, "devices": [
        {"uuid": a, "utilization_gpu": '1"><img src=x onerror="alert(1)">', "power_w": 300.5, "temperature_c": True},
        {"uuid": b, "utilization_gpu": 97, "memory_used_bytes": float("nan")},
        {"uuid": "made-up", "utilization_gpu": 5}, "not a device"]}
    kept = telemetry_readings(body, nodes, received=1.0)
    assert sorted(kept) == [a, b]
    assert kept[a]["utilization_gpu"] is None and kept[a]["power_w"] == 300.5 and kept[a]["temperature_c"] is None
    assert kept[b]["utilization_gpu"] == 97 and kept[b]["memory_used_bytes"] is None
    assert telemetry_readings({**body, "node": "n2"}, nodes, 1.0) == {}  # a device of another node, or none
    assert telemetry_readings({"node": "n1", "devices": "all"}, nodes, 1.0) == {}
    assert telemetry_readings(["n1"], nodes, 1.0) == {}
    # shown while fresh and while the node is online: an offline node's devices kept their last utilisation
    from aios.common.events import NodeLost
    from aios.gateway.service import TELEMETRY_KEPT_S, shown_telemetry

    shown = shown_telemetry(kept, nodes, 2.0)
    assert sorted(shown) == [a, b] and shown[b]["utilization_gpu"] == 97 and "received" not in shown[b]
    assert shown_telemetry(kept, nodes, 1.0 + TELEMETRY_KEPT_S + 1) == {}
    apply(state, [("node.n1", [NodeLost(aggregate_id="n1", reason="silent", last_seen=1.0)])], 2.0)
    assert shown_telemetry(kept, state.inv.nodes, 2.0) == {}


def test_a_log_follower_that_goes_away_leaves_no_consumer_behind(gateway: tuple[str, LocalCluster]) -> None:
    """A follow of a silent job noticed its reader gone only when it wrote: each follower closed kept a JetStream
    consumer and a task for as long as the job ran (for ever, for a job that waits)."""
    import asyncio
    import time

    import aiohttp
    import nats

    url, cluster = gateway
    status, made = call(url, "POST", "/api/v1/jobs", ALICE, {"name": "silent", "devices": 0,
                                                            "command": [sys.executable, "-c", "import time; time.sleep(60)"]})
    assert status == 201, made
    job = made["job"]

    async def consumers() -> int:
        nc = await nats.connect(cluster.url_as("admin"))
        try:
            return (await nc.jetstream().stream_info("AIOS_LOGS")).state.consumer_count
        finally:
            await nc.close()

    async def follow_and_leave() -> None:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ALICE}"}) as http:
            for _ in range(3):
                async with http.get(f"{url}/api/v1/jobs/{job}/logs?follow=1") as r:
                    assert r.status == 200
                    await asyncio.sleep(0.3)
        deadline = time.monotonic() + 15
        while await consumers():
            assert time.monotonic() < deadline, "the followers' consumers outlived them"
            await asyncio.sleep(0.5)
    try:
        asyncio.run(follow_and_leave())
    finally:
        call(url, "POST", f"/api/v1/jobs/{job}/cancel", ALICE)
