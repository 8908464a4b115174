"""The simulator's semantics on hand-computed tiny traces, and the `aios simulate` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aios.scheduler.policies import make_policy
from aios.scheduler.sim.simulator import simulate
from aios.scheduler.sim.traces import TraceJob, parse_cluster, read_gavel_trace

RATES = {("A", 1): {"v100": 1.0, "k80": 0.25}, ("A", 2): {"v100": 2.0}}
REPO = Path(__file__).resolve().parents[2]
TRACES = REPO.parent / "shared" / "traces"


def finish(result: dict, n: int) -> float:
    return next(r["finish_s"] for r in result["records"] if r["job"].endswith(f"-{n}"))


def test_two_jobs_one_gpu_run_one_after_the_other() -> None:
    trace = [TraceJob("A", 3600, 1, 1, 0), TraceJob("A", 1800, 1, 1, 0)]
    r = simulate(trace, RATES, {"v100": 1}, make_policy("fifo"), round_s=360)
    assert finish(r, 0) == 3600 and finish(r, 1) == 3600 + 1800  # 1 step/s on the V100
    assert r["avg_jct_h"] == round((1.0 + 1.5) / 2, 2) and r["makespan_h"] == 1.5 and r["utilization"] == 1.0


def test_a_job_finishes_mid_round_and_its_gpu_frees_at_the_next_round() -> None:
    trace = [TraceJob("A", 100, 1, 1, 0), TraceJob("A", 100, 1, 1, 10)]
    r = simulate(trace, RATES, {"v100": 1}, make_policy("fifo"), round_s=360)
    assert finish(r, 0) == 100 and finish(r, 1) == 360 + 100


def test_a_gang_waits_for_two_gpus() -> None:
    trace = [TraceJob("A", 720, 1, 1, 0), TraceJob("A", 720, 2, 1, 0)]
    r = simulate(trace, RATES, {"v100": 2}, make_policy("fifo"), round_s=360, gpus_per_server=2)
    assert finish(r, 0) == 720
    assert finish(r, 1) == 720 + 360  # both GPUs free only after job 0; 720 steps at 2 steps/s


def test_slow_kind_is_slow() -> None:
    r = simulate([TraceJob("A", 900, 1, 1, 0)], RATES, {"k80": 1}, make_policy("fifo"), round_s=360)
    assert finish(r, 0) == 3600  # 0.25 steps/s


def test_las_preempts_a_long_job_for_a_new_one() -> None:
    trace = [TraceJob("A", 36_000, 1, 1, 0), TraceJob("A", 360, 1, 1, 7200)]
    r = simulate(trace, RATES, {"v100": 1}, make_policy("las"), round_s=360)
    assert r["preemptions"] == 1
    assert finish(r, 1) == 7200 + 360  # the short job runs as soon as it arrives
    assert finish(r, 0) == 36_000 + 360  # the long one resumes where it stopped (checkpoint), 360 s later


def test_trace_reader_and_cluster_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.trace"
    bad.write_text("A\tcmd\tdir\t-n\t1\t100\t1\n")
    with pytest.raises(Exception, match="expected 10 tab-separated columns, found 7"):
        read_gavel_trace(bad)
    assert parse_cluster("v100=12,k80=4") == {"v100": 12, "k80": 4}
    with pytest.raises(Exception, match="not KIND=COUNT"):
        parse_cluster("v100:12")


@pytest.mark.skipif(not TRACES.is_dir(), reason="../shared/traces not present")
def test_simulate_command(aios_env: dict[str, str]) -> None:
    run = lambda *a: subprocess.run([sys.executable, "-m", "aios.cli.main", "simulate", *a], env=aios_env,  # noqa
                                    capture_output=True, text=True, timeout=300, cwd=REPO)
    listed = json.loads(run("--list-policies", "--json").stdout)
    assert listed["best"] in listed["policies"] and "fifo" in listed["policies"]
    out = run("--trace", str(TRACES / "gavel-synthetic-static-100.trace"), "--cluster", "v100=8,p100=8,k80=8",
              "--policy", "fifo", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    for key in ("avg_jct_h", "p50_jct_h", "p99_jct_h", "makespan_h", "utilization", "preemptions", "wall_s"):
        assert key in summary
    assert summary["finished"] == 100
    missing = run("--trace", "nope.trace")
    assert missing.returncode == 2 and "--trace: no such file 'nope.trace'" in missing.stderr
