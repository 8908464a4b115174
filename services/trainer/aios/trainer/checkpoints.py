"""Checkpoint retention: which objects of the checkpoint store may go, and the sweep that removes them.

Every training job keeps its checkpoint in the JetStream Object Store (one object, named after the job, rewritten at
each save). Nothing removed them, so the store grew by one checkpoint per job for ever, and with it the JetStream
disk the event log lives on. A checkpoint written by a worker killed half-way (or replaced by a late writer) left
its chunks behind with no object naming them: bytes nobody could read or delete.

The rules, as Determined's checkpoint GC keeps the latest checkpoint of a trial until told otherwise:
- a job's checkpoint stays while the job is not ended, and for ``retention_s`` after it ended (the model registry
  registers a succeeded job's model from it; `aios models register-job` may be asked later), then it goes;
- an object that names no job of the log is kept (a user's own command may store other objects here);
- chunks no object refers to go once their last chunk is ``orphan_grace_s`` old (a write in progress has recent
  chunks and no object yet).

:func:`plan` decides (no I/O); :func:`survey` and :func:`collect` are the shell around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import nats.js.errors

from aios.common.snapshot import parse_mtime
from aios.common.store import EventStore
from aios.scheduler.state import CANCELLED, FAILED, SUCCEEDED, JobState

log = logging.getLogger("aios.trainer.checkpoints")

BUCKET = "AIOS_CHECKPOINTS"
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
DEFAULT_ORPHAN_GRACE_S = 3600.0
MIN_ORPHAN_GRACE_S = 60.0
"""Chunks younger than this may belong to a write in progress: its object is named only after its last chunk."""
ENDED = (SUCCEEDED, FAILED, CANCELLED)


class StoredCheckpoint(msgspec.Struct, frozen=True):
    name: str
    nuid: str
    """The subject suffix its chunks are on."""
    size: int
    written_at: float | None


class ChunkSubject(msgspec.Struct, frozen=True):
    nuid: str
    chunks: int
    last_at: float | None
    """When its last chunk was stored (None: not known)."""


class Verdict(msgspec.Struct, frozen=True):
    name: str
    size: int
    job: str | None
    """The job the object belongs to (None: no job of the log)."""
    status: str
    """The job's status, or "unknown"."""
    collect: bool
    why: str


class Plan(msgspec.Struct, frozen=True):
    verdicts: list[Verdict]
    orphans: list[ChunkSubject]

    @property
    def expired(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.collect]


def owner(name: str, jobs: Mapping[str, JobState]) -> JobState | None:
    """The job an object belongs to: the object named after it, or one under ``<job>/`` (a custom command's)."""
    return jobs.get(name) or jobs.get(name.split("/", 1)[0])


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def verdict(obj: StoredCheckpoint, jobs: Mapping[str, JobState], now: float, retention_s: float | None) -> Verdict:
    job = owner(obj.name, jobs)
    if job is None:
        return Verdict(obj.name, obj.size, None, "unknown", False, "no job of that name in the log: kept")
    if job.status not in ENDED or job.finished_at is None:
        return Verdict(obj.name, obj.size, job.job_id, job.status, False, f"the job is {job.status}: kept")
    ago = max(0.0, now - job.finished_at)
    if retention_s is None:
        return Verdict(obj.name, obj.size, job.job_id, job.status, False,
                       f"ended {_age(ago)} ago; retention is off: kept")
    if ago < retention_s:
        return Verdict(obj.name, obj.size, job.job_id, job.status, False,
                       f"ended {_age(ago)} ago: kept for {_age(retention_s - ago)} more")
    return Verdict(obj.name, obj.size, job.job_id, job.status, True,
                   f"ended {_age(ago)} ago, retention {_age(retention_s)}: deleted")


