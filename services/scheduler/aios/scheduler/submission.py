"""Appending a job submission to the log: one path for the HTTP API, the NATS tenant API and the CLI.

A submission may carry an idempotency key, so that a client that lost the reply can send it again. The key is the
tenant's (two tenants may pick the same one) and the same whichever way the job comes in. A retry gets the job the
first submission created, not a new id; the same key with a different spec is refused, not silently dropped.
"""

from __future__ import annotations

import hashlib

import msgspec

from aios.common import tracing
from aios.common.errors import ConcurrencyConflict, ConfigError
from aios.common.events import JobSubmitted
from aios.common.textcheck import NOT_UNICODE, encodes
from aios.common.wire import new_token
from aios.scheduler.spec import JobSpec, judge_spec, spec_to_store
from aios.scheduler.state import key_index


class KeyReused(ConfigError):
    """The idempotency key was used before for a different job spec (a mistake of the caller: HTTP 409, exit 2)."""


class BadKey(ConfigError):
    """An idempotency key that cannot be one (HTTP 400, exit 2)."""


MAX_KEY_CHARS = 255


def check_key(key: str) -> None:
    """A key is kept in the log's message headers and events: printable text of reasonable length. A non-UTF-8
    header was an HTTP 500, and a megabyte-long key was stored with the job."""
    if not key or len(key) > MAX_KEY_CHARS:
        raise BadKey(f"idempotency key: 1 to {MAX_KEY_CHARS} characters, got {len(key)}")
    if not encodes(key):
        raise BadKey(f"idempotency key: {NOT_UNICODE}")
    if not key.isprintable():
        raise BadKey("idempotency key: control characters are not allowed (a header cannot carry them)")


class Submission(msgspec.Struct, frozen=True):
    job: str
    seq: int
    duplicate: bool = False


def dedup_key(tenant: str, key: str) -> str:
    return f"submit-{tenant}-{key}"


def new_job_id(spec: JobSpec) -> str:
    return f"{spec.name}-{new_token()[:6]}"


def keyed_job_id(spec: JobSpec, key: str) -> str:
    """The id a keyed submission's job gets: the same for every retry, so a retry that comes after the stream's
    duplicate window (two minutes) finds the job in the log instead of creating a second one."""
    digest = hashlib.sha256(key_index(spec.tenant, key).encode()).hexdigest()
    return f"{spec.name}-{digest[:12]}"


async def submit(store, spec: JobSpec, key: str | None = None,  # type: ignore[no-untyped-def]
                 job_id: str | None = None, via: str = "cli") -> Submission:
    """Append ``JobSubmitted`` for a new job (``job_id``, default :func:`new_job_id`, or :func:`keyed_job_id` with
    ``key``); with ``key``, a retry returns the job the first submission created, whenever it comes. The append
    happens in the span that roots the job's trace, whichever way the job came (``via``: cli, http, nats): a serve
    job's trace began at a bare publish span."""
    if key is not None:
        check_key(key)
    job_id = job_id or (keyed_job_id(spec, key) if key else new_job_id(spec))
    body = spec_to_store(spec)
    with tracing.job_span(f"submit {spec.name}", job_id, None, **{"aios.tenant": spec.tenant, "aios.via": via}):
        try:
            result = await store.append(f"job.{job_id}", JobSubmitted(
                aggregate_id=job_id, tenant=spec.tenant, name=spec.name, spec=body, checked=True,
                idempotency_key=key or ""), expected_version=0,
                idempotency_key=dedup_key(spec.tenant, key) if key else f"submit-{job_id}")
        except ConcurrencyConflict:
            if not key:
                raise
            return await _retried(store, spec, key, job_id)
    if not result.duplicate:
        return Submission(job_id, result.seq)
    original = await store.commit_at(result.seq)
    first = next((ev for ev in (original.events if original else []) if isinstance(ev, JobSubmitted)), None)
    if first is None:  # the key's commit is gone (retention): nothing to compare with, nothing stored now
        raise KeyReused(f"idempotency key {key!r}: used before, and its job is no longer in the log; use a new key")
    _same_spec(first, spec, key)
    return Submission(first.aggregate_id, result.seq, duplicate=True)


async def _retried(store, spec: JobSpec, key: str, job_id: str) -> Submission:  # type: ignore[no-untyped-def]
    """The job ``job_id`` exists: the first submission with this key (after the duplicate window), or, for a
    different key whose id collides, a reason to take a fresh id."""
    history = await store.read(f"job.{job_id}", on_bad_event="skip")
    first = next((ev for ev in history.events if isinstance(ev, JobSubmitted)), None)
    if first is None or first.tenant != spec.tenant or first.idempotency_key != key:
        return await submit(store, spec, None, new_job_id(spec))  # not ours (a collision of 48 bits)
    _same_spec(first, spec, key)
    return Submission(job_id, history.version, duplicate=True)


def _same_spec(first: JobSubmitted, spec: JobSpec, key: str | None) -> None:
    if judge_spec(first.spec)[0] != spec:  # as specs, not as stored (an older version stored its defaults too)
        raise KeyReused(f"idempotency key {key!r}: already used for job {first.aggregate_id} with another spec; "
                        "a retry must send the same spec (or use a new key for a new job)")
