"""Built-in training jobs end to end: submit -> schedule -> launch through device agents -> ring all-reduce over NATS
-> checkpoints -> success, on a local cluster of simulated nodes and a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from aios.cli.cluster import LocalCluster
from aios.common.config import load_settings
from aios.common.events import (
    CheckpointSaved, JobFailed, JobPreempted, JobProgress, JobRequeued, JobSucceeded, NodeLost,
)
from aios.common.store import connect
from aios.trainer.collective import Collective
from aios.trainer.mlp import TrainerConfig
from aios.trainer.training import train

TRAINER = {"kind": "mlp", "steps": 150, "checkpoint_every": 50}


class Alone(Collective):
    async def allreduce(self, array: np.ndarray) -> np.ndarray:
        return array.copy()


def one_rank_accuracy(trainer: dict[str, Any] = TRAINER) -> float:
    """The same training on one rank, in process (the reference a data-parallel run must match)."""
    async def nothing(_: object) -> None:
        return None
    cfg = TrainerConfig(**{**trainer, "step_delay_s": 0.0})  # type: ignore[arg-type]
    return asyncio.run(train(cfg, Alone(0, 1), None, nothing, nothing, lambda: False)).final_accuracy


def job_events(url: str, job_id: str) -> list[Any]:
    async def read() -> list[Any]:
        store = await connect([url])
        try:
            return await store.read_job(job_id)
        finally:
            await store.close()
    return asyncio.run(read())


def start(aios_env: dict[str, str], nodes: int = 2, **extra_env: str) -> tuple[LocalCluster, Any]:
    env = {**aios_env, "AIOS_SCHEDULER_POLICY": "fifo", "AIOS_SCHEDULER_INTERVAL": "0.1", **extra_env}
    cluster = LocalCluster(load_settings({**env, "AIOS_NATS_PORT": "0"}), env=env,
                           agents=[(f"sim-{'abc'[i]}", "2xA100-40GB") for i in range(nodes)]).start()
    env = {**env, "AIOS_NATS_URL": cluster.nats_url}

    def aios(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aios.cli.main", *args], env=env, capture_output=True,
                              text=True, timeout=60)
    return cluster, aios


def wait_job(aios: Any, name: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = aios("jobs", "--json")
        if out.returncode == 0:
            seen = {j["name"]: j for j in json.loads(out.stdout)}
            if seen.get(name, {}).get("status") in statuses:
                return seen[name]
        time.sleep(0.5)
    job = seen.get(name) or {}
    why = aios("why", job["job"]).stdout if job.get("job") else ""
    raise AssertionError(f"{name} never reached {statuses}: {job}\n"
                         f"aios why: {why}\naios nodes: {aios('nodes', '--json').stdout}")


def failure(aios: Any, job: dict[str, Any]) -> str:
    """What a user would read to learn why the job failed: its timeline and its workers' output."""
    return f"{job}\naios job: {aios('job', job['job']).stdout}\naios logs: {aios('logs', job['job']).stdout[-4000:]}"


