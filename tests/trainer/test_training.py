"""The data-parallel loop over the real ``nats`` ring: 4 ranks train like 1, a stop vote checkpoints, and a resume on
another world size continues the same trajectory."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from aios.common.natsserver import NatsServer
from aios.common.wire import RawNatsConnection
from aios.trainer.collective.ring import NatsRing
from aios.trainer.mlp import TrainerConfig, parse_config
from aios.trainer.training import Checkpoint, Outcome, Progress, train

CFG = TrainerConfig(steps=120, checkpoint_every=40)


async def run_ranks(url: str, group: str, world: int, cfg: TrainerConfig, start: Checkpoint | None = None,
                    stop_at: int | None = None, starts: list[Checkpoint | None] | None = None,
                    checkpoint_every_s: float | None = None,
                    ) -> tuple[list[Outcome], list[Progress], list[Checkpoint]]:
    conns = [await RawNatsConnection.connect([url]) for _ in range(world)]
    rings = await asyncio.gather(*(NatsRing.join(conns[r], group, r, world, timeout_s=20) for r in range(world)))
    progress: list[Progress] = []
    checkpoints: list[Checkpoint] = []
    steps_seen = [0] * world

    async def report(p: Progress) -> None:
        progress.append(p)

    async def save(c: Checkpoint) -> None:
        checkpoints.append(c)

    def stopper(r: int):  # type: ignore[no-untyped-def]
        def asked() -> bool:  # only rank 1 is told to stop (as if its SIGTERM came first)
            steps_seen[r] += 1
            return stop_at is not None and r == 1 and steps_seen[r] >= stop_at
        return asked
    try:
        outcomes = await asyncio.gather(*(train(cfg, rings[r], starts[r] if starts else start, report, save, stopper(r),
                                                progress_every_s=0, checkpoint_every_s=checkpoint_every_s)
                                          for r in range(world)))
    finally:
        for ring, nc in zip(rings, conns):
            await ring.close()
            nc.close()
    return list(outcomes), progress, checkpoints


async def test_four_ranks_train_like_one(nats_server: NatsServer) -> None:
    (one,), _, one_ckpts = await run_ranks(nats_server.url, "like-one-1", 1, CFG)
    four, progress, ckpts = await run_ranks(nats_server.url, "like-one-4", 4, CFG)
    assert {o.step for o in four} == {120} and len({o.final_accuracy for o in four}) == 1
    assert abs(four[0].final_accuracy - one.final_accuracy) <= 0.01 and one.final_accuracy > 0.9
    np.testing.assert_allclose(ckpts[-1].arrays()[0], one_ckpts[-1].arrays()[0], atol=2e-3)
    assert [c.step for c in ckpts] == [40, 80, 120]  # rank 0 alone writes them
    assert [p.step for p in progress] == list(range(1, 121)) and progress[-1].loss < progress[0].loss


async def test_stop_vote_checkpoints_and_a_resume_on_two_ranks_continues(nats_server: NatsServer) -> None:
    (whole,), _, whole_ckpts = await run_ranks(nats_server.url, "whole", 1, CFG)
    stopped, progress, ckpts = await run_ranks(nats_server.url, "stop", 3, CFG, stop_at=50)
    assert all(o.stopped and o.step == 50 for o in stopped)  # every rank stopped at the same step
    # and left once checkpointed: a pass over the whole data set after it held a preempted job's devices for seconds
    assert all(o.final_accuracy is None for o in stopped)
    assert ckpts[-1].step == 50
    resumed, later, final = await run_ranks(nats_server.url, "resume", 2, CFG, start=ckpts[-1])
    assert all(not o.stopped and o.step == 120 for o in resumed)
    assert later[0].step == 51  # no step counted twice: the resume starts after the checkpointed step
    np.testing.assert_allclose(final[-1].arrays()[0], whole_ckpts[-1].arrays()[0], atol=2e-3)
    assert abs(resumed[0].final_accuracy - whole.final_accuracy) <= 0.01


def test_bad_trainer_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="trainer.optimizer: must be 'adam' or 'sgd'"):
        parse_config({"optimizer": "lbfgs"})
    with pytest.raises(ValueError, match="^trainer.steps: Expected `int`, got `str`"):
        parse_config({"steps": "many"})
    with pytest.raises(ValueError, match="^trainer.colour: unknown field$"):
        parse_config({"colour": "red"})
    # digits has ten classes: a spec that names no classes gets them (it was refused for the default meant for
    # spirals, a field its user never set); one that names another number is told why
    assert parse_config({"dataset": "digits"}).classes == 10 and parse_config({}).classes == 3
    with pytest.raises(ValueError, match="trainer.classes: the digits dataset has 10 classes"):
        parse_config({"dataset": "digits", "classes": 3})
    with pytest.raises(ValueError, match=r"^trainer.steps: must be positive$"):  # it named three fields
        parse_config({"steps": -5})
    with pytest.raises(ValueError, match=r"trainer.batch_size: larger than the data set \(100 samples\)"):
        parse_config({"samples": 100, "batch_size": 500})  # it was cut to 100 without a word
    assert parse_config({"samples": 100}).batch_size == 256  # the default: the whole data set each step


def test_a_trainer_too_large_for_its_memory_is_refused_at_submit() -> None:
    """A billion samples were taken, and the worker grew past 15 GB on a node shared with other tenants."""
    from aios.scheduler.spec import SpecError, validate_spec

    spec = {"name": "big", "tenant": "t", "trainer": {"kind": "mlp", "samples": 1_000_000_000}}
    with pytest.raises(SpecError, match=r"trainer: needs about 6\d\.\d GiB per worker .* memory_gib_per_worker \(4\)"):
        validate_spec(spec)
    assert validate_spec({**spec, "memory_gib_per_worker": 80}).memory_gib_per_worker == 80
    assert validate_spec({"name": "small", "tenant": "t", "trainer": {"kind": "mlp", "dataset": "digits",
                                                                     "samples": 1_000_000}})


async def test_a_stop_ends_a_long_step_delay_and_the_rate_counts_it(nats_server: NatsServer) -> None:
    """The delay after a step ignored a stop (a step longer than the stop's grace lost its checkpoint) and was left
    out of the first report's rate (332,081 samples/s against 10)."""
    cfg = TrainerConfig(steps=4, samples=100, batch_size=50, hidden=8, step_delay_s=0.5, checkpoint_every=100)
    outcomes, progress, _ = await run_ranks(nats_server.url, "delay-rate", 1, cfg)
    assert outcomes[0].step == 4 and progress[0].samples_per_s < 50 / 0.4, progress[0]

    slow = TrainerConfig(steps=3, samples=100, batch_size=50, hidden=8, step_delay_s=60, checkpoint_every=100)
    conn = await RawNatsConnection.connect([nats_server.url])
    ring = await NatsRing.join(conn, "delay-stop", 0, 1, timeout_s=20)
    checkpoints: list[Checkpoint] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)

    async def nothing(_: Progress) -> None:
        pass

    async def save(c: Checkpoint) -> None:
        checkpoints.append(c)
    started = time.monotonic()
    try:
        outcome = await train(slow, ring, None, nothing, save, stop.is_set)
    finally:
        await ring.close()
        conn.close()
    assert outcome.stopped and outcome.step == 2 and [c.step for c in checkpoints] == [2]
    assert time.monotonic() - started < 10


