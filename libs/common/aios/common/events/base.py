"""The event base class and the registry of event types.

Every event is a frozen msgspec Struct tagged by its class name in the ``type`` field. Subclassing :class:`Event`
is all it takes to register a type. Evolving a type: add fields only with defaults; for anything else raise the
class's ``v`` default and register an upcaster from the old version (see :mod:`aios.common.events.codec`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=False):
    """An immutable fact about one aggregate.

    ``aggregate_id`` is the id part of the aggregate (``j-42`` of ``job.j-42``); ``AGGREGATE`` names its kind.
    ``v`` is the schema version the payload was written with; ``ts`` seconds since the epoch (UTC);
    ``causation_id`` the command or event that caused it; ``trace_id`` the W3C trace it was written under.
    """

    AGGREGATE: ClassVar[str] = ""
    ABSTRACT: ClassVar[bool] = False
    """True on a grouping class (``JobEvent``) that is never stored itself; not inherited."""

    aggregate_id: str
    v: int = 1
    ts: float = msgspec.field(default_factory=time.time)
    causation_id: str | None = None
    trace_id: str | None = None

    @property
    def aggregate(self) -> str:
        return f"{self.AGGREGATE}.{self.aggregate_id}"


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def event_types() -> dict[str, type[Event]]:
    """All registered event classes by tag (the concrete subclasses of :class:`Event`)."""
    types: dict[str, type[Event]] = {}
    for cls in _subclasses(Event):
        if cls.__dict__.get("ABSTRACT", False):
            continue
        tag = cls.__struct_config__.tag
        if tag in types and types[tag] is not cls:
            raise TypeError(f"event tag {tag!r} is used by both {types[tag].__qualname__} and {cls.__qualname__}")
        types[tag] = cls
    return types


def schema_version(cls: type[Event]) -> int:
    """The current schema version of an event class: the default of its ``v`` field."""
    for f in msgspec.structs.fields(cls):
        if f.name == "v":
            return int(f.default)
    raise TypeError(f"{cls.__qualname__} has no 'v' field")  # pragma: no cover - every Event has one


def to_dict(ev: Event) -> dict[str, Any]:
    """A plain JSON-ready dict of an event, tag included (for logs, the CLI and the HTTP API)."""
    return msgspec.to_builtins(ev)


def timeline_entry(ev: Event) -> dict[str, Any]:
    """One line of a job's timeline, as ``aios job --json`` and the HTTP API give it: the event's class name, its
    time and its own fields (not the envelope's aggregate, version and causation)."""
    fields = {k: v for k, v in to_dict(ev).items() if k not in ("type", "ts", "aggregate_id", "v", "causation_id")}
    return {"type": type(ev).__name__, "ts": ev.ts, **fields}
