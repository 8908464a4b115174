"""Checkpoint retention: which objects of the checkpoint store may go, and the sweep that removes them.

Every training job keeps its checkpoint in the JetStream Object Store (one object, named after the job, rewritten at
each save). Nothing removed them, so the store grew by one checkpoint per job for ever, and with it the JetStream
disk the event log lives on. A checkpoint written by a worker killed half-way (or replaced by a late writer) left
its chunks behind with no object naming them: bytes nobody could read or delete.

The rules:
- a job's checkpoint stays while the job is not ended;
- a succeeded job's stays until someone deletes it (`aios checkpoints --delete JOB`): it is the job's output (for a
  command's job, the only one), as Determined keeps a trial's latest checkpoint until its experiment is deleted;
- a failed or cancelled job's goes ``retention_s`` after the job ended (a resume point nobody will resume);
- an object that names no job of the log is kept (a user's own command may store other objects here);
- chunks no object refers to go once they are ``orphan_grace_s`` old, measured in the server's time (a write in
  progress has chunks and no object yet; a node's clock running ahead must not make them look old).

Every sweep rewrites a small object, ``SWEEP_MARK``, that names who swept: one trainer sweeps each period, and the
others take over when its mark stops changing (a trainer that was down swept nothing, and nothing said so).

:func:`plan` decides (no I/O); :func:`survey` and :func:`collect` are the shell around it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import nats.js.api
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
SUBJECTS_PER_ANSWER = 100_000
"""The most subjects the server lists in one stream info answer (JSMaxSubjectDetails); nats-py asks for no more."""
EXPIRING = (FAILED, CANCELLED)
SWEEP_MARK = "aios:last-sweep"
"""The object each sweep rewrites (no job id has a colon): who swept, in its description; when, in its server
timestamp. Not a checkpoint: no listing or verdict shows it."""


class SweepMark(msgspec.Struct, frozen=True):
    seq: int
    """Stream sequence of the mark's metadata: a new one each sweep."""
    by: str
    """Who swept: a node's trainer ("node a"), or the CLI."""
    at: float | None
    """When, in the server's time."""


class StoredCheckpoint(msgspec.Struct, frozen=True):
    name: str
    nuid: str
    """The subject suffix its chunks are on."""
    size: int
    written_at: float | None


class ChunkSubject(msgspec.Struct, frozen=True):
    nuid: str
    chunks: int
    age_s: float | None
    """How long ago its last chunk was stored, in the server's time (None: not known)."""


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


class Survey(msgspec.Struct, frozen=True):
    objects: list[StoredCheckpoint]
    chunks: list[ChunkSubject]
    named: frozenset[str]
    """Every nuid an object named in either listing of the metadata (before and after the chunks were listed)."""
    complete: bool
    """Every meta was read and no listing was cut short: only then may chunks no object names be called orphans."""


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
    if job.status == SUCCEEDED:
        return Verdict(obj.name, obj.size, job.job_id, job.status, False,
                       "the job's output: kept until deleted (aios checkpoints --delete)")
    if job.status not in EXPIRING or job.finished_at is None:
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


def plan(survey: Survey, jobs: Mapping[str, JobState], now: float,
         retention_s: float | None = DEFAULT_RETENTION_S,
         orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S) -> Plan:
    """What a sweep at ``now`` removes (``retention_s`` None: no checkpoint of an ended job expires). No chunks are
    orphans of a survey that could not read every object's metadata."""
    orphans = [c for c in survey.chunks if survey.complete and c.nuid not in survey.named and c.age_s is not None
               and c.age_s >= orphan_grace_s]
    return Plan(sorted((verdict(o, jobs, now, retention_s) for o in survey.objects), key=lambda v: v.name), orphans)


def _stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def _chunk_prefix(bucket: str) -> str:
    return f"$O.{bucket}.C."


def _meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


async def _subjects(store: EventStore, bucket: str, pattern: str) -> tuple[dict[str, int], bool]:
    """Subject -> messages of the bucket's stream under ``pattern``, and whether the answer held all of them."""
    info = await store.js.stream_info(_stream(bucket), subjects_filter=pattern)
    subjects = info.state.subjects or {}
    return subjects, len(subjects) < SUBJECTS_PER_ANSWER


