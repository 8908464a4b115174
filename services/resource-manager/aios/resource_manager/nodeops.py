"""An operator's commands on a node, appended to the node's history: one path for the CLI and the HTTP API.

Each checks the node's own history (read from the log, not a service's fold) and appends against its version, so
an agent registering the node meanwhile is not overruled by a decision made before it.
"""

from __future__ import annotations

from typing import Any

from aios.common.errors import AiosError, ConcurrencyConflict, InvalidAggregate, NotFound
from aios.common.events import NodeCordoned, NodeForgotten
from aios.common.store import AggregateHistory, validate_aggregate
from aios.resource_manager.inventory import Inventory, decide_forget, evolve

MAX_REASON = 500


async def _history(store: Any, node: str) -> AggregateHistory:
    try:  # node ids are host names: dots are subject tokens of the aggregate, spaces and wildcards are not
        history: AggregateHistory = await store.read(validate_aggregate(f"node.{node}"))
    except InvalidAggregate:
        raise NotFound(f"no node {node!r}") from None
    if not history.version:
        raise NotFound(f"no node {node!r}")
    return history


async def cordon(store: Any, node: str, on: bool, drain: bool, reason: str, by: str) -> None:
    """Cordon (no new jobs), drain (also move its preemptible jobs elsewhere) or open a node again."""
    if len(reason) > MAX_REASON:
        raise AiosError(f"reason: at most {MAX_REASON} characters")
    await _history(store, node)
    await store.append(f"node.{node}", NodeCordoned(aggregate_id=node, cordoned=on, drain=drain, reason=reason, by=by))


async def forget(store: Any, node: str, by: str) -> None:
    """Remove a lost (decommissioned) node from the inventory; an online one is refused (``decide_forget``)."""
    history = await _history(store, node)
    inv = Inventory()
    for ev in history.events:
        evolve(inv, ev)
    why = decide_forget(inv, node)
    if why:
        raise (NotFound if why.startswith("no node") else AiosError)(why)
    try:
        await store.append(f"node.{node}", NodeForgotten(aggregate_id=node, by=by), expected_version=history.version)
    except ConcurrencyConflict:
        raise AiosError(f"{node} changed meanwhile (its agent registered again?): nothing forgotten") from None
