"""The model-registry service: the one writer of ``model.<name>`` events.

It folds model events (and the job events it needs) and answers requests on ``aios.registry.<op>`` (JSON in, JSON
out, errors as ``{"error": ...}`` naming the field). Every command reads the model's history fresh, decides with the
pure functions of :mod:`state`, and appends against that version; a conflict (someone else changed the model in
between) means read and decide again, so concurrent alias moves are serialised, never lost.

A successful built-in training job registers a version by itself: weights from the job's last checkpoint, lineage
from its spec, metrics from an evaluation on the held-out split of its data. Deleting a version collects the bytes
no live version references any more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec
import nats.js.errors
import numpy as np

from aios.common import strictjson, tracing
from aios.common.errors import AiosError, ConcurrencyConflict
from aios.common.events import (
    JOB_AGGREGATES, Event, JobCancelled, JobFailed, JobPlaced, JobProgress, JobSubmitted, JobSucceeded, Lineage,
    ModelObjectCollected, ModelVersionEvaluated, Signature,
)
from aios.common.runner import Service, ServiceContext
from aios.common.snapshot import object_bucket, parse_mtime, read_object
from aios.common.store import Commit, EventStore
from aios.common.textcheck import unencodable_reason
from aios.model_registry import builtin, compress, metrics, nn
from aios.model_registry.blobs import BlobError, BlobStore
from aios.model_registry.state import (
    BadInput, ModelState, NotFound, RegistryError, check_name, check_tags, decide_alias, decide_delete,
    decide_describe, decide_register, decide_remove_alias, decide_tag, evolve, parse_uri, referenced_digests, resolve,
    version_view,
)

log = logging.getLogger("aios.model_registry")
PREFIX = "aios.registry"
CHECKPOINTS = "AIOS_CHECKPOINTS"
MIN_ORPHAN_GRACE_S = 60.0
"""The shortest age at which ``gc`` takes an unreferenced blob: an upload is referenced well within it."""


@dataclass
class RegistryView:
    """The fold the service keeps: every model, and what it needs of training jobs."""

    models: dict[str, ModelState] = field(default_factory=dict)
    job_specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_names: dict[str, str] = field(default_factory=dict)
    final_progress: dict[str, dict[str, float]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    """Each built-in training job's current attempt (its last JobPlaced)."""
    succeeded: list[str] = field(default_factory=list)
    """Built-in training jobs that succeeded, in log order."""
    succeeded_trace: dict[str, dict[str, str]] = field(default_factory=dict)
    """Trace context of each one's JobSucceeded commit: registering its model continues the job's trace."""
    serving: dict[str, str] = field(default_factory=dict)
    """Serving jobs not ended, and the model URI each serves."""

    def _deployments(self, name: str) -> list[tuple[str, int | None, str | None]]:
        """(job, pinned version, followed alias) of every serving job of model ``name`` not ended."""
        out = []
        for job, uri in sorted(self.serving.items()):
            try:
                served, pinned, alias = parse_uri(uri)
            except RegistryError:
                continue
            if served == name:
                out.append((job, pinned, alias))
        return out

    def served_by(self, name: str, version: int) -> list[str]:
        """Serving jobs pinned to this version (``models:/name/3``): deleting it would leave them nothing to load
        when a replica restarts or moves."""
        return [job for job, pinned, _ in self._deployments(name) if pinned == version]

    def following(self, name: str, alias: str) -> list[str]:
        """Serving jobs that follow ``name@alias`` (they load whatever it points at)."""
        return [job for job, _, followed in self._deployments(name) if followed == alias]

    def unservable(self, name: str, job: str | None, version: str | None) -> str | None:
        """Why a request for model ``name`` (of serving job ``job``, at ``version``) can never be served, or None
        if it can be once a replica is up: the router's 404 against its 503."""
        state = self.models.get(name)
        live = sorted(v.version for v in state.live) if state is not None else []
        if not live:
            return f"the registry holds no model {name!r} (aios models)"
        if version is not None and version not in {str(v) for v in live}:
            return f"model {name!r} has no version {version} (live: {', '.join(map(str, live))})"
        if job is None and not self._deployments(name):
            return f"no deployment serves model {name!r} (aios serve models:/{name}@ALIAS)"
        if job is not None:
            uri = self.serving.get(job)
            if uri is None:
                return f"no serving job {job} is running (it ended, or never was)"
            try:
                served = parse_uri(uri)[0]
            except RegistryError:
                served = ""
            if served != name:
                return f"job {job} serves {uri}, not model {name!r}"
        if version is not None and state is not None:
            serving = [(j, self._serves_now(state, pinned, alias)) for j, pinned, alias in self._deployments(name)
                       if job is None or j == job]
            if serving and all(v is not None and str(v) != version for _, v in serving):
                now = ", ".join(f"{j}: version {v}" for j, v in serving)
                return (f"no deployment serves version {version} of model {name!r} ({now}); pin one to it with "
                        f"aios serve models:/{name}/{version}")
        return None

    @staticmethod
    def _serves_now(state: ModelState, pinned: int | None, alias: str | None) -> int | None:
        """The version a deployment serves, or None where the view cannot tell (a bare name is pinned to the
        version latest at its submission; an alias not set yet may be set to any)."""
        return pinned if pinned is not None else state.aliases.get(alias) if alias is not None else None