def plan(objects: list[StoredCheckpoint], chunks: list[ChunkSubject], jobs: Mapping[str, JobState], now: float,
         retention_s: float | None = DEFAULT_RETENTION_S,
         orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S) -> Plan:
    """What a sweep at ``now`` removes (``retention_s`` None: no checkpoint of an ended job expires).

    ``chunks`` must have been listed after ``objects``: a write that named its object in between has recent chunks,
    which the grace keeps."""
    named = {o.nuid for o in objects}
    orphans = [c for c in chunks if c.nuid not in named and c.last_at is not None
               and now - c.last_at >= orphan_grace_s]
    return Plan(sorted((verdict(o, jobs, now, retention_s) for o in objects), key=lambda v: v.name), orphans)


def _seconds(raw: Any) -> float | None:
    """A NATS timestamp (RFC 3339 string or datetime) as epoch seconds."""
    if raw is None or raw == "":
        return None
    if hasattr(raw, "timestamp"):
        return float(raw.timestamp())
    return parse_mtime(str(raw))


def _stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def _chunk_prefix(bucket: str) -> str:
    return f"$O.{bucket}.C."


async def survey(store: EventStore, bucket: str = BUCKET, *,
                 unnamed_only: bool = True) -> tuple[list[StoredCheckpoint], list[ChunkSubject]]:
    """The store's objects, then its chunk subjects (with the time of their last chunk for those no object names,
    or all of them with ``unnamed_only=False``). An absent bucket holds nothing."""
    try:
        objects = await store.js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        return [], []
    try:
        infos = await objects.list(ignore_deletes=True)
    except nats.js.errors.NotFoundError:
        infos = []
    stored = [StoredCheckpoint(i.name, i.nuid or "", i.size or 0, _seconds(i.mtime)) for i in infos]
    named = {s.nuid for s in stored}
    prefix = _chunk_prefix(bucket)
    info = await store.js.stream_info(_stream(bucket), subjects_filter=prefix + ">")
    chunks = []
    for subject, count in sorted((info.state.subjects or {}).items()):
        nuid = subject.removeprefix(prefix)
        last = None
        if nuid not in named or not unnamed_only:
            try:
                last = _seconds((await store.js.get_last_msg(_stream(bucket), subject)).time)
            except nats.js.errors.NotFoundError:  # purged meanwhile
                continue
        chunks.append(ChunkSubject(nuid, count, last))
    return stored, chunks


async def collect(store: EventStore, jobs: Mapping[str, JobState], *, bucket: str = BUCKET,
                  retention_s: float | None = DEFAULT_RETENTION_S, orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S,
                  dry_run: bool = False, now: float | None = None) -> dict[str, Any]:
    """One sweep: the plan's expired checkpoints deleted and its orphaned chunks purged (nothing with ``dry_run``).
    Idempotent: two trainers sweeping at once delete each object once (the second finds it gone)."""
    objects, chunks = await survey(store, bucket)
    decided = plan(objects, chunks, jobs, time.time() if now is None else now, retention_s, orphan_grace_s)
    deleted, freed = [], 0
    if not dry_run:
        bucket_store = await store.js.object_store(bucket) if decided.expired else None
        for v in decided.expired:
            try:
                await bucket_store.delete(v.name)  # type: ignore[union-attr]
            except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError,
                    nats.js.errors.NotFoundError):
                continue
            deleted.append(v.name)
            freed += v.size
            log.info("deleted the checkpoint of an ended job",
                     extra={"job": v.job, "object": v.name, "bytes": v.size, "why": v.why})
        for c in decided.orphans:
            await store.js.purge_stream(_stream(bucket), subject=_chunk_prefix(bucket) + c.nuid)
            log.info("purged checkpoint chunks no object refers to",
                     extra={"nuid": c.nuid, "chunks": c.chunks})
    return {"dry_run": dry_run, "retention_s": retention_s, "orphan_grace_s": orphan_grace_s,
            "deleted": [v.name for v in decided.expired] if dry_run else deleted,
            "bytes": sum(v.size for v in decided.expired) if dry_run else freed,
            "orphaned_chunks": sum(c.chunks for c in decided.orphans),
            "kept": [msgspec.to_builtins(v) for v in decided.verdicts if not v.collect]}
