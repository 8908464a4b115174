"""The ``torch`` backend (gloo on CPU) against numpy's sum, one real process per rank, for world sizes 1-8.

Ranks must be separate processes: torch keeps a single default process group per process. Each rank writes what it
got (or the error it raised) to a file the test reads after joining, so no big array crosses a pipe.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from aios.common.natsserver import free_port  # noqa: E402
from aios.trainer.collective import CollectiveError  # noqa: E402
from aios.trainer.collective.torchdist import TorchCollective  # noqa: E402

SEED = 1234
TIMEOUT_S = 8.0  # the groups' timeout: how long a call may wait on a silent peer
JOIN_S = 45.0  # hard bound on any one group's processes; a hang fails the test instead of stalling the suite


def rank_input(rank: int, size: int, dtype: str) -> np.ndarray:
    return np.random.default_rng([SEED, rank]).standard_normal(size).astype(dtype)


def rank_main(scenario: str, rank: int, world: int, port: int, out: str, size: int, dtype: str) -> None:
    """One rank, in its own spawned process."""
    import asyncio
    import os

    op_started = [time.monotonic()]

    async def run() -> None:
        group = await TorchCollective.create(rank, world, "127.0.0.1", port, timeout_s=TIMEOUT_S)
        try:
            if scenario == "allreduce":
                mine = rank_input(rank, size, dtype)
                before = mine.copy()
                total = await group.allreduce(mine)
                assert np.array_equal(mine, before), "allreduce changed its input"
                np.save(f"{out}/allreduce{rank}.npy", total)
            elif scenario == "broadcast":
                root = world - 1
                got = await group.broadcast(np.full(size, float(rank), dtype=dtype), root=root)
                np.save(f"{out}/broadcast{rank}.npy", got)
            elif scenario == "dead":
                await group.barrier()  # everyone is in, then the last rank dies without a word
                if rank == world - 1:
                    os._exit(0)
                op_started[0] = time.monotonic()
                await group.allreduce(np.ones(size, dtype=dtype))
            elif scenario == "abort":
                await group.barrier()
                if rank == world - 1:
                    await asyncio.sleep(0.5)  # let the others block in the allreduce first
                    await group.abort("out of memory")
                    return
                op_started[0] = time.monotonic()
                await group.allreduce(np.ones(size, dtype=dtype))
        finally:
            await group.close()

    try:
        asyncio.run(run())
    except CollectiveError as exc:  # first line: seconds the failing call took
        Path(out, f"error{rank}.txt").write_text(f"{time.monotonic() - op_started[0]:.2f}\n{exc}")
    except BaseException as exc:  # anything else is a bug in the backend: report it, do not swallow it
        Path(out, f"error{rank}.txt").write_text(f"unexpected {type(exc).__name__}: {exc}")
        raise


def run_group(scenario: str, world: int, out: Path, size: int, dtype: str = "float32") -> None:
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=rank_main, args=(scenario, r, world, port, str(out), size, dtype), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join(5)
    assert not hung, f"ranks {hung} of {world} still running after {JOIN_S}s"


@pytest.mark.parametrize(
    ("world", "size", "dtype"),
    [(1, 17, "float32"), (2, 1_000_003, "float32"), (3, 1_000_003, "float64"), (4, 10_007, "float32"),
     (8, 1_001, "float64")],
)
def test_allreduce_equals_numpy_sum(tmp_path: Path, world: int, size: int, dtype: str) -> None:
    assert size % world or world == 1  # uneven split across ranks
    run_group("allreduce", world, tmp_path, size, dtype)
    expected = np.sum([rank_input(r, size, dtype).astype(np.float64) for r in range(world)], axis=0)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for r in range(world):
        assert not (tmp_path / f"error{r}.txt").exists(), (tmp_path / f"error{r}.txt").read_text()
        got = np.load(tmp_path / f"allreduce{r}.npy")
        assert got.dtype == np.dtype(dtype) and got.shape == (size,)
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * world)


def test_broadcast_from_a_non_zero_root(tmp_path: Path) -> None:
    world = 3
    run_group("broadcast", world, tmp_path, 101, "float64")
    for r in range(world):
        got = np.load(tmp_path / f"broadcast{r}.npy")
        assert got.dtype == np.float64 and (got == world - 1).all()


def test_a_dead_rank_fails_the_others_instead_of_hanging(tmp_path: Path) -> None:
    world = 3
    run_group("dead", world, tmp_path, 100_003)
    for r in range(world - 1):
        report = tmp_path / f"error{r}.txt"
        assert report.exists(), f"rank {r} returned from an allreduce whose peer was dead"
        text = report.read_text()
        assert not text.startswith("unexpected"), text
        assert f"rank {r} of {world}" in text
        assert float(text.split("\n")[0]) < TIMEOUT_S + 3, text  # failed by the group timeout at the latest


def test_abort_fails_the_peers_at_once_with_the_reason(tmp_path: Path) -> None:
    world = 2
    run_group("abort", world, tmp_path, 1_000)
    text = (tmp_path / "error0.txt").read_text()
    assert "rank 0 of 2" in text and "rank 1: out of memory" in text, text
    assert float(text.split("\n")[0]) < TIMEOUT_S / 2, text  # the abort, not the timeout, ended the call
    assert not (tmp_path / "error1.txt").exists()


async def test_missing_torch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    with pytest.raises(CollectiveError, match=r"pip install 'aios\[torch\]'"):
        await TorchCollective.create(0, 1, "127.0.0.1", free_port())
