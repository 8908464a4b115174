"""One trainer per node: each starts and stops only its own node's workers; rank 0's node records start and outcome.

Two in-process launchers (nodes n1 and n2) on a real nats-server and event log; the device agents are stand-ins that
answer the run/stop requests and write down what they were asked.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from aios.common.config import load_settings
from aios.common.events import (
    Assignment, DeviceInfo, DevicesLeased, JobFailed, JobPlaced, JobRequeued, JobStarted, JobSubmitted,
    NodeRegistered, WorkerExited, WorkerStarted,
)
from aios.common.runner import ServiceContext
from aios.common.store import EventStore
from aios.device_agent.protocol import run_subject, stop_subject
from aios.trainer.launcher import LauncherService

NODES = ("n1", "n2")


def uuids(node: str) -> list[str]:
    return [f"{node}-g0", f"{node}-g1"]


async def until(check: Any, timeout: float = 10.0) -> None:
    """Wait for ``check()`` (a plain or async function) to be true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (await check() if asyncio.iscoroutinefunction(check) else check()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def node_trainers(store: EventStore) -> tuple[dict[str, LauncherService], dict[str, ServiceContext]]:
    """A trainer service per node, and the context each runs in (on the test's store)."""
    settings = load_settings({"AIOS_NATS_URL": store.servers[0]})
    return ({n: LauncherService(node_id=n) for n in NODES},
            {n: ServiceContext("trainer", settings, store.nc, store, CollectorRegistry()) for n in NODES})


async def placed_on_both_nodes(store: EventStore, agent: Any = None,
                               **spec: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """Two registered nodes with stand-in agents (by default ones that answer and write down each run/stop request,
    returned as (node, run|stop, request)) and job j1 (a command, unless ``spec`` says otherwise) placed on, and
    booked on, both."""
    asked: list[tuple[str, str, dict[str, Any]]] = []

    async def recording(msg: Any) -> None:
        _, _, node, verb = msg.subject.split(".")
        asked.append((node, verb, json.loads(msg.data)))
        await msg.respond(b'{"ok": true}')
    agent = agent or recording
    for node in NODES:
        await store.nc.subscribe(run_subject(node), cb=agent)
        await store.nc.subscribe(stop_subject(node), cb=agent)
    for node in NODES:
        devices = [DeviceInfo(uuid=u, index=i, kind="a100", model="A100", memory_bytes=40 << 30)
                   for i, u in enumerate(uuids(node))]
        await store.append(f"node.{node}", NodeRegistered(aggregate_id=node, hostname=node, agent_id="a",
                                                          cpu_cores=8, memory_bytes=64 << 30, devices=devices))
    await store.append("job.j1", [
        JobSubmitted(aggregate_id="j1", tenant="ml", name="j1", spec={"name": "j1", "tenant": "ml", "devices": 4,
                                                                  **(spec or {"command": ["python", "t.py"]})}),
        JobPlaced(aggregate_id="j1", world_size=4,
                  assignments=[Assignment(node_id=n, device_uuids=uuids(n), ranks=[]) for n in NODES])])
    for node in NODES:
        await store.append(f"node.{node}", DevicesLeased(aggregate_id=node, job_id="j1", device_uuids=uuids(node)))
    return asked


async def test_each_node_trainer_launches_its_own_workers_and_the_lead_records_the_job(store: EventStore) -> None:
    asked = await placed_on_both_nodes(store)

    launchers, contexts = node_trainers(store)
    tasks = {"n2": asyncio.ensure_future(launchers["n2"].run(contexts["n2"]))}
    try:
        # the second node's trainer alone: its two workers, ranks 2 and 3, and nothing recorded for the job
        await until(lambda: len(asked) == 2)
        await asyncio.sleep(0.5)
        assert [(n, v, r["env"]["RANK"], r["env"]["LOCAL_RANK"], r["env"]["WORLD_SIZE"]) for n, v, r in asked] == [
            ("n2", "run", "2", "0", "4"), ("n2", "run", "3", "1", "4")]
        # the node's place in the gang, as torchrun sets it (it read 0 on every node)
        assert {(r["env"]["GROUP_RANK"], r["env"]["NODE_RANK"], r["env"]["GROUP_WORLD_SIZE"]) for _, _, r in asked} == {
            ("1", "1", "2")}
        assert not any(isinstance(e, JobStarted) for e in (await store.read("job.j1")).events)

        # the lead (rank 0's node) starts its own two and records the start once
        tasks["n1"] = asyncio.ensure_future(launchers["n1"].run(contexts["n1"]))
        await until(lambda: len(asked) == 4)
        assert sorted((n, r["env"]["RANK"], r["env"]["GROUP_RANK"]) for n, v, r in asked[2:]) == [
            ("n1", "0", "0"), ("n1", "1", "0")]
        async def started_events() -> list[JobStarted]:
            return [e for e in (await store.read("job.j1")).events if isinstance(e, JobStarted)]
        await until(started_events)
        await asyncio.sleep(0.3)
        started = await started_events()
        assert len(started) == 1 and started[0].world_size == 4

        # a worker on n2 fails: the lead records it with the exit code, and each trainer stops its own node
        await store.append("run.j1", WorkerExited(aggregate_id="j1", node_id="n2", worker="rank2-a1", exit_code=5,
                                                  attempt=1))
        await until(lambda: {n for n, v, _ in asked if v == "stop"} == set(NODES))
        failed = [e for e in (await store.read("job.j1")).events if isinstance(e, JobFailed)]
        assert len(failed) == 1 and failed[0].exit_code == 5 and "rank2-a1" in failed[0].reason
        await asyncio.sleep(0.5)
        assert sorted(n for n, v, _ in asked if v == "stop") == ["n1", "n2"]  # once each, no node stopped twice
    finally:
        for n, task in tasks.items():
            contexts[n].stopping.set()
        await asyncio.gather(*tasks.values())



async def test_a_dead_replica_is_replaced_by_its_own_nodes_trainer_and_nothing_else_stops(store: EventStore) -> None:
    """A deployment of four replicas on two nodes: rank 3 (n2's second device) is killed. The lead (n1's trainer)
    records its replacement and n2's trainer starts it, as rank 3 on the same device; no replica is stopped and the
    deployment is not requeued."""
    from aios.common.events import JobRequeued, ReplicaReplaced, WorkerStarted

    asked = await placed_on_both_nodes(store, serve={"model": "models:/digits/1"})
    launchers, contexts = node_trainers(store)
    tasks = {n: asyncio.ensure_future(launchers[n].run(contexts[n])) for n in NODES}
    try:
        await until(lambda: len(asked) == 4)
        for rank in range(4):
            await store.append("run.j1", WorkerStarted(aggregate_id="j1", node_id=NODES[rank // 2],
                                                       worker=f"rank{rank}-a1", pid=100 + rank, attempt=1))
        await store.append("run.j1", WorkerExited(aggregate_id="j1", node_id="n2", worker="rank3-a1",
                                                  exit_code=None, signal=9, attempt=1))
        await until(lambda: len(asked) == 5)
        node, verb, request = asked[4]
        assert (node, verb, request["worker"], request["env"]["RANK"], request["device_uuids"]) == (
            "n2", "run", "rank3-a1-r1", "3", ["n2-g1"])
        await asyncio.sleep(0.5)
        events = (await store.read("job.j1")).events
        replaced = [e for e in events if isinstance(e, ReplicaReplaced)]
        assert len(replaced) == 1 and replaced[0].worker == "rank3-a1" and "SIGKILL" in replaced[0].reason
        assert not any(isinstance(e, JobRequeued) for e in events) and len(asked) == 5  # nobody stopped
    finally:
        for n, task in tasks.items():
            contexts[n].stopping.set()
        await asyncio.gather(*tasks.values())


async def serving_on_both_nodes(store: EventStore) -> dict[str, str]:
    """Stand-in agents that run workers as the real one reports them (WorkerStarted on a run request, WorkerExited
    with ``stopped`` for each of the node's workers on a stop request), and a 4-replica deployment j1 placed on both
    nodes; returns the live workers (worker -> node), kept up to date."""
    running: dict[str, str] = {}

    async def agent(msg: Any) -> None:
        _, _, node, verb = msg.subject.split(".")
        body = json.loads(msg.data)
        await msg.respond(b'{"ok": true}')
        if verb == "run":
            running[body["worker"]] = node
            await store.append("run.j1", WorkerStarted(aggregate_id="j1", node_id=node, worker=body["worker"], pid=1,
                                                       attempt=int(body["env"]["AIOS_ATTEMPT"])))
            return
        for worker in [w for w, n in running.items() if n == node]:
            del running[worker]
            await store.append("run.j1", WorkerExited(aggregate_id="j1", node_id=node, worker=worker, exit_code=0,
                                                      attempt=1, stopped=True))
    await placed_on_both_nodes(store, agent, serve={"model": "models:/digits/1"})
    return running


@pytest.mark.parametrize("race", ["two exits at the cap", "an exit while an agent stops a replica"])
async def test_a_replacement_decided_as_the_deployment_stops_never_runs_on(store: EventStore, race: str) -> None:
    """Found by review: an exit (or an agent's stop) that came in just after the lead decided a replacement made
    every trainer stop the attempt, and the replacement started after their stop: the deployment stayed "running"
    on one orphaned replica, never requeued. The fold now takes a replacement only while the attempt may still
    replace alone, and a worker that starts after its attempt was stopped is stopped too."""
    running = await serving_on_both_nodes(store)
    launchers, contexts = node_trainers(store)
    tasks = {n: asyncio.ensure_future(launchers[n].run(contexts[n])) for n in NODES}

    def killed(worker: str, **how: Any) -> WorkerExited:
        return WorkerExited(aggregate_id="j1", node_id=running.pop(worker), worker=worker, attempt=1,
                            **{"exit_code": None, "signal": 9, **how})
    try:
        await until(lambda: len(running) == 4)
        if race == "two exits at the cap":
            dying = "rank3-a1"
            for n in range(1, 5):  # four replacements, one at a time
                await store.append("run.j1", killed(dying))
                dying = f"rank3-a1-r{n}"
                await until(lambda: dying in running)
            both = [killed(dying), killed("rank1-a1")]  # the fifth, and one more at the same moment
        else:
            await until(lambda: launchers["n1"].projector.state.jobs["j1"].workers_running == 4)
            both = [killed("rank3-a1"), killed("rank0-a1", exit_code=0, signal=None, stopped=True)]
        await asyncio.gather(*(store.append("run.j1", ev) for ev in both))

        async def requeued() -> bool:
            return any(isinstance(e, JobRequeued) for e in (await store.read("job.j1")).events)
        await until(requeued)
        await until(lambda: not running)  # no replica left running on a requeued deployment
        await asyncio.sleep(0.5)
        assert not running, running
    finally:
        for n in NODES:
            contexts[n].stopping.set()
        await asyncio.gather(*tasks.values())


def test_an_exit_after_a_stop_nobody_asked_for_requeues_the_job() -> None:
    """A node's agent shutting down stops its workers: a built-in worker checkpoints and exits 0, which was taken
    for success (the job "succeeded" half-trained and its model was registered); a plain command dies by the
    signal, which was taken for failure. Either is an interruption: the job is requeued to resume. A worker that
    exits non-zero on its own still fails the job, and exits 0 on their own are success."""
    from aios.scheduler.state import JobState
    from aios.trainer.launcher import outcome

    def job(exits: dict[str, int | None], stopped: list[str], running: int = 0) -> JobState:
        return JobState("j", None, "t", 1, 0.0, status="running", exit_codes=exits, stopped_workers=stopped,
                        workers_running=running,
                        assignments=[Assignment(node_id="n1", device_uuids=uuids("n1"), ranks=[0, 1])])
    # requeued once every started worker has exited: rank 0 may write the checkpoint after its peers have gone
    assert outcome(job({"rank1-a1": 0}, ["rank1-a1"], running=1)) is None
    assert outcome(job({"rank0-a1": 0, "rank1-a1": None}, ["rank1-a1"])) == (
        "requeued", "worker rank1-a1 was stopped by its node's agent; resumes from its checkpoint", None)
    # a peer that crashes because its partner was stopped is part of the interruption, not a failure
    assert outcome(job({"rank0-a1": 3, "rank1-a1": 0}, ["rank1-a1"]))[0] == "requeued"  # type: ignore[index]
    assert outcome(job({"rank0-a1": 3}, [], running=1), frozenset({"n2"})) is None  # n2 going away: wait
    assert outcome(job({"rank0-a1": 3, "rank1-a1": 1}, []), frozenset({"n2"}))[0] == "requeued"  # type: ignore[index]
    assert outcome(job({"rank0-a1": 3}, [], running=1))[0] == "failed"  # type: ignore[index]  # on its own: at once
    # a lost node's workers never report their exit: nobody waits for them (the job stayed running for ever)
    assert outcome(job({"rank0-a1": 1}, [], running=1), frozenset(), frozenset({"n2"})) == (
        "requeued", "node n2 was lost; resumes from its checkpoint", None)
    assert outcome(job({"rank0-a1": 0, "rank1-a1": 0}, [])) == ("succeeded", "", 0)
    assert outcome(job({"rank0-a1": 0}, [], running=1)) is None  # rank 1 still runs
    # a built-in worker stopped by a SIGTERM AIOS did not send, or cut off from NATS, exits 75 (it exited 0 after
    # its checkpoint: the job "succeeded" at step 485 of 1,000 and its model was registered; a NATS restart failed it)
    assert outcome(job({"rank0-a1": 75, "rank1-a1": 75}, [])) == (
        "requeued", "worker rank0-a1 stopped before its last step (exit 75: a signal AIOS did not send, NATS went "
        "away, or its rendezvous port was taken; its log says which); resumes from its checkpoint", 75)
    assert outcome(job({"rank1-a1": 75}, [], running=1)) is None  # rank 0 may still write the checkpoint
    # the launcher then stops its peer: the exit 75 that came first is the cause (it read "stopped by its agent")
    assert outcome(job({"rank1-a1": 75, "rank0-a1": 0}, ["rank0-a1"])) == (
        "requeued", "worker rank1-a1 stopped before its last step (exit 75: a signal AIOS did not send, NATS went "
        "away, or its rendezvous port was taken; its log says which); resumes from its checkpoint", 75)
    assert outcome(job({"rank0-a1": 3, "rank1-a1": 75}, []))[0] == "requeued"  # type: ignore[index]
    # a command keeps a checkpoint only if its program writes one: its reason does not promise a resume
    from aios.scheduler.spec import JobSpec
    command = msgspec.structs.replace(job({"rank0-a1": 0, "rank1-a1": None}, ["rank1-a1"]),
                                      spec=JobSpec(name="j", tenant="t", devices=2, command=["python", "run.py"]))
    assert outcome(command) == ("requeued", "worker rank1-a1 was stopped by its node's agent; it starts again, from a "
                                "checkpoint only if its command keeps one (AIOS_CHECKPOINT_NAME)", None)
    serving = msgspec.structs.replace(job({"rank0-a1": 1}, [], running=1), spec=JobSpec(
        name="j", tenant="t", devices=2, serve={"model": "models:/m/1"}))  # a deployment keeps no checkpoint
    assert outcome(serving, frozenset(), frozenset({"n2"})) == (
        "requeued", "node n2 was lost; the deployment restarts", None)


def test_a_worker_killed_by_a_signal_fails_the_job_naming_the_signal() -> None:
    """The error said "exited with a signal", whichever: a SIGKILL (most often the out-of-memory killer) looked the
    same as a SIGSEGV. The signal the agent reports is folded and named."""
    from aios.scheduler.state import SchedulerState, evolve
    from aios.trainer.launcher import outcome

    state = SchedulerState()
    placed = [Assignment(node_id="n1", device_uuids=uuids("n1"), ranks=[0, 1])]
    for seq, ev in enumerate([
            JobSubmitted(aggregate_id="j", tenant="ml", name="j", spec={"name": "j", "tenant": "ml", "devices": 2,
                                                                        "command": ["python", "t.py"]}),
            JobPlaced(aggregate_id="j", world_size=2, assignments=placed),
            WorkerExited(aggregate_id="j", node_id="n1", worker="rank1-a1", exit_code=None, signal=9, attempt=1),
            WorkerExited(aggregate_id="j", node_id="n1", worker="rank0-a1", exit_code=None, signal=11, attempt=1)],
            start=1):
        evolve(state, ev, seq)
    job = state.jobs["j"]
    assert outcome(job) == ("failed", "worker rank0-a1 was killed by SIGSEGV (signal 11)", None)
    job.exit_codes.pop("rank0-a1")
    assert outcome(job) == ("failed", "worker rank1-a1 was killed by SIGKILL (signal 9: out of memory?)", None)
    evolve(state, JobPlaced(aggregate_id="j", world_size=2, assignments=placed), 9)  # a new attempt forgets them
    assert state.jobs["j"].exit_signals == {}


def test_a_worker_that_dies_on_a_gpu_out_of_service_says_so() -> None:
    """Found by review: a rank killed as its GPU failed (XID 79) failed its job with "killed by SIGKILL (signal 9:
    out of memory?)", and nothing said the GPU was behind it, though the inventory knew."""
    from aios.common.events import DeviceUnhealthy
    from aios.scheduler.state import SchedulerState, evolve
    from aios.trainer.launcher import device_faults, outcome

    state = SchedulerState()
    devices = [DeviceInfo(uuid=u, index=i, kind="a100", model="A100", memory_bytes=40 << 30)
               for i, u in enumerate(uuids("n1"))]
    placed = [Assignment(node_id="n1", device_uuids=uuids("n1"), ranks=[0, 1])]
    for seq, ev in enumerate([
            NodeRegistered(aggregate_id="n1", hostname="n1", agent_id="a", cpu_cores=8, memory_bytes=64 << 30,
                           devices=devices),
            JobSubmitted(aggregate_id="j", tenant="ml", name="j", spec={"name": "j", "tenant": "ml", "devices": 2,
                                                                        "command": ["python", "t.py"]}),
            JobPlaced(aggregate_id="j", world_size=2, assignments=placed),
            DeviceUnhealthy(aggregate_id="n1", device_uuid="n1-g1", reason="critical XID 79", xid=79),
            WorkerExited(aggregate_id="j", node_id="n1", worker="rank1-a1", exit_code=None, signal=9, attempt=1)],
            start=1):
        from aios.resource_manager.inventory import evolve as inventory_evolve
        inventory_evolve(state.inv, ev, seq)
        evolve(state, ev, seq)
    job = state.jobs["j"]
    faults = device_faults(job, state.inv)
    assert faults == {"rank1-a1": "its GPU n1-g1 on n1 is out of service (critical XID 79)"}
    assert outcome(job, faults=faults) == ("failed", "worker rank1-a1 was killed by SIGKILL (signal 9: out of "
                                                     "memory?); its GPU n1-g1 on n1 is out of service (critical "
                                                     "XID 79)", None)


def submitted_two_device_command() -> tuple[Any, list[Assignment], Any]:
    """A scheduler state with job j (a 2-device command) submitted; the placement on n1 to give it; the log
    sequence numbers to fold the next events at."""
    from aios.scheduler.state import SchedulerState, evolve

    state = SchedulerState()
    seq = iter(range(1, 1000))
    evolve(state, JobSubmitted(aggregate_id="j", tenant="ml", name="j", spec={
        "name": "j", "tenant": "ml", "devices": 2, "command": ["python", "t.py"]}), next(seq))
    return state, [Assignment(node_id="n1", device_uuids=uuids("n1"), ranks=[0, 1])], seq


def test_exit_75_again_and_again_without_progress_fails_the_job_as_a_crash_loop() -> None:
    """Exit 75 requeues a job to resume; a program that exits 75 at once requeued itself for ever. After 5 such
    requeues in a row without progress (no new step reported, each run under 10 minutes) the next exit 75 fails the
    job. Progress starts the count again; requeues AIOS makes (a node lost, an agent stopping a peer) do not count."""
    import time

    from aios.common.events import JobProgress, JobRequeued, WorkerExited
    from aios.scheduler.state import evolve
    from aios.trainer.launcher import outcome

    state, placed, seq = submitted_two_device_command()
    job = state.jobs["j"]

    def attempt(step: int | None = None, ran_s: float = 5.0, peer_stopped: bool = False
                ) -> tuple[str, str, int | None] | None:
        now = time.time()
        evolve(state, JobPlaced(aggregate_id="j", world_size=2, assignments=placed, ts=now - ran_s), next(seq))
        if step is not None:
            evolve(state, JobProgress(aggregate_id="j", step=step, total_steps=1000, attempt=job.attempts, ts=now),
                   next(seq))
        for rank, stopped in ((1, peer_stopped), (0, False)):  # rank 0 exits 75 on its own
            evolve(state, WorkerExited(aggregate_id="j", node_id="n1", worker=f"rank{rank}-a{job.attempts}",
                                       exit_code=75, attempt=job.attempts, stopped=stopped, ts=now), next(seq))
        decided = outcome(job, now=now)
        if decided is not None and decided[0] == "requeued":
            evolve(state, JobRequeued(aggregate_id="j", reason=decided[1], interrupted=decided[2] == 75, ts=now),
                   next(seq))
        return decided
    assert attempt(step=10)[0] == "requeued"  # type: ignore[index]
    for _ in range(4):
        assert attempt()[2] == 75  # type: ignore[index]
    assert job.interrupted_in_a_row == 5
    evolve(state, JobPlaced(aggregate_id="j", world_size=2, assignments=placed), next(seq))
    evolve(state, JobRequeued(aggregate_id="j", reason="node n1 was lost"), next(seq))  # not its own doing
    assert attempt(peer_stopped=True)[2] is None  # an agent stopped its peer: AIOS's doing, not counted
    assert job.interrupted_in_a_row == 5
    result, reason, code = attempt()  # type: ignore[misc]
    assert (result, code) == ("failed", 75) and "after 5 requeues in a row without progress" in reason
    # the same streak with progress: a new step, or (a command reports none) a run of ten minutes
    job.status = "placed"
    assert attempt(step=20)[0] == "requeued" and job.interrupted_in_a_row == 1  # type: ignore[index]
    job.interrupted_in_a_row = 5
    assert attempt(ran_s=601)[0] == "requeued" and job.interrupted_in_a_row == 1  # type: ignore[index]


async def test_a_stopped_worker_stops_its_peers_gently_and_the_job_is_requeued_when_all_have_exited(
        store: EventStore) -> None:
    """One node's agent shuts down and stops rank 2: the other trainers stop their workers with the usual grace
    (rank 0 writes the checkpoint as it stops; a 3-s grace cut it off), and the requeue waits for every worker."""
    asked = await placed_on_both_nodes(store)
    settings = load_settings({"AIOS_NATS_URL": store.servers[0]})
    contexts = {n: ServiceContext("trainer", settings, store.nc, store, CollectorRegistry()) for n in NODES}
    tasks = [asyncio.ensure_future(LauncherService(node_id=n).run(contexts[n])) for n in NODES]
    try:
        await until(lambda: len([a for a in asked if a[1] == "run"]) == 4)
        await store.append("run.j1", [WorkerStarted(aggregate_id="j1", node_id=n, worker=f"rank{r}-a1", pid=1,
                                                    attempt=1) for n, r in (("n1", 0), ("n1", 1), ("n2", 2), ("n2", 3))])

        async def requeued() -> list[JobRequeued]:
            return [e for e in (await store.read("job.j1")).events if isinstance(e, JobRequeued)]
        await store.append("run.j1", WorkerExited(aggregate_id="j1", node_id="n2", worker="rank2-a1", exit_code=0,
                                                  attempt=1, stopped=True))
        await until(lambda: {n for n, v, _ in asked if v == "stop"} == set(NODES))
        assert {r["grace_s"] for _, v, r in asked if v == "stop"} == {10}
        await asyncio.sleep(0.5)
        assert not await requeued()  # ranks 0, 1 and 3 are still stopping
        await store.append("run.j1", [WorkerExited(aggregate_id="j1", node_id=n, worker=f"rank{r}-a1", exit_code=c,
                                                   attempt=1, stopped=n == "n2")
                                      for n, r, c in (("n2", 3, 0), ("n1", 1, 3), ("n1", 0, 0))])
        await until(requeued)
        await asyncio.sleep(0.3)
        events = (await store.read("job.j1")).events
        assert len(await requeued()) == 1 and not any(isinstance(e, JobFailed) for e in events)
    finally:
        for n in NODES:
            contexts[n].stopping.set()
        await asyncio.gather(*tasks)


def test_a_serving_replica_that_exits_is_replaced_alone_then_the_deployment_restarts() -> None:
    """A deployment runs until it is stopped. A replica killed (SIGKILL: the out-of-memory killer) failed the whole
    deployment, and one that exited 0 (a SIGTERM nobody in AIOS sent) left it running on half its replicas for
    ever; then either restarted the whole deployment, every replica with it. Now a replica that exits is replaced
    alone, on its device, the others serving on (KServe, Ray Serve); after 5 replacements in one attempt the next
    exit restarts the deployment, and a replica that keeps dying at start fails it as a crash loop after 5
    restarts without a run of 10 minutes."""
    import time

    from aios.common.events import JobRequeued, ReplicaReplaced, WorkerStarted
    from aios.scheduler.state import SchedulerState, evolve
    from aios.trainer.launcher import MAX_REPLICA_REPLACEMENTS, outcome, own_exits, replaceable, worker_places

    state = SchedulerState()
    placed = [Assignment(node_id="n1", device_uuids=uuids("n1"), ranks=[0, 1])]
    seq = iter(range(1, 1000))
    evolve(state, JobSubmitted(aggregate_id="web", tenant="ml", name="web", spec={
        "name": "web", "tenant": "ml", "devices": 2, "serve": {"model": "models:/digits@production"}}), next(seq))
    job = state.jobs["web"]
    now = time.time()
    evolve(state, JobPlaced(aggregate_id="web", world_size=2, assignments=placed, ts=now - 900), next(seq))
    for rank in (0, 1):
        evolve(state, WorkerStarted(aggregate_id="web", node_id="n1", worker=f"rank{rank}-a1", pid=10 + rank,
                                    attempt=1, ts=now - 900), next(seq))
    dying = "rank1-a1"
    for n in range(1, MAX_REPLICA_REPLACEMENTS + 1):
        evolve(state, WorkerExited(aggregate_id="web", node_id="n1", worker=dying, exit_code=None, signal=9,
                                   attempt=1, ts=now), next(seq))
        # nothing to decide, nobody to stop: the lead replaces it
        assert replaceable(job) == [dying] and own_exits(job) == [] and outcome(job, now=now) is None
        assert worker_places(job)[dying] == ("n1", 1)
        evolve(state, ReplicaReplaced(aggregate_id="web", worker=dying, replacement=f"rank1-a1-r{n}", node_id="n1",
                                      rank=1, attempt=1), next(seq))
        assert dying not in job.exit_codes and job.workers_running == 1
        dying = f"rank1-a1-r{n}"
        evolve(state, WorkerStarted(aggregate_id="web", node_id="n1", worker=dying, pid=20 + n, attempt=1,
                                    ts=now), next(seq))
        assert job.workers_running == 2 and job.status == "placed"
    # a sixth exit in the attempt: the deployment restarts, its peer stopped first
    evolve(state, WorkerExited(aggregate_id="web", node_id="n1", worker=dying, exit_code=None, signal=9, attempt=1,
                               ts=now), next(seq))
    assert replaceable(job) == [] and own_exits(job) == [dying] and outcome(job, now=now) is None
    evolve(state, WorkerExited(aggregate_id="web", node_id="n1", worker="rank0-a1", exit_code=0, attempt=1,
                               stopped=True, ts=now), next(seq))
    assert outcome(job, now=now) == (
        "requeued", f"replica {dying} was killed by SIGKILL (signal 9: out of memory?); the deployment restarts", 75)
    # a replica of a node that went away is not replaced: the deployment moves
    evolve(state, JobRequeued(aggregate_id="web", reason="r", interrupted=True, ts=now), next(seq))
    evolve(state, JobPlaced(aggregate_id="web", world_size=2, assignments=placed, ts=now - 2), next(seq))
    evolve(state, WorkerExited(aggregate_id="web", node_id="n1", worker="rank0-a2", exit_code=0, attempt=2,
                               stopped=True, ts=now), next(seq))
    assert replaceable(job) == [] and job.replacements == []
    for attempt in range(3, 12):  # every replica exits 0 at once, again and again: beyond what replacing allows
        evolve(state, JobRequeued(aggregate_id="web", reason="r", interrupted=True, ts=now), next(seq))
        evolve(state, JobPlaced(aggregate_id="web", world_size=2, assignments=placed, ts=now - 2), next(seq))
        for n in range(MAX_REPLICA_REPLACEMENTS + 2):
            evolve(state, WorkerExited(aggregate_id="web", node_id="n1", worker=f"rank0-a{attempt}-x{n}",
                                       exit_code=0, attempt=attempt, ts=now), next(seq))
        decided = outcome(job, now=now)
        assert decided is not None
        if decided[0] == "failed":
            break
        assert decided == ("requeued", f"replica rank0-a{attempt}-x0 exited with 0; the deployment restarts", 75)
    assert decided[0] == "failed" and "a crash loop" in decided[1], (attempt, decided)


def test_a_failed_worker_restarts_its_job_up_to_max_restarts() -> None:
    """A worker killed by the out-of-memory killer, or one that crashed, failed its job at once, its checkpoints
    unused. With ``max_restarts`` (Kubernetes' backoffLimit, Determined's max_restarts) the job is restarted from
    its checkpoint that many times, whichever worker failed first, and then fails naming how often it restarted."""
    from aios.common.events import JobRequeued, WorkerStarted
    from aios.scheduler.state import SchedulerState, evolve
    from aios.trainer.launcher import outcome

    state = SchedulerState()
    placed = [Assignment(node_id="n1", device_uuids=uuids("n1"), ranks=[0, 1])]
    seq = iter(range(1, 1000))
    evolve(state, JobSubmitted(aggregate_id="j", tenant="ml", name="j", spec={
        "name": "j", "tenant": "ml", "devices": 2, "command": ["python", "t.py"], "max_restarts": 2}), next(seq))
    job = state.jobs["j"]
    decided = []
    for attempt in (1, 2, 3):
        evolve(state, JobPlaced(aggregate_id="j", world_size=2, assignments=placed), next(seq))
        for rank in (0, 1):
            evolve(state, WorkerStarted(aggregate_id="j", node_id="n1", worker=f"rank{rank}-a{attempt}", pid=rank,
                                        attempt=attempt), next(seq))
        # rank 1 finishes first (exit 0), then rank 0 is killed: the failure decides, in either order
        evolve(state, WorkerExited(aggregate_id="j", node_id="n1", worker=f"rank1-a{attempt}", exit_code=0,
                                   attempt=attempt), next(seq))
        evolve(state, WorkerExited(aggregate_id="j", node_id="n1", worker=f"rank0-a{attempt}", exit_code=None,
                                   signal=9, attempt=attempt), next(seq))
        decided.append(outcome(job))
        if decided[-1] and decided[-1][0] == "restarted":
            evolve(state, JobRequeued(aggregate_id="j", reason=decided[-1][1], after_failure=True), next(seq))
    assert decided[0] == ("restarted", "worker rank0-a1 was killed by SIGKILL (signal 9: out of memory?); restart 1 "
                                       "of 2; it starts again, from a checkpoint only if its command keeps one "
                                       "(AIOS_CHECKPOINT_NAME)", None)
    assert decided[1][:2] == ("restarted", "worker rank0-a2 was killed by SIGKILL (signal 9: out of memory?); "
                                           "restart 2 of 2; it starts again, from a checkpoint only if its command "
                                           "keeps one (AIOS_CHECKPOINT_NAME)")
    assert decided[2] == ("failed", "worker rank0-a3 was killed by SIGKILL (signal 9: out of memory?), after 2 "
                                    "restarts (max_restarts)", None)
    assert job.failure_restarts == 2
    # while a peer still runs, it is stopped first: nothing is decided yet
    evolve(state, JobSubmitted(aggregate_id="k", tenant="ml", name="k", spec={
        "name": "k", "tenant": "ml", "devices": 2, "command": ["python", "t.py"], "max_restarts": 1}), next(seq))
    evolve(state, JobPlaced(aggregate_id="k", world_size=2, assignments=placed), next(seq))
    for rank in (0, 1):
        evolve(state, WorkerStarted(aggregate_id="k", node_id="n1", worker=f"rank{rank}-a1", pid=rank, attempt=1),
               next(seq))
    evolve(state, WorkerExited(aggregate_id="k", node_id="n1", worker="rank1-a1", exit_code=3, attempt=1), next(seq))
    assert outcome(state.jobs["k"]) is None
    # an interruption (exit 75) that came first stays an interruption: a peer's crash after it used up a restart
    evolve(state, JobSubmitted(aggregate_id="m", tenant="ml", name="m", spec={
        "name": "m", "tenant": "ml", "devices": 2, "command": ["python", "t.py"], "max_restarts": 1}), next(seq))
    evolve(state, JobPlaced(aggregate_id="m", world_size=2, assignments=placed), next(seq))
    for rank, code in ((0, 75), (1, 1)):
        evolve(state, WorkerExited(aggregate_id="m", node_id="n1", worker=f"rank{rank}-a1", exit_code=code, attempt=1),
               next(seq))
    decided = outcome(state.jobs["m"])
    assert decided is not None and decided[0] == "requeued" and decided[2] == 75, decided


@pytest.mark.parametrize("transient", [True, False])
async def test_a_start_refused_for_busy_devices_requeues_the_job_and_a_bad_command_fails_it(
        store: EventStore, transient: bool) -> None:
    """A start refused while the previous holder's workers were still stopping failed the job for good (and then
    the preempted job's own next attempt, blocked by its own old workers)."""
    async def refusing(msg: Any) -> None:
        if msg.subject.endswith(".run"):
            await msg.respond(json.dumps({"ok": False, "error": "device(s) still in use by rank0-a1 of job old",
                                          "transient": True} if transient else
                                         {"ok": False, "error": "cannot start 'python': no such file"}).encode())
        else:
            await msg.respond(b'{"ok": true}')
    await placed_on_both_nodes(store, agent=refusing)
    settings = load_settings({"AIOS_NATS_URL": store.servers[0]})
    context = ServiceContext("trainer", settings, store.nc, store, CollectorRegistry())
    task = asyncio.ensure_future(LauncherService().run(context))
    try:
        async def outcome() -> list[Any]:
            return [e for e in (await store.read("job.j1")).events if isinstance(e, (JobRequeued, JobFailed))]
        await until(outcome)
        [decided] = await outcome()
        assert isinstance(decided, JobRequeued if transient else JobFailed), decided
        assert "still in use" in decided.reason if transient else "no such file" in decided.reason
    finally:
        context.stopping.set()
        await task


async def test_a_stop_gives_the_workers_the_grace_their_spec_asks_for(store: EventStore) -> None:
    """The grace was 10 s whatever the job: a model whose step or checkpoint takes longer was killed before its stop
    checkpoint, and resumed from the last periodic one (or from scratch)."""
    from aios.common.events import JobCancelled

    asked = await placed_on_both_nodes(store, command=["python", "t.py"], stop_grace_s=45)
    settings = load_settings({"AIOS_NATS_URL": store.servers[0]})
    context = ServiceContext("trainer", settings, store.nc, store, CollectorRegistry())
    task = asyncio.ensure_future(LauncherService().run(context))
    try:
        await until(lambda: len([a for a in asked if a[1] == "run"]) == 4)
        await store.append("job.j1", JobCancelled(aggregate_id="j1"))
        await until(lambda: {n for n, v, _ in asked if v == "stop"} == set(NODES))
        assert {r["grace_s"] for _, v, r in asked if v == "stop"} == {45}
    finally:
        context.stopping.set()
        await task


@pytest.mark.parametrize("trainer", [True, False])
def test_a_built_in_trainers_exit_code_is_explained_in_the_jobs_error(trainer: bool) -> None:
    """"exited with 4" said nothing of a full checkpoint store; a command's own codes mean what it says."""
    from aios.scheduler.state import SchedulerState, evolve
    from aios.trainer.launcher import outcome

    state = SchedulerState()
    body = {"trainer": {"kind": "mlp"}} if trainer else {"command": ["python", "t.py"]}
    for seq, ev in enumerate([
            JobSubmitted(aggregate_id="j", tenant="ml", name="j", spec={"name": "j", "tenant": "ml", **body}),
            JobPlaced(aggregate_id="j", world_size=1, assignments=[Assignment("n1", ["n1-g0"], [0])]),
            WorkerExited(aggregate_id="j", node_id="n1", worker="rank0-a1", exit_code=4, attempt=1)], start=1):
        evolve(state, ev, seq)
    expected = ("worker rank0-a1 exited with 4 (the checkpoint store refused a checkpoint (full?); the job's logs say "
                "more)") if trainer else "worker rank0-a1 exited with 4"
    assert outcome(state.jobs["j"]) == ("failed", expected, 4)


async def test_a_device_that_never_frees_fails_the_job_as_a_crash_loop(store: EventStore) -> None:
    """A transient refusal requeued the job for ever (a worker stuck in the kernel keeps its device busy while the
    lease book says it is free): after MAX_INTERRUPTIONS_WITHOUT_PROGRESS requeues in a row it fails."""
    from aios.trainer import MAX_INTERRUPTIONS_WITHOUT_PROGRESS

    async def busy(msg: Any) -> None:
        await msg.respond(b'{"ok": false, "error": "device(s) still in use by rank0-a1 of job stuck", '
                          b'"transient": true}' if msg.subject.endswith(".run") else b'{"ok": true}')
    await placed_on_both_nodes(store, agent=busy)
    settings = load_settings({"AIOS_NATS_URL": store.servers[0]})
    context = ServiceContext("trainer", settings, store.nc, store, CollectorRegistry())
    task = asyncio.ensure_future(LauncherService().run(context))
    try:
        async def outcomes() -> list[Any]:
            return [e for e in (await store.read("job.j1")).events if isinstance(e, (JobRequeued, JobFailed))]
        for attempt in range(2, MAX_INTERRUPTIONS_WITHOUT_PROGRESS + 4):
            await until(_more(outcomes, attempt - 1))
            if isinstance((await outcomes())[-1], JobFailed):
                break
            await store.append("job.j1", JobPlaced(aggregate_id="j1", world_size=4, attempt=attempt, assignments=[
                Assignment(node_id=n, device_uuids=uuids(n), ranks=[]) for n in NODES]))
            for node in NODES:
                await store.append(f"node.{node}", DevicesLeased(aggregate_id=node, job_id="j1",
                                                                  device_uuids=uuids(node)))
        decided = await outcomes()
        assert [type(e).__name__ for e in decided] == ["JobRequeued"] * MAX_INTERRUPTIONS_WITHOUT_PROGRESS + [
            "JobFailed"], decided
        assert "requeues in a row without a start" in decided[-1].reason
    finally:
        context.stopping.set()
        await task


def _more(outcomes: Any, n: int) -> Any:
    async def check() -> bool:
        return len(await outcomes()) >= n
    return check


async def test_a_slow_stop_does_not_hold_up_other_jobs_launches(store: EventStore) -> None:
    """Stops ran inside the launcher's commit loop: with a long stop_grace_s, every other job's launch on its nodes
    waited behind one job's stop."""
    from aios.common.events import DevicesReleased, JobCancelled

    runs: list[str] = []

    async def slow_stop(msg: Any) -> None:
        if msg.subject.endswith(".stop"):
            await asyncio.sleep(8)  # its workers take their grace to checkpoint
            runs.append("stopped")
        else:
            runs.append(json.loads(msg.data)["job_id"])
        await msg.respond(b'{"ok": true}')
    await placed_on_both_nodes(store, agent=slow_stop, command=["python", "t.py"], stop_grace_s=600)
    settings = load_settings({"AIOS_NATS_URL": store.servers[0]})
    context = ServiceContext("trainer", settings, store.nc, store, CollectorRegistry())
    task = asyncio.ensure_future(LauncherService().run(context))
    try:
        await until(lambda: runs.count("j1") == 4)
        await store.append("job.j1", JobCancelled(aggregate_id="j1"))
        for node in NODES:
            await store.append(f"node.{node}", DevicesReleased(aggregate_id=node, job_id="j1"))
        await store.append("job.j2", [
            JobSubmitted(aggregate_id="j2", tenant="ml", name="j2", spec={"name": "j2", "tenant": "ml", "devices": 2,
                                                                          "command": ["python", "t.py"]}),
            JobPlaced(aggregate_id="j2", world_size=2, assignments=[Assignment("n1", uuids("n1"), [])])])
        await store.append("node.n1", DevicesLeased(aggregate_id="n1", job_id="j2", device_uuids=uuids("n1")))
        await until(lambda: runs.count("j2") == 2, timeout=30)
        assert runs.index("j2") < runs.index("stopped") if "stopped" in runs else True, runs  # not behind j1's stop
    finally:
        context.stopping.set()
        await task


def test_a_failed_jobs_error_quotes_its_workers_last_stderr_line() -> None:
    """A replica that could not load its model crash-looped, and the job's error said only "exited with 1": the
    cause was in its logs alone (Kubernetes shows the log's end as the termination message)."""
    from aios.scheduler.state import SchedulerState, evolve
    from aios.trainer.launcher import outcome

    state = SchedulerState()
    evolve(state, JobSubmitted(aggregate_id="j", tenant="ml", name="j", spec={
        "name": "j", "tenant": "ml", "devices": 1, "command": ["python", "t.py"]}), 1)
    evolve(state, JobPlaced(aggregate_id="j", world_size=1, assignments=[
        Assignment(node_id="n1", device_uuids=uuids("n1")[:1], ranks=[0])]), 2)
    evolve(state, WorkerStarted(aggregate_id="j", node_id="n1", worker="rank0-a1", pid=1, attempt=1), 3)
    evolve(state, WorkerExited(aggregate_id="j", node_id="n1", worker="rank0-a1", exit_code=1, attempt=1,
                               message="FileNotFoundError: data/train.csv"), 4)
    assert outcome(state.jobs["j"]) == (
        "failed", 'worker rank0-a1 exited with 1; its last stderr line: "FileNotFoundError: data/train.csv"', 1)


def test_a_crash_loop_is_counted_when_a_rank_finished_before_the_one_that_exits_75() -> None:
    """The check took the first exit of any code: with a rank that finished (exit 0) first, the job's own exit 75
    was not counted and the job requeued itself for ever; and the reason named the first rank by name, whatever its
    exit (found by review)."""
    import time

    from aios.scheduler.state import SchedulerState, evolve
    from aios.trainer.launcher import outcome

    def run(order: list[tuple[int, int]], max_restarts: int = 0) -> tuple[list[str], int, str]:
        state, seq = SchedulerState(), iter(range(1, 10_000))
        evolve(state, JobSubmitted(aggregate_id="j", tenant="ml", name="j", spec={
            "name": "j", "tenant": "ml", "devices": 2, "command": ["python", "t.py"],
            "max_restarts": max_restarts}), next(seq))
        job = state.jobs["j"]
        placed = [Assignment(node_id="n1", device_uuids=uuids("n1"), ranks=[0, 1])]
        results: list[str] = []
        for _ in range(10):
            now = time.time()
            evolve(state, JobPlaced(aggregate_id="j", world_size=2, assignments=placed, ts=now - 5), next(seq))
            for rank, code in order:
                evolve(state, WorkerExited(aggregate_id="j", node_id="n1", worker=f"rank{rank}-a{job.attempts}",
                                           exit_code=code, attempt=job.attempts, ts=now), next(seq))
            decided = outcome(job, now=now)
            assert decided is not None
            results.append(decided[0])
            if decided[0] != "requeued":
                return results, job.interrupted_in_a_row, decided[1]
            evolve(state, JobRequeued(aggregate_id="j", reason=decided[1], interrupted=decided[2] == 75, ts=now),
                   next(seq))
        return results, job.interrupted_in_a_row, ""
    results, _, reason = run([(1, 0), (0, 75)])
    assert results == ["requeued"] * 5 + ["failed"] and "worker rank0-a6 exited 75" in reason, (results, reason)
    assert run([(0, 75), (1, 0)])[0] == ["requeued"] * 5 + ["failed"]


class _StoreThatFailsOnce:
    """The real store, whose first write of a job's outcome meets ``first`` (a NATS hiccup), and whose re-read
    after a conflict fails once too, with ``reread``."""

    def __init__(self, inner: EventStore, first: Exception, reread: Exception | None = None) -> None:
        self._inner, self.first, self.reread = inner, first, reread

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def append(self, aggregate: str, events: Any, *args: Any, **kw: Any) -> Any:
        from aios.common.events import JobSucceeded

        if isinstance(events, (JobFailed, JobSucceeded, JobRequeued)) and self.first is not None:
            failure, self.first = self.first, None
            raise failure
        return await self._inner.append(aggregate, events, *args, **kw)

    async def read(self, aggregate: str, *args: Any, **kw: Any) -> Any:
        if self.reread is not None and self.first is None:
            failure, self.reread = self.reread, None
            raise failure
        return await self._inner.read(aggregate, *args, **kw)


@pytest.mark.parametrize("first,reread", [
    ("unavailable", None),  # the outcome was lost: the job stayed running, its devices held, until a restart
    ("conflict", "unavailable"),  # the re-read's error stopped the trainer's event follower: nothing more happened
])
async def test_a_job_outcome_is_recorded_through_a_store_that_fails_once(store: EventStore, first: str,
                                                                         reread: str | None) -> None:
    from aios.common.errors import ConcurrencyConflict, StoreUnavailable

    errors = {"unavailable": StoreUnavailable("not acknowledged (injected)"),
              "conflict": ConcurrencyConflict("job.j1", 0, "injected")}
    asked = await placed_on_both_nodes(store)
    flaky = _StoreThatFailsOnce(store, errors[first], errors[reread] if reread else None)
    launcher = LauncherService(node_id=None)
    context = ServiceContext("trainer", load_settings({"AIOS_NATS_URL": store.servers[0]}), store.nc, flaky,
                             CollectorRegistry())  # type: ignore[arg-type]
    task = asyncio.ensure_future(launcher.run(context))
    try:
        await until(lambda: len([a for a in asked if a[1] == "run"]) == 4)
        for rank in range(4):
            await store.append("run.j1", WorkerExited(aggregate_id="j1", node_id=NODES[rank // 2],
                                                      worker=f"rank{rank}-a1", exit_code=0, attempt=1))

        async def succeeded() -> bool:
            return any(type(e).__name__ == "JobSucceeded" for e in (await store.read("job.j1")).events)
        await until(succeeded, timeout=20)
        assert not task.done()
    finally:
        context.stopping.set()
        await task


async def test_a_node_trainer_that_starts_after_the_job_started_launches_its_own_workers(store: EventStore) -> None:
    """The lead records JobStarted once its own workers are up; a node trainer that started (or restarted) after
    that took the running job as launched and never started its node's ranks: the collective timed out, or a
    deployment served with fewer replicas for ever (found by review)."""
    asked = await placed_on_both_nodes(store)
    launchers, contexts = node_trainers(store)
    tasks = {"n1": asyncio.ensure_future(launchers["n1"].run(contexts["n1"]))}
    try:
        async def started() -> bool:
            return any(isinstance(e, JobStarted) for e in (await store.read("job.j1")).events)
        await until(started)
        assert not [r for n, v, r in asked if v == "run" and n == "n2"]
        tasks["n2"] = asyncio.ensure_future(launchers["n2"].run(contexts["n2"]))
        await until(lambda: {r["worker"] for n, v, r in asked if v == "run" and n == "n2"} == {"rank2-a1", "rank3-a1"})
        assert sorted(r["worker"] for n, v, r in asked if v == "run") == [f"rank{i}-a1" for i in range(4)]
    finally:
        for n in tasks:
            contexts[n].stopping.set()
        await asyncio.gather(*tasks.values())


async def test_a_trainer_serving_every_node_asks_their_agents_to_stop_at_once(store: EventStore) -> None:
    """One trainer for all nodes asked each node's agent in turn and waited for its answer (the workers' grace
    period) before asking the next: a gang on 8 nodes took 8 grace periods to stop, its devices held as long.
    Here an agent answers only once the other was asked too; asked in turn, the first was asked alone."""
    nodes = [f"stop-{i}-{store.stream.lower()}" for i in range(2)]
    asked: list[str] = []
    alone: list[str] = []
    both = asyncio.Event()

    async def agent(msg: Any) -> None:
        asked.append(msg.subject)
        if len(asked) == len(nodes):
            both.set()
        try:
            await asyncio.wait_for(both.wait(), 3.0)
            await msg.respond(b'{"ok": true}')
        except asyncio.TimeoutError:
            alone.append(msg.subject)
            await msg.respond(b'{"ok": false, "error": "asked alone"}')
    for node in nodes:
        await store.nc.subscribe(stop_subject(node), cb=agent)
    trainer = LauncherService()
    trainer.ctx = ServiceContext("trainer", load_settings({"AIOS_NATS_URL": store.servers[0]}), store.nc, store,
                                 CollectorRegistry())
    await asyncio.wait_for(trainer._stop("j1", set(nodes), grace_s=1.0), 10)
    assert sorted(asked) == sorted(stop_subject(n) for n in nodes) and alone == []


async def test_a_trainer_serving_every_node_starts_their_workers_at_once(store: EventStore) -> None:
    """One trainer for all nodes started a gang's workers one after another, each start waiting for its agent's
    answer: a gang on 8 nodes waited for 8 agents in turn, and one agent restarting held up every node. Here an
    agent answers a node's first start only once the other node was asked too; in turn, the first was asked alone.
    Within a node the workers still start in rank order."""
    asked: list[tuple[str, str]] = []
    alone: list[str] = []
    both = asyncio.Event()

    async def agent(msg: Any) -> None:
        _, _, node, verb = msg.subject.split(".")
        asked.append((node, json.loads(msg.data).get("worker", verb)))
        if {n for n, _ in asked} == set(NODES):
            both.set()
        try:
            await asyncio.wait_for(both.wait(), 3.0)
        except asyncio.TimeoutError:
            alone.append(node)
        await msg.respond(b'{"ok": true}')
    await placed_on_both_nodes(store, agent)
    trainer = LauncherService()
    ctx = ServiceContext("trainer", load_settings({"AIOS_NATS_URL": store.servers[0]}), store.nc, store,
                         CollectorRegistry())
    task = asyncio.ensure_future(trainer.run(ctx))
    try:
        async def started() -> list[JobStarted]:
            return [e for e in (await store.read("job.j1")).events if isinstance(e, JobStarted)]
        await until(started, 15.0)
        assert alone == [], asked
        assert [w for n, w in asked if n == "n1"] == ["rank0-a1", "rank1-a1"], asked
        assert [w for n, w in asked if n == "n2"] == ["rank2-a1", "rank3-a1"], asked
        assert [e.world_size for e in await started()] == [4]
    finally:
        ctx.stopping.set()
        await task


async def outcome_of_refusals(store: EventStore, refuse: dict[str, tuple[float, str, bool]]
                              ) -> tuple[list[tuple[str, str]], list[Any]]:
    """One trainer for both nodes, started before job j1 is placed; each node's agent answers a run request after
    ``refuse[node]``'s delay, refusing it with its error (transient or not) if given, else starting it, and takes
    two seconds to stop. The (node, worker) run requests the agents saw, and the job's outcome events."""
    asked: list[tuple[str, str]] = []

    async def agent(msg: Any) -> None:
        _, _, node, verb = msg.subject.split(".")
        if verb == "stop":
            await asyncio.sleep(2.0)
            await msg.respond(b'{"ok": true}')
            return
        asked.append((node, json.loads(msg.data)["worker"]))
        delay, error, transient = refuse[node]
        await asyncio.sleep(delay)
        await msg.respond(json.dumps({"ok": not error, "error": error, "transient": transient}).encode())
    trainer = LauncherService()
    ctx = ServiceContext("trainer", load_settings({"AIOS_NATS_URL": store.servers[0]}), store.nc, store,
                         CollectorRegistry())
    task = asyncio.ensure_future(trainer.run(ctx))
    try:
        await asyncio.sleep(0.5)  # following the log: the launch happens as the placement is folded
        await placed_on_both_nodes(store, agent)

        async def outcomes() -> list[Any]:
            return [e for e in (await store.read("job.j1")).events if isinstance(e, (JobFailed, JobRequeued,
                                                                                      JobStarted))]
        await until(outcomes, 20.0)
        await asyncio.sleep(2.5)  # what comes after the first outcome: nothing more should
        return asked, await outcomes()
    finally:
        ctx.stopping.set()
        await task


async def test_a_start_refused_on_one_node_ends_the_starts_on_the_others(store: EventStore) -> None:
    """Started at once, the other nodes went on starting their workers after the attempt had failed (and after
    their agents were asked to stop it): workers that ran on until a later sweep stopped them."""
    asked, outcomes = await outcome_of_refusals(store, {"n1": (0.0, "command not found: t.py", False),
                                                       "n2": (0.5, "", False)})
    assert sorted(asked) == [("n1", "rank0-a1"), ("n2", "rank2-a1")], asked  # rank3-a1 never asked for
    assert [type(e) for e in outcomes] == [JobFailed] and "could not start rank0-a1 on n1" in outcomes[0].reason


async def test_a_start_refused_for_good_is_the_outcome_when_another_node_refuses_for_now(store: EventStore) -> None:
    """A command not found on one node and busy devices on another, at about the same time: the job was requeued
    (its real fault lost, and tried again up to five times) because the requeue was written first."""
    asked, outcomes = await outcome_of_refusals(store, {"n1": (0.2, "command not found: t.py", False),
                                                       "n2": (0.3, "devices busy", True)})
    assert [type(e) for e in outcomes] == [JobFailed], outcomes
    assert "could not start rank0-a1 on n1: command not found" in outcomes[0].reason


class _SkewedClock:
    """The ``time`` module as a host whose wall clock is ``skew_s`` off sees it (monotonic time is its own)."""

    def __init__(self, skew_s: float) -> None:
        import time as real
        self._real, self.skew_s = real, skew_s

    def time(self) -> float:
        return self._real.time() + self.skew_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("skew_s, limit_s, fails", [(300.0, 120, False), (-300.0, 1, True), (0.0, 1, True)])
async def test_max_runtime_is_timed_on_the_trainer_s_own_clock(store: EventStore, monkeypatch: pytest.MonkeyPatch,
                                                               skew_s: float, limit_s: int, fails: bool) -> None:
    """Found by review: a job's run was the trainer's clock less the placement's stamp, the scheduler's clock. A
    trainer 5 minutes ahead failed a job of ``max_runtime_s: 120`` 0.1 s after its start; one 5 minutes behind let
    a job of ``max_runtime_s: 5`` run on, and reported it ran 0 s (nothing charged to its tenant, and a runtime
    predictor that learned jobs take no time). The trainer now times the attempts it launched itself."""
    from aios.trainer import launcher

    monkeypatch.setattr(launcher, "time", _SkewedClock(skew_s))
    asked = await placed_on_both_nodes(store, command=["python", "t.py"], max_runtime_s=limit_s)
    settings = load_settings({"AIOS_NATS_URL": store.servers[0]})
    context = ServiceContext("trainer", settings, store.nc, store, CollectorRegistry())
    task = asyncio.ensure_future(LauncherService().run(context))
    try:
        await until(lambda: len([a for a in asked if a[1] == "run"]) == 4)

        async def failed() -> list[JobFailed]:
            return [e for e in (await store.read("job.j1")).events if isinstance(e, JobFailed)]
        if fails:
            await until(failed, timeout=10)
            [ended] = await failed()
            assert ended.reason.startswith("max_runtime_s: ran ") and 1 <= ended.attempt_s < 8, ended
        else:
            await asyncio.sleep(2.5)  # the limit is checked every second
            assert await failed() == []
    finally:
        context.stopping.set()
        await task


def test_an_attempt_s_length_is_taken_from_its_trainer_not_from_two_clocks() -> None:
    """The fold took an attempt's length as the end's stamp (its trainer's clock) less the placement's (the
    scheduler's). A trainer 10 minutes ahead made every run of a program that exits 75 at once look like ten
    minutes of progress, so its crash loop was requeued for ever; one 5 minutes behind charged runs of under five
    minutes as 0 s. The trainer says how long the attempt ran (``attempt_s``), on its own clock."""
    from aios.common.events import JobRequeued, JobSucceeded
    from aios.scheduler.state import evolve

    state, placed, seq = submitted_two_device_command()
    job = state.jobs["j"]
    for i in range(7):  # placed at 1000 s by the scheduler, requeued 2 s later by a trainer 10 minutes ahead
        t = 1000.0 + 10 * i
        evolve(state, JobPlaced(aggregate_id="j", world_size=2, assignments=placed, ts=t), next(seq))
        evolve(state, JobRequeued(aggregate_id="j", reason="exited 75", interrupted=True, attempt_s=2.0,
                                  ts=t + 2 + 600), next(seq))
    assert job.interrupted_in_a_row == 7 and job.run_seconds == 14.0 and job.attained == 28.0
    evolve(state, JobPlaced(aggregate_id="j", world_size=2, assignments=placed, ts=2000.0), next(seq))
    evolve(state, JobSucceeded(aggregate_id="j", runtime_s=134.0, attempt_s=120.0, ts=2000.0 + 120 - 300),
           next(seq))  # a trainer 5 minutes behind
    assert job.run_seconds == 134.0 and state.finished[-1].runtime_s == 134.0