def test_four_rank_mlp_job_and_a_plain_command_job(aios_env: dict[str, str], tmp_path: Path) -> None:
    cluster, aios = start(aios_env)
    try:
        spec = tmp_path / "mlp.json"
        spec.write_text(json.dumps({"name": "mlp4", "tenant": "ml", "devices": 4, "trainer": TRAINER}))
        out = aios("submit", str(spec), "--json")
        assert out.returncode == 0, out.stderr
        job_id = json.loads(out.stdout)["job"]
        done = wait_job(aios, "mlp4", ("succeeded", "failed"))
        assert done["status"] == "succeeded", failure(aios, done)
        assert sorted(done["nodes"]) == ["sim-a", "sim-b"]  # 4 ranks over two nodes
        assert done["step"] == 150 and done["checkpoint_step"] == 150 and done["steps_redone"] == 0
        history = job_events(cluster.nats_url, job_id)
        final = [e for e in history if isinstance(e, JobProgress) and e.final]
        assert len(final) == 1 and abs(final[0].accuracy - one_rank_accuracy()) <= 0.01
        assert final[0].accuracy > 0.9
        assert [e.step for e in history if isinstance(e, CheckpointSaved)] == [50, 100, 150]

        # a plain command: the torchrun-style environment reaches the user's script
        script = tmp_path / "show_env.py"
        report = tmp_path / "env"
        report.mkdir()
        script.write_text("import os, json, pathlib\n"
                          "keys = ['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT',"
                          " 'CUDA_VISIBLE_DEVICES', 'AIOS_JOB_ID']\n"
                          f"pathlib.Path({str(report)!r}, os.environ['RANK']).write_text("
                          "json.dumps({k: os.environ.get(k) for k in keys}))\n")
        plain = tmp_path / "plain.json"
        plain.write_text(json.dumps({"name": "plain", "tenant": "ml", "devices": 3,
                                     "command": [sys.executable, str(script)]}))
        assert aios("submit", str(plain)).returncode == 0
        assert wait_job(aios, "plain", ("succeeded", "failed"))["status"] == "succeeded"
        seen = {int(p.name): json.loads(p.read_text()) for p in report.iterdir()}
        # the built-in trainer's output, kept after its workers are gone
        shown = aios("logs", job_id)
        assert shown.returncode == 0, shown.stderr
        for rank in range(4):
            assert f'[rank{rank}-a1] {{"rank": {rank}, "world": 4, "step": 150, "stopped": false' in shown.stdout, \
                shown.stdout[-2000:]
        followed = aios("logs", job_id, "--follow")  # the job has ended: it prints and ends (it waited for ever)
        assert followed.returncode == 0 and followed.stdout == shown.stdout, followed.stderr
        only = aios("logs", job_id, "--worker", "rank3-a1")
        assert only.returncode == 0 and "[rank3-a1" in only.stdout and "[rank0-a1]" not in only.stdout
        assert aios("logs", "nope-123").returncode == 3  # not found
        wrong = aios("logs", job_id, "--worker", "rank3")  # printed nothing, exit 0
        assert wrong.returncode == 3 and "no worker 'rank3'; its workers: rank0-a1, rank1-a1" in wrong.stderr, wrong
        assert sorted(seen) == [0, 1, 2]
        assert {s["WORLD_SIZE"] for s in seen.values()} == {"3"}
        assert len({s["MASTER_PORT"] for s in seen.values()}) == 1
        assert sorted(s["LOCAL_RANK"] for s in seen.values()) == ["0", "0", "1"]  # 2 devices on one node, 1 on the other
        assert all(s["CUDA_VISIBLE_DEVICES"] for s in seen.values())
    finally:
        cluster.stop()


def submit(aios: Any, tmp_path: Path, spec: dict[str, Any]) -> str:
    """Submit a spec through `aios submit`; the job id."""
    path = tmp_path / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    out = aios("submit", str(path), "--json")
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["job"])


def running_past(aios: Any, name: str, step: int, timeout: float = 60) -> dict[str, Any]:
    """The job's summary once it runs at ``step`` or later."""
    deadline = time.monotonic() + timeout
    while (job := wait_job(aios, name, ("running",)))["step"] < step:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def test_node_loss_requeues_and_resumes_from_the_checkpoint(aios_env: dict[str, str], tmp_path: Path) -> None:
    trainer = {"kind": "mlp", "steps": 200, "checkpoint_every": 50, "step_delay_s": 0.05}
    cluster, aios = start(aios_env, nodes=3, AIOS_NODE_TIMEOUT="3", AIOS_HEARTBEAT_INTERVAL="0.5")
    try:
        job_id = submit(aios, tmp_path, {"name": "resilient", "tenant": "ml", "devices": 4, "trainer": trainer})
        job = running_past(aios, "resilient", 70)  # past the first checkpoint (step 50), before the end
        victim = sorted(set(job["nodes"]))[0]
        cluster.kill_agent(victim)  # its workers die with it
        done = wait_job(aios, "resilient", ("succeeded", "failed"), timeout=150)
        assert done["status"] == "succeeded", failure(aios, done)
        assert victim not in done["nodes"] and done["attempts"] == 2
        assert done["step"] == 200  # not 200 + the steps trained twice
        history = job_events(cluster.nats_url, job_id)
        saved_first = [e.step for e in history if isinstance(e, CheckpointSaved) and e.attempt == 1]
        resumed = [e.step for e in history if isinstance(e, JobProgress) and e.attempt == 2]
        assert saved_first and min(resumed) > max(saved_first)  # resumed after the last checkpoint, not from 0
        # steps reported past the last checkpoint were trained again; a report may lag the checkpoint (91 < 100)
        reported_first = max(e.step for e in history if isinstance(e, JobProgress) and e.attempt == 1)
        assert done["steps_redone"] == max(0, reported_first - max(saved_first))
        final = [e for e in history if isinstance(e, JobProgress) and e.final]
        assert len(final) == 1 and abs(final[0].accuracy - one_rank_accuracy(trainer)) <= 0.01
    finally:
        cluster.stop()