def fold(view: RegistryView, commit: Commit) -> RegistryView:
    kind, _, ident = commit.aggregate.partition(".")
    if kind == "model":
        state = view.models.setdefault(ident, ModelState(ident))
        for ev in commit.events:
            evolve(state, ev, commit.seq)
    elif kind in JOB_AGGREGATES:
        for ev in commit.events:
            if isinstance(ev, JobSubmitted) and isinstance(ev.spec, dict) and isinstance(ev.spec.get("trainer"), dict):
                view.job_specs[ident] = ev.spec
                view.job_names[ident] = ev.name or str(ev.spec.get("name", ident))
            elif isinstance(ev, JobPlaced):
                view.attempts[ident] = ev.attempt
            elif isinstance(ev, JobProgress) and ident in view.job_specs and (
                    not ev.attempt or ev.attempt == view.attempts.get(ident, ev.attempt)):
                # each field's last value: the final report carries only the accuracy (the loss was dropped); not
                # from workers of an attempt the job has left (a lost node's, running on), as the scheduler's fold
                view.final_progress.setdefault(ident, {}).update(
                    {k: float(v) for k, v in (("train_loss", ev.loss), ("train_accuracy", ev.accuracy)) if v is not None})
            if isinstance(ev, JobSubmitted) and isinstance(ev.spec, dict) and isinstance(ev.spec.get("serve"), dict):
                view.serving[ident] = str(ev.spec["serve"].get("model", ""))
            elif isinstance(ev, (JobSucceeded, JobFailed, JobCancelled)):
                view.serving.pop(ident, None)
            if isinstance(ev, JobSucceeded) and ident in view.job_specs:
                view.succeeded.append(ident)
                view.succeeded_trace[ident] = {k: v for k, v in commit.trace_headers.items() if k == "traceparent"}
    return view


def model_name_for(job_name: str, spec: dict[str, Any]) -> str:
    trainer = spec.get("trainer") or {}
    raw = str(trainer.get("model_name") or job_name)
    cleaned = "".join(c if c.isalnum() or c in "_-" else "-" for c in raw).strip("-_")[:64]
    return cleaned or "model"


def signature_of(model: nn.Model) -> Signature:
    return Signature(input_shape=[model.inputs], output_shape=[model.outputs], labels=list(model.labels))


