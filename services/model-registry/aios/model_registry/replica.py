"""``python -m aios.model_registry.replica``: one serving replica, started by the launcher for a ``serve:`` job.

It resolves the job's model URI in the registry, loads and verifies the bytes, serves them over the Open Inference
Protocol (:mod:`serving`), and announces its address in the ``AIOS_ENDPOINTS`` KV bucket (a key per replica,
refreshed, with a TTL, so a dead replica disappears). Serving an alias, it follows the model's events: when the
alias moves, it loads the new version and swaps it in between two batches, so no request is dropped.
Environment: ``AIOS_SERVE`` (the job's ``serve:`` JSON), ``AIOS_NATS_URL``, ``AIOS_JOB_ID``, ``RANK``;
``AIOS_SERVE_HOST`` (default 127.0.0.1) and ``AIOS_SERVE_PORT`` (default 0: any free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

from aios.common.events import ModelAliasSet
from aios.common.store import EventStore, open_for_work
from aios.common.tasks import cancel_and_wait
from aios.model_registry import nn
from aios.model_registry.service import Registry
from aios.model_registry.serving import ModelServer, SignatureChanged, start_server
from aios.model_registry.state import parse_uri, resolve

log = logging.getLogger("aios.model_registry.replica")
ENDPOINTS = "AIOS_ENDPOINTS"
TTL_S = 15.0
EXIT_CONFIG = 2
EXIT_TO_FOLLOW = 76
"""The alias moved (``--force``) to a version of other shapes: the replica exits to be replaced by one that loads it."""
RESTART_STAGGER_S = 5.0
"""Replica ``r`` leaves ``r`` times this after such a move: one at a time, the others serving meanwhile."""


async def endpoints_bucket(store: EventStore) -> Any:
    js = store.js
    try:
        return await js.key_value(ENDPOINTS)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(KeyValueConfig(
                bucket=ENDPOINTS, history=1, ttl=TTL_S, storage=StorageType.MEMORY, replicas=store.replicas,
                description="serving replicas' addresses, one key per replica, expiring unless refreshed"))
        except nats.js.errors.BadRequestError:
            return await js.key_value(ENDPOINTS)


async def endpoints(store: EventStore, model: str | None = None) -> list[dict[str, Any]]:
    """The live replicas (of ``model``), as they announced themselves."""
    kv = await endpoints_bucket(store)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    out = []
    for key in keys:
        if key.startswith("_"):  # services' own addresses (_gateway, _router) share the bucket: not replicas
            continue
        if model is None or key.startswith(f"{model}."):
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            found = announcement(entry.value)
            if found is not None:
                out.append(found)
    return sorted(out, key=lambda e: e["key"])


def announcement(value: bytes | None) -> dict[str, Any] | None:
    """A replica's announcement as stored in the bucket, or None for anything else (a deletion, garbage)."""
    try:
        found = json.loads(value) if value else None
    except ValueError:
        return None
    ok = isinstance(found, dict) and isinstance(found.get("key"), str) and isinstance(found.get("url"), str)
    return found if ok else None


class EndpointBook:
    """The live replicas, kept by one watch of the endpoints bucket (the router's). Looking them up per request
    made a consumer each time (nats-py's ``keys()`` is a watch the server keeps for 5 minutes after it is left): a
    busy router reached the server's consumer limit, and from then on every lookup failed, and every request."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}  # key -> (expires, announcement)
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._follow())

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    def endpoints(self, model: str | None = None) -> list[dict[str, Any]]:
        """Replicas (of ``model``) whose last announcement is younger than the bucket's TTL."""
        now = time.monotonic()
        return sorted((e for key, (expires, e) in self._entries.items()
                       if expires > now and (model is None or key.startswith(f"{model}."))), key=lambda e: e["key"])

    async def _follow(self) -> None:
        while True:
            watcher = None
            try:
                kv = await endpoints_bucket(self.store)
                # a stopped watch's consumer goes in 10 s, not nats-py's default 5 minutes
                watcher = await kv.watchall(inactive_threshold=10.0)
                while True:
                    try:  # replicas announce every TTL_S / 3: silence this long means a stale watch (a restarted
                        # server, whose memory bucket is new) or no replica at all; watching again costs little
                        entry = await watcher.updates(timeout=TTL_S)
                    except nats.errors.TimeoutError:
                        break
                    if entry is not None:
                        self._apply(entry)
                    self.changed.set()
                    self.changed.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away: watch again in a moment, keep what we know
                log.warning("endpoint watch failed; watching again", extra={"error": str(exc)})
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            await asyncio.sleep(1.0)

    def _apply(self, entry: Any) -> None:
        key = entry.key
        if key.startswith("_"):  # services' own addresses (_gateway, _router) share the bucket: not replicas
            return
        found = announcement(entry.value) if entry.operation not in ("DEL", "PURGE") else None
        if found is None:
            self._entries.pop(key, None)
            return
        created = getattr(entry, "created", None)
        age = time.time() - created.timestamp() if hasattr(created, "timestamp") else 0.0
        self._entries[key] = (time.monotonic() + TTL_S - min(max(age, 0.0), TTL_S), found)


