"""Classification metrics of a model on an evaluation set, as scikit-learn defines them (macro = unweighted mean over
classes; a class never predicted has precision 0, as sklearn's ``zero_division=0``)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from aios.model_registry.nn import Model


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted."""
    out = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(out, (y_true, y_pred), 1)
    return out


def from_confusion(cm: np.ndarray, labels: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    total = cm.sum()
    summary = {"accuracy": float(tp.sum() / total) if total else 0.0, "precision_macro": float(precision.mean()),
               "recall_macro": float(recall.mean()), "f1_macro": float(f1.mean()), "examples": float(total)}
    per_class = {labels[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": float(actual[i])} for i in range(len(labels))}
    return summary, per_class


def evaluate(model: Model, x: np.ndarray, y: np.ndarray, repeats: int = 5) -> dict[str, Any]:
    """Metrics, per-class metrics, confusion matrix, and the median time of a batched forward pass per example."""
    labels = model.labels or [str(i) for i in range(model.outputs)]
    pred = model.predict(x)
    cm = confusion(y, pred, len(labels))
    summary, per_class = from_confusion(cm, labels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.logits(x)
        times.append(time.perf_counter() - t0)
    summary["latency_ms_per_1k"] = float(np.median(times) * 1000 * 1000 / max(1, len(x)))
    summary["size_bytes"] = float(model.nbytes)
    return {"metrics": summary, "per_class": per_class, "confusion": cm.tolist()}
