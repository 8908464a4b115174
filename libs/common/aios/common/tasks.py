"""Stopping a service's background tasks so that a stop always finishes.

``task.cancel()`` asks once, and Python 3.11's ``asyncio.wait_for`` (used by nats-py's request, so by every KV put
and JetStream publish) drops that request when the awaited reply lands in the same loop turn as the cancellation:
the loop goes on as if never asked. A ``while True`` heartbeat or telemetry loop then never ends and the service's
stop hangs. :func:`cancel_and_wait` asks again until each task has ended.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable

log = logging.getLogger("aios.tasks")


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None], *, again_after_s: float = 0.5) -> None:
    """Cancel ``tasks`` (None entries are skipped) and return once every one has ended, cancelling again each
    ``again_after_s`` those that swallowed the request. Their results and errors are discarded: the caller is
    stopping them."""
    stopping = [t for t in tasks if t is not None]
    pending = set(stopping)
    for t in pending:
        t.cancel()
    while pending:
        _done, pending = await asyncio.wait(pending, timeout=again_after_s)
        for t in pending:
            log.debug("task ignored its cancellation; cancelling again", extra={"task": repr(t)})
            t.cancel()
    # retrieve the outcomes so asyncio does not log "exception was never retrieved"
    for t in stopping:
        if not t.cancelled():
            t.exception()
