"""Carry out rounds without NATS: fold the commits of a plan straight into the state (tests, the simulator).

The same functions produce the commits the live service appends; here every expected version holds because there
is one writer, so the result is what the service would reach when no other writer interferes.
"""

from __future__ import annotations

import msgspec

from aios.common.events import DeviceInfo, Event, Link, NodeRegistered
from aios.common.store import Commit as StoredCommit
from aios.scheduler.decisions import Commit, claim_commits, failure_commits, housekeeping_commits, lease_commits
from aios.scheduler.policies.base import Policy
from aios.scheduler.rounds import RoundPlan, plan_round
from aios.scheduler.state import SchedulerState, fold_commit


def apply(state: SchedulerState, commits: list[Commit] | list[tuple[str, list[Event]]], now: float) -> None:
    for c in commits:
        aggregate, events = (c.aggregate, c.events) if isinstance(c, Commit) else c
        stamped = [msgspec.structs.replace(e, ts=now) for e in events]
        fold_commit(state, StoredCommit(state.seq + 1, aggregate, stamped))


def step(state: SchedulerState, policy: Policy, now: float, **options: object) -> RoundPlan:
    plan = plan_round(state, policy, now, **options)  # type: ignore[arg-type]
    apply(state, housekeeping_commits(state, plan), now)
    claims = claim_commits(state, plan, policy.name)
    claimed = {c.aggregate.split(".", 1)[1] for c in claims}
    leases = lease_commits(state, plan, claimed)
    apply(state, claims, now)
    apply(state, leases, now)
    failures, _ = failure_commits(plan, claimed, {c.aggregate.split(".", 1)[1] for c in leases}, policy.sequential)
    apply(state, failures, now)
    return plan


def node_registration(name: str, kind: str, count: int, *, cpu_cores: int = 64, memory_bytes: int = 512 << 30,
                      device_memory_bytes: int = 80 << 30) -> tuple[str, list[Event]]:
    """A node of ``count`` devices of one kind, all NVLink-connected, as its agent would register it (simulations,
    benchmarks, tests)."""
    devices = [DeviceInfo(uuid=f"{name}-g{i}", index=i, kind=kind, model=kind, memory_bytes=device_memory_bytes)
               for i in range(count)]
    links = [Link(devices[a].uuid, devices[b].uuid, "nvlink") for a in range(count) for b in range(a + 1, count)]
    return f"node.{name}", [NodeRegistered(aggregate_id=name, hostname=name, agent_id="sim", cpu_cores=cpu_cores,
                                           memory_bytes=memory_bytes, devices=devices, links=links)]
