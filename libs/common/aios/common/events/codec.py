"""Encoding and decoding of commits (one JetStream message = one event or a list of events of one aggregate).

Decoding takes a fast path (one msgspec Decoder for the whole union, built once per process and rebuilt only when a
new event class appears) and falls back to a slow path that upcasts old schema versions and explains failures.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import msgspec

from aios.common.errors import MalformedEvent, UnknownEventType
from aios.common.events.base import Event, event_types, schema_version

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}
_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()


def upcaster(tag: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function turning a ``tag`` payload of ``from_version`` into one of ``from_version + 1``."""

    def register(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(tag, from_version)] = fn
        return fn

    return register


class _Codec:
    """The union decoder and the current schema version of each type, rebuilt when the registry grows."""

    def __init__(self) -> None:
        self.types: dict[str, type[Event]] = {}
        self.current: dict[type[Event], int] = {}
        self.decoder: msgspec.json.Decoder[Any] | None = None

    def refresh(self) -> None:
        types = event_types()
        if types == self.types and self.decoder is not None:
            return
        self.types = types
        self.current = {cls: schema_version(cls) for cls in types.values()}
        if not types:
            raise RuntimeError("no event types are registered")  # pragma: no cover
        union = Union[tuple(types.values())]  # type: ignore[valid-type]
        self.decoder = msgspec.json.Decoder(Union[union, list[union]])  # type: ignore[valid-type]


_codec = _Codec()


def encode(events: Event | list[Event] | tuple[Event, ...]) -> bytes:
    """One event encodes as a JSON object, several as a JSON array (one atomic commit)."""
    if isinstance(events, Event):
        return _encoder.encode(events)
    events = list(events)
    return _encoder.encode(events[0] if len(events) == 1 else events)


def decoder() -> Callable[[Any], list[Event]]:
    """The commit decoder for hot loops: call it once, then call the result per message."""
    _codec.refresh()
    fast = _codec.decoder.decode  # type: ignore[union-attr]
    current = _codec.current
    list_type = list

    def decode(data: Any) -> list[Event]:
        try:
            obj = fast(data)
        except msgspec.ValidationError:
            return _slow_decode(data)
        except msgspec.DecodeError as exc:
            raise MalformedEvent(f"not a valid event payload: {exc}") from None
        if type(obj) is list_type:
            for ev in obj:
                if ev.v < current[type(ev)]:
                    return _slow_decode(data)
            if not obj:
                raise MalformedEvent("empty commit: a commit holds at least one event")
            return obj
        if obj.v < current[type(obj)]:
            return _slow_decode(data)
        return [obj]

    return decode


def decode(data: Any) -> list[Event]:
    """Decode one commit into its events (convenience; hot loops use :func:`decoder`)."""
    return decoder()(data)


def decode_one(data: Any) -> Event:
    events = decode(data)
    if len(events) != 1:
        raise MalformedEvent(f"expected one event, found a commit of {len(events)}")
    return events[0]


def _slow_decode(data: Any) -> list[Event]:
    """Upcast old schema versions and turn validation failures into errors that name the type and the field."""
    _codec.refresh()
    try:
        raw = _any_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedEvent(f"not a valid event payload: {exc}") from None
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise MalformedEvent("empty commit: a commit holds at least one event")
    return [_convert(item, i) for i, item in enumerate(items)]


def _convert(item: Any, index: int) -> Event:
    where = f"event {index}: " if index else ""
    if not isinstance(item, dict):
        raise MalformedEvent(f"{where}expected a JSON object, got {type(item).__name__}")
    tag = item.get("type")
    if not isinstance(tag, str):
        raise MalformedEvent(f"{where}field 'type' is missing or not a string")
    cls = _codec.types.get(tag)
    if cls is None:
        raise UnknownEventType(tag)
    version = item.get("v", 1)
    if not isinstance(version, int):
        raise MalformedEvent(f"{where}{tag}: field 'v' must be an integer schema version")
    target = _codec.current[cls]
    while version < target:
        step = _UPCASTERS.get((tag, version))
        if step is None:
            raise MalformedEvent(f"{where}{tag}: no upcaster from schema version {version} to {version + 1}")
        item = step(dict(item))
        version += 1
        item["v"] = version
    try:
        return msgspec.convert(item, cls)
    except msgspec.ValidationError as exc:
        raise MalformedEvent(f"{where}{tag}: {exc}") from None
