"""Snapshots of folded state, and the projector that folds the log into a state and keeps the sequence it includes.

A snapshot is the state encoded with msgpack behind a small header (magic, stream sequence, state schema, the log's
incarnation), stored in the JetStream Object Store under the projection's name (chunked, digest-checked by the
store). Restart = load the snapshot, replay the tail after its sequence. A snapshot whose schema differs from the
code's is ignored (full replay): changing the state's shape never needs a migration. So is one of another log (the
log was created again: its sequences count from 1 again) and one that claims more of the log than there is.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import struct
import time
from datetime import datetime
from typing import Any, Callable, Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_DIGEST_TYPE, ObjectStore

from aios.common.errors import StoreError
from aios.common.events import Event
from aios.common.store import Commit, EventStore

log = logging.getLogger("aios.snapshot")

BUCKET = "AIOS_SNAPSHOTS"
_HEADER = struct.Struct(">4sQIH")  # magic, sequence, schema, length of the log incarnation that follows
_MAGIC = b"AIS2"
_OLD_MAGIC = b"AIOS"  # before the log's incarnation was kept: ignored, the log is replayed

S = TypeVar("S")


class SnapshotInfo(msgspec.Struct, frozen=True):
    name: str
    seq: int
    schema: int
    size: int


def encode_snapshot(seq: int, schema: int, state: Any, log: str = "") -> bytes:
    tag = log.encode()
    return _HEADER.pack(_MAGIC, seq, schema, len(tag)) + tag + msgspec.msgpack.encode(state)


def snapshot_header(blob: bytes) -> tuple[int, int, str, int]:
    """(sequence, schema, log incarnation, where the state starts) of a snapshot; StoreError if it has none."""
    if blob[:4] == _OLD_MAGIC:
        raise StoreError("a snapshot of an older format (it does not name its log)")
    if len(blob) < _HEADER.size or blob[:4] != _MAGIC:
        raise StoreError("not an AIOS snapshot (bad header)")
    _, seq, schema, tag_len = _HEADER.unpack_from(blob)
    start = _HEADER.size + tag_len
    if len(blob) < start:
        raise StoreError("not an AIOS snapshot (bad header)")
    try:
        log = blob[_HEADER.size:start].decode()
    except UnicodeDecodeError:
        raise StoreError("not an AIOS snapshot (bad header)") from None
    return seq, schema, log, start


def decode_snapshot(blob: bytes, state_type: type[S]) -> tuple[int, int, S]:
    seq, schema, _, start = snapshot_header(blob)
    try:
        state = msgspec.msgpack.decode(memoryview(blob)[start:], type=state_type)
    except msgspec.DecodeError as exc:
        raise StoreError(f"snapshot at sequence {seq} does not decode as {state_type.__name__}: {exc}") from None
    return seq, schema, state


async def object_bucket(store: EventStore, bucket: str, description: str) -> ObjectStore:
    """The JetStream Object Store ``bucket``, created (file storage, the stream's replicas) if missing."""
    try:
        return await store.js.object_store(bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await store.js.create_object_store(bucket, config=ObjectStoreConfig(
                storage=StorageType.FILE, replicas=store.replicas, description=description))
        except nats.js.errors.BadRequestError:  # another process created it first
            return await store.js.object_store(bucket)


class ObjectReadError(StoreError):
    """An object could not be read whole: it is damaged, it kept changing under the reader, or its chunks stopped
    coming."""

    def __init__(self, name: str, bucket: str, reason: str) -> None:
        super().__init__(f"object {name!r} of {bucket}: {reason}")
        self.reason = reason


def parse_mtime(raw: str | None) -> float | None:
    """An Object Store mtime as epoch seconds (None if absent or unreadable). NATS writes RFC 3339 with nanoseconds
    (``2026-11-25T17:30:00.123456789Z``); Python reads microseconds."""
    if not raw:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", raw.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


async def read_object(store: EventStore, bucket: str, name: str, *, stall_s: float = 10.0, tries: int = 5) -> bytes:
    """The bytes of object ``name`` (``ObjectNotFoundError`` if there is none). nats-py's ``ObjectStore.get`` waits
    for ever when the object is replaced or deleted while it reads: the chunks it waits for are purged (a resumed
    job hung in its checkpoint, and the model registry, reading one as it was rewritten, stopped answering). Here a
    read that gets no chunk for ``stall_s`` starts again on the object as it is now."""
    objects = await store.js.object_store(bucket)
    why = ""
    for _ in range(tries):
        info = await objects.get_info(name)
        if not info.size:
            return b""
        sub = await store.js.subscribe(OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=info.nuid),
                                       ordered_consumer=True)
        data, digest, stalled = bytearray(), hashlib.sha256(), False
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=stall_s)
                except nats.errors.TimeoutError:
                    stalled = True
                    break
                data += msg.data
                digest.update(msg.data)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        expected = base64.urlsafe_b64decode(info.digest.replace(OBJ_DIGEST_TYPE, "").replace(
            OBJ_DIGEST_TYPE.upper(), "")) if info.digest else None
        if not stalled and len(data) == info.size and (expected is None or digest.digest() == expected):
            return bytes(data)
        if (await objects.get_info(name)).nuid == info.nuid:  # the same version: it is damaged, not replaced
            raise ObjectReadError(name, bucket, "corrupted: " + (
                f"its chunks stopped after {len(data):,} of {info.size:,} bytes" if stalled
                else "its chunks do not match the stored digest"))
        why = (f"no part of it for {stall_s:g}s" if stalled else "its chunks did not match its digest") + \
            " (replaced or deleted while read)"
    raise ObjectReadError(name, bucket, f"{why}, {tries} times")