async def _metas(store: EventStore, bucket: str) -> tuple[list[StoredCheckpoint], bool, float | None]:
    """The live objects, read one meta subject at a time (``ObjectStore.list`` is a consumer that can leave out an
    object whose meta is rewritten while it runs, and waits for ever on a meta it cannot parse); whether all were
    read; the newest of their server timestamps."""
    subjects, complete = await _subjects(store, bucket, f"$O.{bucket}.M.>")
    found, newest = [], None
    for subject in sorted(subjects):
        try:
            msg = await store.js.get_last_msg(_stream(bucket), subject)
        except nats.js.errors.NotFoundError:  # deleted meanwhile
            continue
        if msg.time is not None:
            newest = max(newest or 0.0, msg.time.timestamp())
        try:
            meta = json.loads(msg.data or b"")
            if meta.get("deleted"):
                continue
            found.append(StoredCheckpoint(str(meta["name"]), str(meta["nuid"]), int(meta.get("size") or 0),
                                          parse_mtime(meta.get("mtime"))))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not a meta any writer of ours makes
            log.warning("unreadable checkpoint metadata: no orphaned chunks are collected this sweep",
                        extra={"subject": subject, "error": repr(exc)})
            complete = False
    return found, complete, newest


async def survey(store: EventStore, bucket: str = BUCKET) -> Survey:
    """The store's objects, then its chunk subjects, then the objects again (a nuid either listing names is live).
    The age of chunks no object names is measured from the newest server timestamp seen, never from this host's
    clock: a time the server has reached, so an age errs towards keeping. An absent bucket holds nothing."""
    try:
        await store.js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        return Survey([], [], frozenset(), True)
    objects, complete, newest = await _metas(store, bucket)
    chunk_subjects, all_chunks = await _subjects(store, bucket, _chunk_prefix(bucket) + ">")
    again, complete_again, newest_again = await _metas(store, bucket)
    named = frozenset(o.nuid for o in [*objects, *again])
    last_at: dict[str, float | None] = {}
    for subject in sorted(chunk_subjects):
        nuid = subject.removeprefix(_chunk_prefix(bucket))
        if nuid in named:
            continue
        try:
            last = (await store.js.get_last_msg(_stream(bucket), subject)).time
        except nats.js.errors.NotFoundError:  # purged meanwhile
            continue
        last_at[nuid] = last.timestamp() if last else None
    seen = [t for t in (newest, newest_again, *last_at.values()) if t is not None]
    now = max(seen) if seen else None
    chunks = []
    for subject, count in sorted(chunk_subjects.items()):
        nuid = subject.removeprefix(_chunk_prefix(bucket))
        if nuid in named:
            chunks.append(ChunkSubject(nuid, count, None))
        elif nuid in last_at:
            at = last_at[nuid]
            chunks.append(ChunkSubject(nuid, count, None if at is None or now is None else max(0.0, now - at)))
    latest = {o.name: o for o in [*objects, *again] if o.name != SWEEP_MARK}  # the second listing's version of an
    # object rewritten between
    return Survey(sorted(latest.values(), key=lambda o: o.name), chunks, named,
                  complete and complete_again and all_chunks)


SWEEP_TIMEOUT_S = 300.0
"""A sweep that takes longer (NATS away) is given up and tried at the next period, never left hanging."""


async def collect(store: EventStore, jobs: Mapping[str, JobState], *, bucket: str = BUCKET,
                  retention_s: float | None = DEFAULT_RETENTION_S, orphan_grace_s: float = DEFAULT_ORPHAN_GRACE_S,
                  dry_run: bool = False, now: float | None = None,
                  timeout_s: float = SWEEP_TIMEOUT_S, by: str = "") -> dict[str, Any]:
    """One sweep: the plan's expired checkpoints deleted and its orphaned chunks purged (nothing with ``dry_run``),
    then the sweep mark rewritten naming ``by``; ``asyncio.TimeoutError`` after ``timeout_s``. Idempotent: two
    sweeps at once delete each object once."""
    return await asyncio.wait_for(_collect(store, jobs, bucket, retention_s, orphan_grace_s, dry_run, now, by),
                                  timeout_s)


