"""Content-addressed model bytes in the JetStream Object Store: the object's name is the SHA-256 of its bytes.

The same bytes get the same name (stored once, however many versions share them), and a read recomputes the digest,
so a corrupted or substituted object is an error, never a wrong model.
"""

from __future__ import annotations

import hashlib

import nats.js.errors

from aios.common.errors import AiosError
from aios.common.snapshot import ObjectReadError, object_bucket, read_object
from aios.common.store import EventStore

BUCKET = "AIOS_MODELS"


class BlobError(AiosError):
    """A model object is missing or its bytes do not match its digest."""


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def object_name(digest: str) -> str:
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise BlobError(f"digest {digest!r} is not 'sha256:<64 hex digits>'")
    return digest.replace(":", "-")


class BlobStore:
    def __init__(self, store: EventStore, bucket: str = BUCKET) -> None:
        self.store = store
        self.bucket_name = bucket
        self._bucket = None

    async def bucket(self):  # type: ignore[no-untyped-def]
        if self._bucket is None:
            self._bucket = await object_bucket(self.store, self.bucket_name,
                                               "AIOS model registry: model bytes by SHA-256 digest")
        return self._bucket

    async def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its digest."""
        digest = digest_of(data)
        bucket = await self.bucket()
        try:
            info = await bucket.get_info(object_name(digest))
            if not info.deleted and info.size == len(data):
                return digest
        except nats.js.errors.ObjectNotFoundError:
            pass
        await bucket.put(object_name(digest), data)
        return digest

    async def get(self, digest: str) -> bytes:
        await self.bucket()
        try:
            data = await read_object(self.store, self.bucket_name, object_name(digest))
        except nats.js.errors.ObjectNotFoundError:
            raise BlobError(f"model object {digest} is missing from {self.bucket_name}") from None
        except ObjectReadError as exc:  # deleted (collected) while read, or its chunks do not match its digest
            raise BlobError(f"model object {digest}: {exc.reason}") from None
        if digest_of(data) != digest:
            raise BlobError(f"model object {digest} is corrupted: its bytes hash to {digest_of(data)}")
        return data

    async def delete(self, digest: str) -> bool:
        """Remove the bytes (the stream's chunks are purged); False if they were not there."""
        bucket = await self.bucket()
        try:
            await bucket.delete(object_name(digest))
        except nats.js.errors.ObjectNotFoundError:
            return False
        return True

    async def digests(self) -> dict[str, int]:
        """Every stored digest and its size."""
        bucket = await self.bucket()
        try:
            infos = await bucket.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:
            return {}
        return {i.name.replace("-", ":", 1): int(i.size or 0) for i in infos if i.name.startswith("sha256-")}

    async def stored_bytes(self) -> int:
        """Bytes the bucket's stream holds (what garbage collection must bring down)."""
        bucket = await self.bucket()
        status = await bucket.status()
        return int(status.stream_info.state.bytes)
