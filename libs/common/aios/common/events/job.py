"""Job life-cycle events (DESIGN.md §4). The scheduler issue adds admission, placement and run events beside these."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import msgspec

from aios.common.events.base import Event


class JobEvent(Event, frozen=True, kw_only=True):
    """A control-plane decision about a job, on ``aios.evt.job.<id>``: written by the gateway/CLI, the scheduler,
    the resource manager and the trainer's launcher, never by a node."""

    AGGREGATE: ClassVar[str] = "job"
    ABSTRACT: ClassVar[bool] = True


class RunEvent(JobEvent, frozen=True, kw_only=True):
    """A report from the nodes running a job (its device agents and workers), on ``aios.evt.run.<id>``: a subject of
    its own, so the server's subject permissions can let a node report on runs without letting it write decisions
    (decision 0011). Folded into the same job state (``aggregate_id`` is the job id)."""

    AGGREGATE: ClassVar[str] = "run"
    ABSTRACT: ClassVar[bool] = True


JOB_AGGREGATES = ("job", "run")
"""The aggregate kinds a job's events live on (decisions, then its nodes' reports): every fold of a job reads both."""


class JobSubmitted(JobEvent, frozen=True, kw_only=True):
    """A user asked for a job to run. ``spec`` is the validated job spec as submitted."""

    tenant: str
    name: str = ""
    spec: dict[str, Any] = {}
    checked: bool = False
    """The spec passed the checks of the version that took the submission (AIOS's own submission path sets it):
    the job is not judged again by the rules of a later version. A client writing straight into the log leaves it
    unset, and the scheduler judges the spec (and records a refusal as ``JobFailed``)."""
    idempotency_key: str = ""
    """The submitter's key (``Idempotency-Key``): a retry finds its job by it, however late it comes."""


class JobCancelRequested(JobEvent, frozen=True, kw_only=True):
    reason: str = ""
    requested_by: str = ""


class JobCancelled(JobEvent, frozen=True, kw_only=True):
    reason: str = ""


class JobRequeued(JobEvent, frozen=True, kw_only=True):
    """The job lost its devices (node lost, preempted) and goes back to the queue; it resumes from a checkpoint."""

    reason: str
    node_id: str = ""
    interrupted: bool = False
    """A worker of its own exited 75 ("interrupted: resume me"), rather than AIOS moving the job."""
    after_failure: bool = False
    """A worker failed, and the job restarts by its ``max_restarts``."""
    attempt_s: float | None = None
    """How long the attempt this ends ran, timed by the trainer that launched it on its own clock (None: not said;
    the fold then takes the span between the placement's stamp and this one's, two hosts' clocks)."""
    node_seq: int = 0
    """With ``node_id``: the log sequence of the commit that ended the job's leases there (the node's loss, or the
    release after its agent restarted). A placement made after it is not this requeue's business, whatever the
    clocks of the hosts that stamped the two say (0: not said, an older resource manager: judged by time)."""


class WorkerStarted(RunEvent, frozen=True, kw_only=True):
    """The device agent of ``node_id`` started a worker process of the job on ``device_uuids``."""

    node_id: str
    worker: str
    pid: int
    device_uuids: list[str] = []
    attempt: int = 0
    """Placement attempt the worker belongs to (0: unknown); the fold ignores workers of other attempts."""


class WorkerExited(RunEvent, frozen=True, kw_only=True):
    node_id: str
    worker: str
    exit_code: int | None
    """None when killed by a signal (see ``signal``)."""
    signal: int | None = None
    reason: str = ""
    attempt: int = 0
    """Placement attempt the worker belonged to (0: unknown): a late exit of a previous attempt's worker must not
    count as one of the current attempt's."""
    stopped: bool = False
    """Its agent stopped it (a stop request, or the agent shutting down): the exit says the worker was
    interrupted, not how the job ended (a built-in worker checkpoints and exits 0 when stopped)."""
    message: str = ""
    """A worker that ended other than with 0 on its own: the last line it wrote to stderr (at most 300
    characters), which the job's error quotes."""


class ReplicaReplaced(JobEvent, frozen=True, kw_only=True):
    """A replica of a serving deployment that exited on its own is replaced by a new worker, ``replacement``, on
    the same node and device, the deployment's other replicas untouched (as KServe and Ray Serve restart one
    replica); written by the deployment's lead launcher, started by the launcher of ``node_id``."""

    worker: str
    replacement: str
    node_id: str
    rank: int
    attempt: int
    reason: str = ""


class Assignment(msgspec.Struct, frozen=True):
    """The devices of one node given to a job, and the global ranks of the workers on them (one per device)."""

    node_id: str
    device_uuids: list[str]
    ranks: list[int]


def worker_name(rank: int, attempt: int) -> str:
    """A worker's name in WorkerStarted/WorkerExited: unique per attempt, since a new placement may start on a node
    where the previous attempt's worker is still stopping."""
    return f"rank{rank}-a{attempt}"


def placement_workers(assignments: list[Assignment]) -> list[tuple[str, int]]:
    """(node, global rank) of each worker of a placement, in rank order: one per device, one on a node given no
    devices (a CPU-only job)."""
    return [(a.node_id, rank) for a, rank in zip(
        (a for a in assignments for _ in range(max(1, len(a.device_uuids)))), itertools.count())]


class JobAdmitted(JobEvent, frozen=True, kw_only=True):
    """Quota allows the job to run; ``borrowed`` is what it uses beyond its tenant's nominal quota."""

    tenant: str
    borrowed: dict[str, int] = {}


class JobPlaced(JobEvent, frozen=True, kw_only=True):
    """Devices chosen (all at once for a gang); the node leases were appended before this event."""

    assignments: list[Assignment]
    world_size: int
    policy: str = ""
    attempt: int = 1


class JobPreempted(JobEvent, frozen=True, kw_only=True):
    """The job must checkpoint and give its devices back; it returns to the queue."""

    reason: str
    for_job: str = ""


class JobStarted(JobEvent, frozen=True, kw_only=True):
    world_size: int = 0


class JobProgress(RunEvent, frozen=True, kw_only=True):
    """Training progress, at a bounded rate (about one a second per job). ``step`` counts optimiser steps since the
    start of the job, across attempts: after a resume it continues from the checkpoint's step, so a step re-run after
    a crash reports the same number again rather than a new one."""

    step: int
    total_steps: int = 0
    loss: float | None = None
    accuracy: float | None = None
    samples_per_s: float | None = None
    attempt: int = 0
    final: bool = False


class CheckpointSaved(RunEvent, frozen=True, kw_only=True):
    """Model and optimiser state at ``step`` is in the Object Store ``bucket`` under ``name`` (the artefact itself is
    never in the log)."""

    step: int
    bucket: str
    name: str
    digest: str = ""
    size: int = 0
    attempt: int = 0


class JobSucceeded(JobEvent, frozen=True, kw_only=True):
    runtime_s: float | None = None
    attempt_s: float | None = None
    """How long the attempt this ends ran, timed by the trainer that launched it on its own clock (None: not said;
    the fold then takes the span between the placement's stamp and this one's, two hosts' clocks)."""


class JobFailed(JobEvent, frozen=True, kw_only=True):
    reason: str
    exit_code: int | None = None
    attempt_s: float | None = None
    """How long the attempt this ends ran, timed by the trainer that launched it on its own clock (None: not said;
    the fold then takes the span between the placement's stamp and this one's, two hosts' clocks)."""
