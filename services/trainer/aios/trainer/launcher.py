"""The launcher: turns ``JobPlaced`` into worker processes through the device agents, and worker exits into the
job's outcome. Pure parts (environment, outcome) are functions; :class:`LauncherService` is the shell.

One worker per device (one per CPU-only job), with a torchrun-compatible environment, so a user's
``torch.distributed`` script runs unchanged.

Deployed as one trainer per node (``AIOS_NODE_ID`` set, as a Nomad system job): it starts and stops the workers of
its own node only, and the trainer of the job's first node (rank 0's, the *lead*) records the job-level facts
(``JobStarted``, ``JobSucceeded``/``JobFailed``). Every trainer folds the same log, so they agree on ranks and on
the lead without talking to each other; a worker failure that the lead records makes every node's trainer stop its
workers. Without ``AIOS_NODE_ID`` one trainer does all of it for every node (a laptop, tests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import zlib
from typing import Any, Mapping

from aios.common import natsauth, tracing
from aios.common.config import seconds_setting
from aios.common.events import (
    JOB_AGGREGATES, Assignment, JobFailed, JobRequeued, JobStarted, JobSucceeded, ReplicaReplaced,
)
from aios.common.events.job import placement_workers, worker_name
from aios.common.errors import AiosError, ConcurrencyConflict, StoreError
from aios.common.runner import Service, ServiceContext
from aios.common.snapshot import Projector
from aios.common.store import Commit
from aios.device_agent.protocol import run_subject, stop_subject
from aios.resource_manager.inventory import Inventory
from aios.trainer import EXIT_INTERRUPTED, MAX_INTERRUPTIONS_WITHOUT_PROGRESS, checkpoints
from aios.trainer.collective.ring import abort_subject, group_name
from aios.scheduler.spec import DEFAULT_STOP_GRACE_S
from aios.scheduler.state import (
    CANCELLED, FAILED, MAX_REPLICA_REPLACEMENTS, PENDING, PLACED, PREEMPTING, PROGRESS_RUN_S, RUNNING, STATE_SCHEMA,
    JobState, SchedulerState, evolve, fold_commit, made_progress,
)

log = logging.getLogger("aios.trainer.launcher")


AGENT_WAIT_S = 30.0
"""How long a launch waits for a node's agent that does not answer (restarting) before failing the job; a node that
stays silent is declared lost meanwhile, which requeues the job instead."""


MASTER_PORTS = range(20000, 32000)
"""Where a job's rendezvous port is drawn from: below Linux's ephemeral range (32768-60999 by default), from which
the kernel gives every outgoing connection its local port and every listener bound to port 0 its port, so no
such socket on the node holds it. (From 20000 to 39999, a port in that range was sometimes taken, and the job
failed as if a collective had.)"""


def master_port(job_id: str, attempt: int) -> int:
    """The attempt's MASTER_PORT: known to every rank before any starts (torchrun's convention), and another one
    for the next attempt, so an attempt that found it taken is placed again on a different port."""
    return MASTER_PORTS.start + zlib.crc32(f"{job_id}/{attempt}".encode()) % len(MASTER_PORTS)


def stop_grace(job: JobState) -> float:
    """Seconds the job's workers get to checkpoint and exit when stopped (the spec's ``stop_grace_s``)."""
    return job.spec.stop_grace_s if job.spec is not None else DEFAULT_STOP_GRACE_S


def worker_env(job: JobState, assignment: Assignment, rank: int, local_rank: int, nats_url: str) -> dict[str, str]:
    """torchrun's variables plus AIOS's own."""
    spec = job.spec
    assert spec is not None
    world = sum(max(1, len(a.device_uuids)) for a in job.assignments)
    group = next(i for i, a in enumerate(job.assignments) if a is assignment or a == assignment)
    master = job.assignments[0].node_id
    env = {k: v for k, v in spec.env.items() if k != "AIOS_CHECKPOINT_INTERVAL_S"}  # the spec's field says it
    return {**env,
            "MASTER_ADDR": "127.0.0.1" if master.startswith("sim") else master,
            "MASTER_PORT": str(master_port(job.job_id, job.attempts)),
            "RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(max(1, len(assignment.device_uuids))),
            # the node's place in the gang, as torchrun's GROUP_RANK (it read 0 on every node); NODE_RANK as
            # Lightning and torch.distributed.launch name it
            "GROUP_RANK": str(group), "NODE_RANK": str(group), "GROUP_WORLD_SIZE": str(len(job.assignments)),
            "AIOS_JOB_ID": job.job_id, "AIOS_ATTEMPT": str(job.attempts), "AIOS_NATS_URL": nats_url,
            # the agent gives it this when it stops the worker on its own (its node shutting down)
            "AIOS_STOP_GRACE_S": repr(stop_grace(job)),
            "AIOS_CHECKPOINT_STORE": "AIOS_CHECKPOINTS", "AIOS_CHECKPOINT_NAME": job.job_id,
            **({"AIOS_TRAINER": json.dumps(spec.trainer)} if spec.trainer is not None else {}),
            # a rank killed outright (SIGKILL, the OOM killer) says nothing to its ring: its node's agent says it
            # there, so the other ranks stop now (they waited out their collective timeout, 60 s, for its data)
            **({"AIOS_ABORT_SUBJECT": abort_subject(group_name(job.job_id, job.attempts))}
               if spec.trainer is not None and world > 1 and spec.trainer.get("backend", "nats") == "nats" else {}),
            **({"AIOS_CHECKPOINT_INTERVAL_S": repr(spec.checkpoint_interval_s)}
               if spec.checkpoint_interval_s is not None else {}),
            # a bare model name is served at its latest version when the job was submitted: every replica, and
            # every replacement, the same one (each resolved it when it started: a deployment served two versions);
            # by log sequence, the submission's and the registration's stamps being two hosts' clocks
            **({"AIOS_SERVE": json.dumps({**spec.serve, "as_of": job.submitted_at, "as_of_seq": job.arrival})}
               if spec.serve is not None else {})}


def worker_command(job: JobState | None = None) -> list[str]:
    """The built-in worker of the job's kind (a trainer rank, or a model-serving replica), with the Python that runs
    AIOS (the same install on every node)."""
    serving = job is not None and job.spec is not None and job.spec.serve is not None
    return [sys.executable, "-m", "aios.model_registry.replica" if serving else "aios.trainer.worker"]


def restarts_left(job: JobState) -> int:
    """Restarts after a failed worker the spec's ``max_restarts`` still allows."""
    return max(0, (job.spec.max_restarts if job.spec is not None else 0) - job.failure_restarts)