async def test_every_rank_starts_from_rank_0s_checkpoint(nats_server: NatsServer) -> None:
    """Ranks that read the job's checkpoint at different moments (an earlier attempt's workers still writing it)
    started from different steps: the first to reach the end left, and the others waited in a collective until it
    timed out and failed the job. Rank 0's start is broadcast, as DDP broadcasts rank 0's parameters."""
    _, _, ckpts = await run_ranks(nats_server.url, "for-starts", 1, CFG)
    at_40, at_80 = ckpts[0], ckpts[1]
    assert (at_40.step, at_80.step) == (40, 80)
    outcomes, progress, final = await run_ranks(nats_server.url, "mixed-starts", 2, CFG, starts=[at_40, at_80])
    assert [o.step for o in outcomes] == [120, 120] and progress[0].step == 41
    assert outcomes[0].final_accuracy == outcomes[1].final_accuracy
    np.testing.assert_allclose(final[-1].arrays()[0], ckpts[-1].arrays()[0], atol=2e-3)  # rank 0's trajectory


async def test_checkpoint_interval_s_bounds_the_time_between_checkpoints(nats_server: NatsServer) -> None:
    """The spec's ``checkpoint_interval_s`` was accepted and documented, then ignored: a job checkpointing every
    1,000 steps lost up to 1,000 steps to a node loss whatever it asked. Now the built-in trainer checkpoints at least
    that often, and on its step count too."""
    cfg = TrainerConfig(steps=30, checkpoint_every=1000, step_delay_s=0.02)
    _, _, untimed = await run_ranks(nats_server.url, "untimed", 2, cfg)
    assert [c.step for c in untimed] == [30]
    _, _, timed = await run_ranks(nats_server.url, "timed", 2, cfg, checkpoint_every_s=0.1)
    steps = [c.step for c in timed]
    assert steps[-1] == 30 and len(steps) >= 3, steps  # about every 5 steps of 20 ms (more on a slow machine)


