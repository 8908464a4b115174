"""``aios demo``: a local cluster on an embedded NATS server and a real workload through every service.

Two simulated nodes (4 H100, 4 A100), two tenants with quotas, a mix of jobs: the built-in MLP trained data-parallel
on 4 devices over the NATS ring, a gang job, small evaluation jobs. It shows progress live, then the model registry's
version of the trained model, an int8 compression of it, serves that behind the router and asks it for predictions,
and prints where the API is. Everything goes through the same services, subjects and events as a real cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from aios.cli.cluster import LocalCluster
from aios.cli.inspect import ask
from aios.cli.main import gateway_token
from aios.common.config import load_settings
from aios.common.errors import AiosError
from aios.common.events import TenantQuotaSet
from aios.common.store import EventStore, connect
from aios.scheduler.spec import validate_spec

console = Console()
TERMINAL = ("succeeded", "failed", "cancelled")
TRAINER = {"kind": "mlp", "dataset": "digits", "classes": 10, "hidden": 128, "steps": 600, "samples": 3000,
           "lr": 0.003, "checkpoint_every": 200, "step_delay_s": 0.01, "model_name": "digits"}


def workload() -> list[dict[str, Any]]:
    py = sys.executable
    return [
        {"name": "digits-mlp", "tenant": "vision", "devices": 4, "priority": 5, "trainer": TRAINER},
        {"name": "bert-finetune", "tenant": "nlp", "devices": 2, "device_types": ["h100", "a100"], "priority": 3,
         "command": [py, "-c", "import os, time; print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'],"
                               " 'on', os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(6)"]},
        {"name": "tokenize", "tenant": "nlp", "devices": 1,
         "command": [py, "-c", "import time; print('tokenizing shard 1/1'); time.sleep(3)"]},
        {"name": "quick-eval", "tenant": "vision", "devices": 1,
         "command": [py, "-c", "import time; print('evaluating'); time.sleep(2)"]},
    ]


async def submit(store: EventStore, raw: dict[str, Any]) -> str:
    """The demo's jobs go the way every submission does (one path, one trace root), under fixed ids."""
    from aios.scheduler import submission

    spec = validate_spec(raw)
    return (await submission.submit(store, spec, job_id=f"{spec.name}-demo", via="demo")).job


def progress_table(jobs: list[dict[str, Any]]) -> Table:
    t = Table("job", "tenant", "status", "devices", "nodes", "progress", "loss", title="aios jobs (live)")
    for j in jobs:
        if j["total_steps"]:
            done = int(20 * j["step"] / j["total_steps"])
            bar = "█" * done + "░" * (20 - done) + f" {j['step']}/{j['total_steps']}"
        else:
            bar = "-"
        colour = {"succeeded": "green", "failed": "red", "running": "yellow"}.get(j["status"], "white")
        t.add_row(j["job"], j["tenant"], f"[{colour}]{j['status']}[/]", str(j["devices"]),
                  ",".join(sorted(set(j["nodes"]))) or "-", bar,
                  f"{j['loss']:.3f}" if j.get("loss") is not None else "-")
    return t


async def registry(op: str, body: dict[str, Any], url: str, timeout: float = 120.0) -> dict[str, Any]:
    return await ask(f"aios.registry.{op}", body, timeout=timeout, servers=[url])


