"""Settings from ``AIOS_*`` environment variables, validated once, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from aios.common.errors import ConfigError


AGENT_DRAIN_S = 5.0
AGENT_STOP_GRACE_S = 20.0
"""The device agent's defaults (its ``drain_s`` and ``AIOS_AGENT_STOP_GRACE_S``): a stopped agent drains its node
first, then gives its workers up to the grace; killed before, its workers lose their checkpoint."""


def agent_shutdown_s(env: dict[str, str]) -> float:
    """How long a supervisor should let an agent take to stop: its drain, its workers' grace, and a margin for its
    own exit. ``aios up`` waited 20 s, less than the 25 s an agent may take, and SIGKILL took the checkpoints."""
    try:
        grace = float(env.get("AIOS_AGENT_STOP_GRACE_S", "") or AGENT_STOP_GRACE_S)
    except ValueError:  # the agent refuses to start with it: nothing to wait for
        grace = AGENT_STOP_GRACE_S
    return AGENT_DRAIN_S + max(grace, 0.0) + 5.0


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str | None = None
    """``AIOS_NATS_URL``: comma-separated server URLs. Unset: start an embedded nats-server."""
    data_dir: Path = Path(".aios")
    """``AIOS_DATA_DIR``: where the embedded nats-server keeps JetStream data and where logs go."""
    nats_port: int = 4222
    """``AIOS_NATS_PORT``: client port of the embedded server (0 picks a free one)."""
    http_port: int = 0
    """``AIOS_HTTP_PORT``: port of a service's /healthz and /metrics (0 picks a free one)."""
    http_host: str = "127.0.0.1"
    """``AIOS_HTTP_HOST``: address the service HTTP endpoint binds to."""
    log_level: str = "INFO"
    """``AIOS_LOG_LEVEL``: DEBUG, INFO, WARNING or ERROR."""
    stream_replicas: int = 1
    """``AIOS_STREAM_REPLICAS``: JetStream replicas of the event stream (3 on a 3-node cluster)."""

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in (self.nats_url or "").split(",") if u.strip()]


def seconds_setting(env: Mapping[str, str], name: str, default: float | None, *, off: bool = False,
                    unset: str = "") -> float | None:
    """A setting of a positive number of seconds: ``default`` when unset, None for ``off`` where allowed, a
    :class:`ConfigError` naming it otherwise (``unset``: what leaving it unset means, said in the error)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if off and raw.lower() == "off":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name}={raw!r}: must be a positive number of seconds" + (" or 'off'" if off else "")
                          + unset)
    return value


def _int(env: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: must be an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value}: must be between {low} and {high}")
    return value


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read settings from ``env`` (default: the process environment)."""
    env = dict(os.environ if env is None else env)
    level = env.get("AIOS_LOG_LEVEL", "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"AIOS_LOG_LEVEL={level!r}: must be one of DEBUG, INFO, WARNING, ERROR")
    url = env.get("AIOS_NATS_URL") or None
    if url is not None:
        for u in url.split(","):
            if u.strip() and "://" not in u:
                raise ConfigError(f"AIOS_NATS_URL: {u.strip()!r} is not a URL (expected nats://host:port)")
    return Settings(
        nats_url=url,
        data_dir=Path(env.get("AIOS_DATA_DIR") or ".aios"),
        nats_port=_int(env, "AIOS_NATS_PORT", 4222, 0, 65535),
        http_port=_int(env, "AIOS_HTTP_PORT", 0, 0, 65535),
        http_host=env.get("AIOS_HTTP_HOST") or "127.0.0.1",
        log_level=level,
        stream_replicas=_int(env, "AIOS_STREAM_REPLICAS", 1, 1, 5),
    )