def test_every_variable_aios_sets_for_a_worker_is_one_a_spec_may_not_set() -> None:
    """Found by review: the launcher's AIOS_ABORT_SUBJECT was not reserved, so a job of one tenant set it to
    another tenant's ring, exited, and its agent aborted that job's training."""
    from aios.common import tracing
    from aios.common.events import Assignment
    from aios.device_agent.workloads import device_environment
    from aios.scheduler.spec import WORKER_VARIABLES, SpecError, validate_spec
    from aios.scheduler.state import JobState
    from aios.trainer.launcher import worker_env

    spec = validate_spec({"name": "t", "tenant": "ml", "devices": 2, "trainer": {"kind": "mlp"}, "env": {"A": "1"}})
    job = JobState(job_id="j1", spec=spec, tenant="ml", arrival=1, submitted_at=0.0,
                   assignments=[Assignment(node_id="n1", device_uuids=["g0"], ranks=[0]),
                                Assignment(node_id="n2", device_uuids=["g1"], ranks=[1])])
    set_by_aios = set(worker_env(job, job.assignments[0], 0, 0, "nats://x")) - set(spec.env)
    set_by_aios |= set(device_environment(["g0"])) | {k.upper() for k in ("traceparent", "tracestate")}
    assert "AIOS_ABORT_SUBJECT" in set_by_aios and set_by_aios <= WORKER_VARIABLES, set_by_aios - WORKER_VARIABLES
    assert tracing.carrier_from_env({"TRACEPARENT": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})  # the names read
    for name in sorted(set_by_aios):
        with pytest.raises(SpecError, match=f"env.{name}: set by AIOS"):
            validate_spec({"name": "t", "tenant": "ml", "command": ["true"], "env": {name: "x"}})


def test_the_launcher_hands_checkpoint_interval_s_to_the_worker() -> None:
    from aios.common.events import Assignment
    from aios.scheduler.spec import validate_spec
    from aios.scheduler.state import JobState
    from aios.trainer.launcher import worker_env
    from aios.trainer.worker import read_env

    spec = validate_spec({"name": "t", "tenant": "ml", "trainer": {"kind": "mlp"}, "checkpoint_interval_s": 1234567.5})
    job = JobState(job_id="j1", spec=spec, tenant="ml", arrival=1, submitted_at=0.0,
                   assignments=[Assignment(node_id="n1", device_uuids=["g0"], ranks=[0])])
    env = worker_env(job, job.assignments[0], 0, 0, "nats://127.0.0.1:4222")
    assert read_env(env).checkpoint_every_s == 1234567.5
    assert read_env({k: v for k, v in env.items() if k != "AIOS_CHECKPOINT_INTERVAL_S"}).checkpoint_every_s is None
    unset = validate_spec({"name": "t", "tenant": "ml", "trainer": {"kind": "mlp"},
                           "env": {"AIOS_CHECKPOINT_INTERVAL_S": "soon"}})  # the field says it, not the env
    job = JobState(job_id="j2", spec=unset, tenant="ml", arrival=2, submitted_at=0.0, assignments=job.assignments)
    assert "AIOS_CHECKPOINT_INTERVAL_S" not in worker_env(job, job.assignments[0], 0, 0, "nats://127.0.0.1:4222")
    for bad in ("soon", "0", "-5", "nan", "inf"):
        with pytest.raises(ValueError, match="AIOS_CHECKPOINT_INTERVAL_S: .* is not a positive number of seconds"):
            read_env({**env, "AIOS_CHECKPOINT_INTERVAL_S": bad})