class SnapshotStore:
    """Named snapshots in an Object Store bucket."""

    def __init__(self, store: EventStore, bucket: str = BUCKET) -> None:
        self.store = store
        self.bucket = bucket
        self._os: ObjectStore | None = None

    async def _bucket(self) -> ObjectStore:
        if self._os is None:
            self._os = await object_bucket(self.store, self.bucket,
                                           "AIOS snapshots of folded state, tagged with the stream sequence they include")
        return self._os

    async def save(self, name: str, seq: int, state: Any, schema: int = 1) -> SnapshotInfo:
        blob = encode_snapshot(seq, schema, state, await self.store.incarnation())
        await (await self._bucket()).put(name, blob)
        return SnapshotInfo(name, seq, schema, len(blob))

    async def load(self, name: str, state_type: type[S], schema: int = 1) -> tuple[int, S] | None:
        """(sequence, state) of the named snapshot, or None when there is none usable: of another schema, of
        another incarnation of the log, ahead of the log, or unreadable (the caller replays the whole log)."""
        try:
            await self._bucket()
            data = await read_object(self.store, self.bucket, name)
        except nats.js.errors.ObjectNotFoundError:
            return None
        try:
            seq, found_schema, log_id, _ = snapshot_header(data)
        except StoreError as exc:
            log.warning("ignoring a snapshot; replaying the log", extra={"snapshot": name, "error": str(exc)})
            return None
        if found_schema != schema:
            log.warning("ignoring snapshot of another schema", extra={"snapshot": name, "found": found_schema,
                                                                       "expected": schema})
            return None
        incarnation, last = await self.store.position()
        if log_id != incarnation or seq > last:
            log.warning("ignoring a snapshot of another event log; replaying the log",
                        extra={"snapshot": name, "snapshot_log": log_id, "log": incarnation, "snapshot_seq": seq,
                               "last_seq": last})
            return None
        try:
            _, _, state = decode_snapshot(data, state_type)
        except StoreError as exc:
            log.error("ignoring an unreadable snapshot; replaying the log", extra={"snapshot": name, "error": str(exc)})
            return None
        return seq, state


class RebuildReport(msgspec.Struct, frozen=True):
    snapshot_seq: int
    tail_commits: int
    last_seq: int
    seconds: float


