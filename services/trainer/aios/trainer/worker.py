"""``python -m aios.trainer.worker``: one rank of a built-in trainer job, started by the launcher through a device
agent with the torchrun-style environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT) and AIOS's own variables.

The shell around training.py: it joins the collective, resumes from the job's checkpoint in the Object Store if
there is one, turns SIGTERM (preemption, node drain) into a stop vote so every rank stops at the same step after a
checkpoint, and records ``JobProgress`` and ``CheckpointSaved`` events (rank 0 only). Exit codes: 0 done, 75 stopped
before its last step (a SIGTERM, after a checkpoint) or cut off from NATS: resume me from the last checkpoint, 2 bad
configuration, 3 a collective failed (a peer died: the launcher fails or requeues the job), 4 the checkpoint store
refused a checkpoint (full).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
import time

import msgspec
import nats.errors
import nats.js.errors

from aios.common import tracing
from aios.common.config import seconds_setting
from aios.common.errors import ConfigError, StoreUnavailable
from aios.common.events import (
    CheckpointSaved, Event, JobCancelled, JobFailed, JobPlaced, JobProgress, JobRequeued, JobSucceeded,
)
from aios.common.snapshot import object_bucket, read_object
from aios.common.store import EventStore, open_for_work
from aios.trainer import EXIT_INTERRUPTED
from aios.trainer.collective import BackendUnavailable, Collective, CollectiveError, PortTaken
from aios.trainer.mlp import TrainerConfig, parse_config
from aios.trainer.training import Checkpoint, Outcome, Progress, train

log = logging.getLogger("aios.trainer.worker")

EXIT_CONFIG = 2
EXIT_COLLECTIVE = 3
EXIT_CHECKPOINT = 4


class WorkerEnv(msgspec.Struct, frozen=True):
    job_id: str
    attempt: int
    rank: int
    world: int
    nats_url: str
    master_addr: str
    master_port: int
    bucket: str
    checkpoint: str
    trainer: TrainerConfig
    checkpoint_every_s: float | None = None
    """The spec's ``checkpoint_interval_s``: checkpoint at least this often, whatever ``checkpoint_every`` says."""