def test_a_worker_knows_when_the_job_has_left_its_attempt() -> None:
    """Workers of a node declared lost can run on (a hung agent): they must write no checkpoint once the job has
    been requeued or placed again, or the next attempt's reader sees it replaced under it."""
    from aios.common.events import Assignment, JobCancelled, JobPlaced, JobPreempted, JobRequeued
    from aios.trainer.worker import attempt_left

    placed = JobPlaced(aggregate_id="j", assignments=[Assignment("n1", ["g0"], [0])], world_size=1)
    again = JobPlaced(aggregate_id="j", assignments=[Assignment("n2", ["g0"], [0])], world_size=1, attempt=2)
    assert attempt_left([placed], 1) == ""
    assert attempt_left([placed, JobPreempted(aggregate_id="j", reason="drain")], 1) == ""  # its stop checkpoint
    assert "requeued (node n1 lost)" in attempt_left([placed, JobRequeued(aggregate_id="j", reason="node n1 lost")], 1)
    assert attempt_left([placed, JobRequeued(aggregate_id="j", reason="x"), again], 1) == "attempt 2 was placed"
    assert attempt_left([placed, JobRequeued(aggregate_id="j", reason="x"), again], 2) == ""
    assert "cancelled" in attempt_left([placed, JobCancelled(aggregate_id="j")], 1)
    # the resource manager's requeue about n1, late: attempt 2 (on n2) goes on, as the scheduler's fold says
    late = JobRequeued(aggregate_id="j", reason="node n1 lost", node_id="n1")
    assert attempt_left([placed, JobRequeued(aggregate_id="j", reason="node n1 lost; back in the queue"), again,
                         late], 2) == ""
    assert attempt_left([], 1) == ""  # not placed yet as far as the log read says: not for the worker to judge


