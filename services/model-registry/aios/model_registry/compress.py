"""Compression of a registered model into a smaller one, pure numpy (the registry measures the deltas).

- ``svd``: each dense layer ``w`` (m x n) but the last becomes ``a @ b`` of rank r when that is smaller
  (r (m + n) < m n); the classifier head stays whole (its rank is the class count; cutting it costs most). The rank
  keeps a share ``energy`` of the squared singular values, or, with ``target_ratio``, the highest common energy whose
  model fits the target size (bisection). With calibration inputs the factorisation is fitted to the layer's
  *outputs on the data* (``w`` whitened by the Cholesky factor of the inputs' second moment) instead of to ``w``'s
  entries: directions the data never excites cost nothing.
- ``int8``: symmetric per-output-channel quantisation, ``q = round(w / s)`` with ``s = max |w[:, j]| / 127``.
- ``prune``: per layer, the smallest-magnitude weights to a target sparsity (biases kept).

``svd`` and ``prune`` take optional training data and then fine-tune the compressed structure a few hundred steps
(``nn.finetune``, 1000 steps by default: under a second here), which is the usual way to win back what the cut
cost.
"""

from __future__ import annotations

import copy
import math
import threading
from typing import Any

import numpy as np

from aios.common import strictjson
from aios.model_registry import nn

METHODS = ("svd", "int8", "prune")


class CompressionError(ValueError):
    """A compression request that cannot be met (names the parameter)."""


def _layer_inputs(model: nn.Model, x: np.ndarray) -> list[np.ndarray]:
    out, h = [], np.asarray(x, np.float32)
    for i, layer in enumerate(model.layers):
        out.append(h)
        h = layer.forward(h)
        if i < len(model.layers) - 1:
            h = np.maximum(h, 0.0)
    return out