def replaceable(job: JobState) -> list[str]:
    """Replicas of a serving deployment that exited on their own and are replaced alone, the other replicas serving
    on: none while the deployment is being stopped or its node's agent stops workers, or once the attempt has
    replaced ``MAX_REPLICA_REPLACEMENTS``. (A node lost or going away restarts the deployment: see ``outcome``.)"""
    spec = job.spec
    if (spec is None or spec.serve is None or job.status not in (PLACED, RUNNING) or job.cancel_requested
            or job.stopped_workers):
        return []
    exited = sorted(job.exit_codes)
    return exited if len(job.replacements) + len(exited) <= MAX_REPLICA_REPLACEMENTS else []


def worker_places(job: JobState) -> dict[str, tuple[str, int]]:
    """Worker name -> (node, rank), for the attempt's workers and their replacements."""
    places = {worker_name(rank, job.attempts): (node, rank) for node, rank in placement_workers(job.assignments)}
    places.update({r.replacement: (r.node_id, r.rank) for r in job.replacements})
    return places


def own_exits(job: JobState) -> list[str]:
    """Workers that ended the attempt on their own as an interruption, not a failure: an exit 75; a failure while
    ``max_restarts`` allows a restart; for a serving deployment, any exit (it serves until it is stopped: a replica
    that dies, or exits, is replaced, or the deployment restarted) except those replaced alone."""
    serving = job.spec is not None and job.spec.serve is not None
    restarting = restarts_left(job) > 0
    replacing = set(replaceable(job))
    return sorted(w for w, c in job.exit_codes.items() if w not in job.stopped_workers and w not in replacing and (
        serving or c == EXIT_INTERRUPTED or (restarting and c != 0)))