class Registry:
    """The commands, over an event store and the blob store; the service and tests drive it."""

    def __init__(self, store: EventStore, blobs: BlobStore | None = None) -> None:
        self.store = store
        self.blobs = blobs or BlobStore(store)
        self.view = RegistryView()
        self.seq = 0
        self.stopping = threading.Event()
        """Set when the service stops: a compression's fine-tuning (in a thread) ends instead of holding the exit."""
        self._registering = asyncio.Lock()
        """Held while a succeeded job's model is registered (its checkpoint read, evaluated, recorded): the follower
        and a ``register-job`` request register each job once, and other commands go on beside it (under the
        command lock, a sweep's registrations held every alias, tag and delete, and the CLI timed out)."""
        self._bytes_lock = asyncio.Lock()
        """Held from storing a version's bytes to recording the version, and by a garbage collection from finding
        the digests in use to deleting the rest: a compression (which runs beside other commands) stored bytes the
        collection had just found unused, found them there, recorded its version, and the collection deleted them."""

    def apply(self, commit: Commit) -> None:
        if commit.seq > self.seq:
            fold(self.view, commit)
            self.seq = commit.seq

    async def catch_up(self) -> None:
        """Fold up to the end of the log now (after our own appends: reads see their writes)."""
        await self.store.replay(self.apply, from_seq=self.seq + 1)

    async def read_model(self, name: str) -> ModelState:
        """The model as its events say now (read fresh, not from the fold)."""
        history = await self.store.read(f"model.{check_name(name)}")
        state = ModelState(name)
        for seq, ev in zip(history.seqs, history.events):
            evolve(state, ev, seq)
        state.version = history.version
        return state

    async def _decide_and_append(self, name: str, decide: Callable[[ModelState], list[Event]],
                                 attempts: int = 20) -> tuple[ModelState, list[Event]]:
        for _ in range(attempts):
            state = await self.read_model(name)
            events = decide(state)
            if not events:
                return state, events
            try:
                await self.store.append(f"model.{name}", events, expected_version=state.version)
            except ConcurrencyConflict:
                await asyncio.sleep(0.01)
                continue
            await self.catch_up()
            return self.view.models[name], events
        raise RegistryError(f"model {name!r} changed {attempts} times while deciding; try again")

    # -- reads ------------------------------------------------------------------------------------------------------
    def model(self, name: str) -> ModelState:
        state = self.view.models.get(check_name(name))
        if state is None or not state.versions:
            raise NotFound(f"model {name!r} is not registered")
        return state

    def list(self, tag: str | None = None, metric: str | None = None, min_value: float | None = None,
             name_contains: str | None = None) -> list[dict[str, Any]]:
        """Models with their latest live version; filters: a tag key (or key=value) on any live version, a metric at
        least ``min_value`` on the latest, a substring of the name."""
        out = []
        for name, state in sorted(self.view.models.items()):
            latest = state.latest
            if latest is None or (name_contains and name_contains not in name):
                continue
            if tag:
                key, _, value = tag.partition("=")
                if not any(key in v.tags and (not value or v.tags[key] == value) for v in state.live):
                    continue
            if metric and (metric not in latest.metrics or (min_value is not None and latest.metrics[metric] < min_value)):
                continue
            out.append({"name": name, "latest": latest.version, "versions": len(state.live),
                        "aliases": dict(sorted(state.aliases.items())), "metrics": latest.metrics,
                        "size_bytes": latest.size_bytes, "updated": max(v.registered_at for v in state.live)})
        return out

    def show(self, uri: str) -> dict[str, Any]:
        name, version, alias = parse_uri(uri)
        state = self.model(name)
        if version is None and alias is None:
            return {"name": name, "aliases": dict(sorted(state.aliases.items())),
                    "versions": [version_view(state, v) for _, v in sorted(state.versions.items())]}
        return version_view(state, resolve(state, uri))

    async def load(self, uri: str) -> tuple[dict[str, Any], nn.Model]:
        name, _, _ = parse_uri(uri)
        state = self.model(name)
        v = resolve(state, uri)
        return version_view(state, v), nn.decode(await self.blobs.get(v.digest))

    # -- writes -----------------------------------------------------------------------------------------------------
    async def register(self, name: str, model: nn.Model, lineage: Lineage, metrics_: dict[str, float] | None = None,
                       description: str = "", tags: dict[str, str] | None = None, by: str = "",
                       evaluation: dict[str, Any] | None = None, dataset: str = "") -> dict[str, Any]:
        check_name(name)
        data = model.encode()

        def decide(state: ModelState) -> list[Event]:
            events = decide_register(state, digest=digest, size_bytes=len(data), format=nn.FORMAT,
                                     signature=signature_of(model), lineage=lineage, metrics=metrics_,
                                     description=description, tags=tags, registered_by=by)
            if evaluation is not None:
                events.append(ModelVersionEvaluated(
                    aggregate_id=name, version=events[0].version, dataset=dataset,  # type: ignore[attr-defined]
                    metrics=evaluation["metrics"], per_class=evaluation["per_class"],
                    confusion=evaluation["confusion"]))
            return events
        async with self._bytes_lock:
            digest = await self.blobs.put(data)  # bytes first: an event never names a digest that is not stored
            state, events = await self._decide_and_append(name, decide)
        return version_view(state, state.versions[events[0].version])  # type: ignore[attr-defined]

    async def register_bytes(self, name: str, data: bytes, trainer: dict[str, Any] | None = None,
                             description: str = "", tags: dict[str, str] | None = None, by: str = "") -> dict[str, Any]:
        """A model file registered by hand. With ``trainer`` (the built-in trainer's config naming its data) the
        version is evaluated on that data's held-out split."""
        try:
            model = nn.decode(data)
        except nn.FormatError as exc:
            raise BadInput(f"file: {exc}") from None
        evaluation, dataset = None, ""
        if trainer is not None:
            evaluation, dataset = await self._evaluate(model, trainer)
        # trained elsewhere, on data we do not know: the held-out split it is measured on is its evaluation's
        lineage = Lineage(source="file", spec={"trainer": trainer} if trainer else {})
        return await self.register(name, model, lineage, evaluation["metrics"] if evaluation else None, description,
                                   tags, by, evaluation, dataset)

    async def register_job(self, job_id: str) -> dict[str, Any] | None:
        """The version of a succeeded built-in training job (once: a second call finds it registered)."""
        async with self._registering:
            return await self._register_job_model(job_id)

    async def _register_job_model(self, job_id: str) -> dict[str, Any] | None:
        spec = self.view.job_specs.get(job_id)
        if spec is None:
            return None
        name = model_name_for(self.view.job_names.get(job_id, job_id), spec)
        state = self.view.models.get(name)
        if state is not None and any(v.lineage.job_id == job_id for v in state.versions.values()):
            return None
        await object_bucket(self.store, CHECKPOINTS, "AIOS training checkpoints")
        # bounded: a checkpoint rewritten while read (by workers of a lost node running on) hung this for ever,
        # under the registry's lock: no command was answered again
        try:
            found = await read_object(self.store, CHECKPOINTS, job_id)
        except nats.js.errors.NotFoundError:
            raise NotFound(f"job {job_id!r}: its checkpoint is gone (deleted by `aios checkpoints --delete`, or, "
                           "had the job failed or been cancelled, after AIOS_CHECKPOINT_RETENTION_S)") from None
        cfg, model = builtin.model_from_checkpoint(spec["trainer"], found)
        evaluation, dataset = await self._evaluate(model, spec["trainer"])
        # the lineage is shown to whoever reads the registry: environment values (API keys, passwords) stay out
        kept = {**spec, "env": {k: "<redacted>" for k in spec["env"]}} if isinstance(spec.get("env"), dict) else spec
        lineage = Lineage(source="job", job_id=job_id, spec=kept, dataset=builtin.mlp.dataset_identity(cfg),
                          command=["python", "-m", "aios.trainer.worker"] if not spec.get("command") else spec["command"])
        found_metrics = {**self.view.final_progress.get(job_id, {}), **evaluation["metrics"]}
        return await self.register(name, model, lineage, found_metrics, f"trained by job {job_id}",
                                   {"job": job_id}, "trainer", evaluation, dataset)

    async def _evaluate(self, model: nn.Model, trainer: dict[str, Any]) -> tuple[dict[str, Any], str]:
        try:
            cfg = builtin.parse_config(trainer)
        except ValueError as exc:
            raise BadInput(f"dataset: {exc}") from None
        cfg = builtin.within_memory(cfg)  # a held-out split as large as the registry may hold (its name says so)
        x, y = await asyncio.to_thread(builtin.data, cfg, "eval")  # (a million samples: seconds, off the loop)
        if x.shape[1] != model.inputs or cfg.classes != model.outputs:
            raise BadInput(f"dataset: {cfg.dataset} has {x.shape[1]} inputs and {cfg.classes} classes, the model "
                                f"takes {model.inputs} and gives {model.outputs}")
        result = await asyncio.to_thread(metrics.evaluate, model, x, y)
        return result, builtin.mlp.dataset_identity(cfg, "eval")

    def _trainer_of(self, state: ModelState, version: int) -> dict[str, Any] | None:
        """The built-in trainer config a version's data comes from, following parents."""
        seen = set()
        while version not in seen and version in state.versions:
            seen.add(version)
            lineage = state.versions[version].lineage
            trainer = lineage.spec.get("trainer") if isinstance(lineage.spec, dict) else None
            if isinstance(trainer, dict):
                return trainer
            if lineage.parent_version is None:
                return None
            version = lineage.parent_version
        return None

    async def evaluate(self, uri: str, trainer: dict[str, Any] | None = None) -> dict[str, Any]:
        view, model = await self.load(uri)
        state = self.model(view["name"])
        trainer = trainer or self._trainer_of(state, view["version"])
        if trainer is None:
            raise BadInput("dataset: this version has no training data in its lineage; pass a trainer config")
        result, dataset = await self._evaluate(model, trainer)

        def decide(s: ModelState) -> list[Event]:
            resolve(s, f"{view['name']}/{view['version']}")
            return [ModelVersionEvaluated(aggregate_id=view["name"], version=view["version"], dataset=dataset,
                                          metrics=result["metrics"], per_class=result["per_class"],
                                          confusion=result["confusion"])]
        await self._decide_and_append(view["name"], decide)
        return {"name": view["name"], "version": view["version"], "dataset": dataset, **result}

    async def compress(self, uri: str, method: str, options: dict[str, Any], finetune_steps: int = 1000,
                       by: str = "") -> dict[str, Any]:
        """A new version from ``uri``, linked to it, with the measured size, latency and metric deltas."""
        parent_view, parent = await self.load(uri)
        name, version = parent_view["name"], parent_view["version"]
        state = self.model(name)
        trainer = self._trainer_of(state, version)
        train = (await asyncio.to_thread(builtin.data, builtin.within_memory(builtin.parse_config(trainer)), "train")
                 if trainer else None)
        try:
            small, info = await asyncio.to_thread(compress.compress, parent, method, options, train, finetune_steps,
                                                  self.stopping)
        except (compress.CompressionError, TypeError, ValueError) as exc:
            raise BadInput(str(exc)) from None
        except InterruptedError:
            raise RegistryError("compress: the registry stopped before it finished; nothing was registered") from None
        evaluation, dataset = None, ""
        deltas: dict[str, float] = {"size_bytes": small.nbytes - parent.nbytes,
                                    "size_ratio": round(small.nbytes / parent.nbytes, 4)}
        if trainer is not None:
            before, dataset = await self._evaluate(parent, trainer)
            evaluation, _ = await self._evaluate(small, trainer)
            for key in ("accuracy", "f1_macro", "latency_ms_per_1k"):
                deltas[key] = round(evaluation["metrics"][key] - before["metrics"][key], 6)
        # what it learned from: the training split when it was fine-tuned, else its parent's (the held-out split
        # it was measured on was recorded here as if it had been trained on it)
        trained_on = (builtin.mlp.dataset_identity(builtin.within_memory(builtin.parse_config(trainer)), "train")
                      if trainer is not None and info.get("finetune_steps") else
                      str((parent_view.get("lineage") or {}).get("dataset", "")))
        lineage = Lineage(source="compression", parent_version=version, dataset=trained_on,
                          compression={**info, "deltas": deltas})
        out = await self.register(name, small, lineage, evaluation["metrics"] if evaluation else None,
                                  f"{method} of version {version}", {"compression": method, "parent": str(version)},
                                  by, evaluation, dataset)
        return {**out, "deltas": deltas}

    async def alias(self, name: str, alias: str, version: int, expected: int | None | str = "any",
                    force: bool = False) -> dict[str, Any]:
        served_by = self.view.following(name, alias)
        _, events = await self._decide_and_append(
            name, lambda s: decide_alias(s, alias, version, expected, served_by, force))
        previous = events[0].previous if events else version  # type: ignore[attr-defined]
        return {"name": name, "alias": alias, "version": version, "previous": previous, "changed": bool(events)}

    async def unalias(self, name: str, alias: str, force: bool = False) -> dict[str, Any]:
        served_by = self.view.following(name, alias)
        _, events = await self._decide_and_append(name, lambda s: decide_remove_alias(s, alias, served_by, force))
        return {"name": name, "alias": alias, "removed": events[0].previous}  # type: ignore[attr-defined]

    async def tag(self, name: str, version: int, set_tags: dict[str, str], removed: list[str]) -> dict[str, Any]:
        state, _ = await self._decide_and_append(name, lambda s: decide_tag(s, version, set_tags, removed))
        return version_view(state, state.versions[version])

    async def describe(self, name: str, version: int, description: str) -> dict[str, Any]:
        state, _ = await self._decide_and_append(name, lambda s: decide_describe(s, version, description))
        return version_view(state, state.versions[version])

    async def delete(self, name: str, version: int, reason: str = "", by: str = "") -> dict[str, Any]:
        await self.catch_up()
        serving = self.view.served_by(name, version)
        if serving:  # as an aliased version is refused: its bytes are what those replicas load on a restart
            raise RegistryError(f"version: {version} of model {name!r} is served by {', '.join(serving[:3])}; "
                                "cancel the serving job first")
        from aios.model_registry.replica import endpoints

        live = sorted({str(e.get("job")) for e in await endpoints(self.store, name) if e.get("version") == version})
        if live:  # (a deployment whose alias was removed, say, still serves the version it had loaded)
            raise RegistryError(f"version: {version} of model {name!r} is being served by {', '.join(live[:3])}; "
                                "move its alias, or cancel the serving job, first")
        await self._decide_and_append(name, lambda s: decide_delete(s, version, reason, by))
        collected = await self.collect_garbage()
        return {"name": name, "version": version, "deleted": True, "collected": collected}

    async def collect_garbage(self, orphan_grace_s: float = 3600.0) -> dict[str, Any]:
        """Delete the bytes of every digest no live version references: those of deleted versions at once, and
        objects no version ever named (a register that died between storing and recording) after a grace period,
        since a register may be between the two right now."""
        async with self._bytes_lock:
            return await self._collect_garbage(orphan_grace_s)

    async def _collect_garbage(self, orphan_grace_s: float) -> dict[str, Any]:
        await self.catch_up()
        live = referenced_digests(self.view.models)
        holders: dict[str, str] = {}
        for name, state in self.view.models.items():
            for v in state.versions.values():
                holders[v.digest] = name
        stored = await self.blobs.digests()
        freed, removed = 0, []
        bucket = await self.blobs.bucket()
        for digest, size in stored.items():
            if digest in live:
                continue
            if digest not in holders:
                info = await bucket.get_info(digest.replace(":", "-"))
                mtime = parse_mtime(info.mtime)
                if mtime is None or time.time() - mtime < orphan_grace_s:
                    continue
            if await self.blobs.delete(digest):
                freed += size
                removed.append(digest)
                if digest in holders:
                    await self.store.append(f"model.{holders[digest]}",
                                            ModelObjectCollected(aggregate_id=holders[digest], digest=digest,
                                                                 size_bytes=size))
        await self.catch_up()
        return {"objects": removed, "bytes": freed}


