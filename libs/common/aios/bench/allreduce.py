"""``aios bench allreduce``: bandwidth of the all-reduce backends between local processes, nccl-tests style.

For each backend and size, ``ranks`` processes all-reduce a float32 array ``iters`` times after a warm-up; the time
of one operation is the median over the iterations, as rank 0 measures it between barriers. As in nccl-tests:
``algbw = bytes / time`` and ``busbw = algbw * 2 (n - 1) / n`` (what each rank's link carries in a ring), in GB/s
(10^9 bytes). The ``nats`` backend runs through an embedded nats-server started for the run; ``gloo`` runs when torch
is installed. To show where the time goes, the run also measures, for the largest size, one process sending the
bytes to another through the same server (the transport alone) and a numpy add of the array (the arithmetic).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import statistics
import tempfile
import time
from typing import Any

import numpy as np

MIB = 1 << 20


def _bandwidth(nbytes: int, seconds: float, ranks: int) -> dict[str, float]:
    algbw = nbytes / seconds / 1e9
    return {"time_ms": round(seconds * 1000, 3), "algbw_gbs": round(algbw, 3),
            "busbw_gbs": round(algbw * 2 * (ranks - 1) / ranks, 3)}


async def _make(backend: str, rank: int, ranks: int, where: dict[str, Any]) -> tuple[Any, Any]:
    if backend == "nats":
        from aios.common.wire import RawNatsConnection
        from aios.trainer.collective.ring import NatsRing

        nc = await RawNatsConnection.connect([where["url"]])
        return nc, await NatsRing.join(nc, "bench", rank, ranks, timeout_s=60)
    from aios.trainer.collective.torchdist import TorchCollective

    return None, await TorchCollective.create(rank, ranks, "127.0.0.1", where["port"], timeout_s=60)


def _rank_main(backend: str, rank: int, ranks: int, sizes_mb: list[int], iters: int, where: dict[str, Any],
               out: Any) -> None:
    async def run() -> None:
        nc, group = await _make(backend, rank, ranks, where)
        try:
            result: dict[str, float] = {}
            for mb in sizes_mb:
                array = np.full(mb * MIB // 4, float(rank + 1), dtype=np.float32)
                for _ in range(2):  # warm-up: connections, buffers, first-touch of pages
                    await group.allreduce(array)
                times = []
                for _ in range(iters):
                    await group.barrier()
                    t0 = time.perf_counter()
                    reduced = await group.allreduce(array)
                    times.append(time.perf_counter() - t0)
                expected = ranks * (ranks + 1) / 2
                if not np.allclose(reduced[:: max(1, reduced.size // 1000)], expected):
                    raise RuntimeError(f"{backend}: wrong sum at {mb} MiB")
                result[str(mb)] = statistics.median(times)
            if rank == 0:
                out.put((backend, result))
        finally:
            await group.close()
            if nc is not None:
                nc.close()
    asyncio.run(run())


def _run_backend(backend: str, ranks: int, sizes_mb: list[int], iters: int, where: dict[str, Any]) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(backend, r, ranks, sizes_mb, iters, where, out), daemon=True)
             for r in range(ranks)]
    for p in procs:
        p.start()
    try:
        while True:  # a rank that crashed must end the wait, not a 10-minute timeout
            try:
                name, result = out.get(timeout=1)
                break
            except queue.Empty:
                if any(p.exitcode for p in procs):
                    raise RuntimeError(f"{backend}: a rank exited with "
                                       f"{[p.exitcode for p in procs if p.exitcode]}") from None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise RuntimeError(f"{backend}: a rank exited with {bad}")
    return result


def _transport(url: str, nbytes: int, iters: int) -> float:
    """Seconds to move ``nbytes`` from one connection to another through the server, in 1 MiB messages."""
    async def run() -> float:
        import nats

        tx, rx = await nats.connect(url), await nats.connect(url)
        got = 0
        done = asyncio.Event()
        chunk = b"\0" * (tx.max_payload - 1024)
        count = -(-nbytes // len(chunk))

        async def on_msg(msg: Any) -> None:
            nonlocal got
            got += 1
            if got == count:
                done.set()
        await rx.subscribe("bench.transport", cb=on_msg, pending_bytes_limit=1 << 30)
        await rx.flush()
        times = []
        for _ in range(iters):
            got = 0
            done.clear()
            t0 = time.perf_counter()
            for _ in range(count):
                await tx.publish("bench.transport", chunk)
            await done.wait()
            times.append(time.perf_counter() - t0)
        await tx.close()
        await rx.close()
        return statistics.median(times)
    return asyncio.run(run())


def _numpy_add(nbytes: int) -> float:
    a = np.ones(nbytes // 4, dtype=np.float32)
    b = np.ones_like(a)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a += b
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_available() -> bool:
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        return False
    return True


def main(ranks: int = 2, sizes_mb: list[int] | None = None, iters: int = 5) -> dict[str, Any]:
    from aios.common.natsserver import NatsServer, free_port

    sizes_mb = sizes_mb or [1, 16, 64]
    report: dict[str, Any] = {"ranks": ranks, "sizes_mib": sizes_mb, "iters": iters, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="aios-bench-allreduce-") as tmp, NatsServer(tmp) as server:
        nats_times = _run_backend("nats", ranks, sizes_mb, iters, {"url": server.url})
        report["backends"]["nats"] = {mb: _bandwidth(int(mb) * MIB, t, ranks) for mb, t in nats_times.items()}
        largest = max(sizes_mb) * MIB
        report["where_time_goes"] = {
            "bytes": largest,
            "nats_transport_one_way": _bandwidth(largest, _transport(server.url, largest, iters), 2),
            "numpy_add": _bandwidth(largest, _numpy_add(largest), 2),
            "ring_bytes_sent_per_rank": int(largest * 2 * (ranks - 1) / ranks),
        }
    if torch_available():
        gloo_times = _run_backend("torch", ranks, sizes_mb, iters, {"port": free_port()})
        report["backends"]["gloo"] = {mb: _bandwidth(int(mb) * MIB, t, ranks) for mb, t in gloo_times.items()}
        if "16" in nats_times and "16" in gloo_times:
            report["ratio_16mb_nats_over_gloo"] = round(
                report["backends"]["nats"]["16"]["busbw_gbs"] / report["backends"]["gloo"]["16"]["busbw_gbs"], 3)
    else:
        report["gloo"] = "torch is not installed: pip install 'aios[torch]'"
    return report