async def test_a_full_checkpoint_store_is_said_in_one_line(nats_server: NatsServer,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A refused checkpoint ended the worker with a 30-line traceback, the cause ("maximum bytes exceeded") on
    its last line, and the job's reason said only "exited with 1"."""
    from nats.js.api import ObjectStoreConfig

    from aios.common.events import Assignment
    from aios.scheduler.spec import validate_spec
    from aios.scheduler.state import JobState
    from aios.trainer.launcher import worker_env
    from aios.common.store import connect
    from aios.trainer.worker import EXIT_CHECKPOINT, read_env, run

    store = await connect([nats_server.url])  # the log, as the cluster's services create it
    try:
        await store.js.create_object_store("CK_FULL", config=ObjectStoreConfig(max_bytes=2048))
    finally:
        await store.close()
    spec = validate_spec({"name": "t", "tenant": "ml", "trainer": {"kind": "mlp", "steps": 10, "checkpoint_every": 5,
                                                                   "hidden": 64, "samples": 200}})
    job = JobState(job_id="full-ck", spec=spec, tenant="ml", arrival=1, submitted_at=0.0, attempts=1,
                   assignments=[Assignment(node_id="n1", device_uuids=["g0"], ranks=[0])])
    env = {**worker_env(job, job.assignments[0], 0, 0, nats_server.url), "AIOS_CHECKPOINT_STORE": "CK_FULL"}
    assert await run(read_env(env)) == EXIT_CHECKPOINT
    said = capsys.readouterr().err.strip().splitlines()
    assert said[-1].startswith("rank 0: the checkpoint store refused step 5's checkpoint") and "Traceback" not in \
        "\n".join(said), said
    assert "maximum bytes exceeded" in said[-1] and said[-1].endswith("the previous checkpoint is kept")


async def test_the_torch_backend_without_torch_is_a_configuration_error(nats_server: NatsServer,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Every rank exited 3, "a collective failed", as if a peer had died; the cause was in the logs only."""
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    from aios.common.events import Assignment
    from aios.scheduler.spec import validate_spec
    from aios.scheduler.state import JobState
    from aios.trainer.launcher import worker_env
    from aios.common.store import connect
    from aios.trainer.worker import EXIT_CONFIG, read_env, run

    spec = validate_spec({"name": "t", "tenant": "ml", "trainer": {"kind": "mlp", "steps": 5, "backend": "torch"}})
    job = JobState(job_id="no-torch", spec=spec, tenant="ml", arrival=1, submitted_at=0.0, attempts=1,
                   assignments=[Assignment(node_id="n1", device_uuids=["g0"], ranks=[0])])
    await (await connect([nats_server.url])).close()  # the log, as the cluster's services create it
    assert await run(read_env(worker_env(job, job.assignments[0], 0, 0, nats_server.url))) == EXIT_CONFIG
    assert "the torch backend needs torch on every node" in capsys.readouterr().err


def test_rendezvous_ports_stay_below_the_ephemeral_range_and_change_with_the_attempt() -> None:
    """A port from Linux's ephemeral range (32768+) can be any outgoing connection's local port on the node, or a
    listener's bound to port 0: a CI run's torch job found its port taken and failed."""
    from aios.trainer.launcher import master_port

    ports = [master_port(f"job-{i:05x}", attempt) for i in range(2000) for attempt in (1, 2)]
    assert 20000 <= min(ports) and max(ports) < 32768
    assert sum(master_port(f"job-{i:05x}", 1) != master_port(f"job-{i:05x}", 2) for i in range(2000)) >= 1990


async def test_a_taken_rendezvous_port_places_the_job_again(nats_server: NatsServer,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Rank 0 that cannot listen on MASTER_PORT exits as interrupted (the next attempt has another port); it
    failed the job with exit 3, "a collective failed", as if a peer had died."""
    pytest.importorskip("torch")
    import socket

    from aios.common.events import Assignment
    from aios.common.store import connect
    from aios.scheduler.spec import validate_spec
    from aios.scheduler.state import JobState
    from aios.trainer import EXIT_INTERRUPTED
    from aios.trainer.launcher import worker_env
    from aios.trainer.worker import read_env, run

    spec = validate_spec({"name": "t", "tenant": "ml", "devices": 2,
                          "trainer": {"kind": "mlp", "steps": 5, "backend": "torch", "collective_timeout_s": 5}})
    job = JobState(job_id="port-taken", spec=spec, tenant="ml", arrival=1, submitted_at=0.0, attempts=1,
                   assignments=[Assignment(node_id="sim-n1", device_uuids=["g0", "g1"], ranks=[0, 1])])
    env = worker_env(job, job.assignments[0], 0, 0, nats_server.url)
    await (await connect([nats_server.url])).close()  # the log, as the cluster's services create it
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", int(env["MASTER_PORT"])))
        holder.listen()
        assert await run(read_env(env)) == EXIT_INTERRUPTED
    said = capsys.readouterr().err
    assert f"rank 0 could not listen on port {env['MASTER_PORT']}" in said and "placed again, on another port" in said


def test_a_taken_port_is_recognised_in_each_of_torchs_wordings() -> None:
    """torch's libuv store says EADDRINUSE; its older store (USE_LIBUV=0) "errno: 98 - Address already in use",
    which was read as a collective failure and failed the job."""
    import errno

    from aios.trainer.collective.torchdist import _address_in_use

    assert _address_in_use(RuntimeError("The server socket has failed to listen ... name: EADDRINUSE, message: x"))
    assert _address_in_use(RuntimeError("The server socket has failed to bind to [::]:29500 (errno: 98 - Address "
                                        "already in use)."))
    assert _address_in_use(OSError(errno.EADDRINUSE, "in use"))
    assert not _address_in_use(RuntimeError("Connection reset by peer"))