def read_env(env: dict[str, str]) -> WorkerEnv:
    """The worker's settings from its environment, or ValueError naming the variable."""
    def need(name: str) -> str:
        value = env.get(name)
        if not value:
            raise ValueError(f"{name}: not set (the launcher sets it; run workers through a job spec)")
        return value

    def number(name: str, default: str | None = None) -> int:
        raw = env.get(name, default) if default is not None else need(name)
        try:
            return int(raw or "")
        except ValueError:
            raise ValueError(f"{name}: {raw!r} is not an integer") from None
    def seconds(name: str) -> float | None:
        try:
            return seconds_setting(env, name, None)
        except ConfigError:
            raise ValueError(f"{name}: {env.get(name)!r} is not a positive number of seconds") from None
    try:
        trainer = json.loads(need("AIOS_TRAINER"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"AIOS_TRAINER: not JSON ({exc})") from None
    return WorkerEnv(job_id=need("AIOS_JOB_ID"), attempt=number("AIOS_ATTEMPT", "0"), rank=number("RANK"),
                     world=number("WORLD_SIZE"), nats_url=need("AIOS_NATS_URL"),
                     master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=number("MASTER_PORT", "29500"),
                     bucket=env.get("AIOS_CHECKPOINT_STORE", "AIOS_CHECKPOINTS"),
                     checkpoint=env.get("AIOS_CHECKPOINT_NAME") or need("AIOS_JOB_ID"),
                     trainer=parse_config(trainer), checkpoint_every_s=seconds("AIOS_CHECKPOINT_INTERVAL_S"))


async def make_collective(w: WorkerEnv) -> tuple[Collective, object]:
    """The job's collective, and the connection it owns (None for torch)."""
    if w.trainer.backend == "torch":
        from aios.trainer.collective.torchdist import TorchCollective

        return await TorchCollective.create(w.rank, w.world, w.master_addr, w.master_port,
                                            timeout_s=w.trainer.collective_timeout_s,
                                            group=f"{w.job_id}/{w.attempt}"), None
    from aios.common.wire import RawNatsConnection
    from aios.trainer.collective.ring import NatsRing, group_name

    conn = await RawNatsConnection.connect(w.nats_url.split(","), name=f"aios-ring-{w.job_id}-{w.rank}")
    return await NatsRing.join(conn, group_name(w.job_id, w.attempt), w.rank, w.world,
                               timeout_s=w.trainer.collective_timeout_s), conn


async def load_checkpoint(store: EventStore, w: WorkerEnv) -> Checkpoint | None:
    """The job's checkpoint, read by rank 0 only: the others start from what it broadcasts."""
    if w.rank != 0 and w.world > 1:
        return None
    await object_bucket(store, w.bucket, "AIOS training checkpoints: model and optimiser state per job")
    try:
        found = await read_object(store, w.bucket, w.checkpoint)
    except nats.js.errors.ObjectNotFoundError:
        return None
    return msgspec.msgpack.decode(found, type=Checkpoint)


def attempt_left(events: list[Event], attempt: int) -> str:
    """Why the job has left ``attempt`` ("" while it is the current one): a later attempt was placed, or it was
    requeued or ended since. Workers of a node declared lost may run on (a hung agent): they wrote the job's
    checkpoint in turns with the next attempt, and a reader of it saw it replaced under it."""
    placed, why, nodes = 0, "", set[str]()
    for ev in events:
        if isinstance(ev, JobPlaced):
            placed, nodes = ev.attempt, {a.node_id for a in ev.assignments}
            why = "" if placed == attempt else f"attempt {placed} was placed"
        elif isinstance(ev, JobRequeued) and ev.node_id and ev.node_id not in nodes:
            continue  # late, about a node this placement does not use (the scheduler ignores it too)
        elif placed == attempt and not why and isinstance(ev, (JobRequeued, JobSucceeded, JobFailed, JobCancelled)):
            why = f"the job was {type(ev).__name__.removeprefix('Job').lower()} ({getattr(ev, 'reason', '')})"
    return why if placed >= attempt else ""


class CheckpointRefused(Exception):
    """The Object Store would not take a checkpoint (full, or refusing writes)."""


class AttemptLeft(Exception):
    """This worker's attempt is no longer the job's: it must write nothing more."""


async def run(w: WorkerEnv) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    store = await open_for_work(w.nats_url.split(","), name=f"aios-worker-{w.job_id}-{w.rank}")
    group: Collective | None = None
    conn: object = None
    try:
        start = await load_checkpoint(store, w)
        group, conn = await make_collective(w)
        if w.rank == 0:
            log.info("training", extra={"job": w.job_id, "world": w.world, "attempt": w.attempt,
                                        "resume_step": start.step if start else 0})
        cfg = w.trainer

        reports, checkpoints = tracing.Thinned(), tracing.Thinned()  # spans for some of them: a trace has bounds

        async def progress(p: Progress) -> None:  # reported at most once a second
            with (tracing.job_span(f"step {p.step}", w.job_id, None, **{"aios.step": p.step, "aios.loss": p.loss})
                  if reports.take(time.monotonic()) else tracing.unsampled()):
                await store.append(f"run.{w.job_id}", JobProgress(
                    aggregate_id=w.job_id, step=p.step, total_steps=cfg.steps, loss=round(p.loss, 6),
                    accuracy=round(p.accuracy, 6), samples_per_s=round(p.samples_per_s, 1), attempt=w.attempt))

        async def checkpoint(c: Checkpoint) -> None:
            left = attempt_left((await store.read(f"job.{w.job_id}", on_bad_event="skip")).events, w.attempt)
            if left:
                raise AttemptLeft(left)
            with (tracing.job_span(f"checkpoint {c.step}", w.job_id, None, **{"aios.step": c.step})
                  if checkpoints.take(time.monotonic()) else tracing.unsampled()):
                blob = msgspec.msgpack.encode(c)
                bucket = await object_bucket(store, w.bucket, "AIOS training checkpoints")
                try:
                    await bucket.put(w.checkpoint, blob)
                except nats.js.errors.APIError as exc:  # the store is full, or refuses: said in a line, not a
                    # 30-line traceback whose last line held the cause
                    raise CheckpointRefused(f"the checkpoint store refused step {c.step}'s checkpoint "
                                            f"({len(blob):,} bytes): {exc.description or exc}") from None
                await store.append(f"run.{w.job_id}", CheckpointSaved(
                    aggregate_id=w.job_id, step=c.step, bucket=w.bucket, name=w.checkpoint,
                    digest="sha256:" + hashlib.sha256(blob).hexdigest(), size=len(blob), attempt=w.attempt))

        outcome: Outcome = await train(cfg, group, start, progress, checkpoint, stop.is_set,
                                       checkpoint_every_s=w.checkpoint_every_s)
        if w.rank == 0:
            await store.append(f"run.{w.job_id}", JobProgress(
                aggregate_id=w.job_id, step=outcome.step, total_steps=cfg.steps, accuracy=outcome.final_accuracy,
                attempt=w.attempt, final=not outcome.stopped))
        print(json.dumps({"rank": w.rank, "world": w.world, "step": outcome.step, "stopped": outcome.stopped,
                          "final_accuracy": None if outcome.final_accuracy is None
                          else round(outcome.final_accuracy, 4)}), flush=True)
        return EXIT_INTERRUPTED if outcome.stopped else 0
    except (StoreUnavailable, nats.errors.ConnectionClosedError, nats.errors.NoServersError,
            nats.errors.StaleConnectionError, nats.errors.UnexpectedEOF) as exc:
        print(f"rank {w.rank}: cut off from NATS ({exc or type(exc).__name__}); the job resumes from its last "
              "checkpoint", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except PortTaken as exc:  # the next attempt gets another MASTER_PORT: an interruption, not a failure
        print(f"rank {w.rank}: {exc}; the job is placed again, on another port", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BackendUnavailable as exc:  # a peer's failure it was not: every rank exited 3 ("a collective failed")
        print(f"rank {w.rank}: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    except (CheckpointRefused, AttemptLeft, CollectiveError) as exc:
        # this rank gives up: it says why, and tells its peers so that they stop now, not at the timeout
        if isinstance(exc, CheckpointRefused):
            code, said, told = EXIT_CHECKPOINT, f"{exc}; the previous checkpoint is kept", str(exc)
        elif isinstance(exc, AttemptLeft):
            code, told = EXIT_INTERRUPTED, f"attempt {w.attempt} is over"
            said = f"{told} ({exc}): stopping without writing its checkpoint"
        else:
            code, said, told = EXIT_COLLECTIVE, str(exc), str(exc)
        print(f"rank {w.rank}: {said}", file=sys.stderr, flush=True)
        if group is not None:
            await group.abort(told)
        return code
    finally:
        if group is not None:
            await group.close()
        if conn is not None:
            conn.close()  # type: ignore[attr-defined]
        await store.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        w = read_env(dict(os.environ))
    except ValueError as exc:
        print(f"aios trainer: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    tracing.setup_tracing("aios-trainer-worker")
    parent = tracing.carrier_from_env(os.environ)
    try:
        with tracing.job_span("train", w.job_id, parent, **{"aios.rank": w.rank, "aios.world": w.world,
                                                            "aios.attempt": w.attempt}):
            return asyncio.run(run(w))
    finally:
        tracing.flush()


if __name__ == "__main__":
    sys.exit(main())