def outcome(job: JobState, nodes_going: frozenset[str] = frozenset(),
            nodes_lost: frozenset[str] = frozenset(), now: float | None = None,
            ran_s: float | None = None, faults: Mapping[str, str] | None = None
            ) -> tuple[str, str, int | None] | None:
    """``(succeeded|failed|requeued|restarted, reason, exit code)`` once it is decided, else None: the first worker
    (by name) to exit non-zero on its own fails the job at once (its peers are then stopped), or, while the spec's
    ``max_restarts`` allows, restarts it from its checkpoint once they have exited; a worker its agent stopped while
    nobody asked the job to stop (the agent or its node shutting down) requeues it, to resume from its checkpoint,
    once every started worker of the attempt has exited (rank 0 may write the checkpoint last). Such a worker exits
    0 after checkpointing, which was counted as success (a half-trained model registered). While one of the job's
    nodes goes away (``nodes_going``: its agent shutting down, or ``nodes_lost``), a peer's crash is part of the same
    interruption; a lost node's workers never report their exit, so nobody waits for them. All exiting 0 on their
    own is success. A worker that exits ``EXIT_INTERRUPTED`` (stopped before its last step by a signal AIOS did not
    send, or cut off from NATS) was interrupted too: the job resumes, it neither succeeded nor failed, unless it has
    done so ``MAX_INTERRUPTIONS_WITHOUT_PROGRESS`` times in a row without progress (at ``now``, default the clock;
    ``ran_s``: how long the attempt ran, timed by its trainer, else ``now`` less the placement's stamp). A reason
    names the fault of the GPU of the worker it is about, if ``faults`` has one."""
    if not (nodes_going or nodes_lost) and replaceable(job):
        return None  # its replicas are replaced one by one: the attempt goes on
    world = sum(max(1, len(a.device_uuids)) for a in job.assignments)
    # exit 75 of its own accord (not stopped by an agent, which then marks it): the first cause of the interruption
    interrupted = own_exits(job)
    stopped = set(job.stopped_workers) | set(interrupted)
    bad = sorted((w, c) for w, c in job.exit_codes.items() if c != 0 and w not in stopped)
    if bad and (stopped or nodes_going or nodes_lost):
        stopped |= {w for w, _ in bad}
        bad = []
    if bad:
        worker, code = bad[0]
        after = f", after {job.failure_restarts} restarts (max_restarts)" if job.failure_restarts else ""
        return "failed", f"worker {worker} {how_ended(job, worker, faults)}{after}", code
    if stopped:
        if job.workers_running > 0 and not nodes_lost:
            return None  # the others are stopping too
        # the first worker to end other than by finishing decides: a failure restarts the job, an exit 75 before it
        # (its peers then fail as they lose it) is an interruption
        worker = next((w for w, c in job.exit_codes.items() if c != 0), "")
        if (worker in interrupted and job.exit_codes[worker] != EXIT_INTERRUPTED and restarts_left(job)
                and not (nodes_lost or nodes_going) and job.spec.serve is None):
            return ("restarted", (f"worker {worker} {how_ended(job, worker, faults)}; "
                                 f"restart {job.failure_restarts + 1} of {job.spec.max_restarts}; {resumes(job)}"),
                    job.exit_codes[worker])
        if nodes_lost:
            why = f"node {min(nodes_lost)} was lost"
        elif interrupted and not nodes_going and (first := next(
                (w for w, c in job.exit_codes.items() if c != 0 or (job.spec is not None and job.spec.serve)),
                "")) in interrupted:  # the first to exit of those that did not finish (a rank done first is not)
            # its own doing: a worker's exit 75 came first (its peers were then stopped at the launcher's request);
            # one that exits 75 after AIOS stopped a peer, or while its node goes, is not
            looping = (job.interrupted_in_a_row >= MAX_INTERRUPTIONS_WITHOUT_PROGRESS
                       and not made_progress(job, now if now is not None else time.time(), ran_s))
            if job.spec is not None and job.spec.serve is not None:
                how = how_ended(job, first, faults)
                if looping:
                    return "failed", (f"replica {first} {how} again, after {job.interrupted_in_a_row} restarts in a "
                                      f"row, each run shorter than {PROGRESS_RUN_S:g} s: a crash loop"), \
                        job.exit_codes[first]
                return "requeued", f"replica {first} {how}; the deployment restarts", EXIT_INTERRUPTED
            if looping:
                return "failed", (f"worker {first} exited {EXIT_INTERRUPTED} (interrupted) again, after "
                                  f"{job.interrupted_in_a_row} requeues in a row without progress (no new step, "
                                  f"each run shorter than {PROGRESS_RUN_S:g} s): a crash loop, not an "
                                  "interruption"), EXIT_INTERRUPTED
            why = (f"worker {first} stopped before its last step (exit {EXIT_INTERRUPTED}: a signal AIOS did "
                   "not send, NATS went away, or its rendezvous port was taken; its log says which)")
            return "requeued", f"{why}; {resumes(job)}", EXIT_INTERRUPTED
        elif job.stopped_workers:
            why = f"worker {min(job.stopped_workers)} was stopped by its node's agent"
        elif nodes_going:
            why = f"worker {min(stopped)} exited while node {min(nodes_going)} shut down"
        else:  # an exit 75 after a peer's crash: requeued, but not counted as the job's own interruption
            why = f"worker {(interrupted or sorted(stopped))[0]} stopped before its last step"
        return "requeued", f"{why}; {resumes(job)}", None
    if world and len(job.exit_codes) >= world:
        return "succeeded", "", 0
    return None


def resumes(job: JobState) -> str:
    """What a requeued job does next: the built-in trainer resumes from its checkpoint; a command starts again,
    from a checkpoint only if it keeps one (the reason said it resumed, of a program that keeps none); a serving
    deployment, which keeps none, restarts."""
    if job.spec is not None and job.spec.serve is not None:
        return "the deployment restarts"
    if job.spec is not None and job.spec.command is not None:
        return "it starts again, from a checkpoint only if its command keeps one (AIOS_CHECKPOINT_NAME)"
    return "resumes from its checkpoint"


BUILTIN_EXITS = {2: "its trainer configuration is bad", 3: "a collective failed: a peer died or stalled",
                 4: "the checkpoint store refused a checkpoint (full?)"}
"""What the built-in trainer's exit codes mean (aios.trainer.worker), for the job's error."""


def how_ended(job: JobState, worker: str, faults: Mapping[str, str] | None = None) -> str:
    """How a worker of the job's current attempt ended (:func:`exit_text`), quoting the last line it wrote to
    stderr when it failed (a replica whose model is not registered crash-looped, and the cause was only in its
    logs), and the fault of its GPU if it is out of service (``faults``, :func:`device_faults`)."""
    text = exit_text(job.exit_codes.get(worker), job.exit_signals.get(worker),
                     builtin=job.spec is not None and job.spec.trainer is not None)
    said = job.exit_messages.get(worker)
    text = f'{text}; its last stderr line: "{said}"' if said else text
    fault = (faults or {}).get(worker)
    return f"{text}; {fault}" if fault else text


def device_faults(job: JobState, inv: Inventory) -> dict[str, str]:
    """Worker -> why its GPU is out of service, for the workers of the attempt whose GPU is (an XID, a GPU off the
    bus, a stuck process): a job killed as its GPU failed said only "killed by SIGKILL (out of memory?)"."""
    # by rank as placement_workers counts them: one a device, one on a node given none
    devices = [(a.node_id, u) for a in job.assignments for u in (a.device_uuids or [""])]
    out: dict[str, str] = {}
    for worker, (node_id, rank) in worker_places(job).items():
        if rank >= len(devices) or not devices[rank][1]:
            continue
        node_id, uuid = devices[rank]
        node = inv.nodes.get(node_id)
        device = node.devices.get(uuid) if node is not None else None
        if device is not None and not device.healthy:
            out[worker] = f"its GPU {uuid} on {node_id} is out of service ({device.reason or 'unhealthy'})"
    return out