class Projector(Generic[S]):
    """Folds commits into a state with ``evolve(state, event) -> state`` and remembers the last sequence applied,
    so a commit already in the state is never applied twice (tracking record, as in the eventsourcing library)."""

    def __init__(self, name: str, initial: Callable[[], S], evolve: Callable[[S, Event], S] | None, state_type: type[S],
                 schema: int = 1, *, fold_commit: Callable[[S, Commit], S] | None = None) -> None:
        """Fold with ``evolve(state, event)``, or with ``fold_commit(state, commit)`` when the fold needs each
        commit's sequence and aggregate (for example to track versions for conditional appends)."""
        if (evolve is None) == (fold_commit is None):
            raise TypeError("give exactly one of evolve and fold_commit")
        self.name = name
        self.initial = initial
        self.evolve = evolve
        self.fold_commit = fold_commit
        self.state_type = state_type
        self.schema = schema
        self.state: S = initial()
        self.seq = 0
        self.skipped = 0
        """Commits passed over: undecodable, on a subject they do not belong to, or refused by the fold."""

    def apply(self, commit: Commit) -> None:
        """Fold one commit. A commit the fold cannot take (a value no writer of ours produces) is logged and passed
        over, never raised: one poisoned message in the log must not crash every service that replays it."""
        if commit.seq <= self.seq:
            return
        try:
            if self.fold_commit is not None:
                self.state = self.fold_commit(self.state, commit)
            else:
                state, evolve = self.state, self.evolve
                assert evolve is not None
                for ev in commit.events:
                    state = evolve(state, ev)
                self.state = state
        except Exception as exc:  # noqa: BLE001 - the log is input too; see the docstring
            self.skipped += 1
            log.error("skipped a commit the fold could not apply",
                      extra={"projector": self.name, "seq": commit.seq, "aggregate": commit.aggregate,
                             "error": f"{type(exc).__name__}: {exc}"})
        self.seq = commit.seq

    async def rebuild(self, store: EventStore, snapshots: SnapshotStore | None = None, *,
                      filter_subject: str | None = None) -> RebuildReport:
        """State = snapshot (if any) + every commit after it, up to the end of the log now."""
        started = time.perf_counter()
        self.state, self.seq = self.initial(), 0
        if snapshots is not None:
            loaded = await snapshots.load(self.name, self.state_type, self.schema)
            if loaded is not None:
                self.seq, self.state = loaded
        snapshot_seq = self.seq
        count = 0

        def apply(commit: Commit) -> None:
            nonlocal count
            count += 1
            self.apply(commit)

        await store.replay(apply, from_seq=self.seq + 1, filter_subject=filter_subject, on_bad_event="skip")
        return RebuildReport(snapshot_seq, count, self.seq, time.perf_counter() - started)

    async def save(self, snapshots: SnapshotStore) -> SnapshotInfo:
        return await snapshots.save(self.name, self.seq, self.state, self.schema)

    async def follow(self, store: EventStore, on_commit: Callable[[Commit], Any] | None = None,
                     stop: asyncio.Event | None = None, *, filter_subject: str | None = None) -> None:
        """Apply live commits after ``self.seq`` until ``stop`` is set; ``on_commit`` sees each after it is applied
        (it may be a coroutine function)."""
        sub = store.subscribe(self.seq + 1, filter_subject=filter_subject, on_bad_event="skip")
        stop = stop or asyncio.Event()
        stopper = asyncio.ensure_future(stop.wait())
        nxt: asyncio.Future[Commit] | None = None
        try:
            while not stop.is_set():
                nxt = asyncio.ensure_future(sub.__anext__())
                done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    break
                commit = nxt.result()
                self.apply(commit)
                if on_commit is not None:
                    result = on_commit(commit)
                    if asyncio.iscoroutine(result):
                        await result
        finally:
            stopper.cancel()
            if nxt is not None:  # cancelled while waiting: the read would get the close's end marker, and the
                nxt.cancel()  # event loop logged "Task exception was never retrieved" on every graceful stop
            await sub.close()
