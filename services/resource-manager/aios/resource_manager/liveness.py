"""Which nodes are lost: a pure rule over the inventory and the last heartbeat seen from each node.

Heartbeat times are the resource manager's own receive times, so agents' clocks do not matter. A node never heard
from since the resource manager started gets the timeout counted from that start.
"""

from __future__ import annotations

from aios.resource_manager.inventory import Inventory, NodeState


def lost_nodes(inv: Inventory, last_seen: dict[str, float], now: float, timeout_s: float,
               watching_since: float) -> list[tuple[str, float]]:
    """(node id, last seen) of every online node silent for more than ``timeout_s``."""
    out = []
    for node_id, node in sorted(inv.nodes.items()):
        if not node.online:
            continue
        seen = last_seen.get(node_id, watching_since)
        if now - seen > timeout_s:
            out.append((node_id, seen))
    return out


def silence_reason(node: NodeState, silent_s: float, timeout_s: float) -> tuple[str, bool]:
    """Why a silent node goes, and whether its agent stopped on purpose: one that shut down drained its node first
    (a planned stop, not a failure to alert on)."""
    if node.shutting_down:
        return "its agent stopped (it drained the node first)", True
    return f"no heartbeat for {silent_s:.1f}s (timeout {timeout_s:g}s)", False
