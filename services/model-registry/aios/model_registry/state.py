"""The registry's state, folded from ``model.<name>`` events, and its decisions, both without I/O.

``evolve`` applies one event; ``decide_*`` turn a command and the current state of one model into the events to
append (or a :class:`RegistryError` naming the field and the reason). The service appends them against the model's
version, so two clients moving one alias at once cannot lose a move: the second is decided again on fresh state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aios.common.errors import AiosError, ConfigError
from aios.common.errors import NotFound as CommonNotFound
from aios.common.events import (
    Event, Lineage, ModelAliasRemoved, ModelAliasSet, ModelObjectCollected, ModelVersionDeleted, ModelVersionDescribed,
    ModelVersionEvaluated, ModelVersionRegistered, ModelVersionTagged, Signature,
)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
URI = re.compile(r"^(?:models:/)?(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))?$")


class RegistryError(AiosError):
    """A registry command that cannot be done; the message names the field and the reason."""


class NotFound(RegistryError, CommonNotFound):
    """No such model, version or alias."""


class BadInput(RegistryError, ConfigError):
    """The request itself is wrong: a field's value or a file's format (``aios`` exits with 2, not 1). Kept apart
    from refusals that depend on the registry's state, such as an alias that moved meanwhile."""


@dataclass
class VersionState:
    version: int
    digest: str
    size_bytes: int
    format: str
    signature: Signature
    lineage: Lineage
    metrics: dict[str, float]
    description: str
    tags: dict[str, str]
    registered_at: float
    registered_by: str = ""
    deleted: bool = False
    deleted_reason: str = ""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """The headline evaluation, on the version's own data (the first recorded, or a later one on the same data):
    dataset, metrics, per_class, confusion."""
    other_evaluations: dict[str, dict[str, float]] = field(default_factory=dict)
    """Metrics of evaluations on other data, by dataset: kept beside the headline, not in its place."""
    registered_seq: int = 0
    """Log sequence of its registration: orders it against a job's submission (``registered_at`` is the
    registry's clock, the submission's stamp the gateway's or the CLI's host)."""


@dataclass
class ModelState:
    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    version: int = 0
    """The aggregate's version (its last event's per-subject sequence): what appends are checked against."""
    collected: set[str] = field(default_factory=set)

    @property
    def live(self) -> list[VersionState]:
        return [v for v in self.versions.values() if not v.deleted]

    @property
    def latest(self) -> VersionState | None:
        live = self.live
        return max(live, key=lambda v: v.version) if live else None

    def aliases_of(self, version: int) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)


def evolve(state: ModelState, ev: Event, version: int) -> ModelState:
    """Apply one event (mutates and returns ``state``; ``version`` is the aggregate version after it: the log
    sequence of the event's commit)."""
    state.version = version
    if isinstance(ev, ModelVersionRegistered):
        state.versions[ev.version] = VersionState(
            ev.version, ev.digest, ev.size_bytes, ev.format, ev.signature, ev.lineage, dict(ev.metrics),
            ev.description, dict(ev.tags), ev.ts, ev.registered_by, registered_seq=version)
        state.collected.discard(ev.digest)
    elif isinstance(ev, ModelVersionEvaluated):
        if ev.version in state.versions:
            v = state.versions[ev.version]
            if v.evaluation and v.evaluation.get("dataset") != ev.dataset:
                v.other_evaluations[ev.dataset] = dict(ev.metrics)  # 20 samples of other data replaced them
            else:
                v.evaluation = {"dataset": ev.dataset, "metrics": dict(ev.metrics), "per_class": ev.per_class,
                                "confusion": ev.confusion, "at": ev.ts}
                v.metrics.update(ev.metrics)
    elif isinstance(ev, ModelAliasSet):
        state.aliases[ev.alias] = ev.version
    elif isinstance(ev, ModelAliasRemoved):
        state.aliases.pop(ev.alias, None)
    elif isinstance(ev, ModelVersionTagged):
        if ev.version in state.versions:
            tags = state.versions[ev.version].tags
            tags.update(ev.set)
            for key in ev.removed:
                tags.pop(key, None)
    elif isinstance(ev, ModelVersionDescribed):
        if ev.version in state.versions:
            state.versions[ev.version].description = ev.description
    elif isinstance(ev, ModelVersionDeleted):
        if ev.version in state.versions:
            state.versions[ev.version].deleted = True
            state.versions[ev.version].deleted_reason = ev.reason
    elif isinstance(ev, ModelObjectCollected):
        state.collected.add(ev.digest)
    return state


# -- names and URIs -------------------------------------------------------------------------------------------------
def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadInput(f"name: {name!r} must be 1-64 letters, digits, '_' or '-' (starting with a letter or digit)")
    return name


