"""The Open Inference Protocol v2 endpoint: predictions equal offline inference, batching merges concurrent
requests, bad input gets a 4xx naming the field, and swapping the version drops no request."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import aiohttp
import msgspec
import numpy as np
import pytest
import pytest_asyncio

from aios.model_registry import builtin, compress, nn
from aios.model_registry.serving import MAX_ROWS, ModelServer, start_server
from aios.trainer.mlp import TrainerConfig

CFG = TrainerConfig(dataset="digits", classes=10, hidden=32, steps=150, samples=1000)


@pytest.fixture(scope="module")
def model() -> nn.Model:
    return builtin.model_from_params(CFG, builtin.train_locally(CFG))


@pytest_asyncio.fixture
async def served(model: nn.Model) -> AsyncIterator[tuple[ModelServer, str, aiohttp.ClientSession]]:
    server = ModelServer("digits", 1, model, max_batch=64, max_delay_ms=5)
    runner, port = await start_server(server)
    async with aiohttp.ClientSession() as http:
        yield server, f"http://127.0.0.1:{port}", http
    await runner.cleanup()


def infer_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            **extra}


async def test_predictions_match_offline_inference(served: Any, model: nn.Model) -> None:
    server, url, http = served
    async with http.get(f"{url}/v2/models/digits") as r:
        meta = await r.json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    x, _ = builtin.data(CFG, "eval")
    async with http.post(f"{url}/v2/models/digits/infer", json=infer_body(x[:7], id="r1")) as r:
        assert r.status == 200
        reply = await r.json()
    assert reply["id"] == "r1" and reply["model_version"] == "1"
    out = {o["name"]: o for o in reply["outputs"]}
    assert out["output"]["shape"] == [7, 10]
    assert np.allclose(np.array(out["output"]["data"]).reshape(7, 10), model.logits(x[:7]), atol=1e-5)
    assert out["label"]["data"] == [str(i) for i in model.predict(x[:7])]


async def test_concurrent_requests_are_batched(served: Any, model: nn.Model) -> None:
    server, url, http = served
    x, _ = builtin.data(CFG, "eval")

    async def one(i: int) -> list[str]:
        async with http.post(f"{url}/v2/models/digits/infer", json=infer_body(x[i:i + 2])) as r:
            return (await r.json())["outputs"][1]["data"]
    results = await asyncio.gather(*(one(i) for i in range(60)))
    assert results == [[str(p) for p in model.predict(x[i:i + 2])] for i in range(60)]
    stats = server.stats()
    assert stats["requests"] == 60 and stats["batches"] < 60 and stats["p99_ms"] >= stats["p50_ms"] > 0


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 63], "data": [0.0] * 126}]}, 400,
     "inputs[0].shape: 63 features per row, the model takes 64"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64], "data": [0.0] * 100}]}, 400,
     "inputs[0].data: 100 values for shape [2, 64]"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ["a"] * 64}]}, 400,
     "inputs[0].data: not all numbers"),
    ({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1, 64], "data": [0] * 64}]}, 400,
     "inputs[0].datatype: 'BYTES' is not a numeric type"),
    ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}]}, 400,
     "inputs[0].name: 'pixels'"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [MAX_ROWS + 1, 64], "data": []}]}, 413,
     "rows is more than"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [float("nan")] * 64}]}, 400,
     "NaN"),
    ({"input": []}, 400, "inputs: exactly one input tensor"),
    # beyond what the datatype holds: FP32 overflowed to infinity, and the reply was NaN logits and label "0", 200
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1e39] * 64}]}, 400,
     "inputs[0].data: values beyond the range of FP32"),
    ({"inputs": [{"name": "input", "datatype": "INT8", "shape": [1, 64], "data": [300] * 64}]}, 400,
     "inputs[0].data: values beyond the range of INT8"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [3e38] * 64}]}, 400,
     "inputs[0].data: the model's outputs overflow FP32"),
    # an integer too large for a float was a 500 with a traceback; strings and booleans were read as numbers
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [10 ** 400] + [0] * 63}]}, 400,
     "inputs[0].data: values beyond the range of FP32"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ["1"] * 64}]}, 400,
     "inputs[0].data: not all numbers"),
    ({"inputs": [{"name": "input", "datatype": "INT8", "shape": [1, 64], "data": [[True] * 64]}]}, 400,
     "inputs[0].data: not all numbers"),
])
async def test_bad_input_gets_a_4xx_that_names_the_field(served: Any, body: dict[str, Any], status: int,
                                                         message: str) -> None:
    _, url, http = served
    import json

    raw = json.dumps(body, allow_nan=True)
    async with http.post(f"{url}/v2/models/digits/infer", data=raw,
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == status
        assert message in (await r.json())["error"]


async def test_not_json_too_large_and_unknown_model(served: Any) -> None:
    _, url, http = served
    async with http.post(f"{url}/v2/models/digits/infer", data=b"{nope") as r:
        assert r.status == 400 and "body: not JSON" in (await r.json())["error"]
    async with http.post(f"{url}/v2/models/digits/infer", data=b"[" + b"9" * 5000 + b"]") as r:  # Python's limit
        assert r.status == 400 and "body: not JSON" in (await r.json())["error"]
    async with http.post(f"{url}/v2/models/digits/infer", data=b" " * (17 << 20)) as r:
        assert r.status == 413
    # were a 500 with a traceback in the job's log (the gateway said what was wrong)
    async with http.post(f"{url}/v2/models/digits/infer", data=b'{"inputs": []}',
                         headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}) as r:
        assert r.status == 400 and "Content-Encoding says (gzip)" in (await r.json())["error"]
    async with http.post(f"{url}/v2/models/digits/infer", data=b'{"inputs": ' + b"[" * 100_000) as r:
        assert r.status == 400 and (await r.json())["error"] == "body: nested too deeply"
    async with http.post(f"{url}/v2/models/other/infer", json={}) as r:
        assert r.status == 404 and "'other' is not served here" in (await r.json())["error"]
    async with http.get(f"{url}/v2/models/digits/versions/1/ready") as r:  # the protocol's version ready: a 404
        assert r.status == 200 and (await r.json())["ready"] is True
    async with http.get(f"{url}/v2/models/digits/versions/9/ready") as r:
        assert r.status == 404 and "version: 9 is not being served" in (await r.json())["error"]


async def test_swapping_the_version_drops_no_request(served: Any, model: nn.Model) -> None:
    server, url, http = served
    small, _ = compress.int8(model)
    x, _ = builtin.data(CFG, "eval")
    seen: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def client(k: int) -> None:
        while not stop.is_set():
            async with http.post(f"{url}/v2/models/digits/infer", json=infer_body(x[k:k + 3])) as r:
                seen.append((r.status, (await r.json()).get("model_version", "")))
    async def answered(enough: Any) -> None:  # by count, not by time: a loaded machine answered 40 in 0.6 s
        deadline = asyncio.get_running_loop().time() + 60
        while not enough():
            assert asyncio.get_running_loop().time() < deadline, f"{len(seen)} answers"
            await asyncio.sleep(0.01)
    clients = [asyncio.ensure_future(client(k)) for k in range(8)]
    await answered(lambda: len(seen) >= 25)
    server.swap(2, small)
    swapped_at = len(seen)
    await answered(lambda: sum(v == "2" for _, v in seen[swapped_at:]) >= 25)  # requests go on across the swap
    stop.set()
    await asyncio.gather(*clients)
    assert all(status == 200 for status, _ in seen)
    versions = [v for _, v in seen]
    assert "1" in versions and versions[-1] == "2"
    with pytest.raises(ValueError, match="takes 2"):
        server.swap(3, nn.from_mlp(np.zeros((2, 4)), np.zeros(4), np.zeros((4, 10)), np.zeros(10), []))


async def test_the_router_finds_replicas_started_after_it_looked(store: Any, model: nn.Model) -> None:
    """A deployment's replicas appear after the router cached the model's list: the first request still reaches
    them; a version no replica serves is a 503 that says so; a dead replica is skipped. A model the registry does not
    hold is a 404 (it was a 503, which tells a client to try again); the server's metadata is at ``GET /v2``."""
    from aios.model_registry.replica import endpoints_bucket
    from aios.model_registry.router import Router
    from aios.model_registry.serving import start_server_app

    router = Router(store, unservable=lambda name, job, version: None if name == "digits" and version != "6" else
                    "the registry holds no model " + repr(name) if name != "digits" else "no version 6", hold_s=3.0)
    runner, port = await start_server_app(router.app())
    server = ModelServer("digits", 4, model)
    replica, replica_port = await start_server(server)
    kv = await endpoints_bucket(store)
    before = (await store.js.stream_info("KV_AIOS_ENDPOINTS")).state.consumer_count
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/serve/job-a/v2/models/digits") as r:
                assert r.status == 503  # nothing announced yet (after holding the request 3 s)
            # a request held while its deployment starts (or restarts, or moves) gets through once a replica is up
            x, _ = builtin.data(CFG, "eval")
            held = asyncio.ensure_future(http.post(f"http://127.0.0.1:{port}/serve/job-b/v2/models/digits/infer",
                                                   json=infer_body(x[:2])))
            await asyncio.sleep(1.5)  # the router looked twice, then said 503, within a second
            await kv.put("digits.job-b.0", json.dumps({"key": "digits.job-b.0", "url": f"http://127.0.0.1:{replica_port}",
                                                       "model": "digits", "job": "job-b", "version": 4}).encode())
            async with await held as r:
                assert r.status == 200, await r.text()
            for key, url in (("digits.job-a.0", f"http://127.0.0.1:{replica_port}"),
                             ("digits.job-a.1", "http://127.0.0.1:9")):  # the second one is dead
                await kv.put(key, json.dumps({"key": key, "url": url, "model": "digits", "job": "job-a",
                                              "version": 4}).encode())
            x, _ = builtin.data(CFG, "eval")
            for _ in range(4):
                async with http.post(f"http://127.0.0.1:{port}/serve/job-a/v2/models/digits/infer",
                                     json=infer_body(x[:2])) as r:
                    assert r.status == 200 and (await r.json())["model_version"] == "4"
            async with http.post(f"http://127.0.0.1:{port}/v2/models/digits/versions/4/infer",
                                 json=infer_body(x[:2])) as r:
                assert r.status == 200
            async with http.post(f"http://127.0.0.1:{port}/v2/models/digits/versions/5/infer",
                                 json=infer_body(x[:2])) as r:
                assert r.status == 503 and "at version 5" in (await r.json())["error"]
            async with http.post(f"http://127.0.0.1:{port}/v2/models/digits/versions/6/infer",
                                 json=infer_body(x[:2])) as r:  # one that can never be served: its reason
                assert r.status == 404 and (await r.json())["error"] == "model: no version 6"
            for i in range(5):  # unknown models: each lookup used to leave two consumers on the server for 5 min
                async with http.post(f"http://127.0.0.1:{port}/v2/models/none{i}/infer", json={}) as r:
                    assert r.status == 404 and "the registry holds no model 'none" in (await r.json())["error"]
            async with http.get(f"http://127.0.0.1:{port}/v2") as r:
                assert r.status == 200 and (await r.json())["name"] == "aios-router"
            async with http.post(f"http://127.0.0.1:{port}/serve/job-a/v2/models/digits/infer", data=b"{}",
                                 headers={"Content-Encoding": "gzip"}) as r:  # was a 500 with a traceback
                assert r.status == 400 and "Content-Encoding says (gzip)" in (await r.json())["error"]
            async with http.get(f"http://127.0.0.1:{port}/v3") as r:  # aiohttp's own errors: JSON, not text
                assert r.status == 404 and (await r.json())["error"] == "no such resource: /v3"
            async with http.post(f"http://127.0.0.1:{port}/v2") as r:
                assert r.status == 405 and (await r.json())["error"] == "POST is not allowed on /v2"
            info = await store.js.stream_info("KV_AIOS_ENDPOINTS")
            assert info.state.consumer_count <= before + 1, (before, info.state.consumer_count)  # its one watch
    finally:
        for key in ("digits.job-a.0", "digits.job-a.1", "digits.job-b.0"):
            await kv.delete(key)
        await replica.cleanup()
        await runner.cleanup()


