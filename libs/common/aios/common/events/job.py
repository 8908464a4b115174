"""Job life-cycle events (DESIGN.md §4). The scheduler issue adds admission, placement and run events beside these."""

from __future__ import annotations

from typing import Any, ClassVar

from aios.common.events.base import Event


class JobEvent(Event, frozen=True, kw_only=True):
    AGGREGATE: ClassVar[str] = "job"
    ABSTRACT: ClassVar[bool] = True


class JobSubmitted(JobEvent, frozen=True, kw_only=True):
    """A user asked for a job to run. ``spec`` is the validated job spec as submitted."""

    tenant: str
    name: str = ""
    spec: dict[str, Any] = {}


class JobCancelRequested(JobEvent, frozen=True, kw_only=True):
    reason: str = ""
    requested_by: str = ""


class JobCancelled(JobEvent, frozen=True, kw_only=True):
    reason: str = ""
