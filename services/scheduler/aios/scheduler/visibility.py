"""What a tenant is told of other tenants: that they exist, never who they are or which jobs they run.

A tenant gets a 403 for another tenant's job anywhere it asks, so text made for it (``aios why``, a job's timeline)
must not name those jobs or their tenants either. Explanations and event reasons are written once, for the
administrator; this takes the names out for a tenant viewer. It goes by what the names are, not by their shape:
every word that is another tenant's job id, and the name after "tenant" when it is not the viewer's.
"""

from __future__ import annotations

import re
from typing import Any, Callable

_WORD = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")
"""A job id or tenant name as spec.NAME_PATTERN allows them (an id is a name and a suffix), cut at the
punctuation that may follow it in a sentence."""
_TENANT = re.compile(r"\btenant (" + _WORD.pattern + r")")

OTHER_JOB = "a job of another tenant"
OTHER_TENANT = "another tenant"


def redact(text: str, tenant_of: Callable[[str], str | None], viewer: str) -> str:
    """``text`` as ``viewer`` may read it; ``tenant_of(job_id)`` is the job's tenant, None if no such job."""
    text = _TENANT.sub(lambda m: m.group(0) if m.group(1) == viewer else OTHER_TENANT, text)
    return _WORD.sub(lambda m: m.group(0) if (owner := tenant_of(m.group(0))) is None or owner == viewer
                     else OTHER_JOB, text)


def redact_value(value: Any, tenant_of: Callable[[str], str | None], viewer: str) -> Any:
    """Every string in a JSON-like value (an event's fields: ``for_job``, ``reason`` ...), redacted."""
    if isinstance(value, str):
        return redact(value, tenant_of, viewer)
    if isinstance(value, dict):
        return {k: redact_value(v, tenant_of, viewer) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, tenant_of, viewer) for v in value]
    return value