def test_the_router_says_which_requests_can_never_be_served() -> None:
    """A deployment that ended (or never was), a version that is not there, a job that serves another model: each
    was a 503, which tells a client to try again, for ever. They are 404s naming what is wrong; a version or a job
    that exists but has no replica up yet stays a 503."""
    from aios.common.events import (
        JobSubmitted, JobSucceeded, Lineage, ModelAliasSet, ModelVersionDeleted, ModelVersionRegistered,
        Signature,
    )
    from aios.common.store import Commit
    from aios.model_registry.service import RegistryView, fold

    def registered(version: int) -> ModelVersionRegistered:
        return ModelVersionRegistered(aggregate_id="digits", version=version, digest=f"sha256:{version}", size_bytes=1,
                                      format="npz", signature=Signature(input_shape=[64], output_shape=[10]),
                                      lineage=Lineage(source="file"))

    def serve(job: str, uri: str) -> JobSubmitted:
        return JobSubmitted(aggregate_id=job, tenant="t", spec={"name": job, "serve": {"model": uri}})

    view = RegistryView()
    for seq, (aggregate, event) in enumerate([
            ("model.digits", registered(1)), ("model.digits", registered(2)),
            ("model.digits", ModelVersionDeleted(aggregate_id="digits", version=1)),
            ("job.web-1", serve("web-1", "models:/digits@production")), ("job.old-2", serve("old-2", "models:/digits/2")),
            ("job.old-2", JobSucceeded(aggregate_id="old-2")), ("job.iris-3", serve("iris-3", "models:/iris/1")),
            ("model.mnist", msgspec.structs.replace(registered(1), aggregate_id="mnist"))], 1):
        view = fold(view, Commit(seq, aggregate, [event]))
    assert view.unservable("digits", None, None) is None
    assert view.unservable("digits", "web-1", "2") is None  # there: a replica may be starting
    assert view.unservable("resnet", None, None) == "the registry holds no model 'resnet' (aios models)"
    assert view.unservable("digits", None, "1") == "model 'digits' has no version 1 (live: 2)"
    assert view.unservable("digits", None, "x") == "model 'digits' has no version x (live: 2)"
    assert view.unservable("digits", "old-2", None) == "no serving job old-2 is running (it ended, or never was)"
    assert view.unservable("digits", "iris-3", None) == "job iris-3 serves models:/iris/1, not model 'digits'"
    # registered, but no deployment serves it: nothing to wait for (the router held such requests 10 s)
    assert view.unservable("mnist", None, None) == "no deployment serves model 'mnist' (aios serve models:/mnist@ALIAS)"
    # a live version no deployment serves: the router held such requests 10 s, then said 503 (try again)
    view = fold(view, Commit(9, "model.digits", [registered(3)]))
    view = fold(view, Commit(10, "job.pin-4", [serve("pin-4", "models:/digits/2")]))
    assert view.unservable("digits", None, "3") is None  # web-1 follows @production, not set yet: it may be 3
    aliased = ModelAliasSet(aggregate_id="digits", alias="production", version=2)
    view = fold(view, Commit(11, "model.digits", [aliased]))
    assert view.unservable("digits", None, "2") is None
    assert view.unservable("digits", None, "3") == ("no deployment serves version 3 of model 'digits' (pin-4: version "
                                                    "2, web-1: version 2); pin one to it with aios serve "
                                                    "models:/digits/3")
    assert view.unservable("digits", "pin-4", "3").startswith("no deployment serves version 3")
    view = fold(view, Commit(12, "job.bare-5", [serve("bare-5", "digits")]))
    assert view.unservable("digits", None, "3") is None  # a bare name is pinned at its submission: the view
    # does not hold to which version



