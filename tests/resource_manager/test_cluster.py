"""Acceptance: a local cluster with two simulated nodes, seen through `aios nodes`; a SIGKILLed agent becomes
`NodeLost` within the timeout and its jobs are requeued; the restarted agent brings its node back once; a restarted
resource manager rebuilds the same inventory from the log."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from aios.cli.cluster import LocalCluster
from aios.common.config import load_settings
from aios.common.events import DevicesLeased, JobRequeued, NodeLost, NodeRegistered
from aios.common.store import connect


@pytest.fixture
def cluster(aios_env: dict[str, str], tmp_path: Path) -> Iterator[LocalCluster]:
    env = {**aios_env, "AIOS_NODE_TIMEOUT": "3", "AIOS_HEARTBEAT_INTERVAL": "0.5"}
    settings = load_settings({**env, "AIOS_NATS_PORT": "0"})
    # the resource manager alone: a scheduler would (rightly) release the hand-made lease of a job it never placed
    c = LocalCluster(settings, services=["resource-manager"], env=env,
                     agents=[("sim-a", "2xH100-80GB"), ("sim-b", "2xA100-40GB")]).start()
    yield c
    c.stop()


def aios_nodes(cluster: LocalCluster, env: dict[str, str], *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "nodes", "--json", *args],
                         env={**env, "AIOS_NATS_URL": cluster.nats_url}, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


def wait_nodes(cluster: LocalCluster, env: dict[str, str], check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    nodes = None
    while time.monotonic() < deadline:
        nodes = aios_nodes(cluster, env)
        if nodes is not None and check({n["node"]: n for n in nodes}):
            return {n["node"]: n for n in nodes}
        time.sleep(0.3)
    raise AssertionError(f"nodes never matched; last: {nodes}")


async def test_node_loss_and_return(cluster: LocalCluster, aios_env: dict[str, str]) -> None:
    nodes = await asyncio.to_thread(wait_nodes, cluster, aios_env,
                                    lambda n: set(n) == {"sim-a", "sim-b"} and all(v["online"] for v in n.values()))
    assert nodes["sim-a"]["kinds"] == ["h100"] and nodes["sim-b"]["kinds"] == ["a100"]
    detail = await asyncio.to_thread(aios_nodes, cluster, aios_env, "sim-a")
    assert [d["kind"] for d in detail["devices"]] == ["h100", "h100"] and detail["links"][0]["level"] == "nvlink"

    store = await connect([cluster.nats_url])
    history = await store.read("node.sim-a")
    uuid = history.events[-1].devices[0].uuid  # type: ignore[attr-defined]
    await store.append("node.sim-a", DevicesLeased(aggregate_id="sim-a", job_id="train-1", device_uuids=[uuid]),
                       expected_version=history.version)

    cluster.kill_agent("sim-a")
    killed = time.monotonic()
    nodes = await asyncio.to_thread(wait_nodes, cluster, aios_env, lambda n: not n["sim-a"]["online"], 20)
    detected = time.monotonic() - killed
    # timeout 3 s counted from the last heartbeat (up to 0.5 s before the kill), checked every 0.5 s, plus queries
    # (an upper bound with room for a loaded machine: 9 s was seen with two test workers and other clusters running)
    assert 3 - 0.5 <= detected < 3 + 10, detected
    assert "no heartbeat" in nodes["sim-a"]["lost_reason"] and nodes["sim-b"]["online"]
    node_log = await store.read("node.sim-a")
    lost = [e for e in node_log.events if isinstance(e, NodeLost)]
    assert len(lost) == 1 and lost[0].jobs == ["train-1"]
    requeued = (await store.read("job.train-1")).events
    assert len(requeued) == 1 and isinstance(requeued[0], JobRequeued) and requeued[0].node_id == "sim-a"
    assert requeued[0].node_seq == node_log.version  # the loss's commit: ordered by the log, not by clocks

    cluster.restart_agent("sim-a")
    nodes = await asyncio.to_thread(wait_nodes, cluster, aios_env, lambda n: n["sim-a"]["online"], 20)
    assert len(nodes) == 2 and nodes["sim-a"]["devices"] == 2 and nodes["sim-a"]["free"] == 2
    assert nodes["sim-a"]["registrations"] == 2
    registrations = [e for e in (await store.read("node.sim-a")).events if isinstance(e, NodeRegistered)]
    assert len(registrations) == 2

    # A restarted resource manager folds the same inventory from the log.
    before = await asyncio.to_thread(aios_nodes, cluster, aios_env)
    rm = cluster.procs["resource-manager"]
    rm.kill()
    rm.wait()
    cluster._spawn("resource-manager", ["service", "resource-manager"])
    after = await asyncio.to_thread(wait_nodes, cluster, aios_env, lambda n: len(n) == 2)
    assert sorted(after.values(), key=lambda n: n["node"]) == before
    assert [e for e in (await store.read("node.sim-a")).events if isinstance(e, NodeLost)] == lost  # no second loss
    await store.close()


def test_nodes_without_a_cluster_is_a_clear_error(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "nodes"], env=aios_env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "AIOS_NATS_URL is not set" in out.stderr and "Traceback" not in out.stderr


def test_quota_and_tenants_commands(aios_env: dict[str, str], tmp_path: Path) -> None:
    env = {**aios_env, "AIOS_NATS_PORT": "0"}
    c = LocalCluster(load_settings(env), env=env).start()
    try:
        env = {**aios_env, "AIOS_NATS_URL": c.nats_url}
        run = lambda *a: subprocess.run([sys.executable, "-m", "aios.cli.main", *a], env=env,  # noqa: E731
                                        capture_output=True, text=True, timeout=30)
        ok = run("quota", "nlp", "--cohort", "research", "--nominal", "h100=4,a100=2", "--borrowing-limit", "h100=2")
        assert ok.returncode == 0, ok.stderr
        bad = run("quota", "nlp", "--nominal", "h100=four")
        assert bad.returncode == 2 and "--nominal: 'h100=four' is not KIND=N" in bad.stderr
        # a kind no node has is set, and said (a typo of a kind looked the same as a kind yet to come)
        tpu = run("quota", "tpu-team", "--nominal", "tpu=4")
        assert tpu.returncode == 0 and "note: no node has tpu devices now" in tpu.stderr, tpu
        deadline = time.monotonic() + 20
        while True:
            out = run("tenants", "--json")
            tenants = json.loads(out.stdout) if out.returncode == 0 else {}
            if "nlp" in tenants:
                break
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.3)
        assert tenants["nlp"] == {"cohort": "research", "nominal": {"h100": 4, "a100": 2},
                                  "borrowing_limit": {"h100": 2}, "lending_limit": None, "usage": {}}
        # repeated, as --gres or kubectl's flags: the last one alone was kept, the h100 quota silently dropped
        assert run("quota", "cv", "--cohort", "research", "--nominal", "h100=3", "--nominal", "a100=1").returncode == 0
        assert run("quota", "solo", "--nominal", "a100=1").returncode == 0
        deadline = time.monotonic() + 20
        while "cv" not in (table := run("tenants").stdout) or "solo" not in table:
            assert time.monotonic() < deadline, table
            time.sleep(0.3)
        rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") > 3}
        assert json.loads(run("tenants", "--json").stdout)["cv"]["nominal"] == {"h100": 3, "a100": 1}
        # an unset borrowing limit is no limit (it read "none", what an empty one means)
        assert "no limit" in rows["cv"] and "all unused" in rows["cv"], table
        assert "h100=2, 0 of other kinds" in rows["nlp"], table
        # without a cohort there is nothing to borrow or lend: it read "no limit" and "all unused"
        assert "no limit" not in rows["solo"] and "all unused" not in rows["solo"], table
        gone = run("quota", "solo", "--remove")  # there was no way to take a quota back
        assert gone.returncode == 0 and "quota of solo removed" in gone.stdout, gone
        again = run("quota", "solo", "--remove")
        assert again.returncode == 3 and "tenant solo has no quota" in again.stderr, again
        both = run("quota", "cv", "--remove", "--nominal", "a100=2")
        assert both.returncode == 2 and "--remove: takes no quota options" in both.stderr, both
        assert run("quota", "cv").returncode == 2  # neither: --nominal is needed to set one
        deadline = time.monotonic() + 20
        while "solo" in json.loads(run("tenants", "--json").stdout):
            assert time.monotonic() < deadline
            time.sleep(0.3)
    finally:
        c.stop()


def test_cordon_drain_and_uncordon_commands(cluster: LocalCluster, aios_env: dict[str, str]) -> None:
    env = {**aios_env, "AIOS_NATS_URL": cluster.nats_url}
    run = lambda *a: subprocess.run([sys.executable, "-m", "aios.cli.main", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=30)
    wait_nodes(cluster, aios_env, lambda n: set(n) == {"sim-a", "sim-b"})
    ok = run("cordon", "sim-a", "--reason", "fan replacement")
    assert ok.returncode == 0 and "sim-a: cordoned" in ok.stdout, ok
    assert run("drain", "sim-b").returncode == 0
    nodes = wait_nodes(cluster, aios_env, lambda n: n["sim-a"]["cordon"] and n["sim-b"]["cordon"])
    assert nodes["sim-a"]["cordon"] == "fan replacement" and not nodes["sim-a"]["draining"]
    assert nodes["sim-b"]["draining"] and nodes["sim-b"]["online"]
    assert nodes["sim-b"]["drained"] and not nodes["sim-a"]["drained"]  # nothing left on it: as Slurm's DRAINED
    table = run("nodes").stdout
    assert "cordoned: fan replacement" in table and "drained: cordoned" in table, table
    assert run("uncordon", "sim-a").returncode == 0
    wait_nodes(cluster, aios_env, lambda n: n["sim-a"]["cordon"] == "")
    missing = run("cordon", "sim-z")
    assert missing.returncode == 3 and "no node 'sim-z'" in missing.stderr, missing
    assert run("cordon", "a *").returncode == 3

    async def register_dotted() -> None:  # node ids are host names, dots and all
        store = await connect([cluster.nats_url])
        await store.append("node.gpu-1.example.com", NodeRegistered(
            aggregate_id="gpu-1.example.com", hostname="gpu-1.example.com", agent_id="x", cpu_cores=1,
            memory_bytes=1 << 30))
        await store.close()
    asyncio.run(register_dotted())
    dotted = run("cordon", "gpu-1.example.com")
    assert dotted.returncode == 0, dotted  # it was "no node" for any id with a dot
    # a decommissioned node is forgotten once lost (it stayed in `aios nodes` and the lost-nodes gauge for ever)
    online = run("forget", "sim-a")
    assert online.returncode == 1 and "sim-a is online: only a lost node can be forgotten" in online.stderr, online
    assert run("forget", "sim-z").returncode == 3

    async def lose_dotted() -> None:
        store = await connect([cluster.nats_url])
        await store.append("node.gpu-1.example.com", NodeLost(aggregate_id="gpu-1.example.com", reason="gone",
                                                             last_seen=0.0))
        await store.close()
    asyncio.run(lose_dotted())
    gone = run("forget", "gpu-1.example.com")
    assert gone.returncode == 0 and "gpu-1.example.com: forgotten" in gone.stdout, gone
    wait_nodes(cluster, aios_env, lambda n: "gpu-1.example.com" not in n)
