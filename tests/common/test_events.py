"""Event types: encode/decode round trips, commits of several events, upcasting, and clear rejection of bad input."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aios.common.errors import MalformedEvent, UnknownEventType
from aios.common.events import (
    Event, JobCancelled, JobCancelRequested, JobSubmitted, decode, decode_one, encode, event_types, schema_version,
    upcaster,
)


class WidgetRenamed(Event, frozen=True, kw_only=True):
    """A test-only type at schema version 3: v1 had `title`, v2 renamed it to `label`, v3 added `by` (required)."""

    AGGREGATE: ClassVar[str] = "widget"
    v: int = 3
    label: str
    by: str


@upcaster("WidgetRenamed", 1)
def _v1_to_v2(d: dict) -> dict:
    d["label"] = d.pop("title")
    return d


@upcaster("WidgetRenamed", 2)
def _v2_to_v3(d: dict) -> dict:
    d.setdefault("by", "unknown")
    return d


def test_every_registered_type_round_trips() -> None:
    samples = [JobSubmitted(aggregate_id="j1", tenant="nlp", name="bert", spec={"devices": 8, "gang": True}),
               JobCancelRequested(aggregate_id="j1", reason="oops", requested_by="alice"),
               JobCancelled(aggregate_id="j1", reason="oops"),
               WidgetRenamed(aggregate_id="w", label="x", by="me")]
    assert {type(s).__name__ for s in samples} <= set(event_types())
    for ev in samples:
        assert decode_one(encode(ev)) == ev
    assert decode(encode(samples[:3])) == samples[:3]


def test_payload_carries_tag_schema_aggregate_time_and_ids() -> None:
    ev = JobSubmitted(aggregate_id="j1", tenant="t", causation_id="cmd-9", trace_id="ab" * 16)
    raw = msgspec.json.decode(encode(ev))
    assert raw["type"] == "JobSubmitted" and raw["v"] == 1 and raw["aggregate_id"] == "j1"
    assert raw["causation_id"] == "cmd-9" and raw["trace_id"] == "ab" * 16 and raw["ts"] > 1.7e9
    assert ev.aggregate == "job.j1"


def test_events_are_frozen() -> None:
    ev = JobCancelled(aggregate_id="j1")
    with pytest.raises(AttributeError):
        ev.reason = "changed"  # type: ignore[misc]


@given(tenant=st.text(min_size=1, max_size=20), name=st.text(max_size=30),
       spec=st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**53, 2**53), st.text(max_size=8),
                                                            st.booleans(), st.none()), max_size=6),
       ts=st.floats(min_value=0, max_value=4e9))
def test_round_trip_property(tenant: str, name: str, spec: dict, ts: float) -> None:
    ev = JobSubmitted(aggregate_id="j", tenant=tenant, name=name, spec=spec, ts=ts)
    assert decode_one(encode(ev)) == ev


def test_unknown_tag_is_rejected_by_name() -> None:
    with pytest.raises(UnknownEventType, match="'JobTeleported'"):
        decode(b'{"type":"JobTeleported","aggregate_id":"j1"}')


@pytest.mark.parametrize("payload, message", [
    (b'{"type":"JobSubmitted","aggregate_id":"j1"', "not a valid event payload"),
    (b'{"type":"JobSubmitted","aggregate_id":"j1"}', "JobSubmitted: Object missing required field `tenant`"),
    (b'{"type":"JobSubmitted","aggregate_id":"j1","tenant":7}', "JobSubmitted: Expected `str`, got `int` - at `$.tenant`"),
    (b'{"aggregate_id":"j1"}', "field 'type' is missing"),
    (b'[]', "empty commit"),
    (b'42', "expected a JSON object"),
    (b'[{"type":"JobCancelled","aggregate_id":"j1"},{"type":"JobCancelled"}]', "event 1: JobCancelled"),
])
def test_malformed_payloads_get_clear_errors(payload: bytes, message: str) -> None:
    with pytest.raises(MalformedEvent) as info:
        decode(payload)
    assert message in str(info.value)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    ev = decode_one(b'{"type":"JobCancelled","aggregate_id":"j1","v":1,"reason":"r","added_later":[1,2]}')
    assert ev == JobCancelled(aggregate_id="j1", reason="r", ts=ev.ts)


def test_old_versions_are_upcast_step_by_step() -> None:
    assert schema_version(WidgetRenamed) == 3
    v1 = decode_one(b'{"type":"WidgetRenamed","aggregate_id":"w","v":1,"ts":1.0,"title":"old"}')
    assert v1 == WidgetRenamed(aggregate_id="w", label="old", by="unknown", ts=1.0)
    v2 = decode_one(b'{"type":"WidgetRenamed","aggregate_id":"w","v":2,"ts":1.0,"label":"mid"}')
    assert v2.v == 3 and v2.label == "mid" and v2.by == "unknown"
    current = WidgetRenamed(aggregate_id="w", label="now", by="me", ts=1.0)
    assert decode_one(encode(current)) == current


def test_missing_upcaster_is_reported() -> None:
    class Gadget(Event, frozen=True, kw_only=True):
        v: int = 2
        size: int

    with pytest.raises(MalformedEvent, match="no upcaster from schema version 1 to 2"):
        decode(b'{"type":"Gadget","aggregate_id":"g","v":1,"size":3}')
