"""The report of `aios simulate --compare`, checked on hand-built results: what a reader gets in the folder."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from aios.scheduler.sim.report import _durations, _moving_average, _reduce, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ["jct_cdf.png", "utilization.png", "queue.png", "rho.png"]


def timeline(n: int, total: int) -> dict:
    return {"t_s": [360.0 * i for i in range(n)], "busy_gpus": [i % (total + 1) for i in range(n)],
            "queued": [(n - i) // 3 for i in range(n)], "running": [min(i, 3) for i in range(n)]}


def result_a() -> dict:
    """Three finished jobs with finish-time fairness; JCTs 1, 2 and 4 h."""
    recs = [{"job": f"j-{i}", "arrival_s": 0.0, "start_s": 0.0, "finish_s": h * 3600.0, "gpus": 1,
             "kind_time_s": {"v100": h * 3600.0}, "preemptions": 0, "rho": rho}
            for i, (h, rho) in enumerate([(1, 0.8), (2, 1.1), (4, 1.5)])]
    return {"policy": "a", "avg_jct_h": 2.33, "p50_jct_h": 2.0, "p99_jct_h": 3.96, "makespan_h": 4.0,
            "utilization": 0.583, "preemptions": 2, "wall_s": 0.4, "mean_rho": 1.13, "max_rho": 1.5,
            "finished": 3, "jobs": 3, "records": recs, "timeline": timeline(40, 2), "total_gpus": 2}


def result_b() -> dict:
    """No job finished and no fairness reference: every per-job number is missing."""
    recs = [{"job": "j-0", "arrival_s": 0.0, "start_s": None, "finish_s": None, "gpus": 4, "kind_time_s": {},
             "preemptions": 0, "rho": None}]
    return {"policy": "b", "avg_jct_h": None, "p50_jct_h": None, "p99_jct_h": None, "makespan_h": None,
            "utilization": 0.0, "preemptions": 0, "wall_s": 0.1, "mean_rho": None, "max_rho": None,
            "finished": 0, "jobs": 1, "records": recs, "timeline": timeline(25_000, 2), "total_gpus": 2}


def row(md: str, policy: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {policy} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def linked_images(md: str) -> set[str]:
    return set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0  # something was drawn, not a blank canvas


def test_report_writes_plots_table_and_links(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "report"  # created on demand
    out = write_report(folder, [result_a(), result_b()], "Two policies")
    assert out == folder / "report.md"
    md = out.read_text(encoding="utf-8")
    assert md.startswith("# Two policies\n")
    for name in PLOTS:
        assert_png(folder / name)
    assert linked_images(md) == set(PLOTS)
    a, b = row(md, "a"), row(md, "b")
    assert len(a) == len(b) == 10
    assert a[1] == "2.33" and a[6] == "1.13" and a[7] == "1.50" and a[8] == "2"
    assert b[1:4] == ["–"] * 3 and b[6:8] == ["–"] * 2  # None shows as a dash, not "None"
    assert "None" not in md
    assert re.search(r"lowest average JCT.*\ba\b", md, re.IGNORECASE)
    assert "0 of 1 jobs finished" in md


def test_lowest_average_jct_is_named(tmp_path: Path) -> None:
    fast = result_a() | {"policy": "fast", "avg_jct_h": 1.25}
    slow = result_a() | {"policy": "slow", "avg_jct_h": 9.5}
    md = write_report(tmp_path, [slow, fast], "t").read_text(encoding="utf-8")
    sentence = next(ln for ln in md.splitlines() if "lowest average jct" in ln.lower())
    assert "fast" in sentence and "slow" not in sentence
    assert row(md, "slow")[1] == "9.50" and row(md, "fast")[1] == "1.25"
    # an average over fewer finished jobs left out the ones that never ran: it does not win
    partial = result_a() | {"policy": "partial", "avg_jct_h": 0.5, "finished": 2}
    md = write_report(tmp_path, [slow, partial], "t").read_text(encoding="utf-8")
    sentence = next(ln for ln in md.splitlines() if "lowest average jct" in ln.lower())
    assert "slow" in sentence and "partial" not in sentence


def test_minutes_long_jobs_are_not_rounded_into_a_tie(tmp_path: Path) -> None:
    """From a walkthrough: a replay of a live cluster's jobs of seconds read 0.00 h in every JCT cell and "fifo
    and fairshare tie at 0.00 h"; below an hour the report keeps 3 significant digits, as the summary does."""
    fifo = result_a() | {"policy": "fifo", "avg_jct_h": 0.00694, "p50_jct_h": 0.00694, "makespan_h": 0.00833}
    prio = result_a() | {"policy": "priority", "avg_jct_h": 0.00556, "p50_jct_h": 0.00556, "makespan_h": 0.00833}
    md = write_report(tmp_path, [fifo, prio], "t").read_text(encoding="utf-8")
    assert row(md, "fifo")[1:3] == ["0.00694", "0.00694"] and row(md, "priority")[1] == "0.00556"
    assert "Lowest average JCT: **priority** (0.00556 h)." in md


