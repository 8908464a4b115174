"""The scheduler's state: a pure fold of job, node, tenant and lease events (no I/O)."""

from __future__ import annotations

from typing import Any

import msgspec

from aios.common.events import (
    Assignment, CheckpointSaved, Event, JobAdmitted, JobCancelled, JobCancelRequested, JobEvent, JobFailed, JobPlaced,
    JobPreempted, JobProgress, JobRequeued, JobStarted, JobSubmitted, JobSucceeded, ReplicaReplaced, WorkerExited,
    WorkerStarted,
)
from aios.common.store import Commit
from aios.resource_manager import inventory
from aios.scheduler.spec import JobSpec, judge_spec

PENDING, PLACED, RUNNING, PREEMPTING, SUCCEEDED, FAILED, CANCELLED = (
    "pending", "placed", "running", "preempting", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATUSES = (PENDING, PLACED, RUNNING, PREEMPTING, SUCCEEDED, FAILED, CANCELLED)
"""Every state a job can be in, in the order of its life."""
HOLDING = frozenset({PLACED, RUNNING, PREEMPTING})
"""States in which a job may hold devices."""


class JobState(msgspec.Struct):
    job_id: str
    spec: JobSpec | None
    tenant: str
    arrival: int
    """Order of submission (stream sequence of JobSubmitted). ``SchedulerState.jobs`` holds the jobs in this order
    (they are added as their submissions are folded, in the log's order): listings rely on it instead of sorting."""
    submitted_at: float
    queued_at: float | None = None
    """When it last went back into the queue (a requeue, a preemption's end); None: at its submission."""
    status: str = PENDING
    admitted: bool = False
    borrowed: dict[str, int] = {}
    assignments: list[Assignment] = []
    placed_at: float | None = None
    placed_seq: int = 0
    """Log sequence of the current placement's ``JobPlaced``: what happened to its nodes since is told by sequence,
    not by comparing the timestamps of different hosts' clocks (a resource manager 30 s behind had its requeue of a
    job on a lost node dropped as older than the placement, and the job ran on a dead node for ever)."""
    started_at: float | None = None
    finished_at: float | None = None
    preempted_at: float | None = None
    attained: float = 0.0
    """Device-seconds received so far (least-attained-service policies)."""
    run_seconds: float = 0.0
    work: float = 0.0
    """Service normalised by speed: device-seconds times the job's speed on the kind it held relative to its
    fastest kind (throughput hints), so an hour on a device three times slower counts a third of an hour."""
    run_kinds: list[str] = []
    """Device kinds of the current placement."""
    run_speed: float = 1.0
    """``speed_share`` of the current placement, fixed when it is placed (kinds do not change under a run)."""
    attempts: int = 0
    preemptions: int = 0
    preempted_for: str = ""
    """The job its last preemption made room for (``aios why`` names it first among the holders)."""
    requeues: int = 0
    cancel_requested: bool = False
    workers_running: int = 0
    exit_codes: dict[str, int | None] = {}
    """worker -> exit code (None: killed by a signal), for the current attempt."""
    exit_signals: dict[str, int] = {}
    """worker -> the signal that killed it, for the current attempt."""
    exit_messages: dict[str, str] = {}
    """worker -> the last stderr line of a worker that failed, for the current attempt."""
    stopped_workers: list[str] = []
    """Workers of the current attempt that their agent stopped (WorkerExited.stopped): interrupted, not ended."""
    error: str = ""
    step: int = 0
    """Training steps done (JobProgress): the highest reported, so a step re-run after a resume is not counted
    twice."""
    total_steps: int = 0
    loss: float | None = None
    accuracy: float | None = None
    samples_per_s: float | None = None
    checkpoint_step: int = 0
    """Step of the newest checkpoint: where the next attempt resumes."""
    failure_restarts: int = 0
    """Restarts after a worker failed (``max_restarts`` of the spec allows them)."""
    interrupted_in_a_row: int = 0
    """Requeues on its own workers' exit 75 in a row without progress (``made_progress``): a crash loop if it
    grows."""
    step_at_requeue: int = 0
    """``step`` at its last such requeue."""
    progress_attempt: int = 0
    started_workers: list[str] = []
    """Workers of the current attempt reported started (a restarted launcher starts only the others)."""
    replacements: list[ReplicaReplaced] = []
    """Replicas of the current attempt replaced after they exited (a serving deployment): their exits no longer
    count, and the launcher of each one's node starts its replacement."""
    trace: dict[str, str] = {}
    """W3C trace context of the submit (the job's trace root), or of the first decision about a job submitted
    without one: services' spans about the job continue it."""
    placement_trace: dict[str, str] = {}
    """Trace context of the current placement's JobPlaced commit (the launcher's spans are its children)."""
    steps_redone: int = 0
    """Steps trained again after a resume (work lost between the last checkpoint and the interruption)."""

    @property
    def devices(self) -> int:
        return self.spec.devices if self.spec else 0

    def held_devices(self) -> int:
        return sum(len(a.device_uuids) for a in self.assignments)


class Finished(msgspec.Struct, frozen=True):
    """A completed run, kept for the runtime predictor."""

    tenant: str
    name: str
    devices: int
    kinds: list[str]
    runtime_s: float
    work: float = 0.0
    """Normalised service it took (device-seconds on its fastest kind, ``JobState.work``)."""


class SchedulerState(msgspec.Struct):
    inv: inventory.Inventory = msgspec.field(default_factory=inventory.Inventory)
    jobs: dict[str, JobState] = {}
    finished: list[Finished] = []
    """The newest ``MAX_HISTORY`` completed runs (the runtime predictor's data)."""
    finished_total: int = 0
    """Every succeeded job ever folded: how the predictor knows new ones came once ``finished`` is full."""
    seq: int = 0
    now: float = 0.0
    """Timestamp of the newest event folded (the simulated clock follows it)."""
    live: dict[str, None] = {}
    """Ids of the jobs not yet ended, in submission order: what every round looks at (``jobs`` keeps the ended ones
    too, for the API, and outgrows them by far over weeks of history)."""
    stopping: dict[str, None] = {}
    """Ended jobs whose workers had not all exited when they ended (a cancel, a peer's failure): their devices stay
    theirs until the last one exits, and count in their tenant's usage till then (a tenant was admitted past its
    quota while a cancelled job's workers checkpointed)."""
    keyed: dict[str, str] = {}
    """The job each idempotency key was first used for, by :func:`key_index`: a retry with
    the key and another name, after the stream's duplicate window, would otherwise make a second job."""
    unrecorded: dict[str, None] = {}
    """Jobs failed by this code's verdict on their spec, with no event that says so yet: the scheduler records it
    (``JobFailed``). Until then a later event of the job (it was placed, cancelled ...) shows that the scheduler of
    its day accepted it, and the verdict is dropped: history is not judged again by later rules."""

    def active(self) -> list[JobState]:
        """The jobs not yet ended (pending, placed, running, preempting)."""
        jobs = self.jobs
        return [jobs[i] for i in self.live]

    def pending(self) -> list[JobState]:
        return [j for j in self.active() if j.status == PENDING and j.spec is not None]

    def holding(self) -> list[JobState]:
        return [j for j in self.active() if j.status in HOLDING]


MAX_REPLICA_REPLACEMENTS = 5
"""Replicas one attempt of a serving deployment replaces alone; after that, the next exit restarts the whole
deployment, under its crash-loop cap (a replica that dies at start again and again fails the deployment in the
end)."""
MAX_HISTORY = 5000
STATE_SCHEMA = 11
"""Version of the encoded state in snapshots: a snapshot of another version is ignored and the log replayed."""


def superseded(job: JobState, attempt: int) -> bool:
    """Whether workers of ``attempt`` speak for a run the job has left: a later attempt was placed, or the job no
    longer holds devices (requeued, or ended). 0: an attempt not said (accepted)."""
    return bool(attempt) and (attempt != job.attempts or job.status not in HOLDING)


def fold_commit(state: SchedulerState, commit: Commit) -> SchedulerState:
    inventory.fold_commit(state.inv, commit)
    if state.stopping and commit.aggregate.startswith("node."):  # (leases are released on their node's subject)
        _forget_released(state)
    for ev in commit.events:
        evolve(state, ev, commit.seq)
        if commit.headers and commit.aggregate.startswith("job."):
            job = state.jobs.get(ev.aggregate_id)
            if job is not None and (not job.trace or isinstance(ev, JobPlaced)):
                carrier = {k: v for k, v in commit.trace_headers.items() if k in ("traceparent", "tracestate")}
                if not job.trace:  # the submit's; one submitted without a trace takes the first decision's, so
                    job.trace = carrier  # later decisions (a cancel) were traces of their own
                if isinstance(ev, JobPlaced):
                    job.placement_trace = carrier
    state.seq = commit.seq
    return state


def still_leased(state: SchedulerState, job: JobState) -> list[tuple[str, str]]:
    """(node, device) of the job's placement still leased to it."""
    holder = state.inv.leases.holder
    return [(a.node_id, u) for a in job.assignments for u in a.device_uuids if holder.get(u) == job.job_id]


def _forget_released(state: SchedulerState) -> None:
    """An ended job whose devices were given back (its workers' exits never reported, the grace over) stops
    counting as stopping."""
    for job_id in list(state.stopping):
        job = state.jobs.get(job_id)
        if job is None or not still_leased(state, job):
            del state.stopping[job_id]


def job_summary(j: JobState) -> dict[str, Any]:
    """What ``aios jobs``, the HTTP API and the dashboard show of a job (JSON-ready)."""
    return {"job": j.job_id, "name": j.spec.name if j.spec else "", "tenant": j.tenant, "status": j.status,
            # held now: an ended job keeps its assignments (its "nodes", where it ran), and read as holding them
            "devices": j.devices, "held": j.held_devices() if j.status in HOLDING else 0,
            "priority": j.spec.priority if j.spec else 0,
            "kind": "serve" if j.spec and j.spec.serve else "train" if j.spec and j.spec.trainer else "command",
            "nodes": [a.node_id for a in j.assignments], "attempts": j.attempts, "preemptions": j.preemptions,
            "submitted_at": j.submitted_at, "started_at": j.started_at, "finished_at": j.finished_at,
            "error": j.error, "step": j.step, "total_steps": j.total_steps, "loss": j.loss, "accuracy": j.accuracy,
            "samples_per_s": j.samples_per_s, "checkpoint_step": j.checkpoint_step, "steps_redone": j.steps_redone}


class InventoryShape(msgspec.Struct, frozen=True):
    """What the rounds read of the inventory beyond free devices, rebuilt only when its shape changes (a node
    registers, is lost or cordoned, a device's health changes), not on every lease: at 1,000 nodes walking every
    device each round cost more than the placement."""

    kind_of: dict[str, str]
    """Device uuid -> kind, of every node."""
    online: dict[str, int]
    """Devices per kind on online nodes."""
    schedulable_kinds: list[str]
    """Kinds of the devices of nodes open to jobs (online, not cordoned), sorted."""
    installed: list[tuple[str, float, float, dict[str, int]]]
    """(node, CPU cores, memory GiB, usable devices per kind) of each node open to jobs, busy or not, by name."""
    cordoned: list[str]
    """Online nodes not open to jobs (cordoned, drained, their agent shutting down), by name."""
    never_fits: dict[tuple[object, ...], str] = {}
    """The rounds' answers, by request shape, to "could it start here if every other job left": they depend on
    this shape alone (filled by ``rounds._Facts``)."""


_SHAPES: dict[int, tuple[object, int, InventoryShape]] = {}


def inventory_shape(state: SchedulerState) -> InventoryShape:
    inv = state.inv
    cached = _SHAPES.get(id(inv))
    if cached is None or cached[0] is not inv or cached[1] != inv.shape:
        if len(_SHAPES) > 16:
            _SHAPES.clear()
        online: dict[str, int] = {}
        open_kinds: set[str] = set()
        installed: list[tuple[str, float, float, dict[str, int]]] = []
        cordoned: list[str] = []
        for node_id, node in inv.nodes.items():
            usable: dict[str, int] = {}
            for d in node.devices.values():
                if node.online:
                    online[d.info.kind] = online.get(d.info.kind, 0) + 1
                if node.schedulable:
                    open_kinds.add(d.info.kind)
                    if d.usable:
                        usable[d.info.kind] = usable.get(d.info.kind, 0) + 1
            if node.schedulable:
                installed.append((node_id, float(node.cpu_cores), node.memory_bytes / 1024**3, usable))
            elif node.online:
                cordoned.append(node_id)
        kind_of = {u: d.info.kind for n in inv.nodes.values() for u, d in n.devices.items()}
        cached = _SHAPES[id(inv)] = (inv, inv.shape, InventoryShape(kind_of, online, sorted(open_kinds),
                                                                    sorted(installed), sorted(cordoned)))
    return cached[2]


def devices_by_kind(state: SchedulerState, job: JobState) -> dict[str, int]:
    """How many of the job's devices are of each kind (devices the inventory no longer knows are not counted)."""
    out: dict[str, int] = {}
    for a in job.assignments:
        node = state.inv.nodes.get(a.node_id)
        if node is None:
            continue
        for u in a.device_uuids:
            dev = node.devices.get(u)
            if dev is not None:
                out[dev.info.kind] = out.get(dev.info.kind, 0) + 1
    return out


def kinds_held(state: SchedulerState, job: JobState) -> list[str]:
    return sorted(devices_by_kind(state, job))


def queue_wait(job: JobState, now: float) -> float:
    """How long the job has waited in the queue for this placement: since it last entered it (a requeue, a
    preemption's end), or since its submission."""
    return max(0.0, now - (job.queued_at if job.queued_at is not None else job.submitted_at))


def speed_share(state: SchedulerState, job: JobState, kinds: list[str] | None = None) -> float:
    """The job's speed on the devices it holds, relative to its fastest kind (1.0 without throughput hints)."""
    hints = job.spec.throughput if job.spec else {}
    if not hints:
        return 1.0
    best = max(hints.values())
    kinds = kinds_held(state, job) if kinds is None else kinds
    return min((hints.get(k, 0.0) for k in kinds), default=best) / best if best > 0 else 1.0


def work_done(state: SchedulerState, job: JobState, now: float) -> float:
    """Normalised service so far, including the run in progress."""
    if job.placed_at is None:
        return job.work
    held = job.held_devices() or max(job.devices, 1)
    return job.work + held * max(0.0, now - job.placed_at) * job.run_speed


def _close_run(state: SchedulerState, job: JobState, ts: float, attempt_s: float | None = None) -> None:
    """``attempt_s``: the run's length as the trainer that launched it timed it (one clock), else the span between
    the placement's stamp and ``ts`` (a trainer's clock 5 minutes behind the scheduler's made every shorter run
    count as 0 s: nothing charged to its tenant, and a predictor that learned jobs take no time)."""
    if job.placed_at is not None:
        held = job.held_devices() or max(job.devices, 1)
        elapsed = max(0.0, attempt_s if attempt_s is not None else ts - job.placed_at)
        job.attained += held * elapsed
        job.work += held * elapsed * job.run_speed
        job.run_seconds += elapsed
        job.placed_at = None


PROGRESS_RUN_S = 600.0
"""An attempt that ran this long made progress, whatever it reported (Kubernetes resets a crash loop's back-off after
ten minutes of running): a command reports no steps or checkpoints."""


def made_progress(job: JobState, now: float, ran_s: float | None = None) -> bool:
    """Whether the current attempt got anywhere: new steps reported (the built-in trainer's, which it checkpoints) or
    ``PROGRESS_RUN_S`` of running. Exits 75 in a row without it are a crash loop, not interruptions. ``ran_s``:
    the attempt's length on one clock (its trainer's), else ``now`` less the placement's stamp."""
    ran = ran_s if ran_s is not None else now - job.placed_at if job.placed_at is not None else 0.0
    return job.step > job.step_at_requeue or ran >= PROGRESS_RUN_S


def _placed_since(job: JobState, ev: JobRequeued) -> bool:
    """Whether the job was placed again after what a resource manager's requeue is about: by log sequence when the
    event says which commit ended its leases (its ``ts`` is the resource manager's clock, not the scheduler's)."""
    if ev.node_seq:
        return job.placed_seq > ev.node_seq
    return ev.ts < (job.placed_at or 0.0)


def key_index(tenant: str, key: str) -> str:
    """An idempotency key is the tenant's own: two tenants may pick the same one."""
    return f"{tenant}\n{key}"


def evolve(state: SchedulerState, ev: Event, seq: int = 0) -> SchedulerState:
    state.now = max(state.now, ev.ts)
    kind = type(ev)
    if kind is JobSubmitted:
        if ev.aggregate_id in state.jobs:
            return state
        spec, error = judge_spec(ev.spec)  # type: ignore[attr-defined]
        if ev.checked and spec is not None:  # type: ignore[attr-defined]
            error = ""  # checked when it was taken: later rules do not judge it again (it stays queued)
        state.jobs[ev.aggregate_id] = JobState(
            ev.aggregate_id, spec, ev.tenant, seq, ev.ts, status=FAILED if error else PENDING,  # type: ignore[attr-defined]
            error=error)
        if ev.idempotency_key:  # type: ignore[attr-defined]
            state.keyed.setdefault(key_index(ev.tenant, ev.idempotency_key), ev.aggregate_id)  # type: ignore[attr-defined]
        if error:
            state.unrecorded[ev.aggregate_id] = None
        else:
            state.live[ev.aggregate_id] = None
        return state
    job = state.jobs.get(ev.aggregate_id)
    if (job is not None and job.job_id in state.unrecorded and isinstance(ev, JobEvent)
            and kind not in (JobCancelRequested, WorkerExited)):  # (a tenant or node of the same name: not this)
        del state.unrecorded[job.job_id]
        if kind is not JobFailed and job.spec is not None:  # its scheduler accepted it: the verdict was ours only
            job.status, job.error = PENDING, ""
            state.live[job.job_id] = None
    if (job is not None and job.status in TERMINAL and kind is WorkerExited
            and (not ev.attempt or ev.attempt == job.attempts)):  # type: ignore[attr-defined]
        # a worker of an ended job (cancelled, or failed by a peer) that was still stopping: its devices stay the
        # job's until the last one exits (Slurm's COMPLETING), and another job placed there was refused by the
        # node's agent, five times, and failed
        job.workers_running = max(0, job.workers_running - 1)
        if job.workers_running == 0:
            state.stopping.pop(job.job_id, None)
        return state
    if job is None or job.status in TERMINAL and kind is not JobCancelRequested:
        return state
    if kind is JobAdmitted:
        job.admitted, job.borrowed = True, dict(ev.borrowed)  # type: ignore[attr-defined]
    elif kind is JobPlaced:
        job.status, job.assignments, job.placed_at = PLACED, list(ev.assignments), ev.ts  # type: ignore[attr-defined]
        job.placed_seq = seq
        job.run_kinds = kinds_held(state, job)
        job.run_speed = speed_share(state, job, job.run_kinds)
        job.attempts += 1
        job.exit_codes = {}
        job.exit_signals = {}
        job.exit_messages = {}
        job.stopped_workers = []
        job.workers_running = 0
        job.started_workers = []
        job.replacements = []
    elif kind is JobStarted:
        if job.status == PLACED:
            job.status = RUNNING
        job.started_at = job.started_at or ev.ts
    elif kind in (WorkerStarted, WorkerExited) and ev.attempt and ev.attempt != job.attempts:  # type: ignore[attr-defined]
        pass  # a worker of an earlier placement (stopped after a requeue): not this attempt's
    elif kind is WorkerStarted:
        job.workers_running += 1
        job.started_workers = [*job.started_workers, ev.worker]  # type: ignore[attr-defined]
    elif kind is WorkerExited:
        job.workers_running = max(0, job.workers_running - 1)
        job.exit_codes[ev.worker] = ev.exit_code  # type: ignore[attr-defined]
        if ev.signal is not None:  # type: ignore[attr-defined]
            job.exit_signals = {**job.exit_signals, ev.worker: ev.signal}  # type: ignore[attr-defined]
        if ev.message:  # type: ignore[attr-defined]
            job.exit_messages = {**job.exit_messages, ev.worker: ev.message}  # type: ignore[attr-defined]
        if ev.stopped:  # type: ignore[attr-defined]
            job.stopped_workers = [*job.stopped_workers, ev.worker]  # type: ignore[attr-defined]
    elif kind is ReplicaReplaced:
        # taken only while the attempt may still replace alone: an exit or an agent's stop that came in after the
        # lead decided makes every launcher restart the deployment instead (its replacement started after their
        # stop, and ran on, orphaned)
        if (ev.attempt == job.attempts and ev.worker in job.exit_codes  # type: ignore[attr-defined]
                and job.status in (PLACED, RUNNING) and not job.cancel_requested and not job.stopped_workers
                and len(job.replacements) + len(job.exit_codes) <= MAX_REPLICA_REPLACEMENTS):
            del job.exit_codes[ev.worker]  # type: ignore[attr-defined]
            job.exit_signals = {w: s for w, s in job.exit_signals.items() if w != ev.worker}  # type: ignore[attr-defined]
            job.exit_messages = {w: m for w, m in job.exit_messages.items() if w != ev.worker}  # type: ignore[attr-defined]
            job.replacements = [*job.replacements, ev]  # type: ignore[list-item]
    elif kind is JobPreempted:
        job.status, job.preempted_at = PREEMPTING, ev.ts
        job.preemptions += 1
        job.preempted_for = ev.for_job  # type: ignore[attr-defined]
        _close_run(state, job, ev.ts)
    elif kind is JobRequeued and ev.node_id and (  # type: ignore[attr-defined]
            job.status not in HOLDING or all(a.node_id != ev.node_id for a in job.assignments)  # type: ignore[attr-defined]
            or _placed_since(job, ev)):  # type: ignore[arg-type]
        pass  # about a placement the job has left: late (the scheduler requeued it first, and it runs elsewhere
        # now, or on the same node again since)
    elif kind is JobRequeued:
        if ev.interrupted:  # type: ignore[attr-defined]  (before the run closes: its length counts)
            job.interrupted_in_a_row = (1 if made_progress(job, ev.ts, ev.attempt_s)  # type: ignore[attr-defined]
                                        else job.interrupted_in_a_row + 1)
            job.step_at_requeue = job.step
        if ev.after_failure:  # type: ignore[attr-defined]
            job.failure_restarts += 1
        _close_run(state, job, ev.ts, ev.attempt_s)  # type: ignore[attr-defined]
        job.status, job.assignments, job.admitted, job.preempted_at = PENDING, [], False, None
        job.queued_at = ev.ts
        job.requeues += 1
        job.workers_running = 0
    elif (kind is JobProgress or kind is CheckpointSaved) and superseded(job, ev.attempt):  # type: ignore[attr-defined]
        pass  # from workers of an attempt the job has left (their node was declared lost, yet they ran on): their
        # steps interleaved with the next attempt's, and one recorded the job's final step before it was done
    elif kind is JobProgress:
        if ev.attempt > job.progress_attempt and job.progress_attempt:  # type: ignore[attr-defined]
            job.steps_redone += max(0, job.step - job.checkpoint_step)  # a new attempt resumed from the checkpoint
        job.progress_attempt = max(job.progress_attempt, ev.attempt)  # type: ignore[attr-defined]
        if ev.step >= job.step:  # type: ignore[attr-defined]
            job.step, job.total_steps = ev.step, ev.total_steps  # type: ignore[attr-defined]
            for field in ("loss", "accuracy", "samples_per_s"):  # the final report carries only the accuracy
                value = getattr(ev, field)
                if value is not None:
                    setattr(job, field, value)
    elif kind is CheckpointSaved:
        job.checkpoint_step = max(job.checkpoint_step, ev.step)  # type: ignore[attr-defined]
    elif kind is JobCancelRequested:
        job.cancel_requested = True
    elif kind in (JobSucceeded, JobFailed, JobCancelled):
        _close_run(state, job, ev.ts, getattr(ev, "attempt_s", None))
        job.status = {JobSucceeded: SUCCEEDED, JobFailed: FAILED, JobCancelled: CANCELLED}[kind]
        state.live.pop(job.job_id, None)
        if job.workers_running > 0 and job.assignments:
            state.stopping[job.job_id] = None
        job.finished_at = ev.ts
        if kind is JobFailed:
            job.error = ev.reason  # type: ignore[attr-defined]
        if kind is JobSucceeded and job.spec is not None:
            state.finished.append(Finished(job.tenant, job.spec.name, job.spec.devices, list(job.spec.device_types),
                                           job.run_seconds, job.work))
            state.finished_total += 1
            del state.finished[:-MAX_HISTORY]
    return state
