"""Request/reply messages of the device agent (``aios.agent.<node>.run`` and ``.stop``), validated with msgspec."""

from __future__ import annotations

import msgspec


class RunRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    job_id: str
    worker: str
    command: list[str]
    device_uuids: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None


class StopRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    job_id: str
    grace_s: float = 10.0
    attempt: int = 0
    """Only the workers of this placement attempt (0: all of the job's)."""


class Reply(msgspec.Struct, frozen=True, omit_defaults=True):
    ok: bool
    error: str = ""
    pid: int | None = None
    stopped: int | None = None
    transient: bool = False
    """A refusal that may not hold later (devices still busy, unhealthy, or not leased yet): the job is requeued,
    not failed (a start refused while a previous job's workers were still stopping failed the job for good)."""


def run_subject(node_id: str) -> str:
    return f"aios.agent.{node_id}.run"


def stop_subject(node_id: str) -> str:
    return f"aios.agent.{node_id}.stop"


def telemetry_subject(node_id: str) -> str:
    return f"aios.telemetry.{node_id}"


def log_subject(job_id: str, worker: str, stream: str) -> str:
    return f"aios.logs.{job_id}.{worker}.{stream}"


HEARTBEAT_BUCKET = "AIOS_HEARTBEATS"


class Heartbeat(msgspec.Struct, frozen=True):
    node_id: str
    agent_id: str
    ts: float
    devices: int
    unhealthy: int = 0
    workers: int = 0
