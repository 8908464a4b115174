"""End to end through real NATS, the services and simulated nodes: train the built-in MLP on digits, find version 1
registered with its metrics, compress it (int8, SVD), serve version 3 and get the offline predictions over HTTP;
then serve an alias and move it while requests flow: none is dropped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from aios.common.store import connect
from aios.model_registry import builtin, nn
from aios.model_registry.blobs import BlobStore
from tests.trainer.test_e2e import start, wait_job

TRAINER = {"kind": "mlp", "dataset": "digits", "classes": 10, "hidden": 128, "steps": 600, "samples": 3000,
           "lr": 0.003, "checkpoint_every": 200}


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def infer_body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def load_version(url: str, digest: str) -> nn.Model:
    async def read() -> nn.Model:
        store = await connect([url])
        try:
            return nn.decode(await BlobStore(store).get(digest))
        finally:
            await store.close()
    return asyncio.run(read())


def test_train_register_compress_serve_and_roll_an_alias(aios_env: dict[str, str], tmp_path: Path) -> None:
    cluster, aios = start(aios_env, nodes=2)

    def ok(*args: str, timeout_note: str = "") -> Any:
        out = aios(*args, "--json")
        assert out.returncode == 0, (args, out.stdout[-1500:], out.stderr[-1500:])
        return json.loads(out.stdout)
    try:
        spec = tmp_path / "digits.json"
        spec.write_text(json.dumps({"name": "digits", "tenant": "ml", "devices": 2, "trainer": TRAINER}))
        assert aios("submit", str(spec)).returncode == 0
        job = wait_job(aios, "digits", ("succeeded", "failed"), timeout=180)
        assert job["status"] == "succeeded", job

        deadline = time.monotonic() + 60
        while (out := aios("models", "show", "digits", "--json")).returncode != 0:  # registered by the service
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.5)
        v1 = json.loads(out.stdout)["versions"][0]
        assert v1["version"] == 1 and v1["lineage"]["source"] == "job" and v1["lineage"]["job_id"] == job["job"]
        assert v1["lineage"]["dataset"] == "digits/v1/seed=0/n=3000/train"
        assert v1["metrics"]["accuracy"] > 0.95 and {"precision_macro", "recall_macro", "f1_macro"} <= set(v1["metrics"])
        assert len(v1["evaluation"]["confusion"]) == 10

        v2 = ok("models", "compress", "models:/digits/1", "int8")
        v3 = ok("models", "compress", "models:/digits/1", "svd", "--target-ratio", "0.5")
        assert (v2["version"], v3["version"]) == (2, 3)
        assert v2["deltas"]["size_ratio"] < 0.3 and 100 * -v2["deltas"]["accuracy"] <= 0.5
        assert v3["deltas"]["size_ratio"] <= 0.5 and 100 * -v3["deltas"]["accuracy"] <= 1.5
        assert v3["lineage"]["parent_version"] == 1 and v3["lineage"]["compression"]["method"] == "svd"

        served = ok("serve", "models:/digits/3", "--replicas", "1", "--job-name", "serve-v3")
        x, _ = builtin.data(TRAINER, "eval")
        offline = load_version(cluster.nats_url, v3["digest"])
        status, reply = post(served["infer_url"], infer_body(x[:25]))
        assert status == 200 and reply["model_version"] == "3"
        logits = np.array(reply["outputs"][0]["data"]).reshape(25, 10)
        assert np.allclose(logits, offline.logits(x[:25]), atol=1e-4)
        assert reply["outputs"][1]["data"] == [str(p) for p in offline.predict(x[:25])]
        status, bad = post(served["infer_url"], {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3],
                                                             "data": [1, 2, 3]}]})
        assert status == 400 and "features per row" in bad["error"]
        status, unknown = post(served["infer_url"].split("/serve/")[0] + "/v2/models/digitz/infer", infer_body(x[:1]))
        assert status == 404 and "no model 'digitz'" in unknown["error"]  # a typo is not "try again later"
        # a replica that dies (the out-of-memory killer) failed the deployment for good, then restarted all of it:
        # it is replaced alone now, on its device, and the router holds requests meanwhile
        os.kill(served["replicas"][0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (status := post(served["infer_url"], infer_body(x[:2]))[0]) != 200 or \
                "ReplicaReplaced" not in json.dumps(ok("job", served["job"])):
            assert time.monotonic() < deadline, ok("job", served["job"])
            time.sleep(0.5)
        timeline = ok("job", served["job"])
        replaced = [e for e in timeline["events"] if e["type"] == "ReplicaReplaced"]
        assert timeline["status"] == "running" and "JobRequeued" not in json.dumps(timeline), timeline
        assert replaced[0]["replacement"] == "rank0-a1-r1" and "killed by SIGKILL" in replaced[0]["reason"], replaced
        out = aios("models", "delete", "digits", "3")  # its bytes are what serve-v3's replicas load on a restart
        assert out.returncode == 1 and "served by serve-v3" in out.stderr, out.stderr

        # an alias served by two replicas behind the router, moved while a client keeps asking
        out = aios("models", "alias", "digits", "production", "2")
        assert out.returncode == 0 and out.stdout.strip() == "digits@production → 2 (new alias)", out.stdout  # (was None)
        rolled = ok("serve", "models:/digits@production", "--replicas", "2", "--job-name", "serve-prod")
        assert len(rolled["replicas"]) == 2
        seen: list[tuple[int, str]] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                code, r = post(rolled["infer_url"], infer_body(x[:4]))
                seen.append((code, r.get("model_version", r.get("error", ""))))
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(seen) < 10:
            assert time.monotonic() < deadline, seen
            time.sleep(0.1)
        before_move = list(seen)
        ok("models", "alias", "digits", "production", "3")
        deadline = time.monotonic() + 20
        while not (len(seen) > 10 and all(v == "3" for _, v in seen[-6:])):
            assert time.monotonic() < deadline, seen[-10:]
            time.sleep(0.2)
        # one of the two replicas dies under load: it alone is replaced, the other serves on, nothing is dropped
        os.kill(rolled["replicas"][0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while [e["type"] for e in ok("job", rolled["job"])["events"]].count("WorkerStarted") < 3:
            assert time.monotonic() < deadline, ok("job", rolled["job"])
            time.sleep(0.3)
        answered = len(seen)
        while len(seen) < answered + 10:
            assert time.monotonic() < deadline, seen[-10:]
            time.sleep(0.1)
        stop.set()
        timeline = ok("job", rolled["job"])
        assert [e["type"] for e in timeline["events"]].count("WorkerExited") == 1, timeline  # the other ran on
        for t in threads:
            t.join()
        assert all(code == 200 for code, _ in seen), [s for s in seen if s[0] != 200][:5]
        assert all(v == "2" for _, v in before_move), before_move
        assert seen[-1][1] == "3"
        # the registry's list view: the production alias, the latest version
        listed = ok("models", "list")["models"]
        assert listed[0]["aliases"] == {"production": 3} and listed[0]["latest"] == 3

        # a file registered by hand, evaluated on the data its trainer config names, described
        path = tmp_path / "v3.aiosmlp"
        path.write_bytes(offline.encode())
        manual = ok("models", "register", "digits-manual", str(path), "--trainer", json.dumps(TRAINER),
                    "--tag", "origin=laptop")
        assert manual["version"] == 1 and manual["digest"] == v3["digest"] and manual["lineage"]["source"] == "file"
        assert manual["metrics"]["accuracy"] == v3["metrics"]["accuracy"] and manual["tags"] == {"origin": "laptop"}
        described = ok("models", "describe", "digits-manual", "1", "the SVD model, by hand")
        assert described["description"] == "the SVD model, by hand"
        assert [m["name"] for m in ok("models", "list", "--tag", "origin=laptop")["models"]] == ["digits-manual"]
        out = aios("models", "alias", "digits", "production", "9")
        assert out.returncode == 3 and "no version 9" in out.stderr
        out = aios("models", "endpoints", "nosuch")  # it listed nothing and exited 0
        assert out.returncode == 3 and "nosuch" in out.stderr, out.stderr
        assert ok("models", "endpoints", "digits-manual")["replicas"] == []  # there, and served by none
        # exit codes a script can act on: a wrong request (2) apart from a refusal the registry's state decides (1)
        out = aios("models", "alias", "digits", "3x", "1")
        assert out.returncode == 2 and "alias: '3x'" in out.stderr, out.stderr
        out = aios("models", "alias", "digits", "production", "1", "--expect", "2")
        assert out.returncode == 1 and "moved meanwhile" in out.stderr, out.stderr
        # options a method ignores, and a 0 that was taken for "unset" (svd made a x0.49 version for ratio 0)
        out = aios("models", "compress", "models:/digits/1", "svd", "--target-ratio", "0")
        assert out.returncode == 2 and "target_ratio: 0.0 is not in (0, 1)" in out.stderr, out.stderr
        out = aios("models", "compress", "models:/digits/1", "int8", "--sparsity", "0.9")
        assert out.returncode == 2 and "--sparsity: does not apply to int8" in out.stderr, out.stderr
        out = aios("models", "compress", "models:/digits/1", "svd", "--energy", "0.9", "--target-ratio", "0.2")
        assert out.returncode == 2 and "give one of them" in out.stderr, out.stderr
        # serving what is not there is refused at once, not after the replicas fail to load it
        started = time.monotonic()
        out = aios("serve", "models:/nope/1", "--wait", "30")
        assert out.returncode == 3 and "nope" in out.stderr and time.monotonic() - started < 20, out.stderr
        out = aios("serve", "models:/digits/3", "--replicas", "0")
        assert out.returncode == 2 and "--replicas: must be at least 1" in out.stderr, out.stderr
        # so is a serving spec given to `aios submit` (it was accepted, and its replicas were restarted until the
        # crash-loop cap failed it), and a bare name whose versions are all deleted
        spec = tmp_path / "serve.yaml"
        spec.write_text("name: serve-ghost\ntenant: ml\ndevices: 1\nserve:\n  model: models:/nope/1\n")
        out = aios("submit", str(spec))
        assert out.returncode == 3 and "serve.model: model 'nope' is not registered" in out.stderr, out.stderr
        spec.write_text("name: serve-ghost\ntenant: ml\ndevices: 1\nserve:\n  model: models:/digits/latest\n")
        out = aios("submit", str(spec))  # a URI the registry cannot read is a bad request (2), not "not found" (3)
        assert out.returncode == 2 and "serve.model: " in out.stderr, out.stderr
        spec.write_text("name: serve-v3\ntenant: ml\ndevices: 1\nserve:\n  model: models:/digits-manual\n")
        ok("models", "delete", "digits-manual", "1", "--reason", "test")
        out = aios("submit", str(spec))
        assert out.returncode == 3 and "serve.model: model 'digits-manual' has no live version" in out.stderr, \
            out.stderr
    finally:
        cluster.stop()
