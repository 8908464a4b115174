"""``aios bench serve`` and ``aios bench compress`` print their figures as JSON."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_serve_prints_throughput_and_latency(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "bench", "serve", "--seconds", "1",
                          "--concurrency", "4"], env=aios_env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    for mode in ("batched", "unbatched"):
        r = report[mode]
        assert r["requests"] > 0 and r["errors"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0
    assert report["unbatched"]["mean_rows_per_call"] == 1.0
    assert report["requests_per_s"] == report["batched"]["requests_per_s"]


def test_bench_compress_reports_every_method(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "bench", "compress", "--seeds", "1"], env=aios_env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["int8"]["size_ratio"]["mean"] < 0.3 and report["svd_half"]["size_ratio"]["mean"] <= 0.5
    assert report["prune_50"]["accuracy_delta_points"]["worst"] >= -0.5
