"""The built-in trainer's model and data, numpy only and without I/O: a two-layer MLP classifier trained by
data-parallel minibatch SGD or Adam.

Data parallelism that does not depend on the world size: the global batch of step ``t`` is drawn from a generator
seeded by ``(seed, t)``, each rank takes its contiguous share of it, computes the *sum* of its examples' gradients,
and the all-reduced sum divided by the global batch is exactly the full-batch mean gradient. So 1 rank and 4 ranks
take the same steps (up to float rounding), and a job resumed on another number of devices continues the same
trajectory from its checkpoint: re-sharding is just another split of the same batch.
"""

from __future__ import annotations

import msgspec
import numpy as np


class TrainerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``trainer:`` of a job spec (``kind: mlp``)."""

    kind: str = "mlp"
    dataset: str = "spirals"
    """``spirals`` (classes as interleaved spiral arms) or ``blobs`` (Gaussian clusters); generated from ``seed``."""
    samples: int = 3000
    classes: int = 3
    hidden: int = 64
    steps: int = 300
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 0.01
    seed: int = 0
    checkpoint_every: int = 50
    """Steps between checkpoints (and on SIGTERM, always)."""
    backend: str = "nats"
    """Collective backend: ``nats`` (ring all-reduce over NATS) or ``torch`` (torch.distributed)."""
    collective_timeout_s: float = 60.0
    step_delay_s: float = 0.0
    """Sleep after each step: makes a tiny demo job last long enough to watch (and to preempt in tests)."""


def parse_config(raw: object) -> TrainerConfig:
    """A config from the job spec's ``trainer`` field, or ValueError naming the bad field."""
    try:
        cfg = msgspec.convert(raw or {}, TrainerConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"trainer: {exc}") from None
    checks = [
        (cfg.kind == "mlp", "kind", "only 'mlp' is built in"),
        (cfg.dataset in ("spirals", "blobs"), "dataset", "must be 'spirals' or 'blobs'"),
        (cfg.optimizer in ("adam", "sgd"), "optimizer", "must be 'adam' or 'sgd'"),
        (cfg.backend in ("nats", "torch"), "backend", "must be 'nats' or 'torch'"),
        (cfg.samples >= cfg.classes >= 2, "samples/classes", "need at least 2 classes and a sample per class"),
        (cfg.hidden > 0 and cfg.steps > 0 and cfg.batch_size > 0, "hidden/steps/batch_size", "must be positive"),
        (cfg.lr > 0, "lr", "must be positive"),
        (cfg.checkpoint_every > 0, "checkpoint_every", "must be positive"),
    ]
    for ok, field, why in checks:
        if not ok:
            raise ValueError(f"trainer.{field}: {why}")
    return cfg


def make_dataset(cfg: TrainerConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    y = np.arange(cfg.samples) % cfg.classes
    if cfg.dataset == "blobs":
        centres = rng.normal(0, 3, size=(cfg.classes, 2))
        x = centres[y] + rng.normal(0, 1, size=(cfg.samples, 2))
    else:
        r = rng.uniform(0.1, 1.0, cfg.samples)
        theta = y * (2 * np.pi / cfg.classes) + r * 4.0 + rng.normal(0, 0.2, cfg.samples)
        x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return x.astype(np.float32), y.astype(np.int64)


def shapes(cfg: TrainerConfig) -> list[tuple[int, ...]]:
    return [(2, cfg.hidden), (cfg.hidden,), (cfg.hidden, cfg.classes), (cfg.classes,)]


def init_params(cfg: TrainerConfig) -> np.ndarray:
    """All weights in one flat float32 vector (one all-reduce per step)."""
    rng = np.random.default_rng(cfg.seed + 1)
    w1 = rng.normal(0, np.sqrt(2 / 2), size=(2, cfg.hidden))
    w2 = rng.normal(0, np.sqrt(2 / cfg.hidden), size=(cfg.hidden, cfg.classes))
    return np.concatenate([w1.ravel(), np.zeros(cfg.hidden), w2.ravel(), np.zeros(cfg.classes)]).astype(np.float32)


def unflatten(cfg: TrainerConfig, flat: np.ndarray) -> list[np.ndarray]:
    out, at = [], 0
    for shape in shapes(cfg):
        n = int(np.prod(shape))
        out.append(flat[at:at + n].reshape(shape))
        at += n
    return out


def forward(cfg: TrainerConfig, params: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w1, b1, w2, b2 = unflatten(cfg, params)
    h = np.maximum(x @ w1 + b1, 0.0)
    return h, h @ w2 + b2


def loss_and_grad_sum(cfg: TrainerConfig, params: np.ndarray, x: np.ndarray,
                      y: np.ndarray) -> tuple[float, np.ndarray, int]:
    """Summed cross-entropy, the summed gradient (flat) and the number of correct predictions over the examples."""
    if len(x) == 0:
        return 0.0, np.zeros_like(params), 0
    w1, _, w2, _ = unflatten(cfg, params)
    h, logits = forward(cfg, params, x)
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).sum())
    d_logits = p
    d_logits[np.arange(len(y)), y] -= 1.0
    d_w2 = h.T @ d_logits
    d_b2 = d_logits.sum(axis=0)
    d_h = (d_logits @ w2.T) * (h > 0)
    d_w1 = x.T @ d_h
    d_b1 = d_h.sum(axis=0)
    grad = np.concatenate([d_w1.ravel(), d_b1, d_w2.ravel(), d_b2]).astype(np.float32)
    return loss, grad, int((logits.argmax(axis=1) == y).sum())


def batch_of_step(cfg: TrainerConfig, step: int) -> np.ndarray:
    """Indices of the global batch of ``step`` (the same on every rank and after any resume)."""
    rng = np.random.default_rng([cfg.seed, step])
    return rng.choice(cfg.samples, size=min(cfg.batch_size, cfg.samples), replace=False)


def shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous share of the global batch (uneven shares differ by at most one example)."""
    bounds = [(i * len(indices)) // world for i in range(world + 1)]
    return indices[bounds[rank]:bounds[rank + 1]]


def apply_update(cfg: TrainerConfig, params: np.ndarray, grad: np.ndarray, opt: dict[str, np.ndarray],
                 step: int) -> np.ndarray:
    """One optimiser step from the mean gradient; ``opt`` holds Adam's moments (updated in place)."""
    if cfg.optimizer == "sgd":
        return params - cfg.lr * grad
    b1, b2, eps = 0.9, 0.999, 1e-8
    opt["m"] = b1 * opt["m"] + (1 - b1) * grad
    opt["v"] = b2 * opt["v"] + (1 - b2) * grad * grad
    m_hat = opt["m"] / (1 - b1 ** (step + 1))
    v_hat = opt["v"] / (1 - b2 ** (step + 1))
    return (params - cfg.lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)


def accuracy(cfg: TrainerConfig, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float((forward(cfg, params, x)[1].argmax(axis=1) == y).mean())