async def test_a_replica_that_is_slow_is_not_sent_the_request_again(store: Any) -> None:
    """A replica that took longer than the router's timeout got the same request three times in a row (90 s),
    and the client was then told that no replica answered. A timeout is a 504 naming the replica, after one try."""
    from aiohttp import web as aioweb

    from aios.model_registry.replica import endpoints_bucket
    from aios.model_registry.router import Router
    from aios.model_registry.serving import start_server_app

    calls = []

    async def slow(request: aioweb.Request) -> aioweb.Response:
        calls.append(request.path)
        await asyncio.sleep(3)
        return aioweb.json_response({})

    app = aioweb.Application()
    app.router.add_post("/v2/models/slowpoke/infer", slow)
    replica, replica_port = await start_server_app(app)
    kv = await endpoints_bucket(store)
    await kv.put("slowpoke.j.0", json.dumps({"key": "slowpoke.j.0", "url": f"http://127.0.0.1:{replica_port}",
                                             "model": "slowpoke", "job": "j", "version": 1}).encode())
    router = Router(store, timeout_s=0.5)
    runner, port = await start_server_app(router.app())
    for _ in range(40):  # until the router's watch has seen it
        if await router.replicas("slowpoke", fresh=True):
            break
    try:
        async with aiohttp.ClientSession() as http:
            started = asyncio.get_running_loop().time()
            async with http.post(f"http://127.0.0.1:{port}/v2/models/slowpoke/infer", json={}) as r:
                assert r.status == 504, await r.text()
                assert (await r.json())["error"] == (f"model: replica http://127.0.0.1:{replica_port} did not answer "
                                                     "within 0.5 s")
            assert asyncio.get_running_loop().time() - started < 2.5 and calls == ["/v2/models/slowpoke/infer"]
    finally:
        await kv.delete("slowpoke.j.0")
        await runner.cleanup()
        await replica.cleanup()


