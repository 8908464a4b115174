"""The registry of AIOS services that ``aios up`` starts and ``aios service <name>`` runs: name -> "module:attr",
where attr is a :class:`aios.common.runner.Service` subclass or factory. Later issues add their services here.

``AIOS_EXTRA_SERVICES`` (``name=module:attr,...``) adds services from outside the package (plug-ins, tests).
"""

from __future__ import annotations

import importlib
import os

from aios.common.errors import ConfigError
from aios.common.runner import Service

SERVICES: dict[str, str] = {
    "resource-manager": "aios.resource_manager.service:from_env",
    "scheduler": "aios.scheduler.service:from_env",
    "trainer": "aios.trainer.launcher:from_env",
    "model-registry": "aios.model_registry.service:from_env",
    "gateway": "aios.gateway.service:from_env",
}
"""Cluster services: one of each per cluster. Node services (the device agent) run once per node: `aios agent`."""


def registry(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    found = dict(SERVICES)
    for item in filter(None, (p.strip() for p in env.get("AIOS_EXTRA_SERVICES", "").split(","))):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target or not name.strip():
            raise ConfigError(f"AIOS_EXTRA_SERVICES: {item!r} is not 'name=module:attr'")
        found[name.strip()] = target.strip()
    return found


def load_service(name: str, env: dict[str, str] | None = None) -> Service:
    services = registry(env)
    if name not in services:
        known = ", ".join(sorted(services)) or "none yet"
        raise ConfigError(f"unknown service {name!r} (known: {known})")
    module_name, _, attr = services[name].partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"service {name!r}: cannot load {services[name]!r}: {exc}") from None
    service = factory()
    if not isinstance(service, Service):
        raise ConfigError(f"service {name!r}: {services[name]!r} did not produce a Service")
    return service