def exit_text(code: int | None, sig: int | None, builtin: bool = False) -> str:
    """How a worker ended, for the job's error: its code (with its meaning, for the built-in trainer), or the signal
    that killed it by name (a SIGKILL nobody sent is most often the kernel's out-of-memory killer, as Kubernetes'
    OOMKilled)."""
    if code is not None:
        meaning = BUILTIN_EXITS.get(code) if builtin else None
        return f"exited with {code}" + (f" ({meaning}; the job's logs say more)" if meaning else "")
    if sig is None:
        return "was killed by a signal"
    try:
        name = signal.Signals(sig).name
    except ValueError:
        return f"was killed by signal {sig}"
    hint = ": out of memory?" if sig == signal.SIGKILL else ""
    return f"was killed by {name} (signal {sig}{hint})"


OUTCOME_RETRY_S = 300.0
"""How long the lead trainer tries to record an attempt's outcome while the store does not answer."""


def lead_node(job: JobState) -> str | None:
    """The node whose trainer records the job's start and outcome: rank 0's."""
    return job.assignments[0].node_id if job.assignments else None


def _is_current(job: JobState | None, attempt: int) -> bool:
    return job is not None and job.attempts == attempt and job.status in (PLACED, RUNNING)


class LauncherService(Service):
    name = "trainer"

    def __init__(self, node_id: str | None = None, retention_s: float | None = checkpoints.DEFAULT_RETENTION_S,
                 sweep_every_s: float = 3600.0) -> None:
        self.node_id = node_id
        """This trainer's node; None: every node's."""
        self.retention_s = retention_s
        """How long an ended job's checkpoint is kept (None: for ever); see :mod:`aios.trainer.checkpoints`."""
        self.sweep_every_s = sweep_every_s
        self.sweeps = 0
        self._sweeping = False
        self._sweep_watch = checkpoints.SweepWatch()
        self.projector = Projector("launcher", SchedulerState, None, SchedulerState, STATE_SCHEMA,
                                   fold_commit=fold_commit)
        self.launched: set[tuple[str, int]] = set()
        self.launched_at: dict[tuple[str, int], float] = {}
        """When this trainer launched each attempt, on its own clock: an attempt's length is timed on one clock
        (the placement's stamp is the scheduler's: a trainer 5 minutes ahead failed every job of
        ``max_runtime_s`` under 300 s at once, one behind let them run on and charged them nothing)."""
        self.stopped: set[tuple[str, int]] = set()
        self.nodes_of: dict[tuple[str, int], set[str]] = {}
        """Nodes an attempt's workers were started on (a requeue clears the job's assignments)."""
        self._background: set[asyncio.Task[None]] = set()
        self.decided: set[tuple[str, int]] = set()
        self.replacing: set[tuple[str, str]] = set()
        """(job, replacement worker) this trainer has started."""
        self.stopped_saw: dict[tuple[str, int], set[str]] = {}
        """The workers a stopped attempt had started when this trainer stopped it: one started later is stopped
        too."""

    async def run(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        await self.projector.rebuild(ctx.store)
        for job in self.projector.state.jobs.values():
            # after a restart: a job whose workers here all started is launched; one still PLACED may have been cut
            # off half-way (we died between two workers), and a running one may have been started by the trainers
            # of its other nodes while ours was down (the lead records JobStarted once its own workers are up), so
            # those are launched again, skipping the workers that started
            mine = {w for w, (node, _) in worker_places(job).items() if self._mine(node)}
            if job.status != PLACED and (job.workers_running or job.exit_codes or job.started_at) and (
                    job.status not in (PLACED, RUNNING) or mine <= set(job.started_workers) | set(job.exit_codes)):
                key = (job.job_id, job.attempts)
                self.launched.add(key)
                self.nodes_of[key] = {a.node_id for a in job.assignments if self._mine(a.node_id)}
        stop = asyncio.Event()
        follower = asyncio.ensure_future(self.projector.follow(ctx.store, self._on_commit, stop))
        await self._reconcile()
        next_sweep = time.monotonic() + min(10.0, self.sweep_every_s)
        while not ctx.stopping.is_set():
            if follower.done():  # an error stopped the fold: a trainer that folds nothing decides nothing, and
                # went on looking alive; its supervisor restarts it, and the restart rebuilds from the log
                await follower
                raise StoreError("the trainer's event follower stopped")
            try:
                await asyncio.wait_for(ctx.stopping.wait(), 1.0)
            except asyncio.TimeoutError:
                await self._enforce_time_limits(time.time())
                if time.monotonic() >= next_sweep and not self._sweeping:
                    next_sweep = time.monotonic() + self.sweep_every_s
                    self._sweeping = True
                    self._in_background(self._sweep_checkpoints(self._sweep_rank()))
        stop.set()
        await follower

    async def _enforce_time_limits(self, now: float) -> None:
        """A job that has run ``max_runtime_s`` (over all its attempts, as Slurm's --time) is stopped and failed,
        by its lead trainer. The limit was documented and used as an estimate, but never enforced. Only live jobs
        can be placed or running: walking every job ever submitted cost 36 ms a second on each node at 110,000."""
        for job in self.projector.state.active():
            limit = job.spec.max_runtime_s if job.spec else None
            key = (job.job_id, job.attempts)
            if (not limit or job.status not in (PLACED, RUNNING) or job.placed_at is None or key in self.decided
                    or key not in self.launched or not self._leads(job)):
                continue
            ran = job.run_seconds + self._attempt_ran(job, now)
            if ran > limit:
                self.decided.add(key)
                await self._finish(job, "failed", f"max_runtime_s: ran {ran:.0f} s, the limit is {limit:g} s")

    def _attempt_ran(self, job: JobState, now: float, attempt: int | None = None) -> float:
        """How long the job's attempt has run: since this trainer launched it, on its own clock; for one launched
        before this trainer started, since the placement's stamp (the scheduler's clock, the best there is)."""
        started = self.launched_at.get((job.job_id, job.attempts if attempt is None else attempt), job.placed_at)
        return max(0.0, now - started) if started is not None else 0.0

    def _sweep_rank(self) -> int:
        """This trainer's place in the line of sweepers: the online nodes by name (every trainer folds the same
        log, so they agree), a node not online after them. 0 sweeps every period, the others stand by
        (:func:`checkpoints.standby_sweeps`); the one trainer of a cluster without per-node trainers is 0, and so is
        every trainer when no node is online. (Every node sweeping at once, each with its own retention setting,
        made the shortest one win; only the first sweeping, a trainer that was down meant no sweep at all.)"""
        if self.node_id is None:
            return 0
        online = sorted(n for n, node in self.projector.state.inv.nodes.items() if node.online)
        if not online:
            return 0
        return online.index(self.node_id) if self.node_id in online else len(online)

    @property
    def _sweeper_name(self) -> str:
        return f"node {self.node_id}" if self.node_id else "trainer"

    async def _sweep_checkpoints(self, rank: int) -> None:
        """Failed and cancelled jobs' checkpoints past their retention, and chunks of writes that died, are
        removed (see :mod:`aios.trainer.checkpoints`): every period by the first in line, by the next when the
        sweep mark stops changing."""
        try:
            if rank > 0:
                mark = await checkpoints.last_sweep(self.ctx.store)
                sweeps, self._sweep_watch = checkpoints.standby_sweeps(
                    rank, self._sweeper_name, mark, self._sweep_watch, time.monotonic(), self.sweep_every_s)
                if not sweeps:
                    return
                if mark is None or mark.by != self._sweeper_name:
                    log.warning("checkpoints: no sweep was recorded for a while; this trainer sweeps in its place",
                                extra={"last_by": mark.by if mark else None, "place_in_line": rank})
            done = await checkpoints.collect(self.ctx.store, self.projector.state.jobs, retention_s=self.retention_s,
                                             by=self._sweeper_name)
        except Exception as exc:  # noqa: BLE001 - a sweep that fails (NATS away, timed out) is tried again next time
            log.warning("checkpoint sweep failed; tried again later", extra={"error": repr(exc)})
            return
        finally:
            self._sweeping = False
        self.sweeps += 1
        if done["deleted"] or done["orphaned_chunks"]:
            log.info("checkpoint sweep", extra={"deleted": len(done["deleted"]), "bytes": done["bytes"],
                                                "orphaned_chunks": done["orphaned_chunks"]})

    def _mine(self, node: str) -> bool:
        return self.node_id is None or node == self.node_id

    def _leads(self, job: JobState) -> bool:
        return self.node_id is None or lead_node(job) == self.node_id

    def _booked(self, job: JobState) -> bool:
        """Workers start only once every device of the placement is leased to the job (leases follow JobPlaced)."""
        holder = self.projector.state.inv.leases.holder
        return all(holder.get(u) == job.job_id for a in job.assignments for u in a.device_uuids)

    async def _on_commit(self, commit: Commit) -> None:
        kind, _, ident = commit.aggregate.partition(".")
        if kind in JOB_AGGREGATES:
            await self._reconcile(ident)
        elif kind == "node":
            for job_id in {getattr(e, "job_id", None) for e in commit.events} - {None}:
                await self._reconcile(job_id)

    async def _reconcile(self, only: str | None = None) -> None:
        jobs = self.projector.state.jobs
        targets = [jobs[only]] if only and only in jobs else ([] if only else list(jobs.values()))
        for job in targets:
            key = (job.job_id, job.attempts)
            if job.spec is None:
                continue
            if key in self.stopped and (late := set(job.started_workers) - self.stopped_saw.get(key, set())):
                # workers of an attempt we stopped that started after (nothing else would stop them); the grace
                # of the first stop, the longest: a shorter one would cut short a checkpoint that stop asked for
                self.stopped_saw[key] = set(job.started_workers)
                log.warning("workers started after their attempt was stopped; stopping them",
                            extra={"job": job.job_id, "workers": sorted(late)})
                self._in_background(self._stop(job.job_id, self.nodes_of.get(key, set()), grace_s=stop_grace(job),
                                               attempt=job.attempts))
            for replaced in job.replacements:  # a replica its lead replaced, on our node: start its successor
                if (job.status in (PLACED, RUNNING) and self._mine(replaced.node_id) and key not in self.stopped
                        and not (job.stopped_workers or own_exits(job) or job.cancel_requested)
                        and replaced.replacement not in job.started_workers
                        and (job.job_id, replaced.replacement) not in self.replacing):
                    self.replacing.add((job.job_id, replaced.replacement))
                    await self._start_replacement(job, replaced)
            if (job.status in (PLACED, RUNNING) and key not in self.launched and key not in self.stopped
                    and not job.cancel_requested and self._booked(job)):
                if any(self._mine(a.node_id) for a in job.assignments):
                    self.launched.add(key)
                    self.launched_at[key] = time.time()
                    with tracing.job_span("launch", job.job_id, job.placement_trace, **{
                            "aios.attempt": job.attempts, "aios.node": self.node_id or "all"}):
                        await self._launch(job)
            elif job.status in (PREEMPTING, CANCELLED) and key in self.launched and key not in self.stopped:
                self._mark_stopped(job, key)
                # in the background: with a long stop_grace_s every other job's launch waited behind this one
                self._in_background(self._traced_stop(job, key))
            elif job.status == FAILED and key in self.launched and key not in self.stopped:
                # a worker failed (recorded by the lead, maybe on another node): its peers here must not hang
                self._mark_stopped(job, key)
                self._in_background(self._stop(job.job_id, self.nodes_of.get(key, set()),
                                               grace_s=DEFAULT_STOP_GRACE_S))
            elif job.status == PENDING and key in self.launched and key not in self.stopped:
                # requeued (a node of the placement was lost): stop the attempt's workers left on the other nodes,
                # in the background so the next placement is launched without waiting for their grace period;
                # short grace: their peers on the lost node are gone, so no collective (or checkpoint) can finish
                self._mark_stopped(job, key)
                self._in_background(self._stop(job.job_id, self.nodes_of.get(key, set()), grace_s=3,
                                               attempt=job.attempts, timeout=8))
            elif job.status in (PLACED, RUNNING) and key in self.launched and key not in self.stopped and (
                    job.stopped_workers or own_exits(job)):
                # a node's agent stopped some of the attempt's workers (it is shutting down): ours stop too, with
                # the usual grace (rank 0 writes the checkpoint), and the lead requeues once all have exited
                self._mark_stopped(job, key)
                self._in_background(self._stop(job.job_id, self.nodes_of.get(key, set()), grace_s=stop_grace(job),
                                               attempt=job.attempts))
                if self._leads(job) and key not in self.decided:
                    await self._decide(job, key)
            elif job.status in (PLACED, RUNNING) and key not in self.decided and self._leads(job):
                await self._decide(job, key)

    def _mark_stopped(self, job: JobState, key: tuple[str, int]) -> None:
        self.stopped.add(key)
        self.stopped_saw[key] = set(job.started_workers)

    def _in_background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _decide(self, job: JobState, key: tuple[str, int]) -> None:
        """The lead records the attempt's outcome once it is decided."""
        nodes = self.projector.state.inv.nodes
        lost = frozenset(a.node_id for a in job.assignments if (n := nodes.get(a.node_id)) is None or not n.online)
        going = frozenset(a.node_id for a in job.assignments if (n := nodes.get(a.node_id)) and n.shutting_down)
        if not (lost or going) and (exited := replaceable(job)):
            await self._replace(job, exited)
            return
        result = outcome(job, going, lost, ran_s=self._attempt_ran(job, time.time()),
                         faults=device_faults(job, self.projector.state.inv))
        if result is not None:
            self.decided.add(key)
            with tracing.job_span(f"finish {result[0]}", job.job_id, job.placement_trace,
                                  **{"aios.exit_code": result[2]}) as span:
                if result[0] == "failed":
                    tracing.mark_failed(span, result[1])
                await self._finish(job, *result)

    async def _replace(self, job: JobState, exited: list[str]) -> None:
        """The lead records that each exited replica is replaced alone (the launcher of its node starts the new
        one); the deployment's other replicas go on serving."""
        places = worker_places(job)
        for worker in exited:
            node, rank = places[worker]
            number = len(job.replacements) + 1 + exited.index(worker)
            how = how_ended(job, worker, device_faults(job, self.projector.state.inv))
            await self._append(job, ReplicaReplaced(
                aggregate_id=job.job_id, worker=worker, replacement=f"{worker_name(rank, job.attempts)}-r{number}",
                node_id=node, rank=rank, attempt=job.attempts,
                reason=f"replica {worker} {how}; replaced ({number} of {MAX_REPLICA_REPLACEMENTS} in this attempt)"),
                f"replace-{job.attempts}-{worker}")

    async def _start_replacement(self, job: JobState, replaced: ReplicaReplaced) -> None:
        slots = [(a, local) for a in job.assignments for local in range(max(1, len(a.device_uuids)))]  # rank order
        assignment, local = slots[replaced.rank]
        uuid = assignment.device_uuids[local] if assignment.device_uuids else None
        reply = await self._start_worker(job, assignment, replaced.rank, local, uuid, replaced.replacement,
                                         job.attempts)
        if reply is not None and not reply.get("ok") and "already running" not in reply.get("error", ""):
            await self._finish(job, "requeued", f"replacement {replaced.replacement} could not start on "
                                                f"{replaced.node_id}: {reply.get('error')}; the deployment restarts",
                               EXIT_INTERRUPTED, attempt=replaced.attempt)

    async def _start_worker(self, job: JobState, a: Assignment, rank: int, local: int, uuid: str | None, name: str,
                            attempt: int) -> dict[str, Any] | None:
        """Ask ``a``'s node's agent to start one worker, waiting for an agent that is restarting; None: the attempt
        ended meanwhile."""
        spec = job.spec
        assert spec is not None
        url = ",".join(natsauth.without_credentials(s) for s in self.ctx.settings.servers)  # the agent adds its own
        env = {**worker_env(job, a, rank, local, url), **{k.upper(): v for k, v in tracing.carrier().items()}}
        request = {"job_id": job.job_id, "worker": name, "command": spec.command or worker_command(job),
                   "device_uuids": [uuid] if uuid else [], "env": env}
        reply = await self._ask(run_subject(a.node_id), request)
        waited = 0.0
        while reply.get("unreachable") and waited < AGENT_WAIT_S and self._current(job.job_id, attempt):
            # the node's agent is restarting (or gone: then the node is declared lost and the job requeued)
            await asyncio.sleep(1.0)
            waited += 1.0
            reply = await self._ask(run_subject(a.node_id), request)
        return reply if self._current(job.job_id, attempt) else None

    async def _launch(self, job: JobState) -> None:
        """Start this trainer's workers of the job's current attempt: each node's in rank order, the nodes at once
        (one after another, a gang on 8 nodes waited for 8 agents in turn, and one agent restarting held up all).
        A start refused on one node ends the others' starts; the attempt's outcome is judged once, from every
        refusal seen: failed if any is for good (a command not found), else requeued."""
        attempt = job.attempts
        self.nodes_of[(job.job_id, attempt)] = {a.node_id for a in job.assignments if self._mine(a.node_id)}
        per_node: dict[str, list[tuple[Assignment, int, int, str | None]]] = {}
        rank = 0
        for a in job.assignments:
            devices = a.device_uuids or [None]  # type: ignore[list-item]
            for local, uuid in enumerate(devices):
                # another node's trainer starts its own; one started before we restarted (and maybe ended) is not
                # started again
                if self._mine(a.node_id) and worker_name(rank, attempt) not in job.started_workers \
                        and worker_name(rank, attempt) not in job.exit_codes:
                    per_node.setdefault(a.node_id, []).append((a, rank, local, uuid))
                rank += 1
        halted = asyncio.Event()  # set by the first node whose start is refused (our view of the job does not move
        # while we launch: the follower that folds the log waits for us)
        results = await asyncio.gather(*(self._launch_on(job, attempt, workers, halted)
                                         for workers in per_node.values()))
        refusals = sorted(r for r in results if isinstance(r, tuple))  # for good before transient, then by rank
        if refusals:
            transient, _, why = refusals[0]
            await self._refused(job, attempt, why, transient)
        elif all(r is True for r in results) and self._leads(job) and self._current(job.job_id, attempt):
            await self._append(job, JobStarted(aggregate_id=job.job_id, world_size=rank), f"started-{attempt}")

    async def _launch_on(self, job: JobState, attempt: int, workers: list[tuple[Assignment, int, int, str | None]],
                         halted: asyncio.Event) -> bool | tuple[bool, int, str]:
        """Start one node's workers in turn. True: all started; False: the attempt ended or another node's start
        was refused meanwhile; a refusal: (transient, rank, why) for ``_launch`` to judge."""
        for a, rank, local, uuid in workers:
            if halted.is_set() or not self._current(job.job_id, attempt):
                return False  # requeued, ended or refused elsewhere while we were starting: the rest is not wanted
            reply = await self._start_worker(job, a, rank, local, uuid, worker_name(rank, attempt), attempt)
            if reply is None:
                return False
            if not reply.get("ok") and "already running" not in reply.get("error", ""):
                halted.set()
                return (bool(reply.get("transient")), rank,
                        f"could not start {worker_name(rank, attempt)} on {a.node_id}: {reply.get('error')}")
        return True

    async def _refused(self, job: JobState, attempt: int, why: str, transient: bool) -> None:
        """The outcome of an attempt whose worker could not start. The job state may have moved on during the
        request (a dead node's timeout): the attempt this launch was for is judged. Devices still busy or not yet
        healthy may not be tomorrow: requeued (a start refused while the previous holder's workers were stopping
        failed the job for good)."""
        if transient and job.interrupted_in_a_row >= MAX_INTERRUPTIONS_WITHOUT_PROGRESS:
            # as for exits 75: a device that never frees (a worker stuck in the kernel) requeued the job for ever
            await self._finish(job, "failed", f"{why}, after {job.interrupted_in_a_row} requeues in a row without a "
                                              "start", attempt=attempt)
        elif transient:
            await self._finish(job, "requeued", f"{why}; back in the queue", EXIT_INTERRUPTED, attempt=attempt)
        else:
            await self._finish(job, "failed", why, attempt=attempt)

    async def _traced_stop(self, job: JobState, key: tuple[str, int]) -> None:
        with tracing.job_span(f"stop workers ({job.status})", job.job_id, job.placement_trace,
                              **{"aios.attempt": job.attempts, "aios.node": self.node_id or "all"}):
            await self._stop(job.job_id, self.nodes_of.get(key, set()), grace_s=stop_grace(job))

    async def _stop(self, job_id: str, nodes: set[str], grace_s: float, attempt: int | None = None,
                    timeout: float | None = None) -> None:
        """Ask the agents of ``nodes`` (this trainer's share of the placement) to stop the job's workers; with
        ``attempt``, only that attempt's. The agents answer once they are gone (``grace_s`` at most); they are all
        asked at once (one after the other, a trainer serving every node took a grace period per node to stop a
        gang, and its devices stayed held as long)."""
        timeout = grace_s + 5 if timeout is None else timeout
        body: dict[str, Any] = {"job_id": job_id, "grace_s": grace_s}
        if attempt is not None:
            body["attempt"] = attempt
        await asyncio.gather(*(self._ask(stop_subject(node), body, timeout=timeout) for node in sorted(nodes)))

    async def _finish(self, job: JobState, result: str, reason: str, exit_code: int | None = None,
                      attempt: int | None = None) -> None:
        """``attempt``: the one this outcome is about (default: the job's current one)."""
        attempt = job.attempts if attempt is None else attempt
        key = f"{result}-{attempt}"
        ran = round(self._attempt_ran(job, time.time(), attempt), 3) if job.placed_at is not None else None
        if result == "succeeded":
            # the open run is counted by the fold only when this event closes it (it read 0.0 for every job)
            runtime = job.run_seconds + (ran or 0.0)
            await self._append_outcome(job.job_id, attempt, JobSucceeded(aggregate_id=job.job_id,
                                                                         runtime_s=round(runtime, 3), attempt_s=ran),
                                       key)
        elif result in ("requeued", "restarted"):  # the scheduler releases its devices and places it again
            await self._append_outcome(job.job_id, attempt, JobRequeued(
                aggregate_id=job.job_id, reason=reason, interrupted=exit_code == EXIT_INTERRUPTED,
                after_failure=result == "restarted", attempt_s=ran), key)
        else:
            key_now = (job.job_id, attempt)
            self._mark_stopped(job, key_now)  # a failed job keeps no checkpoint: the default grace, not its own
            await self._stop(job.job_id, self.nodes_of.get(key_now, set()), grace_s=DEFAULT_STOP_GRACE_S)
            await self._append_outcome(job.job_id, attempt, JobFailed(aggregate_id=job.job_id, reason=reason,
                                                                      exit_code=exit_code, attempt_s=ran), key)

    def _current(self, job_id: str, attempt: int) -> bool:
        return _is_current(self.projector.state.jobs.get(job_id), attempt)

    async def _append_outcome(self, job_id: str, attempt: int, event: Any, key: str) -> None:
        """Record how an attempt ended, only while it is still the job's current attempt: a launch that timed out
        on a dead node must not fail a job that was requeued and has meanwhile succeeded elsewhere (one end per
        job). Appended against the job's version; on a conflict the job's own events are read again (our fold
        may be waiting for us) and the question is asked again. A store that does not answer is asked again, with
        a backoff, for ``OUTCOME_RETRY_S`` (the idempotency key makes a write that did land count once): one lost
        write left the job running for ever with its devices held, and an error in the re-read stopped the
        trainer's event follower. Given up, the attempt is undecided again, so the next event decides it anew."""
        aggregate = f"job.{job_id}"
        current, version = self._current(job_id, attempt), self.projector.state.inv.versions.get(aggregate, 0)
        deadline = time.monotonic() + OUTCOME_RETRY_S
        pause = 0.2
        for _ in range(1000):
            if not current:
                log.info("outcome of an old attempt dropped", extra={"job": job_id, "attempt": attempt})
                return
            try:
                try:
                    await self.ctx.store.append(aggregate, event, version,
                                                idempotency_key=f"launcher-{job_id}-{key}")
                    return
                except ConcurrencyConflict:
                    history = await self.ctx.store.read(aggregate)
                fresh = SchedulerState()
                for ev in history.events:
                    evolve(fresh, ev)
                current, version = _is_current(fresh.jobs.get(job_id), attempt), history.version
                continue
            except AiosError as exc:
                if time.monotonic() + pause > deadline:
                    log.error("could not record job outcome; decided again at the job's next event",
                              extra={"job": job_id, "error": str(exc)})
                    self.decided.discard((job_id, attempt))
                    return
                log.warning("could not record job outcome yet; trying again", extra={"job": job_id,
                                                                                     "error": str(exc)})
            await asyncio.sleep(pause)
            pause = min(5.0, pause * 2)
        log.error("could not record job outcome: the job kept changing", extra={"job": job_id})

    async def _append(self, job: JobState, event: Any, key: str) -> None:
        try:
            await self.ctx.store.append(f"job.{job.job_id}", event, idempotency_key=f"launcher-{job.job_id}-{key}")
        except AiosError as exc:
            log.error("could not record job outcome", extra={"job": job.job_id, "error": str(exc)})

    async def _ask(self, subject: str, body: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        try:
            msg = await self.ctx.nc.request(subject, json.dumps(body).encode(), timeout=timeout)
            return json.loads(msg.data)
        except Exception as exc:  # noqa: BLE001 - an agent away is an answer too
            return {"ok": False, "unreachable": True,
                    "error": f"no answer from {subject}: {exc or type(exc).__name__}"}


def from_env() -> LauncherService:
    sweep = seconds_setting(os.environ, "AIOS_CHECKPOINT_SWEEP_S", 3600.0)
    assert sweep is not None
    return LauncherService(node_id=os.environ.get("AIOS_NODE_ID") or None,
                           retention_s=seconds_setting(os.environ, "AIOS_CHECKPOINT_RETENTION_S",
                                                       checkpoints.DEFAULT_RETENTION_S, off=True),
                           sweep_every_s=sweep)
