"""A small real service for runner and `aios up` tests: it tails the event log, counts events by type, exposes the
count as a metric, and on shutdown finishes the commit it is handling before it exits."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from aios.common.runner import Service, ServiceContext

log = logging.getLogger("tail-service")


class TailService(Service):
    name = "tail"

    def __init__(self) -> None:
        self.seen = 0

    async def run(self, ctx: ServiceContext) -> None:
        counter = Counter("aios_test_events", "events seen by the tail service", ["type"], registry=ctx.metrics)
        sub = ctx.store.subscribe(1)
        stop = asyncio.ensure_future(ctx.stopping.wait())
        try:
            while True:
                nxt = asyncio.ensure_future(sub.__anext__())
                done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    break
                commit = nxt.result()
                for ev in commit.events:
                    counter.labels(type(ev).__name__).inc()
                    self.seen += 1
                log.info("handled commit", extra={"seq": commit.seq, "aggregate": commit.aggregate})
        finally:
            await sub.close()
            log.info("drained", extra={"seen": self.seen})

    def healthy(self) -> tuple[bool, str]:
        return True, f"{self.seen} events seen"