def parse_uri(uri: str) -> tuple[str, int | None, str | None]:
    """``models:/name/3``, ``models:/name@production``, ``name``, ``name/3``, ``name@alias`` -> (name, version,
    alias); neither: the latest live version."""
    m = URI.fullmatch(uri.strip()) if isinstance(uri, str) else None
    if m is None:
        raise BadInput(f"model: {uri!r} is not models:/<name>[/<version>|@<alias>]")
    name = check_name(m["name"])
    version = None
    if m["version"] is not None:
        if not m["version"].isdigit() or int(m["version"]) < 1:
            raise BadInput(f"model: version {m['version']!r} of {uri!r} is not a positive number")
        version = int(m["version"])
    return name, version, m["alias"]


def resolve(state: ModelState | None, uri: str) -> VersionState:
    name, version, alias = parse_uri(uri)
    if state is None or not state.versions:
        raise NotFound(f"model {name!r} is not registered")
    if alias is not None:
        if alias not in state.aliases:
            known = ", ".join(sorted(state.aliases)) or "none"
            raise NotFound(f"model {name!r} has no alias {alias!r} (aliases: {known})")
        version = state.aliases[alias]
    if version is None:
        latest = state.latest
        if latest is None:
            raise NotFound(f"model {name!r} has no live version")
        return latest
    found = state.versions.get(version)
    if found is None:
        raise NotFound(f"model {name!r} has no version {version}")
    if found.deleted:
        raise NotFound(f"version {version} of model {name!r} was deleted ({found.deleted_reason or 'no reason given'})")
    return found


def serve_refusal(shown: dict[str, Any]) -> str | None:
    """Why a serving job could never load the model that the registry's ``show`` answered with, or None if it can
    load it: no such model, version or alias, or a name that is no model URI (the answer's error), a deleted version,
    a bare name whose versions are all deleted (``resolve`` finds no latest). Checked when the job is submitted: its
    replicas would fail to load it, and be restarted, until the crash-loop cap failed the job. A fault of the
    registry's own is no verdict on the model (None)."""
    if "error" in shown:
        return str(shown["error"]) if shown.get("not_found") or shown.get("bad_input") else None
    if "versions" in shown and not any(not v.get("deleted") for v in shown["versions"]):
        return f"model {shown.get('name')!r} has no live version"
    if shown.get("deleted"):
        return f"version {shown.get('version')} of model {shown.get('name')!r} was deleted"
    return None


# -- decisions ------------------------------------------------------------------------------------------------------
def _live(state: ModelState, version: int) -> VersionState:
    found = state.versions.get(version)
    if found is None:
        raise NotFound(f"version: model {state.name!r} has no version {version}")
    if found.deleted:
        raise RegistryError(f"version: {version} of model {state.name!r} is deleted")
    return found


def decide_register(state: ModelState, *, digest: str, size_bytes: int, format: str, signature: Signature,
                    lineage: Lineage, metrics: dict[str, float] | None = None, description: str = "",
                    tags: dict[str, str] | None = None, registered_by: str = "") -> list[Event]:
    if lineage.parent_version is not None:
        _live(state, lineage.parent_version)
    if len(description) > MAX_DESCRIPTION:  # as `describe` refuses it later
        raise BadInput(f"description: longer than {MAX_DESCRIPTION:,} characters")
    number = max(state.versions, default=0) + 1  # never reused, even after a deletion
    return [ModelVersionRegistered(aggregate_id=state.name, version=number, digest=digest, size_bytes=size_bytes,
                                   format=format, signature=signature, lineage=lineage, metrics=dict(metrics or {}),
                                   description=description, tags=dict(tags or {}), registered_by=registered_by)]


def _takes(sig: Any) -> str:
    return f"{sig.input_datatype} {list(sig.input_shape)} and gives {list(sig.output_shape)}"


def decide_alias(state: ModelState, alias: str, version: int, expected: int | None | str = "any",
                 served_by: list[str] | tuple[str, ...] = (), force: bool = False) -> list[Event]:
    """Point ``alias`` at ``version``. ``expected``: the version the caller believes the alias points at now
    (None: unset), checked like a compare-and-set; ``"any"``: move it whatever it points at. ``served_by``: the
    serving jobs that follow the alias; while there are any, the new version must take and give what the current
    one does, unless ``force`` (their clients' requests would fail once the replicas load it)."""
    if not isinstance(alias, str) or not ALIAS.fullmatch(alias) or alias == "latest":
        raise BadInput(f"alias: {alias!r} must start with a letter, use letters, digits, '_' or '-', and not be "
                            "'latest'")
    _live(state, version)
    current = state.aliases.get(alias)
    if expected != "any" and expected != current:
        raise RegistryError(f"alias: {alias!r} points at {current if current is not None else 'nothing'}, not "
                            f"{expected if expected is not None else 'nothing'} as expected (moved meanwhile)")
    if current == version:
        return []
    if current is not None and served_by and not force and current in state.versions:
        old, new = state.versions[current].signature, state.versions[version].signature
        if _takes(old) != _takes(new):
            raise RegistryError(f"version: {version} takes {_takes(new)}, but {alias} (now {current}) takes "
                                f"{_takes(old)}; {', '.join(served_by[:3])} serves {state.name}@{alias}, and its "
                                "clients' requests would fail (--force moves it anyway)")
    return [ModelAliasSet(aggregate_id=state.name, alias=alias, version=version, previous=current)]