def _factor(w: np.ndarray, inputs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(U S, Vt, energy per rank (cumulative share), whitening factor L or None)."""
    if inputs is None:
        u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        return u * s, vt, np.cumsum(s ** 2) / max(float(np.sum(s ** 2)), 1e-30), None
    m = inputs.shape[1]
    second = inputs.T.astype(np.float64) @ inputs / len(inputs)
    chol = np.linalg.cholesky(second + 1e-6 * (np.trace(second) / m + 1e-12) * np.eye(m))
    u, s, vt = np.linalg.svd(chol.T @ w, full_matrices=False)
    return u * s, vt, np.cumsum(s ** 2) / max(float(np.sum(s ** 2)), 1e-30), chol


def _rank_for(energy_curve: np.ndarray, energy: float) -> int:
    return int(min(len(energy_curve), np.searchsorted(energy_curve, energy - 1e-12) + 1))


def svd(model: nn.Model, energy: float | None = None, target_ratio: float | None = None,
        calibration: np.ndarray | None = None) -> tuple[nn.Model, dict[str, Any]]:
    if (energy is None) == (target_ratio is None):
        raise CompressionError("svd: give exactly one of energy (0-1] or target_ratio (0-1)")
    if energy is not None and not 0 < energy <= 1:
        raise CompressionError(f"energy: {energy} is not in (0, 1]")
    if target_ratio is not None and not 0 < target_ratio < 1:
        raise CompressionError(f"target_ratio: {target_ratio} is not in (0, 1)")
    inputs = _layer_inputs(model, calibration) if calibration is not None else [None] * len(model.layers)
    last = len(model.layers) - 1  # the classifier head stays whole: it is small, and its rank is the class count
    factors = [(_factor(layer.w, x) if isinstance(layer, nn.Dense) and i < last else None)
               for i, (layer, x) in enumerate(zip(model.layers, inputs))]

    def build(e: float) -> tuple[nn.Model, list[int | None]]:
        layers: list[nn.Layer] = []
        ranks: list[int | None] = []
        for layer, f in zip(model.layers, factors):
            if f is None or not isinstance(layer, nn.Dense):
                layers.append(copy.deepcopy(layer))  # the new model's own: fine-tuning trains it in place
                ranks.append(None)
                continue
            us, vt, curve, chol = f
            r = _rank_for(curve, e)
            m, n = layer.w.shape
            if r * (m + n) >= m * n:  # factors would not be smaller
                layers.append(nn.Dense(layer.w.copy(), layer.b.copy()))
                ranks.append(None)
                continue
            a = us[:, :r] if chol is None else np.linalg.solve(chol.T, us[:, :r])
            layers.append(nn.LowRank(a.astype(np.float32), vt[:r].astype(np.float32), layer.b.copy()))
            ranks.append(r)
        return nn.Model(layers, list(model.labels)), ranks

    if energy is not None:
        out, ranks = build(energy)
    else:
        budget = target_ratio * model.nbytes  # type: ignore[operator]
        lo, hi = 0.0, 1.0
        out, ranks = build(lo)
        if out.nbytes > budget:
            raise CompressionError(f"target_ratio: {target_ratio} is below what rank 1 everywhere gives "
                                   f"({out.nbytes / model.nbytes:.2f})")
        for _ in range(30):
            mid = (lo + hi) / 2
            cand, cand_ranks = build(mid)
            if cand.nbytes <= budget:
                lo, out, ranks = mid, cand, cand_ranks
            else:
                hi = mid
        energy = lo
    return out, {"method": "svd", "energy": round(float(energy), 6), "ranks": ranks,
                 "data_aware": calibration is not None}


def int8(model: nn.Model) -> tuple[nn.Model, dict[str, Any]]:
    layers: list[nn.Layer] = []
    worst = 0.0
    for layer in model.layers:
        if not isinstance(layer, nn.Dense):
            layers.append(copy.deepcopy(layer))  # never the parent's: fine-tuning would train that one too
            continue
        scale = np.abs(layer.w).max(axis=0) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.round(layer.w / scale), -127, 127).astype(np.int8)
        worst = max(worst, float(np.abs(q * scale - layer.w).max()))
        layers.append(nn.Int8Dense(q, scale, layer.b.copy()))
    return nn.Model(layers, list(model.labels)), {"method": "int8", "scheme": "symmetric per output channel",
                                                 "max_abs_error": worst}


def prune(model: nn.Model, sparsity: float) -> tuple[nn.Model, dict[str, Any]]:
    if not 0 < sparsity < 1:
        raise CompressionError(f"sparsity: {sparsity} is not in (0, 1)")
    layers: list[nn.Layer] = []
    for layer in model.layers:
        if not isinstance(layer, nn.Dense):
            layers.append(copy.deepcopy(layer))  # never the parent's: fine-tuning would train that one too
            continue
        k = int(round(sparsity * layer.w.size))  # exactly k weights go, ties broken by position
        order = np.argsort(np.abs(layer.w), axis=None, kind="stable")
        mask = np.ones(layer.w.size, dtype=bool)
        mask[order[:k]] = False
        mask = mask.reshape(layer.w.shape)
        layers.append(nn.SparseDense(layer.w * mask, mask, layer.b.copy()))
    return nn.Model(layers, list(model.labels)), {"method": "prune", "sparsity": sparsity, "scope": "per layer"}


MAX_FINETUNE_STEPS = 100_000
"""A few minutes of fine-tuning here: more is a training job's work (a scheduled job, which can be cancelled)."""


OPTIONS = {"svd": ("energy", "target_ratio"), "int8": (), "prune": ("sparsity",)}
"""The options each method takes (all numbers)."""


def check_options(method: str, options: Any) -> dict[str, float]:
    """The method's options as numbers, or CompressionError naming the option: an unknown one was ignored (a
    version made without what was asked), and a string or null failed deep inside with Python's own words."""
    if method not in OPTIONS:
        raise CompressionError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if not isinstance(options, dict):
        raise CompressionError("options: an object is expected")
    known = OPTIONS[method]
    checked = {}
    for key, value in options.items():
        if key not in known:
            raise CompressionError(f"options.{key}: not an option of {method} "
                                   f"({'known: ' + ', '.join(known) if known else 'it takes none'})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CompressionError(f"options.{key}: a number is expected, got {strictjson.shown(value)}")
        checked[key] = float(value)
    return checked


def compress(model: nn.Model, method: str, options: dict[str, Any], train: tuple[np.ndarray, np.ndarray] | None = None,
             finetune_steps: int = 1000, stop: threading.Event | None = None) -> tuple[nn.Model, dict[str, Any]]:
    """One entry point for the registry and the CLI: ``method`` in METHODS, its options, and optional training
    data (for data-aware SVD and fine-tuning); ``stop`` ends the fine-tuning with InterruptedError."""
    if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) or \
            not 0 <= finetune_steps <= MAX_FINETUNE_STEPS:
        raise CompressionError(f"finetune_steps: a whole number from 0 to {MAX_FINETUNE_STEPS:,}, got "
                               f"{strictjson.shown(finetune_steps)}")
    options = check_options(method, options)
    if method in METHODS:  # each works on full-precision dense layers (svd: before the classifier head) only
        last = len(model.layers) - 1
        if not any(isinstance(layer, nn.Dense) and (method != "svd" or i < last) for i, layer in enumerate(model.layers)):
            raise CompressionError(f"{method}: nothing to compress here: its layers are "
                                   f"{', '.join(type(layer).__name__ for layer in model.layers)}; compress the "
                                   "version it came from")
    if method == "svd":
        out, info = svd(model, energy=options.get("energy"), target_ratio=options.get("target_ratio"),
                        calibration=None if train is None else train[0][:2000])
    elif method == "int8":
        out, info = int8(model)
    elif method == "prune":
        out, info = prune(model, options.get("sparsity", 0.5))
    else:
        raise CompressionError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if train is not None and method in ("svd", "prune") and finetune_steps > 0:
        nn.finetune(out, train[0], train[1], steps=finetune_steps, stop=stop)
        info["finetune_steps"] = finetune_steps
    return out, info