class Replica:
    def __init__(self, store: EventStore, uri: str, job_id: str, rank: int, host: str, port: int,
                 max_batch: int, max_delay_ms: float, as_of: float | None = None, as_of_seq: int = 0) -> None:
        """``as_of`` / ``as_of_seq``: for a bare model name, the version served is the latest registered by then
        (the job's submission): by log sequence when given (the registry's clock is not the submitter's), else by
        time."""
        self.store = store
        self.reg = Registry(store)
        self.uri = uri
        self.name, self.version, self.alias = parse_uri(uri)
        self.job = job_id or "manual"
        self.key = f"{self.name}.{self.job}.{rank}"
        self.host, self.port = host, port
        self.max_batch, self.max_delay_ms = max_batch, max_delay_ms
        self.server: ModelServer | None = None
        self.as_of = as_of
        self.as_of_seq = as_of_seq
        self.rank = rank
        self.restart_to_follow = False

    async def load(self) -> tuple[int, nn.Model, int]:
        state = await self.reg.read_model(self.name)
        bare = self.version is None and not self.alias
        if bare and self.as_of_seq:
            then = [v for v in state.live if v.registered_seq <= self.as_of_seq]
        else:
            then = [v for v in state.live if v.registered_at <= self.as_of] if bare and self.as_of is not None else []
        version = max(then, key=lambda v: v.version) if then else resolve(state, self.uri)
        return version.version, nn.decode(await self.reg.blobs.get(version.digest)), state.version

    async def announce(self, kv: Any) -> None:
        assert self.server is not None
        await kv.put(self.key, json.dumps({
            "key": self.key, "url": f"http://{self.advertised}:{self.port}", "model": self.name, "job": self.job,
            "version": self.server.loaded.version, "uri": self.uri, "pid": os.getpid()}).encode())

    async def run(self, stop: asyncio.Event) -> None:
        version, model, seen = await self.load()
        self.server = ModelServer(self.name, version, model, self.max_batch, self.max_delay_ms)
        runner, self.port = await start_server(self.server, self.host, self.port)
        self.advertised = self.host if self.host not in ("0.0.0.0", "::") else socket.gethostname()
        kv = await endpoints_bucket(self.store)
        await self.announce(kv)
        print(json.dumps({"serving": f"models:/{self.name}/{version}", "uri": self.uri,
                          "url": f"http://{self.advertised}:{self.port}/v2/models/{self.name}"}), flush=True)
        follow = asyncio.ensure_future(self._follow_alias(seen, kv, stop)) if self.alias else None
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), TTL_S / 3)
                except asyncio.TimeoutError:
                    try:
                        await self.announce(kv)
                    except Exception as exc:  # noqa: BLE001 - NATS away: serve on, announce again next time
                        log.warning("replica not announced", extra={"error": str(exc) or type(exc).__name__})
                        # the bucket lives in the server's memory: a restarted nats-server has none
                        with contextlib.suppress(Exception):
                            kv = await endpoints_bucket(self.store)
        finally:
            await cancel_and_wait([follow])
            try:
                await kv.delete(self.key)
            except Exception:  # noqa: BLE001 - the TTL removes it anyway
                pass
            await runner.cleanup()

    async def _follow_alias(self, after: int, kv: Any, stop: asyncio.Event) -> None:
        sub = self.store.subscribe(after + 1, filter_subject=self.store.subject(f"model.{self.name}"))
        try:
            async for commit in sub:
                if any(isinstance(e, ModelAliasSet) and e.alias == self.alias for e in commit.events):
                    try:
                        version, model, _ = await self.load()
                        assert self.server is not None
                        if version != self.server.loaded.version:
                            self.server.swap(version, model)
                            await self.announce(kv)
                            print(json.dumps({"swapped_to": f"models:/{self.name}/{version}"}), flush=True)
                    except SignatureChanged as exc:
                        # moved with --force: the deployment follows by restarting, a replica at a time (it served
                        # the old version on, said "→ 5" in the registry, and a replacement loaded the new one:
                        # requests failed on one replica in two)
                        print(f"alias {self.alias} moved to a version of other shapes ({exc}): this replica "
                              f"restarts to serve it, in {self.rank * RESTART_STAGGER_S:g} s", file=sys.stderr,
                              flush=True)
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(stop.wait(), self.rank * RESTART_STAGGER_S)
                        if not stop.is_set():  # (stopped meanwhile for another reason: an exit like any other)
                            self.restart_to_follow = True
                            stop.set()
                        return
                    except Exception as exc:  # noqa: BLE001 - keep serving the version we have
                        print(f"alias {self.alias} moved but version could not be loaded: {exc}", file=sys.stderr,
                              flush=True)
        finally:
            await sub.close()


async def run(env: dict[str, str]) -> int:
    try:
        serve = json.loads(env.get("AIOS_SERVE") or "{}")
        uri = serve["model"]
        parse_uri(uri)
        max_batch = int(serve.get("max_batch", 256))
        max_delay = float(serve.get("max_delay_ms", 2.0))
        as_of = float(serve["as_of"]) if serve.get("as_of") is not None else None
        as_of_seq = int(serve.get("as_of_seq") or 0)
        port = int(env.get("AIOS_SERVE_PORT", "0"))
        nats_url = env["AIOS_NATS_URL"]
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        print(f"aios serve: bad configuration: {exc!r} (AIOS_SERVE, AIOS_NATS_URL, AIOS_SERVE_PORT)", file=sys.stderr)
        return EXIT_CONFIG
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    store = await open_for_work(nats_url.split(","), name=f"aios-replica-{env.get('AIOS_JOB_ID', '')}")
    try:
        replica = Replica(store, uri, env.get("AIOS_JOB_ID", ""), int(env.get("RANK", "0")),
                          env.get("AIOS_SERVE_HOST", "127.0.0.1"), port, max_batch, max_delay, as_of, as_of_seq)
        await replica.run(stop)
        return EXIT_TO_FOLLOW if replica.restart_to_follow else 0
    finally:
        await store.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        return asyncio.run(run(dict(os.environ)))
    except Exception as exc:  # noqa: BLE001 - the job's log says why, the exit code says that it failed
        print(f"aios serve: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
