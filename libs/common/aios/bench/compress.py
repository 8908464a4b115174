"""``aios bench compress``: what each compression costs and saves on the built-in digits MLP, over several seeds.

For each seed: train the MLP (64-128-10, 600 Adam steps, as the registry's tests do), evaluate on the held-out split,
then int8, SVD to half the size and 50% pruning (the last two fine-tuned on the training split), each evaluated on the
same held-out split: accuracy change in points, size ratio, and forward-pass time per 1,000 examples.
"""

from __future__ import annotations

import statistics
from typing import Any

from aios.model_registry import builtin, compress, metrics
from aios.trainer.mlp import TrainerConfig

RUNS = {"int8": ("int8", {}), "svd_half": ("svd", {"target_ratio": 0.5}), "prune_50": ("prune", {"sparsity": 0.5})}


def main(seeds: int = 3) -> dict[str, Any]:
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in RUNS}
    base_acc = []
    for seed in range(seeds):
        cfg = TrainerConfig(dataset="digits", classes=10, hidden=128, steps=600, samples=3000, lr=0.003, seed=seed)
        model = builtin.model_from_params(cfg, builtin.train_locally(cfg))
        x, y = builtin.data(cfg, "eval")
        base = metrics.evaluate(model, x, y, repeats=20)["metrics"]
        base_acc.append(base["accuracy"])
        for name, (method, options) in RUNS.items():
            small, info = compress.compress(model, method, options, builtin.data(cfg, "train"))
            m = metrics.evaluate(small, x, y, repeats=20)["metrics"]
            rows[name].append({"accuracy_delta_points": 100 * (m["accuracy"] - base["accuracy"]),
                               "size_ratio": small.nbytes / model.nbytes,
                               "latency_ratio": m["latency_ms_per_1k"] / base["latency_ms_per_1k"]})
    report: dict[str, Any] = {"seeds": seeds, "model": "digits MLP 64-128-10, 600 steps",
                              "base_accuracy": [round(a, 4) for a in base_acc]}
    for name, values in rows.items():
        report[name] = {key: {"mean": round(statistics.mean(v[key] for v in values), 3),
                              "worst": round(min(v[key] for v in values) if key == "accuracy_delta_points"
                                             else max(v[key] for v in values), 3)}
                        for key in values[0]}
    return report