# -- the request surface --------------------------------------------------------------------------------------------
def _int(args: dict[str, Any], key: str) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(f"{key}: a positive version number is required, got {strictjson.shown(value)}")
    return value


def _str(args: dict[str, Any], key: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise BadInput(f"{key}: a string is required, got {strictjson.shown(value)}")
    return value


def _bool(args: dict[str, Any], key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise BadInput(f"{key}: true or false, got {strictjson.shown(value)}")
    return value


async def handle(reg: Registry, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """One request: ``op`` names the command, ``args`` its fields (JSON object)."""
    if op == "list":
        for key in ("tag", "metric", "name"):
            if args.get(key) is not None and not isinstance(args[key], str):
                raise BadInput(f"{key}: a string is expected, got {strictjson.shown(args[key])}")
        least = args.get("min")
        if least is not None:
            if isinstance(least, bool) or not isinstance(least, (int, float)) or not math.isfinite(least):
                raise BadInput(f"min: a number is expected, got {strictjson.shown(least)}")
            if args.get("metric") is None:
                raise BadInput("min: needs metric (the metric whose value is at least min)")
        return {"models": reg.list(args.get("tag"), args.get("metric"), least, args.get("name"))}
    if op == "show":
        return reg.show(_str(args, "model"))
    if op == "register":  # the bytes are put in the bucket by the caller (content-addressed), only the digest travels
        check_name(_str(args, "name"))
        data = await reg.blobs.get(_str(args, "digest"))
        trainer = args.get("trainer")
        if trainer is not None and not isinstance(trainer, dict):
            raise BadInput("trainer: an object (the built-in trainer's config) is expected")
        return await reg.register_bytes(_str(args, "name"), data, trainer, _str(args, "description", ""),
                                        check_tags(args.get("tags", {})), _str(args, "by", ""))
    if op == "alias":
        expected = args.get("expected", "any")
        if expected not in ("any", None) and (isinstance(expected, bool) or not isinstance(expected, int)
                                              or expected < 1):
            # "1" was compared with 1 and refused as a conflict (409), and true moved an alias expected at 1
            raise BadInput("expected: \"any\", null (the alias is new) or a version number, got "
                           + strictjson.shown(expected))
        return await reg.alias(_str(args, "name"), _str(args, "alias"), _int(args, "version"), expected,
                               _bool(args, "force"))
    if op == "unalias":
        return await reg.unalias(_str(args, "name"), _str(args, "alias"), _bool(args, "force"))
    if op == "tag":
        removed = args.get("remove", [])
        if not isinstance(removed, list):
            raise BadInput("remove: a list of tag keys is expected")
        return await reg.tag(_str(args, "name"), _int(args, "version"), check_tags(args.get("set", {})), removed)
    if op == "describe":
        return await reg.describe(_str(args, "name"), _int(args, "version"), _str(args, "description", ""))
    if op == "delete":
        return await reg.delete(_str(args, "name"), _int(args, "version"), _str(args, "reason", ""),
                                _str(args, "by", ""))
    if op == "compress":
        options = args.get("options", {})
        if not isinstance(options, dict):
            raise BadInput("options: an object is expected")
        steps = args.get("finetune_steps", 1000)
        if not isinstance(steps, int) or steps < 0:
            raise BadInput(f"finetune_steps: a non-negative integer is expected, got {strictjson.shown(steps)}")
        return await reg.compress(_str(args, "model"), _str(args, "method"), options, steps, _str(args, "by", ""))
    if op == "eval":
        trainer = args.get("trainer")
        if trainer is not None and not isinstance(trainer, dict):  # was silently taken as "none given"
            raise BadInput("trainer: an object (the built-in trainer's config) is expected")
        return await reg.evaluate(_str(args, "model"), trainer)
    if op == "gc":
        grace = args.get("orphan_grace_s", 3600.0)
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not MIN_ORPHAN_GRACE_S <= grace < 1e9:
            # a negative grace freed at once a blob a concurrent `register` had just uploaded
            raise BadInput(f"orphan_grace_s: at least {MIN_ORPHAN_GRACE_S:g} s (an upload is referenced by its "
                                f"register request within that time), got {strictjson.shown(grace)}")
        return await reg.collect_garbage(float(grace))
    if op == "register-job":
        return await reg.register_job(_str(args, "job")) or {"registered": False}
    raise BadInput(f"op: unknown {op!r} (list, show, register, alias, unalias, tag, describe, delete, compress, "
                        "eval, gc)")


UNLOCKED = frozenset({"list", "show", "compress", "eval", "register", "register-job"})
"""Requests that do not wait for the command lock: reads, and the long ones (a compression fine-tunes for minutes,
and every `aios models list` and API call timed out behind it; a register with ``trainer``, or of a job's model,
evaluates on up to 512 MiB of data, and held aliases, tags and deletes for as long). Their appends check the model's version, as every
command's do, and folding the log twice is harmless (``Registry.apply`` skips what it has seen)."""


class ModelRegistryService(Service):
    name = "model-registry"

    def __init__(self) -> None:
        self.registered = 0
        self.handled = 0
        """How many of ``view.succeeded`` have been registered (or found registered)."""
        self._lock = asyncio.Lock()
        self._requests: set[asyncio.Task[None]] = set()

    async def run(self, ctx: ServiceContext) -> None:
        self.reg = Registry(ctx.store)
        await self.reg.catch_up()
        await self._register_new_jobs()  # jobs that succeeded while we were away
        stop = asyncio.Event()
        follower = asyncio.ensure_future(self._follow(ctx, stop))
        sub = await ctx.nc.subscribe(f"{PREFIX}.>", cb=self._on_request)
        router = asyncio.ensure_future(self._route(ctx, stop))
        log.info("model registry ready", extra={"models": len(self.reg.view.models)})
        await ctx.stopping.wait()
        self.reg.stopping.set()
        await sub.unsubscribe()
        await self.finish_requests()
        stop.set()
        await asyncio.gather(follower, router)

    async def _route(self, ctx: ServiceContext, stop: asyncio.Event) -> None:
        """The inference router on ``AIOS_ROUTER_PORT`` (default 8600; taken: any free port), announced in the
        endpoints bucket so ``aios serve`` can print it."""
        import os

        from aios.model_registry.router import Router, announce_router
        from aios.model_registry.serving import start_server_app

        want = int(os.environ.get("AIOS_ROUTER_PORT", "8600"))
        host = os.environ.get("AIOS_ROUTER_HOST", "127.0.0.1")
        def router() -> Router:
            return Router(ctx.store, lambda *request: self.reg.view.unservable(*request), ctx.metrics)
        try:
            runner, port = await start_server_app(router().app(), host, want)
        except OSError:
            runner, port = await start_server_app(router().app(), host, 0)
        self.router_url = f"http://{host}:{port}"
        try:
            while not stop.is_set():
                try:
                    await announce_router(ctx.store, self.router_url)
                except Exception as exc:  # noqa: BLE001 - NATS away: try again next round
                    log.warning("could not announce the router", extra={"error": str(exc)})
                try:
                    await asyncio.wait_for(stop.wait(), 5.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            await runner.cleanup()

    async def _follow(self, ctx: ServiceContext, stop: asyncio.Event) -> None:
        sub = ctx.store.subscribe(self.reg.seq + 1)
        try:
            while not stop.is_set():
                try:
                    commit = await sub.next(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                self.reg.apply(commit)
                await self._register_new_jobs()
        finally:
            await sub.close()

    async def _register_new_jobs(self) -> None:
        """Whichever fold saw a job succeed (the follower, or a request's catch-up), it is registered here."""
        while self.handled < len(self.reg.view.succeeded):
            job_id = self.reg.view.succeeded[self.handled]
            self.handled += 1
            await self._register_job(job_id)

    async def _register_job(self, job_id: str) -> None:
        try:
            with tracing.job_span("register model", job_id, self.reg.view.succeeded_trace.get(job_id)):
                done = await self.reg.register_job(job_id)
            if done:
                self.registered += 1
                log.info("registered a trained model", extra={"job": job_id, "model": done["name"],
                                                              "version": done["version"]})
        except (AiosError, ValueError, msgspec.DecodeError) as exc:
            log.error("could not register the model of a training job", extra={"job": job_id, "error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a missing checkpoint bucket and the like must not stop the service
            log.error("could not register the model of a training job", extra={"job": job_id, "error": repr(exc)})

    async def _on_request(self, msg: Any) -> None:
        """NATS hands a subscription's messages to this callback one after the other: each request is answered in
        a task of its own, or one compression held every other request (`aios models list` timed out behind it)."""
        task = asyncio.ensure_future(self._traced_answer(msg))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _traced_answer(self, msg: Any) -> None:
        with tracing.process_span(msg.subject, msg.headers):  # one trace with the CLI's request, and what it appends
            await self._answer(msg)

    async def finish_requests(self) -> None:
        """Wait for the requests in flight (a stopping registry has told long ones to end)."""
        if self._requests:
            await asyncio.gather(*list(self._requests), return_exceptions=True)

    async def _answer(self, msg: Any) -> None:
        op = msg.subject[len(PREFIX) + 1:]
        try:
            args = json.loads(msg.data or b"{}")
            if not isinstance(args, dict):
                raise BadInput("request: a JSON object is expected")
            bad = unencodable_reason(args)  # a tag "\ud800" failed as the event was encoded: "internal error"
            if bad:
                raise BadInput(bad)
            if op in UNLOCKED:
                await self.reg.catch_up()
                reply: Any = await handle(self.reg, op, args)
            else:
                async with self._lock:  # one command at a time in this process; other writers are caught by versions
                    await self.reg.catch_up()
                    reply = await handle(self.reg, op, args)
        except json.JSONDecodeError as exc:
            reply = {"error": f"request: not JSON ({exc})", "bad_input": True}
        except NotFound as exc:
            reply = {"error": str(exc), "not_found": True}
        except BadInput as exc:
            reply = {"error": str(exc), "bad_input": True}
        except (RegistryError, BlobError) as exc:
            reply = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a request must get an answer, not a timeout
            log.exception("registry request failed", extra={"op": op})
            reply = {"error": f"internal error: {exc!r}", "internal": True}
        if msg.reply:
            await msg.respond(json.dumps(reply, default=_json_default).encode())

    def healthy(self) -> tuple[bool, str]:
        reg = getattr(self, "reg", None)
        return True, f"{len(reg.view.models) if reg else 0} models, {self.registered} registered from jobs"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def from_env() -> ModelRegistryService:
    return ModelRegistryService()

