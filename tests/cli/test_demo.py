"""`aios demo` and `aios bench eventlog` run end to end (small sizes; the real figures live in bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_runs_a_workload_through_a_crash_and_agrees_with_itself(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "demo"], env=aios_env, capture_output=True,
                         text=True, timeout=170)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "NATS server killed (SIGKILL)" in out.stdout
    assert "no event lost, none repeated" in out.stdout


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
                          "--gpus-per-node", "4", "--pending", "200", "--rate", "20", "--seconds", "1"],
                         env=aios_env, capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["committed_placements"] == result["placements_in_log"] == 80
    assert result["milp_status"] in ("optimal", "time-limit") and result["greedy_placements_per_s"] > 0
    assert result["placed"] == 20 and result["submit_to_placed_p99_ms"] > 0
