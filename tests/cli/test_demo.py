"""`aios demo` and the benches run end to end (small sizes; the real figures live in bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_trains_registers_serves_and_predicts(aios_env: dict[str, str]) -> None:
    """`make demo` as a fresh machine runs it: every service, two tenants' jobs, the trained model served."""
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "demo"], env=aios_env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = " ".join(out.stdout.split())  # rich wraps long lines
    assert "submitted 4 jobs from 2 tenants" in text
    assert "digits-mlp: 600 steps on 4 ranks" in text
    assert "model registry: models:/digits/1" in text and "compressed: models:/digits/2 int8" in text
    predicted = text.split("prediction for 8 held-out digits: ")[1].split("]")[0]
    true = text.split("(true: ")[1].split("]")[0]
    assert sum(a == b for a, b in zip(predicted.split(","), true.split(","))) >= 6
    assert "/api/v1/jobs" in text and "dashboard http://127.0.0.1:" in text and "demo done in" in text


def test_bench_eventlog_prints_the_figures_as_json(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "bench", "eventlog", "--events", "3000",
                          "--restart-events", "12000", "--tail", "2000"], env=aios_env, capture_output=True,
                         text=True, timeout=170)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("append_per_s", "replay_per_s", "restart_s", "raw_publish_async_per_s", "raw_ordered_replay_per_s"):
        assert result[key] > 0, key
    assert result["restart_log_events"] == 12000 and result["restart_tail_events"] == 2000
    assert result["restart_snapshot_seq"] == 10000


def test_bench_inventory_prints_the_figures_as_json(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "bench", "inventory", "--nodes", "20",
                          "--gpus-per-node", "2", "--agent-seconds", "2"], env=aios_env, capture_output=True,
                         text=True, timeout=170)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["heartbeats_per_s"] > 0 and result["heartbeats_processed"] > 0
    assert result["nodes_declared_lost"] == 0 and 0 <= result["agent_cpu_percent"] < 100


def test_bench_scheduler_prints_the_figures_as_json(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "bench", "scheduler", "--nodes", "20",
                          "--gpus-per-node", "4", "--pending", "200", "--rate", "20", "--seconds", "1", "--blocked", "200"],
                         env=aios_env, capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["committed_placements"] == result["placements_in_log"] == 80
    assert result["milp_status"] in ("optimal", "time-limit") and result["greedy_placements_per_s"] > 0
    assert result["placed"] == 20 and result["submit_to_placed_p99_ms"] > 0
    assert result["blocked_queue_jobs"] == 200 and all(
        result[f"blocked_queue_round_ms_{p}"] > 0 for p in ("fairshare", "fairshare+quotas", "priority", "las"))


def test_bench_fluid_lp_prints_the_figures_as_json() -> None:
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "fluid_lp.py"
    out = subprocess.run([sys.executable, str(script), "--jobs", "5", "30", "--repeat", "1"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert set(figures) == {"ms_per_solve_5_jobs", "ms_per_solve_30_jobs"} and all(v > 0 for v in figures.values())
