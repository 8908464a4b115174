"""``aios bench allreduce``: bandwidth of the all-reduce backends between local processes, nccl-tests style.

For each backend and size, ``ranks`` processes all-reduce a float32 array ``iters`` times after a warm-up; the time
of one operation is the median over the iterations, as rank 0 measures it between barriers. The backends take turns
for ``rounds`` rounds (nats, gloo, nats, gloo, ...) and each one's median is over all its rounds: on a shared
machine the load drifts, and a ratio of two figures taken minutes apart would measure the drift. As in nccl-tests:
``algbw = bytes / time`` and ``busbw = algbw * 2 (n - 1) / n`` (what each rank's link carries in a ring), in GB/s
(10^9 bytes). The ``nats`` backend runs through an embedded nats-server started for the run; ``gloo`` runs when torch
is installed. To show where the time goes, rank 0 reports the CPU seconds (user, system) that it and, for nats,
the server spend per operation, and the run measures for the largest size one process sending the bytes to another
through the same server on the ring's connection (the transport alone, with each side's CPU) and a numpy add of the
array (the arithmetic).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import resource
import statistics
import tempfile
import time
from typing import Any

import numpy as np

MIB = 1 << 20


def _cpu_self() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _cpu_of(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of another process, from /proc (zeros where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _per_op(before: tuple[float, float], after: tuple[float, float], ops: int) -> dict[str, float]:
    return {"user_ms": round((after[0] - before[0]) * 1000 / ops, 2),
            "system_ms": round((after[1] - before[1]) * 1000 / ops, 2)}


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
            result: dict[str, Any] = {}
            for mb in sizes_mb:
                array = np.full(mb * MIB // 4, float(rank + 1), dtype=np.float32)
                for _ in range(2):  # warm-up: connections, buffers, first-touch of pages
                    await group.allreduce(array)
                times = []
                mine, server = _cpu_self(), _cpu_of(where.get("server_pid"))
                for _ in range(iters):
                    await group.barrier()
                    t0 = time.perf_counter()
                    reduced = await group.allreduce(array)
                    times.append(time.perf_counter() - t0)
                cpu = {"rank0": _per_op(mine, _cpu_self(), iters)}  # barriers included: they are tiny
                if "server_pid" in where:
                    cpu["server"] = _per_op(server, _cpu_of(where["server_pid"]), iters)
                expected = ranks * (ranks + 1) / 2
                if not np.allclose(reduced[:: max(1, reduced.size // 1000)], expected):
                    raise RuntimeError(f"{backend}: wrong sum at {mb} MiB")
                result[str(mb)] = {"times": times, "cpu_per_op": cpu}
            if rank == 0:
                out.put((backend, result))
        finally:
            await group.close()
            if nc is not None:
                nc.close()
    asyncio.run(run())


def _run_backend(backend: str, ranks: int, sizes_mb: list[int], iters: int,
                 where: dict[str, Any]) -> dict[str, dict[str, Any]]:
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


def _rounds(backend: str, ranks: int, sizes_mb: list[int], iters: int, where: dict[str, Any],
            results: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """One more round of ``backend``, merged into ``results``: all times kept, CPU per operation averaged."""
    new = _run_backend(backend, ranks, sizes_mb, iters, where)
    if results is None:
        return {mb: {"times": r["times"], "cpu_per_op": r["cpu_per_op"], "rounds": 1} for mb, r in new.items()}
    for mb, r in new.items():
        old = results[mb]
        n = old["rounds"]
        old["cpu_per_op"] = {who: {k: round((v * n + r["cpu_per_op"][who][k]) / (n + 1), 2) for k, v in cpu.items()}
                             for who, cpu in old["cpu_per_op"].items()}
        old["times"] = old["times"] + r["times"]
        old["rounds"] = n + 1
    return results


def _report(ranks: int, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {mb: _bandwidth(int(mb) * MIB, statistics.median(r["times"]), ranks) for mb, r in results.items()}


def _transport_side(role: str, url: str, nbytes: int, iters: int, out: Any) -> None:
    """One end of the one-way transfer, on the ring's own connection and allocator settings."""
    from aios.common.wire import RawNatsConnection
    from aios.trainer.collective.ring import HEADROOM, NatsRing, reuse_large_buffers

    async def run() -> None:
        reuse_large_buffers()
        conn = await RawNatsConnection.connect([url])
        size = int(conn.server_info.get("max_payload", MIB)) - HEADROOM  # type: ignore[call-overload]
        count = -(-nbytes // size)
        if role == "rx":
            got, done = 0, asyncio.Event()

            def on_message(_s: bytes, _r: bytes | None, _h: bytes | None, data: bytes) -> None:
                nonlocal got
                got += 1
                if got == count * (iters + 1):
                    done.set()
            conn.subscribe("bench.transport", on_message)
            await conn.ping()
            cpu0 = _cpu_self()
            out.put("ready")
            await asyncio.wait_for(done.wait(), 300)
            out.put(("rx", _per_op(cpu0, _cpu_self(), iters + 1)))  # the warm-up transfer included
        else:
            ring = NatsRing(conn, "transport", 0, 1)  # only for its publisher (high-water mark), no group
            chunk = memoryview(np.zeros(size, dtype=np.uint8)).cast("B")
            times = []
            for i in range(iters + 1):  # the first is a warm-up
                if i == 1:
                    cpu0 = _cpu_self()
                t0 = time.perf_counter()
                for _ in range(count):
                    await ring.nc.publish("bench.transport", chunk)  # type: ignore[arg-type]
                await conn.ping(60)  # the server has taken it all
                times.append(time.perf_counter() - t0)
            out.put(("tx", statistics.median(times[1:]), _per_op(cpu0, _cpu_self(), iters)))
        conn.close()
    asyncio.run(run())


def _transport(url: str, nbytes: int, iters: int, server_pid: int | None) -> dict[str, Any]:
    """Move ``nbytes`` from one process to another through the server, in max-payload messages: the time (as the
    sender sees the server take it) and each side's CPU per transfer."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    rx = ctx.Process(target=_transport_side, args=("rx", url, nbytes, iters, out), daemon=True)
    rx.start()
    if out.get(timeout=120) != "ready":
        raise RuntimeError("transport receiver did not start")
    tx = ctx.Process(target=_transport_side, args=("tx", url, nbytes, iters, out), daemon=True)
    server0 = _cpu_of(server_pid)
    tx.start()
    results = {}
    for _ in range(2):
        item = out.get(timeout=300)
        results[item[0]] = item[1:]
    server = _per_op(server0, _cpu_of(server_pid), iters + 1)
    tx.join(30)
    rx.join(30)
    seconds, tx_cpu = results["tx"]
    return {**_bandwidth(nbytes, seconds, 2),
            "cpu_per_transfer": {"sender": tx_cpu, "receiver": results["rx"][0], "server": server}}


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


def main(ranks: int = 2, sizes_mb: list[int] | None = None, iters: int = 20, rounds: int = 3) -> dict[str, Any]:
    from aios.common.natsserver import NatsServer, free_port

    sizes_mb = sizes_mb or [1, 16, 64]
    gloo = torch_available()
    report: dict[str, Any] = {"ranks": ranks, "sizes_mib": sizes_mb, "iters": iters, "rounds": rounds, "backends": {}}
    nats_times = gloo_times = None
    # The relay gets the cores the ranks leave it, as an MPI launcher binds ranks to cores: with Go's default of one
    # thread per core, the server's threads wake and spin on the ranks' cores (on 2 cores, 2 ranks: its system time
    # per 16 MiB op 20-21 ms -> 12.5-14 ms). A server on its own host would keep all its cores.
    cores = os.cpu_count() or 1
    report["server_gomaxprocs"] = gomaxprocs = max(1, cores - ranks)
    with tempfile.TemporaryDirectory(prefix="aios-bench-allreduce-") as tmp, \
            NatsServer(tmp, gomaxprocs=gomaxprocs) as server:
        for _ in range(rounds):
            nats_times = _rounds("nats", ranks, sizes_mb, iters, {"url": server.url, "server_pid": server.pid},
                                 nats_times)
            if gloo:
                gloo_times = _rounds("torch", ranks, sizes_mb, iters, {"port": free_port()}, gloo_times)
        assert nats_times is not None
        report["backends"]["nats"] = _report(ranks, nats_times)
        largest = max(sizes_mb) * MIB
        report["where_time_goes"] = {
            "bytes": largest,
            "nats_cpu_per_op": {mb: t["cpu_per_op"] for mb, t in nats_times.items()},
            "nats_transport_one_way": _transport(server.url, largest, iters, server.pid),
            "numpy_add": _bandwidth(largest, _numpy_add(largest), 2),
            "ring_bytes_sent_per_rank": int(largest * 2 * (ranks - 1) / ranks),
        }
    if gloo_times is not None:
        report["backends"]["gloo"] = _report(ranks, gloo_times)
        report["where_time_goes"]["gloo_cpu_per_op"] = {mb: t["cpu_per_op"] for mb, t in gloo_times.items()}
        if "16" in nats_times and "16" in gloo_times:
            report["ratio_16mb_nats_over_gloo"] = round(
                report["backends"]["nats"]["16"]["busbw_gbs"] / report["backends"]["gloo"]["16"]["busbw_gbs"], 3)
    else:
        report["gloo"] = "torch is not installed: pip install 'aios[torch]'"
    return report
