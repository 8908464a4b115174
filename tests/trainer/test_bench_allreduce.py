"""``aios bench allreduce`` prints nccl-tests style figures for the nats backend (and gloo when torch is here)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_allreduce_prints_bandwidths(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "bench", "allreduce", "--ranks", "2", "--mb", "1,16",
                          "--iters", "1", "--rounds", "2"], env=aios_env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    nats16 = report["backends"]["nats"]["16"]
    assert nats16["algbw_gbs"] > 0 and nats16["busbw_gbs"] == nats16["algbw_gbs"]  # 2 ranks: 2(n-1)/n = 1
    assert report["rounds"] == 2 and report["iters"] == 1 and report["server_gomaxprocs"] >= 1
    where = report["where_time_goes"]
    assert where["numpy_add"]["algbw_gbs"] > 0
    rank0 = where["nats_cpu_per_op"]["16"]["rank0"]
    assert rank0["user_ms"] + rank0["system_ms"] > 0  # a 16 MiB all-reduce cannot be free
    sender = where["nats_transport_one_way"]["cpu_per_transfer"]["sender"]
    assert sender["user_ms"] + sender["system_ms"] > 0 and where["nats_transport_one_way"]["algbw_gbs"] > 0
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "torch is not installed" in report["gloo"]
    else:
        assert report["ratio_16mb_nats_over_gloo"] > 0 and "16" in report["backends"]["gloo"]


def test_bad_sizes_are_named() -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "bench", "allreduce", "--mb", "1,x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "sizes in MiB" in out.stderr