def decide_remove_alias(state: ModelState, alias: str, served_by: list[str] | tuple[str, ...] = (),
                        force: bool = False) -> list[Event]:
    """``served_by``: the serving jobs that follow the alias; without ``force`` it stays while there are any."""
    if alias not in state.aliases:
        raise NotFound(f"alias: model {state.name!r} has no alias {alias!r}")
    if served_by and not force:
        raise RegistryError(f"alias: {', '.join(served_by[:3])} serves {state.name}@{alias}; cancel it, or serve "
                            "another alias or version, first (--force removes it anyway)")
    return [ModelAliasRemoved(aggregate_id=state.name, alias=alias, previous=state.aliases[alias])]


MAX_TAG_KEY = 250
MAX_TAG_VALUE = 5000
MAX_TAGS = 100
"""Tags of one version: with values of 5,000 characters, well inside one NATS message (3,000 tags were taken by
the API, and the request then failed as too large to send: an HTTP 500, a traceback in the CLI)."""


def check_tag_key(key: Any) -> str:
    """A tag key as MLflow takes them (up to 250 characters, spaces allowed), without ``=`` (a filter ``KEY=VALUE``
    could not name it) or control characters, not blank: one rule for registering, tagging and removing, so that
    every tag set can be changed and removed again."""
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_TAG_KEY or "=" in key or not key.isprintable():
        raise BadInput(f"tags: key {str(key)[:64]!r} must be 1 to {MAX_TAG_KEY} printable characters, not blank, "
                       "without '='")
    return key


def check_tags(raw: Any) -> dict[str, str]:
    """Tags from a request: string keys (:func:`check_tag_key`) to string values of up to 5,000 characters."""
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise BadInput("tags: an object of string keys and string values is expected")
    if len(raw) > MAX_TAGS:
        raise BadInput(f"tags: at most {MAX_TAGS} on a version, got {len(raw):,}")
    for key, value in raw.items():
        check_tag_key(key)
        if len(value) > MAX_TAG_VALUE or "\x00" in value:
            raise BadInput(f"tags.{key}: at most {MAX_TAG_VALUE} characters, no NUL")
    return raw


def decide_tag(state: ModelState, version: int, set_tags: dict[str, str], removed: list[str]) -> list[Event]:
    found = _live(state, version)
    check_tags(set_tags)
    for key in removed:
        check_tag_key(key)
        if key not in found.tags and key not in set_tags:  # a typo went through as done (exit 0), as MLflow refuses
            raise NotFound(f"tags: version {version} of model {state.name!r} has no tag {key!r}")
    after = (set(found.tags) | set(set_tags)) - (set(removed) - set(set_tags))
    if len(after) > MAX_TAGS:
        raise BadInput(f"tags: at most {MAX_TAGS} on a version; it would have {len(after):,}")
    return [ModelVersionTagged(aggregate_id=state.name, version=version, set=dict(set_tags), removed=list(removed))]


MAX_DESCRIPTION = 10_000


def decide_describe(state: ModelState, version: int, description: str) -> list[Event]:
    _live(state, version)
    if len(description) > MAX_DESCRIPTION:
        raise BadInput(f"description: longer than {MAX_DESCRIPTION:,} characters")
    return [ModelVersionDescribed(aggregate_id=state.name, version=version, description=description)]


def decide_delete(state: ModelState, version: int, reason: str = "", by: str = "") -> list[Event]:
    _live(state, version)
    aliases = state.aliases_of(version)
    if aliases:
        raise RegistryError(f"version: {version} of model {state.name!r} is aliased as {', '.join(aliases)}; move or "
                            "remove the alias first")
    return [ModelVersionDeleted(aggregate_id=state.name, version=version, reason=reason, deleted_by=by)]


def referenced_digests(models: dict[str, ModelState]) -> set[str]:
    """Digests some live version still needs: everything else may be collected."""
    return {v.digest for m in models.values() for v in m.live}


def version_view(state: ModelState, v: VersionState) -> dict[str, Any]:
    """What ``aios models show`` and the API print for one version."""
    return {"name": state.name, "version": v.version, "uri": f"models:/{state.name}/{v.version}",
            "aliases": state.aliases_of(v.version), "digest": v.digest, "size_bytes": v.size_bytes,
            "format": v.format, "metrics": v.metrics, "tags": v.tags, "description": v.description,
            "signature": {"input": [v.signature.input_name, v.signature.input_datatype, v.signature.input_shape],
                          "output": [v.signature.output_name, v.signature.output_datatype, v.signature.output_shape],
                          "labels": v.signature.labels},
            "lineage": {k: getattr(v.lineage, k) for k in v.lineage.__struct_fields__},
            "registered_at": v.registered_at, "registered_by": v.registered_by, "deleted": v.deleted,
            **({"deleted_reason": v.deleted_reason} if v.deleted else {}),
            **({"evaluation": v.evaluation} if v.evaluation else {}),
            **({"evaluations": v.other_evaluations} if v.other_evaluations else {})}