async def test_a_replica_restarts_to_follow_a_forced_move_to_other_shapes(store: Any, model: nn.Model,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """From a walkthrough: `aios models alias digits production 5 --force` to a version of other shapes said "→ 5",
    the replicas served version 1 on, and one replaced later loaded version 5: requests failed on one replica in
    two. A replica that cannot swap such a version in exits to be replaced (one at a time, by rank), and its
    replacement loads what the alias names."""
    from aios.model_registry import replica as replica_module
    from aios.model_registry.replica import EXIT_TO_FOLLOW, Replica
    from aios.model_registry.service import Registry

    monkeypatch.setattr(replica_module, "RESTART_STAGGER_S", 0.2)
    reg = Registry(store)
    await reg.register_bytes("follow", model.encode())
    narrow = nn.Model([nn.Dense(np.ones((32, 10), np.float32), np.zeros(10, np.float32))], list(model.labels))
    await reg.register_bytes("follow", narrow.encode())
    await reg.alias("follow", "prod", 1)
    replica = Replica(store, "models:/follow@prod", "job-f", 1, "127.0.0.1", 0, 64, 2.0)
    stop = asyncio.Event()
    running = asyncio.ensure_future(replica.run(stop))
    for _ in range(100):
        if replica.server is not None:
            break
        await asyncio.sleep(0.05)
    assert replica.server is not None and replica.server.loaded.version == 1
    await reg.alias("follow", "prod", 2, force=True)
    await asyncio.wait_for(running, 10)
    assert replica.restart_to_follow and EXIT_TO_FOLLOW != 0
    replacement = Replica(store, "models:/follow@prod", "job-f", 1, "127.0.0.1", 0, 64, 2.0)
    assert (await replacement.load())[0] == 2


async def test_every_replica_of_a_bare_name_serves_the_version_latest_at_submission(store: Any,
                                                                                   model: nn.Model) -> None:
    """From a walkthrough: `aios serve digits --replicas 2`, then a compression registered version 10 and a
    replica was replaced: it loaded version 10 while the other served 9. The launcher hands every replica the
    job's submission time, and a bare name is the latest version registered by then."""
    import time

    from aios.model_registry.replica import Replica
    from aios.model_registry.service import Registry

    reg = Registry(store)
    await reg.register_bytes("bare", model.encode())
    submitted = time.time()
    await asyncio.sleep(0.05)
    await reg.register_bytes("bare", model.encode())  # after the job was submitted
    pinned = Replica(store, "bare", "job-b", 1, "127.0.0.1", 0, 64, 2.0, as_of=submitted)
    assert (await pinned.load())[0] == 1
    assert (await Replica(store, "bare", "job-b", 0, "127.0.0.1", 0, 64, 2.0).load())[0] == 2  # nothing pinned
    assert (await Replica(store, "bare/2", "job-b", 0, "127.0.0.1", 0, 64, 2.0, as_of=submitted).load())[0] == 2
    # found by review: the submission's stamp is its host's clock, the registration's the registry's; by log
    # sequence (the job's submission's), a submitter 30 s behind or ahead pins the same version
    [first, second] = sorted((await reg.read_model("bare")).versions.values(), key=lambda v: v.version)
    between = first.registered_seq  # a submission stored after the first registration, before the second
    assert second.registered_seq > between
    for skewed in (submitted - 30, submitted + 30):
        pinned = Replica(store, "bare", "job-b", 1, "127.0.0.1", 0, 64, 2.0, as_of=skewed, as_of_seq=between)
        assert (await pinned.load())[0] == 1


def test_the_launcher_tells_a_replica_when_its_job_was_submitted() -> None:
    from aios.common.events import Assignment
    from aios.scheduler.spec import validate_spec
    from aios.scheduler.state import JobState
    from aios.trainer.launcher import worker_env

    spec = validate_spec({"name": "s", "tenant": "t", "devices": 1, "serve": {"model": "bare"}})
    a = Assignment(node_id="n1", device_uuids=["g0"], ranks=[0])
    job = JobState("s-1", spec, "t", 1, 1234.5, assignments=[a])
    serve = json.loads(worker_env(job, a, 0, 0, "nats://x")["AIOS_SERVE"])
    assert serve["as_of"] == 1234.5 and serve["as_of_seq"] == 1  # the submission's place in the log
