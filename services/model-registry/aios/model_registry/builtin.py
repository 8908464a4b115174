"""The built-in trainer's results as registry models: weights from its checkpoint, data from its generator.

A training job's spec names the generator, seed and size, so the registry can rebuild exactly the examples the job
trained on (for fine-tuning after compression) and a held-out evaluation split of the same distribution.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from aios.model_registry import nn
from aios.trainer import mlp
from aios.trainer.mlp import TrainerConfig, parse_config
from aios.trainer.training import Checkpoint


def labels(cfg: TrainerConfig) -> list[str]:
    return [str(i) for i in range(cfg.classes)]


def model_from_params(cfg: TrainerConfig, params: np.ndarray) -> nn.Model:
    w1, b1, w2, b2 = mlp.unflatten(cfg, params)
    return nn.from_mlp(w1, b1, w2, b2, labels(cfg))


def model_from_checkpoint(trainer: dict[str, Any], checkpoint: bytes) -> tuple[TrainerConfig, nn.Model]:
    import msgspec

    cfg = parse_config(trainer)
    ckpt = msgspec.msgpack.decode(checkpoint, type=Checkpoint)
    params, _ = ckpt.arrays()
    return cfg, model_from_params(cfg, params)


MAX_DATA_BYTES = 512 << 20
"""What one data set may take of the registry's memory while it evaluates or fine-tunes a model: `aios models
eval` with a config of a billion samples was taken, and the registry (which serves every model) grew until it was
killed. The size depends on the data alone, so models evaluated on the same config see the same rows."""


def within_memory(cfg: TrainerConfig) -> TrainerConfig:
    """``cfg`` with as many samples as ``MAX_DATA_BYTES`` holds (at least one a class): the data set with the
    temporaries of its generation, as ``mlp.memory_bytes`` counts them."""
    per_row = 3 * (mlp.features(cfg) + 1) * 8
    rows = max(cfg.classes, min(cfg.samples, MAX_DATA_BYTES // per_row))
    return cfg if rows == cfg.samples else msgspec.structs.replace(cfg, samples=rows)


def data(trainer: dict[str, Any] | TrainerConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    cfg = trainer if isinstance(trainer, TrainerConfig) else parse_config(trainer)
    return mlp.make_dataset(cfg, split)


def train_locally(cfg: TrainerConfig) -> np.ndarray:
    """The same steps the distributed trainer takes, in one process (what its 1-rank run computes)."""
    x, y = mlp.make_dataset(cfg)
    params = mlp.init_params(cfg)
    opt = {"m": np.zeros_like(params), "v": np.zeros_like(params)}
    for step in range(cfg.steps):
        idx = mlp.batch_of_step(cfg, step)
        _, grad, _ = mlp.loss_and_grad_sum(cfg, params, x[idx], y[idx])
        params = mlp.apply_update(cfg, params, grad / len(idx), opt, step)
    return params
