"""The built-in trainer's model and data, numpy only and without I/O: a two-layer MLP classifier trained by
data-parallel minibatch SGD or Adam.

Data parallelism that does not depend on the world size: the global batch of step ``t`` is drawn from a generator
seeded by ``(seed, t)``, each rank takes its contiguous share of it, computes the *sum* of its examples' gradients,
and the all-reduced sum divided by the global batch is exactly the full-batch mean gradient. So 1 rank and 4 ranks
take the same steps (up to float rounding), and a job resumed on another number of devices continues the same
trajectory from its checkpoint: re-sharding is just another split of the same batch.
"""

from __future__ import annotations

import re

import msgspec
import numpy as np

from aios.common import strictjson


class TrainerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``trainer:`` of a job spec (``kind: mlp``)."""

    kind: str = "mlp"
    dataset: str = "spirals"
    """``spirals`` (classes as interleaved spiral arms), ``blobs`` (Gaussian clusters) or ``digits`` (8x8 images of
    the ten digits, drawn from glyphs with shifts, thickness and noise; 10 classes); generated from ``seed``."""
    samples: int = 3000
    classes: int = 3
    """10 for ``digits`` unless given."""
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
    model_name: str = ""
    """The model registry's name for the trained model (default: the job's name)."""
    step_delay_s: float = 0.0
    """Sleep after each step: makes a tiny demo job last long enough to watch (and to preempt in tests)."""


def parse_config(raw: object) -> TrainerConfig:
    """A config from the job spec's ``trainer`` field, or ValueError naming the bad field."""
    try:
        cfg = msgspec.convert(raw or {}, TrainerConfig)
    except msgspec.ValidationError as exc:
        text = str(exc)
        at = re.search(r"at `(\$[^`]*)`", text)
        hint = strictjson.number_as_text_hint(strictjson.value_at(raw, at.group(1))) if at else ""
        # the field named as the spec's are (trainer.hidden: ...), not the map with msgspec's path at the end
        unknown = re.fullmatch(r"Object contains unknown field `([^`]*)`", text)
        if unknown:
            raise ValueError(f"trainer.{unknown[1]}: unknown field") from None
        if at and at.group(1).startswith("$."):
            raise ValueError(f"trainer.{at.group(1)[2:]}: {text.split(' - at ')[0]}{hint}") from None
        if "at `key` in" in text:
            raise ValueError("trainer: its field names are strings") from None
        raise ValueError(f"trainer: {text}{hint}") from None
    if cfg.dataset == "digits" and not (isinstance(raw, dict) and "classes" in raw):
        # its ten classes, unless told otherwise (the default 3, meant for spirals, had it refused for a field
        # the user never set)
        cfg = msgspec.structs.replace(cfg, classes=10)
    checks = [
        (cfg.kind == "mlp", "kind", "only 'mlp' is built in"),
        (cfg.dataset in DATASETS, "dataset", "must be one of " + ", ".join(DATASETS)),
        (cfg.dataset != "digits" or cfg.classes == 10, "classes", "the digits dataset has 10 classes"),
        (cfg.optimizer in ("adam", "sgd"), "optimizer", "must be 'adam' or 'sgd'"),
        (cfg.backend in ("nats", "torch"), "backend", "must be 'nats' or 'torch'"),
        (cfg.samples >= cfg.classes >= 2, "samples/classes", "need at least 2 classes and a sample per class"),
        (cfg.hidden > 0, "hidden", "must be positive"),
        (cfg.steps > 0, "steps", "must be positive"),
        (cfg.batch_size > 0, "batch_size", "must be positive"),
        # a default batch larger than the data is the whole data set; one asked for explicitly was cut without a word
        (not (isinstance(raw, dict) and "batch_size" in raw) or cfg.batch_size <= cfg.samples, "batch_size",
         f"larger than the data set ({cfg.samples} samples)"),
        (cfg.lr > 0, "lr", "must be positive"),
        (cfg.checkpoint_every > 0, "checkpoint_every", "must be positive"),
        # 0 was taken, and every rank then failed at once: "never joined the group within 0s"
        (cfg.collective_timeout_s > 0, "collective_timeout_s", "must be positive (seconds a rank waits for its peers)"),
        (cfg.step_delay_s >= 0, "step_delay_s", "must be 0 or more"),
        # the registry's model names: one it refuses left the job's model unregistered, after the training
        (not cfg.model_name or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", cfg.model_name) is not None,
         "model_name", "1-64 letters, digits, '_' or '-', starting with a letter or digit"),
    ]
    for ok, field, why in checks:
        if not ok:
            raise ValueError(f"trainer.{field}: {why}")
    return cfg


