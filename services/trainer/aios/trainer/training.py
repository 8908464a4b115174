"""The data-parallel training loop over any :class:`~aios.trainer.collective.Collective`.

No NATS, files or signals here: the worker (worker.py) hands in the collective, the checkpoint to start from and
callbacks for progress and checkpoints, so tests run many ranks in one process. Each step all-reduces one vector:
the gradient sum, then the loss sum, correct count, example count, and a stop vote, so all ranks agree in the
same operation on whether to stop (a SIGTERM reaches the ranks at different moments; they stop at one step).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import msgspec
import numpy as np

from aios.trainer import mlp
from aios.trainer.collective import Collective
from aios.trainer.mlp import TrainerConfig


class Checkpoint(msgspec.Struct):
    """Everything needed to take the next step exactly as an uninterrupted run would."""

    step: int
    params: bytes
    """float32 weights, flat (mlp.shapes gives the layout)."""
    m: bytes
    v: bytes
    """Adam's moments, flat float32."""

    @classmethod
    def of(cls, step: int, params: np.ndarray, opt: dict[str, np.ndarray]) -> "Checkpoint":
        return cls(step, params.astype(np.float32).tobytes(), opt["m"].astype(np.float32).tobytes(),
                   opt["v"].astype(np.float32).tobytes())

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        def load(raw: bytes) -> np.ndarray:
            return np.frombuffer(raw, dtype=np.float32).copy()
        return load(self.params), {"m": load(self.m), "v": load(self.v)}


class Progress(msgspec.Struct, frozen=True):
    step: int
    loss: float
    accuracy: float
    """Of the step's global batch (before the update)."""
    samples_per_s: float


class Outcome(msgspec.Struct, frozen=True):
    step: int
    stopped: bool
    """True: stopped early on a stop vote (preemption), with a checkpoint at ``step``."""
    final_accuracy: float | None
    """On the whole dataset, with the final weights; None when stopped early (the pass over the data held the
    devices of a preempted or cancelled job for seconds after its checkpoint, for a figure nobody reads)."""


async def train(cfg: TrainerConfig, group: Collective, start: Checkpoint | None,
                on_progress: Callable[[Progress], Awaitable[None]],
                on_checkpoint: Callable[[Checkpoint], Awaitable[None]],
                stop_requested: Callable[[], bool], progress_every_s: float = 1.0,
                checkpoint_every_s: float | None = None) -> Outcome:
    """Train from ``start`` (or from scratch) to ``cfg.steps``. Rank 0 reports progress (at most every
    ``progress_every_s``) and writes checkpoints (every ``cfg.checkpoint_every`` steps, and at least every
    ``checkpoint_every_s`` seconds: the job spec's bound on the work a node loss costs); every rank returns the same
    outcome."""
    x, y = mlp.make_dataset(cfg)
    if start is not None:
        params, opt = start.arrays()
        step = start.step
    else:
        params = mlp.init_params(cfg)
        opt = {"m": np.zeros_like(params), "v": np.zeros_like(params)}
        step = 0
    if group.world > 1:
        # every rank starts where rank 0 does, as DDP broadcasts rank 0's parameters: ranks that read the checkpoint
        # at different moments (a previous attempt's workers still writing it) started from different steps, and
        # the ones that reached the end first left the others waiting in a collective until it timed out
        step = int((await group.broadcast(np.array([step], np.float64)))[0])
        sizes = [params.size, opt["m"].size, opt["v"].size]
        state = await group.broadcast(np.concatenate([params.ravel(), opt["m"].ravel(), opt["v"].ravel()]))
        params = state[:sizes[0]].reshape(params.shape)
        opt = {"m": state[sizes[0]:sizes[0] + sizes[1]].reshape(opt["m"].shape),
               "v": state[sizes[0] + sizes[1]:].reshape(opt["v"].shape)}
    leader = group.rank == 0
    last_report = 0.0
    last_checkpoint = time.monotonic()
    window_samples, window_start = 0, time.monotonic()
    while step < cfg.steps:
        mine = mlp.shard(mlp.batch_of_step(cfg, step), group.rank, group.world)
        loss, grad, correct = mlp.loss_and_grad_sum(cfg, params, x[mine], y[mine])
        vote = 1.0 if stop_requested() else 0.0
        total = await group.allreduce(np.concatenate([grad, np.array([loss, correct, len(mine), vote], np.float32)]))
        count = max(1.0, float(total[-2]))
        params = mlp.apply_update(cfg, params, total[:-4] / count, opt, step)
        step += 1
        window_samples += int(count)
        stopping = total[-1] > 0
        if cfg.step_delay_s and not stopping and step < cfg.steps:
            # part of the step, so the rate counts it (the first report left it out: 332,081 samples/s against
            # 10); a stop asked for meanwhile ends it (a long one outlasted the stop's grace, and the stop
            # checkpoint was never written)
            await _sleep_unless(stop_requested, cfg.step_delay_s)
        now = time.monotonic()
        if leader and (now - last_report >= progress_every_s or step == cfg.steps or stopping):
            rate = window_samples / max(1e-9, now - window_start)
            await on_progress(Progress(step, float(total[-4]) / count, float(total[-3]) / count, rate))
            last_report, window_samples, window_start = now, 0, now
        overdue = checkpoint_every_s is not None and now - last_checkpoint >= checkpoint_every_s
        if leader and (step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping or overdue):
            await on_checkpoint(Checkpoint.of(step, params, opt))
            last_checkpoint = time.monotonic()
        if stopping and step < cfg.steps:
            return Outcome(step, True, None)
    return Outcome(step, False, mlp.accuracy(cfg, params, x, y))


async def _sleep_unless(stop_requested: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop_requested() and (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.1, left))
