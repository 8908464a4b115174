"""What a tenant is told of other tenants: that they exist, never who they are or which jobs they run.

A tenant gets a 404 for another tenant's job anywhere it asks, as for an unknown one, so text made for it (``aios why``, a job's timeline)
must not name those jobs or their tenants either. Explanations and event reasons are written once, for the
administrator; this takes the names out for a tenant viewer. It goes by what the names are, not by their shape:
every word that is another tenant's job id, and the name of another tenant where a text says "tenant <name>" (the
form every reason the scheduler writes uses). Text a worker wrote (an error it printed) goes through the same
rules, and only a word that is another tenant's job id or "tenant <another tenant's name>" is changed in it.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Collection

_WORD = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")
"""A job id or tenant name as spec.NAME_PATTERN allows them (an id is a name and a suffix), cut at the
punctuation that may follow it in a sentence."""
_TENANT = re.compile(r"\btenant (" + _WORD.pattern + r")")

OTHER_JOB = "a job of another tenant"
OTHER_TENANT = "another tenant"


def tenants_of(state: Any) -> frozenset[str]:
    """The tenants a scheduler state knows: those with jobs, and those with a quota."""
    return frozenset(j.tenant for j in state.jobs.values()) | frozenset(state.inv.tenants)


def redact(text: str, tenant_of: Callable[[str], str | None], viewer: str, tenants: Collection[str]) -> str:
    """``text`` as ``viewer`` may read it; ``tenant_of(job_id)`` is the job's tenant, None if no such job;
    ``tenants`` the known tenants (a word after "tenant" that is none of them is left alone: "tenant config")."""
    text = _TENANT.sub(lambda m: OTHER_TENANT if m.group(1) != viewer and m.group(1) in tenants else m.group(0),
                       text)
    return _WORD.sub(lambda m: m.group(0) if (owner := tenant_of(m.group(0))) is None or owner == viewer
                     else OTHER_JOB, text)


def redact_value(value: Any, tenant_of: Callable[[str], str | None], viewer: str, tenants: Collection[str]) -> Any:
    """Every string in a JSON-like value (an event's fields: ``for_job``, ``reason`` ...), redacted."""
    if isinstance(value, str):
        return redact(value, tenant_of, viewer, tenants)
    if isinstance(value, dict):
        return {k: redact_value(v, tenant_of, viewer, tenants) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, tenant_of, viewer, tenants) for v in value]
    return value
