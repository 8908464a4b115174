"""Runtime prediction: ridge regression on log runtime from the job spec and the tenant's history (numpy/scipy).

Features: bias, log devices, hashed one-hots of tenant, device kinds and the words of the job name (``bert-large-
finetune`` -> bert, large, finetune), so "this tenant's bert jobs take about this long" is learnt without a
vocabulary. Fitted in closed form; evaluated by held-out error against predicting the mean.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
from scipy.linalg import solve

from aios.scheduler.state import Finished, JobState

BUCKETS = 64


def _bucket(prefix: str, token: str) -> int:
    return 2 + zlib.crc32(f"{prefix}:{token}".encode()) % BUCKETS


def features(tenant: str, name: str, devices: int, kinds: list[str]) -> np.ndarray:
    x = np.zeros(2 + BUCKETS)
    x[0] = 1.0
    x[1] = np.log1p(devices)
    x[_bucket("t", tenant)] += 1.0
    for k in kinds:
        x[_bucket("k", k)] += 1.0
    for word in re.split(r"[^a-z0-9]+", name.lower()):
        if word and not word.isdigit():
            x[_bucket("w", word)] += 1.0
            x[_bucket("tw", f"{tenant}/{word}")] += 1.0
    return x


class RuntimePredictor:
    def __init__(self, alpha: float = 1.0, min_samples: int = 8) -> None:
        self.alpha = alpha
        self.min_samples = min_samples
        self.weights: np.ndarray | None = None
        self.samples = 0

    def fit(self, history: list[Finished]) -> "RuntimePredictor":
        usable = [h for h in history if h.runtime_s > 0]
        self.samples = len(usable)
        if len(usable) < self.min_samples:
            self.weights = None
            return self
        X = np.array([features(h.tenant, h.name, h.devices, h.kinds) for h in usable])
        y = np.log(np.array([h.runtime_s for h in usable]))
        reg = self.alpha * np.eye(X.shape[1])
        reg[0, 0] = 0.0  # do not shrink the bias
        self.weights = solve(X.T @ X + reg, X.T @ y, assume_a="sym")
        return self

    def predict(self, tenant: str, name: str, devices: int, kinds: list[str]) -> float | None:
        if self.weights is None:
            return None
        return float(np.exp(features(tenant, name, devices, kinds) @ self.weights))

    def estimate(self, job: JobState, default: float = 3600.0) -> float:
        """Remaining runtime of a job: the user's estimate, else the prediction, else ``max_runtime_s``/default."""
        spec = job.spec
        if spec is None:
            return default
        total = spec.runtime_estimate_s or self.predict(job.tenant, spec.name, spec.devices, list(spec.device_types))
        total = total or spec.max_runtime_s or default
        if spec.max_runtime_s:
            total = min(total, spec.max_runtime_s)
        return max(1.0, total - job.run_seconds)


def evaluate(history: list[Finished], holdout: float = 0.25, seed: int = 0, alpha: float = 1.0) -> dict[str, float]:
    """Held-out error of the model and of the mean-runtime baseline (mean absolute error of log runtime, and the
    median of |predicted/actual - 1|)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(history))
    cut = int(len(history) * (1 - holdout))
    train, test = [history[i] for i in idx[:cut]], [history[i] for i in idx[cut:]]
    model = RuntimePredictor(alpha=alpha, min_samples=1).fit(train)
    actual = np.array([h.runtime_s for h in test])
    predicted = np.array([model.predict(h.tenant, h.name, h.devices, h.kinds) for h in test])
    baseline = np.exp(np.mean(np.log([h.runtime_s for h in train])))
    return {
        "train": float(len(train)), "test": float(len(test)),
        "mae_log": float(np.mean(np.abs(np.log(predicted) - np.log(actual)))),
        "baseline_mae_log": float(np.mean(np.abs(np.log(baseline) - np.log(actual)))),
        "median_rel_error": float(np.median(np.abs(predicted / actual - 1))),
        "baseline_median_rel_error": float(np.median(np.abs(baseline / actual - 1))),
    }