class SweepWatch(msgspec.Struct, frozen=True):
    """What a standby trainer has seen of the sweep mark: its sequence (0: none) and when it first saw it, on its
    own monotonic clock (no two hosts' clocks are compared)."""

    seq: int = -1
    since: float = 0.0


def standby_sweeps(rank: int, me: str, mark: SweepMark | None, watch: SweepWatch, now: float,
                   period_s: float) -> tuple[bool, SweepWatch]:
    """Whether the trainer ``rank`` places after the sweeper (1: next in line) sweeps now, and what it has seen.

    It sweeps when the last mark is its own (it took over, and the sweeper has not come back), or when the mark
    has not changed for ``rank + 0.5`` periods: the sweeper missed a sweep, and those before it in line too. Half a
    period of slack: the sweeper's period runs on its own clock, and a sweep takes time."""
    seq = mark.seq if mark is not None else 0
    if mark is not None and mark.by == me:
        return True, SweepWatch(seq, now)
    if seq != watch.seq:
        return False, SweepWatch(seq, now)
    return now - watch.since >= (rank + 0.5) * period_s, watch


async def last_sweep(store: EventStore, bucket: str = BUCKET) -> SweepMark | None:
    """The mark of the last sweep that finished (None: no sweep yet, or no bucket)."""
    try:
        msg = await store.js.get_last_msg(_stream(bucket), _meta_subject(bucket, SWEEP_MARK))
    except nats.js.errors.NotFoundError:  # no bucket, or never swept
        return None
    try:
        by = str(json.loads(msg.data or b"").get("description") or "")
    except (ValueError, AttributeError):
        by = ""
    return SweepMark(int(msg.seq or 0), by, msg.time.timestamp() if msg.time else None)


async def _mark(store: EventStore, bucket: str, by: str) -> None:
    try:
        objects = await store.js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:  # nothing was ever stored: nothing to say
        return
    await objects.put(SWEEP_MARK, b"", meta=nats.js.api.ObjectMeta(name=SWEEP_MARK, description=by))


async def _collect(store: EventStore, jobs: Mapping[str, JobState], bucket: str, retention_s: float | None,
                   orphan_grace_s: float, dry_run: bool, now: float | None, by: str) -> dict[str, Any]:
    found = await survey(store, bucket)
    decided = plan(found, jobs, time.time() if now is None else now, retention_s, orphan_grace_s)
    deleted, freed = [], 0
    if not dry_run:
        for v in decided.expired:
            if await delete(store, v.name, bucket):
                deleted.append(v.name)
                freed += v.size
                log.info("deleted the checkpoint of an ended job",
                         extra={"job": v.job, "object": v.name, "bytes": v.size, "why": v.why})
        for c in decided.orphans:
            await store.js.purge_stream(_stream(bucket), subject=_chunk_prefix(bucket) + c.nuid)
            log.info("purged checkpoint chunks no object refers to", extra={"nuid": c.nuid, "chunks": c.chunks})
        await _mark(store, bucket, by)
    return {"dry_run": dry_run, "retention_s": retention_s, "orphan_grace_s": orphan_grace_s,
            "deleted": [v.name for v in decided.expired] if dry_run else deleted,
            "bytes": sum(v.size for v in decided.expired) if dry_run else freed,
            "orphaned_chunks": sum(c.chunks for c in decided.orphans),
            "orphans_checked": found.complete,
            "kept": [msgspec.to_builtins(v) for v in decided.verdicts if not v.collect]}


async def delete(store: EventStore, name: str, bucket: str = BUCKET) -> bool:
    """Delete one checkpoint, leaving no tombstone behind (a delete marker per job ever run, read by every sweep);
    False if it was not there."""
    try:
        objects = await store.js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:  # nothing was ever stored (it was a traceback)
        return False
    try:
        await objects.delete(name)
    except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError, nats.js.errors.NotFoundError):
        return False
    await store.js.purge_stream(_stream(bucket), subject=_meta_subject(bucket, name))
    return True

