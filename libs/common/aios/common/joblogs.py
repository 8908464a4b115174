"""Worker output kept in JetStream: the ``AIOS_LOGS`` stream captures what device agents publish on
``aios.logs.<job>.<worker>.<stdout|stderr>`` (one message a line), so ``aios logs <job>`` works after the worker,
or its node, is gone. Bounded by age and size (oldest dropped first): logs are for people, the event log is the
record."""

from __future__ import annotations

import re
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from aios.common.errors import ConfigError

STREAM = "AIOS_LOGS"
SUBJECTS = "aios.logs.>"
MAX_AGE_S = 7 * 24 * 3600
MAX_BYTES = 1 << 30
MAX_BYTES_PER_WORKER = 64 << 20
"""Output of one worker (one attempt) kept in the stream; the rest is dropped, said once. The stream is shared and
drops its oldest first: one job printing a gigabyte wiped every other tenant's logs (Kubernetes keeps 10 MiB a
container, in five files)."""


def kept_line(logged: int, line: bytes) -> bytes | None:
    """What to publish of ``line`` from a worker that has had ``logged`` bytes published before it: the line, the
    one notice that its output is no longer kept, or None (dropped)."""
    if logged + len(line) <= MAX_BYTES_PER_WORKER:
        return line
    if logged <= MAX_BYTES_PER_WORKER:
        return (f"[aios: this worker's output beyond {MAX_BYTES_PER_WORKER >> 20} MiB is not kept; the rest of it "
                "is dropped]\n").encode()
    return None


_WORKER = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_worker(worker: str | None) -> None:
    """A worker's name as the agents give it (``rank0-a1``): one subject token, so no '.', '*', '>' or space (a
    name like ``a b`` broke the log stream half-way, after the reply had begun)."""
    if worker is not None and not _WORKER.fullmatch(worker):
        raise ConfigError(f"worker {worker[:64]!r}: letters, digits, '_' or '-', 1 to 64 characters (e.g. rank0-a1)")


def unknown_worker(history: list[Any], job_id: str, worker: str | None, follow: bool) -> str | None:
    """Why ``worker`` names none of the job's workers (from the job's events), or None: asking for ``rank0`` (the
    workers are rank0-a1, rank0-a2 ...) printed nothing and ended as if it had no output. A job still running may
    start it yet, when following."""
    from aios.common.events import JobCancelled, JobFailed, JobSucceeded, WorkerStarted

    started = sorted({e.worker for e in history if isinstance(e, WorkerStarted)})
    ended = any(isinstance(e, (JobSucceeded, JobFailed, JobCancelled)) for e in history)
    if worker is not None and worker not in started and (ended or not follow):
        return f"job {job_id} has no worker {worker!r}; its workers: {', '.join(started) or 'none yet'}"
    return None


def subject_of(job_id: str, worker: str = "*", stream: str = "*") -> str:
    return f"aios.logs.{job_id}.{worker}.{stream}"


def parse_subject(subject: str) -> tuple[str, str, str]:
    """(job, worker, stream) of a log subject. Split from the right: a job id may hold dots (a job named "v1.2"
    showed its lines as worker "2-751535", none of them marked stderr); a worker name holds none."""
    head, worker, stream = subject.rsplit(".", 2)
    return head.removeprefix("aios.logs."), worker, stream


async def ensure_stream(js: Any, replicas: int = 1) -> None:
    config = StreamConfig(name=STREAM, subjects=[SUBJECTS], retention=RetentionPolicy.LIMITS,
                          storage=StorageType.FILE, max_age=MAX_AGE_S, max_bytes=MAX_BYTES,
                          discard=DiscardPolicy.OLD, num_replicas=replicas,
                          description="worker output lines of AIOS jobs, by job, worker and stream")
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:  # exists (possibly with other limits an operator set): keep it
        pass


async def lines(js: Any, job_id: str, worker: str | None = None, follow: bool = False, idle_s: float = 2.0,
                ended: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[tuple[str, str, str]]:
    """(worker, stdout|stderr, line) of a job's stored output, oldest first; with ``follow``, then each new line as
    it comes, until the consumer stops iterating, or, given ``ended``, until the job has ended and ``idle_s`` pass
    without a line (its workers' last lines land after the job's end; ``kubectl logs -f`` ends with its pod too)."""
    import nats.errors
    from nats.js.api import DeliverPolicy

    check_worker(worker)
    sub = await js.subscribe(subject_of(job_id, worker or "*"), stream=STREAM, ordered_consumer=True,
                             deliver_policy=DeliverPolicy.ALL)
    quiet_since: float | None = None
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=(1.0 if ended else 3600.0) if follow else idle_s)
            except nats.errors.TimeoutError:
                if not follow:
                    return  # nothing (more) stored
                if ended is not None and await ended():
                    now = time.monotonic()
                    quiet_since = quiet_since if quiet_since is not None else now
                    if now - quiet_since >= idle_s:
                        return
                continue
            quiet_since = None
            _, name, stream = parse_subject(msg.subject)
            yield name, stream, msg.data.decode(errors="replace").rstrip("\n")
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.ConnectionClosedError:  # `aios logs JOB | head`: the reader went, and closed NATS first
            pass
