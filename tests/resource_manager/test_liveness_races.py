"""Declaring a node lost against a real store, when the node registers again while the check is under way."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from aios.common.config import load_settings
from aios.common.events import NodeLost, NodeRegistered
from aios.common.runner import ServiceContext
from aios.common.store import Commit, EventStore
from aios.common.wire import new_token
from aios.resource_manager.service import ResourceManagerService
from aios.scheduler.local import node_registration


class RegistersDuringTheCheck(ResourceManagerService):
    """The heartbeat bucket read is where the check awaits: the node's new agent registers meanwhile (its first
    heartbeat not yet in the bucket), and the fold takes the registration in, as the follower would."""

    node = ""
    registered = False

    async def _revision(self, node_id: str) -> int | None:
        if node_id == self.node and self.suspects.get(node_id) and not self.registered:
            self.registered = True
            aggregate, events = node_registration(node_id, "h100", 1)
            result = await self.ctx.store.append(aggregate, events)
            self.inventory.apply(Commit(result.seq, aggregate, events))
        return 7


async def test_a_node_that_registers_again_during_the_check_is_not_declared_lost(store: EventStore) -> None:
    node = f"n{new_token()[:6]}"
    aggregate, events = node_registration(node, "h100", 1)
    await store.append(aggregate, events)
    manager = RegistersDuringTheCheck(node_timeout_s=10)
    manager.node = node
    manager.ctx = ServiceContext("resource-manager", load_settings({"AIOS_NATS_URL": store.servers[0]}), store.nc,
                                 store, CollectorRegistry())
    manager.lost_counter = Counter("lost", "lost", registry=None)
    await manager.inventory.rebuild(store)
    manager.last_seen[node] = 0.0  # the old agent went silent long ago
    await manager.check_liveness(now=100.0, started=0.0)  # first found silent
    await manager.check_liveness(now=104.0, started=0.0)  # confirmed silent, and its agent registers meanwhile
    history: Any = await store.read(f"node.{node}")
    assert manager.registered
    assert [type(e) for e in history.events] == [NodeRegistered, NodeRegistered], history.events
    assert NodeLost not in [type(e) for e in history.events]


@pytest.mark.parametrize("raw", ["-1", "0", "nan", "inf", "abc", "1e-9"])
def test_a_node_timeout_that_cannot_work_is_refused_with_its_name(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a walkthrough: AIOS_NODE_TIMEOUT=-1 was taken, and every node was declared lost twice a second (their
    jobs requeued each time); nan would have declared none ever."""
    from aios.common.errors import ConfigError
    from aios.resource_manager.service import ResourceManagerService

    monkeypatch.setenv("AIOS_NODE_TIMEOUT", raw)
    with pytest.raises(ConfigError, match=r"^AIOS_NODE_TIMEOUT=.*: seconds from 1 to 86,400"):
        ResourceManagerService()
    monkeypatch.setenv("AIOS_NODE_TIMEOUT", "4")
    assert ResourceManagerService().node_timeout_s == 4.0
