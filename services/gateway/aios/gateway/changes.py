"""The recent changes the gateway has folded, so that an event stream that reconnects with ``Last-Event-ID`` gets
what it missed instead of silently showing a stale page (a Kubernetes watch resumes from a resourceVersion the
same way, and answers 410 Gone when it is too old). Pure."""

from __future__ import annotations

from collections import deque
from typing import Any

RECENT_CHANGES = 10_000


class RecentChanges:
    """Change notifications with their event-log sequence, the last ``size`` of them. ``floor``: every change after
    this sequence is held (the sequence the gateway had folded when it started following, then the last one
    evicted). Their ids are ``<log>-<sequence>``, ``log`` the event log's incarnation: a sequence of a log since
    created again (a wiped data directory) names another change."""

    def __init__(self, floor: int, log: str = "", size: int = RECENT_CHANGES) -> None:
        self.floor = floor
        self.last = floor
        self.log = log
        self._held: deque[tuple[int, dict[str, Any]]] = deque(maxlen=size)

    def event_id(self, seq: int) -> str:
        return f"{self.log}-{seq}"

    def add(self, seq: int, data: dict[str, Any]) -> None:
        if len(self._held) == self._held.maxlen:
            self.floor = self._held[0][0]
        self._held.append((seq, data))
        self.last = max(self.last, seq)

    def since(self, last_event_id: str) -> list[dict[str, Any]] | None:
        """The changes after the one a client saw last, oldest first; None when they cannot all be given (an id
        that is not one of ours, older than what is held, or from a log that has since been replaced): the client
        must fetch everything again."""
        log, _, seq = last_event_id.strip().rpartition("-")
        try:
            seen = int(seq)
        except ValueError:
            return None
        if log != self.log:
            return None
        if not self.floor <= seen <= self.last:
            return None
        return [data for seq, data in self._held if seq > seen]