def test_a_node_shut_down_under_a_job_drains_it_and_it_resumes(aios_env: dict[str, str], tmp_path: Path) -> None:
    """Stopping a node's agent (SIGTERM, as `aios up` does on Ctrl-C) stopped its workers, which checkpoint and
    exit 0: that was recorded as the job's success, at the step it had reached. The agent drains its node first:
    the job is preempted, checkpoints and resumes on another node; the agent's next start opens the node again."""
    trainer = {"kind": "mlp", "steps": 200, "checkpoint_every": 1000, "step_delay_s": 0.05}
    cluster, aios = start(aios_env, nodes=3, AIOS_NODE_TIMEOUT="3", AIOS_HEARTBEAT_INTERVAL="0.5")
    try:
        job_id = submit(aios, tmp_path, {"name": "interrupted", "tenant": "ml", "devices": 2, "trainer": trainer})
        job = running_past(aios, "interrupted", 40)
        victim = sorted(set(job["nodes"]))[0]
        cluster.stop_agent(victim)
        done = wait_job(aios, "interrupted", ("succeeded", "failed"), timeout=150)
        assert done["status"] == "succeeded" and done["step"] == 200 and done["attempts"] == 2, done
        assert victim not in done["nodes"]
        history = job_events(cluster.nats_url, job_id)
        saved_first = [e.step for e in history if isinstance(e, CheckpointSaved) and e.attempt == 1]
        resumed = [e.step for e in history if isinstance(e, JobProgress) and e.attempt == 2]
        assert saved_first and 40 <= saved_first[-1] < 200 and min(resumed) > saved_first[-1]  # the stop's checkpoint
        succeeded = [e for e in history if isinstance(e, JobSucceeded)]
        assert len(succeeded) == 1 and succeeded[0].runtime_s >= 1.0  # both runs' time (it was always 0.0)
        preempted = [e.reason for e in history if isinstance(e, JobPreempted)]
        assert preempted == [f"node {victim} drained: its agent is shutting down"], history
        nodes = {n["node"]: n for n in json.loads(aios("nodes", "--json").stdout)}
        assert nodes[victim]["cordon"] == "its agent is shutting down"  # (and lost by now: the agent is gone)
        cluster.restart_agent(victim)
        deadline = time.monotonic() + 30
        while (node := {n["node"]: n for n in json.loads(aios("nodes", "--json").stdout)}[victim])["cordon"]:
            assert time.monotonic() < deadline, node
            time.sleep(0.3)
        assert node["online"] and not node["draining"]
    finally:
        cluster.stop()


def worker_pids(job_id: str) -> dict[int, int]:
    """RANK -> pid of the job's live worker processes (from their environment)."""
    out = {}
    for proc in Path("/proc").iterdir():
        try:
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("AIOS_JOB_ID") == job_id and "RANK" in env:
            out[int(env["RANK"])] = int(proc.name)
    return out


def test_an_agent_killed_while_it_shuts_down_leaves_no_job_running_for_ever(aios_env: dict[str, str],
                                                                             tmp_path: Path) -> None:
    """An agent killed during its shutdown's drain wait (SIGTERM, then SIGKILL: a host's shutdown timeout) took its
    workers with it before recording their exits; restarted, its node came back, and a job that may not be
    preempted stayed "running" for ever on it, holding its devices and its tenant's quota. The next agent records
    those exits, and the job runs again."""
    cluster, aios = start(aios_env, nodes=1, AIOS_HEARTBEAT_INTERVAL="0.5")
    try:
        spec = tmp_path / "np.json"
        spec.write_text(json.dumps({"name": "np", "tenant": "ml", "devices": 2, "preemptible": False,
                                    "command": [sys.executable, "-c", "import time; time.sleep(600)"]}))
        out = aios("submit", str(spec), "--json")
        assert out.returncode == 0, out.stderr
        job_id = json.loads(out.stdout)["job"]
        wait_job(aios, "np", ("running",))
        cluster.stop_agent("sim-a", grace=1.0)  # killed 1 s into its drain wait
        cluster.restart_agent("sim-a")
        deadline = time.monotonic() + 60
        while not any(isinstance(e, JobRequeued) for e in job_events(cluster.nats_url, job_id)):
            assert time.monotonic() < deadline, f"still {aios('why', job_id).stdout}"
            time.sleep(0.5)
        again = wait_job(aios, "np", ("running",), timeout=60)
        assert again["attempts"] == 2, again  # once: a start on the fold's stale view of the first lease was
        # stopped when the fold caught up with its release, and the job placed a third time
    finally:
        cluster.stop()


