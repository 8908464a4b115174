"""Stopping background tasks: a loop that loses a cancellation (Python 3.11's wait_for does) still ends."""

from __future__ import annotations

import asyncio
import gc

import pytest

from aios.common.tasks import cancel_and_wait


async def _beats_like_a_heartbeat(beats: list[int]) -> None:
    """A `while True` loop whose first cancellation is lost, the way a KV put's reply arriving in the same loop
    turn as the cancel loses it inside asyncio.wait_for on Python 3.11."""
    lost_one = False
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if lost_one:
                raise
            lost_one = True
        beats.append(1)


async def test_a_loop_that_swallowed_its_cancellation_is_stopped_anyway() -> None:
    beats: list[int] = []
    swallower = asyncio.ensure_future(_beats_like_a_heartbeat(beats))
    plain = asyncio.ensure_future(asyncio.sleep(60))
    failed = asyncio.ensure_future(asyncio.sleep(0, result=None))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancel_and_wait([swallower, None, plain, failed], again_after_s=0.05), 5)
    assert swallower.done() and plain.cancelled() and failed.done()
    count = len(beats)
    await asyncio.sleep(0.05)
    assert len(beats) == count  # it really stopped, not just stopped being awaited


async def test_one_cancel_is_not_enough_for_such_a_loop() -> None:
    """Guards the test above: with a single cancel (what the services did before) the loop keeps running."""
    beats: list[int] = []
    swallower = asyncio.ensure_future(_beats_like_a_heartbeat(beats))
    await asyncio.sleep(0.03)
    swallower.cancel()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(swallower), 0.2)
    assert not swallower.done()
    await cancel_and_wait([swallower])
    assert swallower.cancelled()


async def test_errors_of_stopped_tasks_are_not_reported_as_unretrieved(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    del task
    gc.collect()
    assert "never retrieved" not in caplog.text