async def run(keep: bool = False) -> int:
    logging.getLogger("aios").setLevel(logging.ERROR)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="aios-demo-"))
    env = {k: v for k, v in os.environ.items() if k != "AIOS_NATS_URL"}
    env.setdefault("AIOS_SCHEDULER_INTERVAL", "0.2")
    env.setdefault("AIOS_GATEWAY_PORT", "0")
    env.setdefault("AIOS_ROUTER_PORT", "0")
    settings = load_settings({**env, "AIOS_DATA_DIR": str(base), "AIOS_NATS_PORT": "0"})
    cluster = LocalCluster(settings, env=env, agents=[("sim-1", "4xH100-80GB"), ("sim-2", "4xA100-40GB")]).start()
    url = cluster.nats_url
    try:
        console.print(f"[bold]AIOS demo[/]: embedded NATS at {url}, data in {base}")
        console.print("services: " + ", ".join(cluster.process_names))
        reply: dict[str, Any] = {"nodes": []}
        for _ in range(150):  # services subscribe and agents register within a few seconds
            try:
                reply = await ask("aios.rm.nodes", servers=[url])
            except AiosError:
                reply = {"nodes": []}
            if sum(1 for n in reply["nodes"] if n["online"]) == 2:
                break
            await asyncio.sleep(0.2)
        for n in reply["nodes"]:
            console.print(f"  node {n['node']}: {n['devices']} x {', '.join(n['kinds'])} ({n['backend']})")

        store = await connect([url], name="aios-demo", append_deadline=30.0)
        try:
            for tenant, nominal in (("vision", {"h100": 4, "a100": 2}), ("nlp", {"a100": 2, "h100": 0})):
                await store.append(f"tenant.{tenant}", TenantQuotaSet(aggregate_id=tenant, cohort="research",
                                                                      nominal=nominal))
            console.print("quotas: vision h100=4 a100=2, nlp a100=2 (cohort research: unused quota is lent)")
            ids = [await submit(store, raw) for raw in workload()]
        finally:
            await store.close()
        console.print(f"submitted {len(ids)} jobs from 2 tenants: " + ", ".join(ids))

        deadline = time.monotonic() + 150
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                try:
                    jobs = [j for j in (await ask("aios.sched.jobs", servers=[url]))["jobs"] if j["job"] in ids]
                except AiosError:  # the scheduler is still starting
                    jobs = []
                live.update(progress_table(jobs))
                if len(jobs) == len(ids) and all(j["status"] in TERMINAL for j in jobs):
                    break
                if time.monotonic() > deadline:
                    console.print("[red]the jobs did not finish in time[/]")
                    return 1
                await asyncio.sleep(0.5)
        console.print()
        failed = [j["job"] for j in jobs if j["status"] != "succeeded"]
        if failed:
            console.print(f"[red]failed: {failed}[/] (aios logs JOB)")
            return 1
        train = next(j for j in jobs if j["job"].startswith("digits-mlp"))
        console.print(f"digits-mlp: {train['step']} steps on 4 ranks over the NATS ring all-reduce, "
                      f"accuracy on its training data {100 * (train['accuracy'] or 0):.1f}%")

        for _ in range(120):  # the registry registers the trained model when the job succeeds
            try:
                model = await registry("show", {"model": "models:/digits/1"}, url)
                break
            except Exception:  # noqa: BLE001 - not registered yet
                await asyncio.sleep(0.5)
        else:
            console.print("[red]the trained model was never registered[/]")
            return 1
        m = model["metrics"]
        console.print(f"[bold]model registry[/]: {model['uri']} ({model['size_bytes']} bytes, {model['digest'][:19]}...)"
                      f" from job {model['lineage']['job_id']}: held-out accuracy {100 * m['accuracy']:.2f}%, "
                      f"F1 {100 * m['f1_macro']:.2f}%")
        small = await registry("compress", {"model": "models:/digits/1", "method": "int8"}, url)
        d = small["deltas"]
        console.print(f"compressed: {small['uri']} int8, size x{d['size_ratio']}, accuracy {100 * d['accuracy']:+.2f} "
                      "points")
        await registry("alias", {"name": "digits", "alias": "production", "version": small["version"]}, url)

        from aios.model_registry.replica import endpoints
        from aios.model_registry.router import router_url

        store = await connect([url], name="aios-demo")
        try:
            await submit(store, {"name": "serve-digits", "tenant": "vision", "devices": 1,
                                 "serve": {"model": "models:/digits@production"}})
            for _ in range(120):
                replicas = [e for e in await endpoints(store, "digits") if e.get("job") == "serve-digits-demo"]
                router = await router_url(store)
                if replicas and router:
                    break
                await asyncio.sleep(0.5)
            gateway = (await (await _kv(store)).get("_gateway")).value.decode()
        finally:
            await store.close()
        if not replicas:
            console.print("[red]the serving replica never came up[/] (aios logs serve-digits-demo)")
            return 1
        infer = f"{router}/serve/serve-digits-demo/v2/models/digits/infer"
        console.print(f"serving models:/digits@production (version {replicas[0]['version']}) at {infer}")
        x, y = _eval_examples(8)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        reply = await asyncio.to_thread(_post, infer, body)
        labels = next(o for o in reply["outputs"] if o["name"] == "label")["data"]
        console.print(f"prediction for 8 held-out digits: {labels}  (true: {[str(v) for v in y]})")

        token = gateway_token(base / "gateway-token", env) or "<token>"  # with AIOS_GATEWAY_TOKENS: one of those
        console.print(f"[bold]dashboard[/] {gateway}/?token={token}"
                      + ("  (tokens from AIOS_GATEWAY_TOKENS)" if env.get("AIOS_GATEWAY_TOKENS", "").strip() else ""))
        console.print(f"[bold]HTTP API[/] {gateway}/api/v1/jobs (OpenAPI: {gateway}/openapi.json), e.g.")
        console.print(f"  curl -H 'Authorization: Bearer {token}' {gateway}/api/v1/jobs")
        if not keep:
            console.print("(this cluster, its dashboard and token go away now: `aios demo --keep` stays up)")
        console.print(f"[green]demo done in {time.monotonic() - started:.0f} s[/]")
        if keep:
            console.print(f"staying up: export AIOS_NATS_URL={url}  (Ctrl-C to stop)")
            await asyncio.Event().wait()
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _kv(store: EventStore) -> Any:
    from aios.model_registry.replica import endpoints_bucket

    return await endpoints_bucket(store)


def _eval_examples(n: int) -> tuple[Any, Any]:
    from aios.trainer.mlp import TrainerConfig, make_dataset

    x, y = make_dataset(TrainerConfig(**{k: v for k, v in TRAINER.items() if k != "kind"}), "eval")  # type: ignore[arg-type]
    return x[:n], y[:n]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


__all__ = ["run"]
