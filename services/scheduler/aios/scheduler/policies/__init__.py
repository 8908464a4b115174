"""Scheduling policies, one module each, all with the interface of :class:`base.Policy`. A dict of factories."""

from __future__ import annotations

from typing import Callable

from aios.scheduler.policies.backfill import EasyBackfill
from aios.scheduler.policies.base import Policy
from aios.scheduler.policies.fairshare import FairShare
from aios.scheduler.policies.fifo import Fifo, FifoAnyKind
from aios.scheduler.policies.gavel import MaxMinFairness, MaxMinFairnessAgnostic
from aios.scheduler.policies.gittins import GittinsTimeShare
from aios.scheduler.policies.hetero import HeteroAware
from aios.scheduler.policies.hetero_las import HeteroLeastAttainedService
from aios.scheduler.policies.las import LeastAttainedService
from aios.scheduler.policies.makespan import ShortestMakespan
from aios.scheduler.policies.priority import StrictPriority
from aios.scheduler.policies.timeshare import TimeSharedHeteroLAS

POLICIES: dict[str, Callable[[], Policy]] = {
    "fifo": Fifo,
    "fifo-anykind": FifoAnyKind,
    "priority": StrictPriority,
    "fairshare": FairShare,
    "las": LeastAttainedService,
    "hetero": HeteroAware,
    "backfill": EasyBackfill,
    "hetero-las": HeteroLeastAttainedService,
    "hetero-ts": TimeSharedHeteroLAS,
    "hetero-gittins": GittinsTimeShare,
    "makespan": ShortestMakespan,
    "gavel": MaxMinFairness,
    "maxmin": MaxMinFairnessAgnostic,
}


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        from aios.common.errors import ConfigError

        raise ConfigError(f"unknown policy {name!r} (known: {', '.join(sorted(POLICIES))})") from None
