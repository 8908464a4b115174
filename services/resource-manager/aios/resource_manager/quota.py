"""Tenant quotas with cohorts and borrowing, in the spirit of Kueue's ClusterQueue and cohort. Pure.

Per device kind, a tenant is entitled to its ``nominal`` quota (if borrowers hold part of it, it gets it back by
reclaiming, never by exceeding the cohort). Beyond it, it may borrow what other members of its
cohort leave unused and are willing to lend (``lending_limit``, default: all unused), up to its own
``borrowing_limit`` (default: no limit). Borrowed devices are reclaimable: when a tenant asks for devices within its
nominal quota that borrowers are using, :func:`reclaim_plan` says how many to take back from whom (the scheduler
preempts the borrowers' most recent jobs).
"""

from __future__ import annotations

from typing import Mapping

import msgspec

Usage = Mapping[str, Mapping[str, int]]
"""tenant -> device kind -> devices in use"""


class Quota(msgspec.Struct, frozen=True):
    tenant: str
    cohort: str = ""
    nominal: dict[str, int] = {}
    borrowing_limit: dict[str, int] | None = None
    lending_limit: dict[str, int] | None = None


class Admission(msgspec.Struct, frozen=True):
    admitted: bool
    borrowed: dict[str, int] = {}
    reason: str = ""


def _used(usage: Usage, tenant: str, kind: str) -> int:
    return usage.get(tenant, {}).get(kind, 0)


def _members(quotas: Mapping[str, Quota], tenant: str) -> list[Quota]:
    q = quotas[tenant]
    if not q.cohort:
        return [q]
    return [m for m in quotas.values() if m.cohort == q.cohort]


def lendable(q: Quota, used: int, kind: str) -> int:
    unused = max(0, q.nominal.get(kind, 0) - used)
    if q.lending_limit is not None:
        unused = min(unused, q.lending_limit.get(kind, 0))
    return unused


def borrowed(q: Quota, used: int, kind: str) -> int:
    return max(0, used - q.nominal.get(kind, 0))


def fits(quotas: Mapping[str, Quota], usage: Usage, tenant: str, kind: str, extra: int) -> tuple[bool, str]:
    """Would ``tenant`` using ``extra`` more ``kind`` devices keep every quota rule?"""
    q = quotas[tenant]
    after = _used(usage, tenant, kind) + extra
    if after <= q.nominal.get(kind, 0) and not q.cohort:
        return True, ""
    if q.borrowing_limit is not None and borrowed(q, after, kind) > q.borrowing_limit.get(kind, 0):
        return False, (f"tenant {tenant}: {kind} would be {after} against nominal {q.nominal.get(kind, 0)} + "
                       f"borrowing limit {q.borrowing_limit.get(kind, 0)}")
    members = _members(quotas, tenant)
    demand = pool = 0
    for m in members:
        used = after if m.tenant == tenant else _used(usage, m.tenant, kind)
        demand += borrowed(m, used, kind)
        pool += lendable(m, used, kind)
    if demand > pool:
        if after <= q.nominal.get(kind, 0):
            return False, (f"tenant {tenant}: {kind} {after} is within its nominal {q.nominal.get(kind, 0)}, but "
                           f"cohort {q.cohort} has lent it out: {demand - pool} must be reclaimed from borrowers")
        if not q.cohort:
            return False, (f"tenant {tenant}: {kind} would be {after} against nominal {q.nominal.get(kind, 0)}, "
                           "and it has no cohort to borrow from")
        return False, (f"tenant {tenant}: {kind} would be {after} against nominal {q.nominal.get(kind, 0)}; "
                       f"cohort {q.cohort} lends {pool}, borrowers would need {demand}")
    return True, ""


def ceiling(quotas: Mapping[str, Quota], tenant: str, kind: str) -> int:
    """The most ``kind`` devices ``tenant`` could ever hold: its nominal quota and all that its cohort could lend it
    with nothing else running, within its borrowing limit. A job asking for more can never be admitted (Kueue calls
    it inadmissible)."""
    q = quotas[tenant]
    lend = sum(lendable(m, 0, kind) for m in _members(quotas, tenant) if m.tenant != tenant)
    if q.borrowing_limit is not None:
        lend = min(lend, q.borrowing_limit.get(kind, 0))
    return q.nominal.get(kind, 0) + lend


def admit(quotas: Mapping[str, Quota], usage: Usage, tenant: str, request: Mapping[str, int]) -> Admission:
    """Decide whether ``request`` (kind -> devices) may start for ``tenant`` now."""
    if tenant not in quotas:
        return Admission(False, reason=f"tenant {tenant!r} has no quota")
    took: dict[str, int] = {}
    for kind, n in request.items():
        ok, why = fits(quotas, usage, tenant, kind, n)
        if not ok:
            return Admission(False, reason=why)
        b = borrowed(quotas[tenant], _used(usage, tenant, kind) + n, kind) - borrowed(
            quotas[tenant], _used(usage, tenant, kind), kind)
        if b:
            took[kind] = b
    return Admission(True, borrowed=took)


def reclaim_plan(quotas: Mapping[str, Quota], usage: Usage, tenant: str, kind: str, extra: int) -> dict[str, int]:
    """Devices to take back from borrowers so that ``tenant`` can use ``extra`` more within its nominal quota.

    Empty when nothing needs reclaiming or when the request is beyond the tenant's nominal quota (borrowing never
    justifies preempting someone else)."""
    q = quotas.get(tenant)
    if q is None or _used(usage, tenant, kind) + extra > q.nominal.get(kind, 0):
        return {}
    if fits(quotas, usage, tenant, kind, extra)[0]:
        return {}
    current = {t: dict(u) for t, u in usage.items()}
    current.setdefault(tenant, {})[kind] = _used(usage, tenant, kind) + extra
    plan: dict[str, int] = {}
    borrowers = sorted((m for m in _members(quotas, tenant) if m.tenant != tenant),
                       key=lambda m: -borrowed(m, _used(current, m.tenant, kind), kind))
    for m in borrowers:
        while borrowed(m, _used(current, m.tenant, kind), kind) > 0 and not _cohort_ok(quotas, current, tenant, kind):
            current[m.tenant][kind] -= 1
            plan[m.tenant] = plan.get(m.tenant, 0) + 1
    return plan if _cohort_ok(quotas, current, tenant, kind) else {}


def _cohort_ok(quotas: Mapping[str, Quota], usage: Usage, tenant: str, kind: str) -> bool:
    demand = pool = 0
    for m in _members(quotas, tenant):
        used = _used(usage, m.tenant, kind)
        demand += borrowed(m, used, kind)
        pool += lendable(m, used, kind)
    return demand <= pool
