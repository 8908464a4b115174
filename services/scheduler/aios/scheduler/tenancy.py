"""Removing a tenant's quota from the log, and what a quota set names that no node has: one path for the HTTP API and
the CLI.

Setting a quota needs no reading (the last one set wins); removing one reads the tenant's last event first, so that
a mistyped tenant is told it has no quota instead of being "removed", and appends only if no quota was set
meanwhile (the store's expected version), so a removal never undoes a quota it did not see.
"""

from __future__ import annotations

from typing import Any

from aios.common.events import TenantQuotaRemoved, TenantQuotaSet
from aios.common.store import AppendResult


async def remove_quota(store: Any, tenant: str) -> AppendResult | None:
    """Append ``TenantQuotaRemoved`` if the tenant has a quota (None if it has none); a quota set between the read
    and the append raises the store's ``ConcurrencyConflict``."""
    aggregate = f"tenant.{tenant}"
    history = await store.read(aggregate, on_bad_event="skip")
    if not history.events or not isinstance(history.events[-1], TenantQuotaSet):
        return None
    return await store.append(aggregate, TenantQuotaRemoved(aggregate_id=tenant), expected_version=history.version)


def absent_kinds_note(event: TenantQuotaSet, nodes: list[dict[str, Any]]) -> str | None:
    """A warning when the quota names device kinds that no node of the resource manager's ``nodes`` answer has: that
    part holds nothing until one joins, and a typo (``tpu`` for ``h100``) looks the same (Kueue's flavors warn so).
    The quota is set all the same: nodes of a kind may join later."""
    named = {*event.nominal, *(event.borrowing_limit or {}), *(event.lending_limit or {})}
    absent = sorted(named - {k for node in nodes for k in node.get("kinds", ())})
    if not absent:
        return None
    return f"no node has {', '.join(absent)} devices now; that part of the quota holds nothing until one joins"