def test_no_rho_means_no_rho_plot(tmp_path: Path) -> None:
    a = result_a() | {"mean_rho": None, "max_rho": None}
    a["records"] = [rec | {"rho": None} for rec in a["records"]]
    md = write_report(tmp_path, [a, result_b()], "no fairness").read_text(encoding="utf-8")
    assert not (tmp_path / "rho.png").exists()
    assert "rho.png" not in md and "no job has a ρ" in md
    assert linked_images(md) == {"jct_cdf.png", "utilization.png", "queue.png"}
    for name in linked_images(md):
        assert_png(tmp_path / name)


def test_nothing_finished_and_no_timeline(tmp_path: Path) -> None:
    b = result_b() | {"timeline": {"t_s": [], "busy_gpus": [], "queued": [], "running": []}}
    md = write_report(tmp_path, [b], "empty").read_text(encoding="utf-8")
    assert linked_images(md) == set()
    assert not any((tmp_path / name).exists() for name in PLOTS)
    assert "No policy finished any job" in md
    assert row(md, "b")[1] == "–"


@pytest.mark.parametrize("n", [0, 1])
def test_single_point_or_empty_timeline_next_to_a_full_one(tmp_path: Path, n: int) -> None:
    b = result_b() | {"timeline": timeline(n, 2)}
    md = write_report(tmp_path, [result_a(), b], "mixed").read_text(encoding="utf-8")
    for name in linked_images(md):
        assert_png(tmp_path / name)
    assert {"utilization.png", "queue.png"} <= linked_images(md)


def test_timeline_means_weigh_each_point_by_how_long_it_lasts() -> None:
    """A point stands for a round or for a whole idle stretch the simulation jumped over: the smoothed and reduced
    series weigh it by its length, so ten idle hours are not one round's worth of zero, and the smoothing forgets
    them once they are further back than its span (a window of points let them weigh on the next rounds)."""
    rounds = [360.0 * i for i in range(10)]
    t = np.array(rounds + [3600.0] + [39600.0 + r for r in rounds])  # busy 1 h, idle 10 h, busy 1 h
    y = np.array([1.0] * 10 + [0.0] + [1.0] * 10)
    assert _durations(t)[9:12].tolist() == [360.0, 36000.0, 360.0]
    smooth = _moving_average(t, y, 3600.0)  # a span of one hour
    assert smooth[:10].tolist() == pytest.approx([1.0] * 10) and smooth[10] == 0.0
    assert smooth[11] == pytest.approx(360 / 3600)  # its own round, and the last 3,240 s of the idle stretch
    assert smooth[-1] == pytest.approx(1.0)  # an hour later the idle stretch is out of the span
    _, reduced = _reduce(t[:12], y[:12], max_points=2)  # buckets of six points each
    assert reduced.tolist() == pytest.approx([1.0, (4 * 360 + 360) / (4 * 360 + 36000 + 360)])
