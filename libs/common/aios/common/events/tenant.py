"""Tenant events (aggregate ``tenant.<name>``): quotas in the style of Kueue's ClusterQueue and cohort."""

from __future__ import annotations

from typing import ClassVar

from aios.common.events.base import Event


class TenantEvent(Event, frozen=True, kw_only=True):
    AGGREGATE: ClassVar[str] = "tenant"
    ABSTRACT: ClassVar[bool] = True


class TenantQuotaSet(TenantEvent, frozen=True, kw_only=True):
    """Nominal devices per device kind, the cohort the tenant shares unused quota with, and how much it may borrow
    beyond its nominal quota (None: up to whatever the cohort has unused) and lend to others (None: all unused)."""

    cohort: str = ""
    nominal: dict[str, int] = {}
    borrowing_limit: dict[str, int] | None = None
    lending_limit: dict[str, int] | None = None


class TenantQuotaRemoved(TenantEvent, frozen=True, kw_only=True):
    """The tenant no longer has a quota: it is bound by none and guaranteed none (a tenant without a quota, where
    others have quotas, runs on what they leave idle)."""
