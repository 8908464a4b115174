"""The NATS tenant API answers a body it cannot read with a 400 naming the body, never an internal error."""

from __future__ import annotations

import asyncio

import pytest

from aios.gateway.tenant_api import TenantApi


@pytest.mark.parametrize("data, error", [
    (b"{not json", "body: not JSON"),
    (b'{"job": ' + b"9" * 5000 + b"}", "body: not JSON"),  # was {"error": "internal error: ValueError", 500}
    (b"[" * 100_000, "body: nested too deeply"),  # was a RecursionError, 500
    (b'{"job": "a", "job": "b"}', "body: not JSON ('job' is given twice"),  # the last one was taken silently
])
def test_a_body_that_cannot_be_read_is_a_400(data: bytes, error: str) -> None:
    reply = asyncio.run(TenantApi(None).answer("aios.tenant.alice.job", data))  # type: ignore[arg-type]
    assert reply["status"] == 400 and reply["error"].startswith(error), reply


def test_a_submit_names_a_field_beside_spec_it_does_not_know() -> None:
    """``{"spec": ..., "idempotency_key": "k"}`` submitted without a word about the key (it goes in a header)."""
    data = b'{"spec": {"name": "a", "command": ["true"]}, "idempotency_key": "k"}'
    reply = asyncio.run(TenantApi(None).answer("aios.tenant.alice.submit", data))  # type: ignore[arg-type]
    assert reply == {"error": "idempotency_key: not a field of submit (known: spec)", "status": 400}, reply