def memory_bytes(cfg: TrainerConfig) -> int:
    """About what one worker needs at most: the data set with the temporaries of its generation, parameters with
    Adam's two moments and a gradient, a batch's activations, and the interpreter. A spec of a billion samples was
    taken, and its worker grew past 15 GB on a node shared with other tenants."""
    params = features(cfg) * cfg.hidden + cfg.hidden + cfg.hidden * cfg.classes + cfg.classes
    batch = min(cfg.batch_size, cfg.samples)
    return 3 * cfg.samples * (features(cfg) + 1) * 8 + 4 * params * 8 + 4 * batch * cfg.hidden * 8 + (200 << 20)


DATASETS = ("spirals", "blobs", "digits")
DATASET_VERSION = 1
"""Bumped whenever a generator changes, so a model's lineage names exactly the data it saw."""
EVAL_SEED_OFFSET = 1_000_003
"""The evaluation split: the same generator with a seed no training run uses."""

_GLYPHS = (  # 5x7 strokes of the ten digits; "#" ink
    (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
)


def features(cfg: TrainerConfig) -> int:
    """Input width of the dataset."""
    return 64 if cfg.dataset == "digits" else 2


def dataset_identity(cfg: TrainerConfig, split: str = "train") -> str:
    """What a model's lineage records as its data: generator, version, seed, size and split."""
    return f"{cfg.dataset}/v{DATASET_VERSION}/seed={cfg.seed}/n={cfg.samples}/{split}"


def _digits(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    glyphs = np.array([[[c == "#" for c in row] for row in g] for g in _GLYPHS], dtype=np.float32)  # (10, 7, 5)
    images = np.zeros((len(y), 8, 8), dtype=np.float32)
    dy, dx = rng.integers(0, 2, len(y)), rng.integers(0, 4, len(y))  # where the 7x5 glyph sits in 8x8
    for i, (label, oy, ox) in enumerate(zip(y, dy, dx)):
        images[i, oy:oy + 7, ox:ox + 5] = glyphs[label]
    thick = rng.random(len(y)) < 0.3  # some strokes bleed one pixel to the right
    images[thick, :, 1:] = np.maximum(images[thick, :, 1:], 0.6 * images[thick, :, :-1])
    ink = rng.uniform(0.6, 1.0, (len(y), 1, 1))
    images = images * ink + rng.normal(0, 0.2, images.shape)
    dropout = rng.random(images.shape) < 0.05
    images[dropout] = 0.0
    return images.reshape(len(y), 64)


def make_dataset(cfg: TrainerConfig, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``split``: ``train`` (what the job trains on) or ``eval`` (same distribution, seed never used to train)."""
    rng = np.random.default_rng(cfg.seed + (EVAL_SEED_OFFSET if split == "eval" else 0))
    y = np.arange(cfg.samples) % cfg.classes
    if cfg.dataset == "digits":
        x = _digits(rng, y)
    elif cfg.dataset == "blobs":
        centres = np.random.default_rng(cfg.seed).normal(0, 3, size=(cfg.classes, 2))  # same clusters in both splits
        x = centres[y] + rng.normal(0, 1, size=(cfg.samples, 2))
    else:
        r = rng.uniform(0.1, 1.0, cfg.samples)
        theta = y * (2 * np.pi / cfg.classes) + r * 4.0 + rng.normal(0, 0.2, cfg.samples)
        x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return x.astype(np.float32), y.astype(np.int64)


def shapes(cfg: TrainerConfig) -> list[tuple[int, ...]]:
    return [(features(cfg), cfg.hidden), (cfg.hidden,), (cfg.hidden, cfg.classes), (cfg.classes,)]


def init_params(cfg: TrainerConfig) -> np.ndarray:
    """All weights in one flat float32 vector (one all-reduce per step)."""
    rng = np.random.default_rng(cfg.seed + 1)
    d = features(cfg)
    w1 = rng.normal(0, np.sqrt(2 / d), size=(d, cfg.hidden))
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
