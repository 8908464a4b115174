"""Runtime prediction: learns tenant and job-name structure, and beats the mean on held-out jobs."""

from __future__ import annotations

import numpy as np

from aios.scheduler.predict import RuntimePredictor, evaluate
from aios.scheduler.state import Finished, JobState
from aios.scheduler.spec import validate_spec


def synthetic(n: int, seed: int = 1) -> list[Finished]:
    rng = np.random.default_rng(seed)
    base = {"bert": 1800.0, "resnet": 600.0, "gpt": 20000.0, "eval": 120.0}
    tenant_factor = {"nlp": 1.0, "vision": 1.6, "research": 0.7}
    out = []
    for _ in range(n):
        model = rng.choice(list(base))
        tenant = rng.choice(list(tenant_factor))
        devices = int(rng.choice([1, 2, 4, 8]))
        runtime = base[model] * tenant_factor[tenant] * devices ** 0.3 * float(np.exp(rng.normal(0, 0.15)))
        out.append(Finished(tenant, f"{model}-run-{rng.integers(1000)}", devices, ["h100"], runtime))
    return out


def test_held_out_error_beats_the_mean() -> None:
    scores = evaluate(synthetic(400), holdout=0.25)
    assert scores["mae_log"] < 0.3 < scores["baseline_mae_log"]
    assert scores["median_rel_error"] < 0.25 and scores["baseline_median_rel_error"] > 0.5


def test_estimate_prefers_user_estimate_then_prediction_then_limit() -> None:
    model = RuntimePredictor().fit(synthetic(200))
    spec = validate_spec({"name": "bert-run-1", "tenant": "nlp", "devices": 1, "command": ["x"]})
    job = JobState("j", spec, "nlp", 1, 0.0)
    assert 1000 < model.estimate(job) < 3000  # about bert x nlp x 1 device = 1,800 s
    capped = validate_spec({"name": "gpt-run-1", "tenant": "nlp", "devices": 8, "max_runtime_s": 60,
                            "command": ["x"]})
    assert model.estimate(JobState("k", capped, "nlp", 2, 0.0)) == 60
    told = validate_spec({"name": "gpt-run-1", "tenant": "nlp", "runtime_estimate_s": 42, "command": ["x"]})
    assert model.estimate(JobState("m", told, "nlp", 3, 0.0)) == 42
    assert RuntimePredictor().fit(synthetic(3)).estimate(job) == 3600.0  # too little history: the default
