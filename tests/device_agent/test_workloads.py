"""Worker processes: pinned to their devices by UUID, output captured line by line, stopped with a grace period."""

from __future__ import annotations

import asyncio
import sys

from aios.device_agent.workloads import Workload, WorkloadRunner


async def test_worker_gets_its_devices_and_reports_output_and_exit() -> None:
    lines: list[tuple[str, bytes]] = []
    exits: list[tuple[int | None, int | None]] = []
    done = asyncio.Event()

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        exits.append((code, sig))
        done.set()

    runner = WorkloadRunner(lambda w, stream, line: lines.append((stream, line)), on_exit)
    script = ("import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES']); print(os.environ['CUDA_DEVICE_ORDER']);"
              "print(os.environ['RANK']); print('oops', file=sys.stderr); sys.exit(3)")
    await runner.start("j1", "w0", [sys.executable, "-c", script], {"RANK": "0"}, ["GPU-a", "GPU-b"])
    await asyncio.wait_for(done.wait(), 20)
    assert ("stdout", b"GPU-a,GPU-b\n") in lines and ("stdout", b"PCI_BUS_ID\n") in lines
    assert ("stdout", b"0\n") in lines and ("stderr", b"oops\n") in lines
    assert exits == [(3, None)] and runner.running == {}


async def test_stop_sends_sigterm_then_sigkill() -> None:
    exits: list[tuple[int | None, int | None]] = []

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        exits.append((code, sig))

    runner = WorkloadRunner(lambda *a: None, on_exit)
    polite = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); print('up', flush=True); time.sleep(60)"
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    await runner.start("j2", "polite", [sys.executable, "-c", polite], {}, [])
    await runner.start("j2", "stubborn", [sys.executable, "-c", stubborn], {}, [])
    await asyncio.sleep(0.8)
    started = asyncio.get_running_loop().time()
    assert await runner.stop("j2", grace_s=1.0) == 2
    assert asyncio.get_running_loop().time() - started < 5
    await asyncio.sleep(0.2)
    assert sorted(exits, key=str) == sorted([(0, None), (None, 9)], key=str)
