"""The one error tree of AIOS. Callers catch these, never a nats-py or msgspec exception."""

from __future__ import annotations


class AiosError(Exception):
    """Base of every error AIOS raises on purpose."""


class ConfigError(AiosError):
    """A setting (environment variable or option) has a bad value; the message names it."""


class NotFound(AiosError):
    """The job, node, model or version asked for does not exist (``aios`` exits with 3)."""


class EventError(AiosError):
    """An event could not be encoded or decoded."""


class UnknownEventType(EventError):
    """A payload carries a ``type`` tag no registered event class has."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"unknown event type {tag!r}: no event class is registered under that tag")
        self.tag = tag


class MalformedEvent(EventError):
    """A payload is not a valid event: bad JSON, a missing field, or a field of the wrong type."""


class StoreError(AiosError):
    """The event store could not do what was asked."""


class ConcurrencyConflict(StoreError):
    """The aggregate moved on since the writer read it: re-read, decide again, then retry.

    Raised when JetStream rejects an append with "wrong last sequence" (err_code 10071).
    """

    def __init__(self, aggregate: str, expected_version: int, detail: str = "") -> None:
        msg = f"aggregate {aggregate!r} is no longer at version {expected_version}"
        super().__init__(msg + (f" ({detail})" if detail else ""))
        self.aggregate = aggregate
        self.expected_version = expected_version


class StoreUnavailable(StoreError):
    """NATS did not acknowledge in time (server down or unreachable). The append may or may not be stored;
    retrying with the same idempotency key is safe."""


class InvalidAggregate(StoreError):
    """An aggregate name that cannot be a subject token sequence (``<kind>.<id>``)."""


class PermissionDenied(StoreError):
    """The NATS server refused a publish or subscribe for this connection's user (subject permissions); retrying
    cannot help."""
