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


class JobRequeued(JobEvent, frozen=True, kw_only=True):
    """The job lost its devices (node lost, preempted) and goes back to the queue; it resumes from a checkpoint."""

    reason: str
    node_id: str = ""


class WorkerStarted(JobEvent, frozen=True, kw_only=True):
    """The device agent of ``node_id`` started a worker process of the job on ``device_uuids``."""

    node_id: str
    worker: str
    pid: int
    device_uuids: list[str] = []


class WorkerExited(JobEvent, frozen=True, kw_only=True):
    node_id: str
    worker: str
    exit_code: int | None
    """None when killed by a signal (see ``signal``)."""
    signal: int | None = None
    reason: str = ""
