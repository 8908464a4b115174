"""One active scheduler: a key in a KV bucket whose values expire after ``ttl_s``.

The leader creates the key (only possible when absent) and refreshes it with a compare-and-set on its revision;
a standby keeps trying to create it, and succeeds once the leader stopped refreshing for ``ttl_s``. Leadership is an
optimisation against wasted work: correctness never depends on it, because bookings are conditional appends on the
node aggregates (two active schedulers cannot book one device twice).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

log = logging.getLogger("aios.scheduler.leadership")
BUCKET = "AIOS_LEADERS"


class Leadership:
    def __init__(self, js: Any, identity: str, key: str = "scheduler", ttl_s: float = 5.0, replicas: int = 1) -> None:
        self.js = js
        self.identity = identity
        self.key = key
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.is_leader = False
        self.changes = 0
        self._revision = 0
        self._kv: Any = None
        self.resigned = False
        """Set by :meth:`resign`: no step takes the key again (a campaign step in flight as the service stopped
        created the key just deleted, and the standby waited out the whole TTL)."""

    async def _bucket(self) -> Any:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(BUCKET)
            except nats.js.errors.BucketNotFoundError:
                try:
                    self._kv = await self.js.create_key_value(KeyValueConfig(
                        bucket=BUCKET, history=1, ttl=self.ttl_s, storage=StorageType.FILE, replicas=self.replicas,
                        description="leader election of singleton services"))
                except nats.js.errors.BadRequestError:
                    self._kv = await self.js.key_value(BUCKET)
        return self._kv

    async def step(self) -> bool:
        """Try to take or keep leadership once; returns whether we lead."""
        if self.resigned:
            return False
        try:
            kv = await self._bucket()
            if self.is_leader:
                self._revision = await kv.update(self.key, self.identity.encode(), last=self._revision)
            else:
                self._revision = await kv.create(self.key, self.identity.encode())
                self._set(True)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError, nats.errors.Error,
                asyncio.TimeoutError) as exc:
            if self.is_leader:
                log.warning("lost leadership", extra={"error": str(exc) or type(exc).__name__})
            self._set(False)
        return self.is_leader

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.changes += 1
            self.is_leader = leader
            log.info("leadership changed", extra={"leader": leader, "identity": self.identity})

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            try:
                await asyncio.wait_for(stop.wait(), self.ttl_s / 3)
            except asyncio.TimeoutError:
                pass

    async def resign(self) -> None:
        self.resigned = True
        if self.is_leader and self._kv is not None:
            try:
                await self._kv.delete(self.key, last=self._revision)
            except Exception:  # noqa: BLE001 - it expires anyway
                pass
        self._set(False)