def test_a_worker_stopped_by_someone_else_resumes_and_does_not_succeed_half_trained(
        aios_env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM to one rank (an operator, an OOM killer's warning, a node script): the built-in worker checkpoints and
    stopped with exit 0, and the job was recorded as succeeded at the step it had reached, its model registered."""
    trainer = {"kind": "mlp", "steps": 140, "checkpoint_every": 1000, "step_delay_s": 0.05}
    cluster, aios = start(aios_env, nodes=1)
    try:
        job_id = submit(aios, tmp_path, {"name": "poked", "tenant": "ml", "devices": 2, "trainer": trainer})
        running_past(aios, "poked", 40)
        os.kill(worker_pids(job_id)[1], signal.SIGTERM)
        done = wait_job(aios, "poked", ("succeeded", "failed"), timeout=150)
        assert done["status"] == "succeeded" and done["step"] == 140 and done["attempts"] == 2, done
        history = job_events(cluster.nats_url, job_id)
        requeued = [e.reason for e in history if isinstance(e, JobRequeued)]
        assert len(requeued) == 1 and "stopped before its last step (exit 75" in requeued[0], requeued
        resumed = [e.step for e in history if isinstance(e, JobProgress) and e.attempt == 2]
        assert resumed and min(resumed) > 40  # from the stop's checkpoint, not from step 0
    finally:
        cluster.stop()


def test_a_nats_restart_interrupts_training_but_fails_nothing_and_loses_no_node(
        aios_env: dict[str, str], tmp_path: Path) -> None:
    """nats-server killed and started again under a 2-rank job: the ranks' collective broke and the job failed with a
    traceback, and the heartbeat bucket (server memory) was gone, so every node was declared lost every few seconds
    for ever. Now the job resumes from its checkpoint and succeeds, and the node stays online."""
    trainer = {"kind": "mlp", "steps": 200, "checkpoint_every": 50, "step_delay_s": 0.05}
    cluster, aios = start(aios_env, nodes=1, AIOS_NODE_TIMEOUT="3", AIOS_HEARTBEAT_INTERVAL="0.5")
    try:
        job_id = submit(aios, tmp_path, {"name": "outage", "tenant": "ml", "devices": 2, "trainer": trainer})
        running_past(aios, "outage", 60)
        assert cluster.nats is not None
        cluster.nats.kill()
        time.sleep(1.0)
        cluster.nats.start()
        done = wait_job(aios, "outage", ("succeeded", "failed"), timeout=180)
        assert done["status"] == "succeeded" and done["step"] == 200, done
        history = job_events(cluster.nats_url, job_id)
        resumed = [e.step for e in history if isinstance(e, JobProgress) and e.attempt == done["attempts"]]
        assert done["attempts"] == 1 or min(resumed) >= 50  # if interrupted, from a checkpoint
        time.sleep(6.0)  # more than a node timeout and its confirmation: a stale watch's node would be lost by now

        async def losses() -> int:
            store = await connect([cluster.nats_url])
            try:
                found: list[Any] = []
                await store.replay(found.append, filter_subject=f"{store.prefix}.node.>")
                return sum(isinstance(e, NodeLost) for c in found for e in c.events)
            finally:
                await store.close()
        assert asyncio.run(losses()) <= 1  # at most the outage itself
        node = json.loads(aios("nodes", "--json").stdout)[0]
        assert node["online"], node
    finally:
        cluster.stop()


def test_a_hung_agent_stops_its_stale_workers_when_it_wakes(aios_env: dict[str, str], tmp_path: Path) -> None:
    """An agent paused past the node timeout: its node is lost and the job moves on while its workers train on,
    writing the job's checkpoint. Once the agent wakes they stop (the trainer's stop request waits for it; and the
    agent stops its lost node's workers itself as it registers again, should that request be gone), and the job
    succeeds. One run in four failed before rank 0's start was broadcast: the new ranks had read different
    checkpoints of the stale writers, and the one that finished first left the other hanging in a collective."""
    trainer = {"kind": "mlp", "steps": 300, "checkpoint_every": 50, "step_delay_s": 0.05}
    cluster, aios = start(aios_env, nodes=2, AIOS_NODE_TIMEOUT="3", AIOS_HEARTBEAT_INTERVAL="0.5")
    try:
        job_id = submit(aios, tmp_path, {"name": "hung", "tenant": "ml", "devices": 2, "trainer": trainer})
        job = running_past(aios, "hung", 60)
        first = worker_pids(job_id)
        agent = cluster.procs[f"agent-{sorted(set(job['nodes']))[0]}"]
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            while wait_job(aios, "hung", ("running", "placed", "succeeded", "failed"))["attempts"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while any(pid in first.values() for pid in worker_pids(job_id).values()):
            assert time.monotonic() < deadline, "the first attempt's workers still run beside the second's"
            time.sleep(0.3)
        done = wait_job(aios, "hung", ("succeeded", "failed"), timeout=150)
        assert done["status"] == "succeeded" and done["step"] == 300, aios("job", job_id).stdout[-3000:]
    finally:
        cluster.stop()


def test_a_job_past_its_max_runtime_is_stopped_and_failed(aios_env: dict[str, str], tmp_path: Path) -> None:
    """``max_runtime_s`` said "the job is stopped after this long" and was never enforced (Slurm's --time is)."""
    cluster, aios = start(aios_env, nodes=1)
    try:
        started = time.monotonic()
        job_id = submit(aios, tmp_path, {"name": "overtime", "tenant": "ml", "devices": 1, "max_runtime_s": 2,
                                         "command": [sys.executable, "-c", "import time; time.sleep(60)"]})
        done = wait_job(aios, "overtime", ("succeeded", "failed"), timeout=40)
        assert done["status"] == "failed" and time.monotonic() - started < 30, done
        failed = [e for e in job_events(cluster.nats_url, job_id) if isinstance(e, JobFailed)]
        assert len(failed) == 1 and failed[0].reason.startswith("max_runtime_s: ran "), failed
        assert not worker_pids(job_id)
    finally:
        cluster.stop()


def test_preempted_training_checkpoints_yields_and_resumes(aios_env: dict[str, str], tmp_path: Path) -> None:
    """A higher-priority job takes the devices of a running training job: the trainer's workers get SIGTERM, vote
    to stop at one step, checkpoint and exit; the urgent job runs; the training resumes from that very step."""
    trainer = {"kind": "mlp", "steps": 200, "checkpoint_every": 1000, "step_delay_s": 0.05}  # only the SIGTERM one
    cluster, aios = start(aios_env, nodes=1, AIOS_SCHEDULER_POLICY="priority")
    try:
        (tmp_path / "train.json").write_text(json.dumps({"name": "background", "tenant": "ml", "devices": 2,
                                                         "priority": 0, "trainer": trainer}))
        (tmp_path / "urgent.json").write_text(json.dumps({"name": "urgent", "tenant": "ml", "devices": 2,
                                                          "priority": 10, "command": ["sleep", "1"]}))
        out = aios("submit", str(tmp_path / "train.json"), "--json")
        assert out.returncode == 0, out.stderr
        job_id = json.loads(out.stdout)["job"]
        deadline = time.monotonic() + 60
        while (job := wait_job(aios, "background", ("running",)))["step"] < 40:
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert aios("submit", str(tmp_path / "urgent.json")).returncode == 0
        assert wait_job(aios, "urgent", ("succeeded", "failed"), timeout=60)["status"] == "succeeded"
        done = wait_job(aios, "background", ("succeeded", "failed"), timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        history = job_events(cluster.nats_url, job_id)
        saved = [e.step for e in history if isinstance(e, CheckpointSaved) and e.attempt == 1]
        first = max(e.step for e in history if isinstance(e, JobProgress) and e.attempt == 1)
        resumed = min(e.step for e in history if isinstance(e, JobProgress) and e.attempt == 2)
        assert saved and 40 <= saved[-1] < 200  # written on SIGTERM, far from any periodic checkpoint
        assert first <= saved[-1] < resumed  # no step after the checkpoint was lost or trained twice
        assert done["step"] == 200 and done["steps_redone"] == 0
        final = [e for e in history if isinstance(e, JobProgress) and e.final]
        assert len(final) == 1 and abs(final[0].accuracy - one_rank_accuracy(trainer)) <= 0.01
    finally:
        cluster.stop()


def test_one_failing_worker_stops_the_others_and_names_the_rank(aios_env: dict[str, str], tmp_path: Path) -> None:
    cluster, aios = start(aios_env)
    try:
        script = tmp_path / "flaky.py"
        script.write_text("import os, sys, time\n"
                          "if os.environ['RANK'] == '1':\n    time.sleep(1)\n    sys.exit(7)\n"
                          "time.sleep(120)  # the others would wait for ever in a collective\n")
        spec = tmp_path / "flaky.json"
        spec.write_text(json.dumps({"name": "flaky", "tenant": "ml", "devices": 3,
                                    "command": [sys.executable, str(script)]}))
        assert aios("submit", str(spec)).returncode == 0
        started = time.monotonic()
        failed = wait_job(aios, "flaky", ("failed", "succeeded"), timeout=60)
        assert failed["status"] == "failed" and time.monotonic() - started < 30
        assert "rank1" in failed["error"] and "exited with 7" in failed["error"], failed["error"]
        failures = [e for e in job_events(cluster.nats_url, failed["job"]) if isinstance(e, JobFailed)]
        assert [e.exit_code for e in failures] == [7]
        deadline = time.monotonic() + 15
        while subprocess.run(["pgrep", "-f", str(script)], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "the other ranks were not stopped"
            time.sleep(0.2)
    finally:
        cluster.stop()


def test_a_rank_killed_outright_stops_the_others_at_once(aios_env: dict[str, str], tmp_path: Path) -> None:
    """A rank killed with SIGKILL (the OOM killer) says nothing to its ring: the others waited for its data until
    their collective timeout (60 s) or their stop grace, holding the devices. Its node's agent now says it on the
    ring's abort subject, and they stop at once, naming it."""
    from aios.common.events import WorkerExited, WorkerStarted

    cluster, aios = start(aios_env, nodes=1)
    try:
        spec = tmp_path / "long.json"
        spec.write_text(json.dumps({"name": "long", "tenant": "ml", "devices": 2, "stop_grace_s": 120,
                                    "trainer": {**TRAINER, "steps": 100_000, "step_delay_s": 0.05}}))
        out = aios("submit", str(spec), "--json")
        assert out.returncode == 0, out.stderr
        job_id = json.loads(out.stdout)["job"]
        wait_job(aios, "long", ("running",))
        deadline = time.monotonic() + 60
        while not any(isinstance(e, JobProgress) for e in job_events(cluster.nats_url, job_id)):
            assert time.monotonic() < deadline, "no progress"  # the ring is up and stepping
            time.sleep(0.3)
        [victim] = [e for e in job_events(cluster.nats_url, job_id)
                    if isinstance(e, WorkerStarted) and e.worker.startswith("rank1")]
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        while True:
            exits = {e.worker: e for e in job_events(cluster.nats_url, job_id) if isinstance(e, WorkerExited)}
            peer = next((e for w, e in exits.items() if w.startswith("rank0")), None)
            if peer is not None:
                break
            assert time.monotonic() - killed < 30, f"rank 0 still waits for the dead rank: {exits}"
            time.sleep(0.2)
        assert time.monotonic() - killed < 10  # not its 60-s collective timeout, nor its 120-s grace
        shown = aios("logs", job_id).stdout
        assert "group aborted" in shown and "was killed by signal 9" in shown, shown[-2000:]
    finally:
        cluster.stop()


def test_the_torch_backend_trains_the_same_job(aios_env: dict[str, str], tmp_path: Path) -> None:
    """``backend: torch``: the ranks all-reduce with torch.distributed (gloo) over MASTER_ADDR/MASTER_PORT from the
    launcher's environment. Runs where torch is installed (``make test-torch``; CI installs it before ``make test``)."""
    import pytest

    pytest.importorskip("torch")
    cluster, aios = start(aios_env)
    try:
        trainer = {**TRAINER, "backend": "torch", "collective_timeout_s": 30}
        spec = tmp_path / "torch.json"
        spec.write_text(json.dumps({"name": "gloo", "tenant": "ml", "devices": 3, "trainer": trainer}))
        assert aios("submit", str(spec)).returncode == 0
        done = wait_job(aios, "gloo", ("succeeded", "failed"))
        assert done["status"] == "succeeded", failure(aios, done)
        assert done["step"] == 150 and abs(done["accuracy"] - one_rank_accuracy()) <= 0.01
    finally:
        cluster.stop()
