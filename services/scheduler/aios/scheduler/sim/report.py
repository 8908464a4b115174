"""The report of ``aios simulate --compare``: PNG plots and a ``report.md`` that embeds them.

A comparison of policies is read by a person, so the report puts the numbers in one table and shows the shapes the
averages hide: the tail of the job completion times, how busy the cluster stayed, how long the queue grew and how
fairly the jobs were served. Plots are drawn on ``matplotlib.figure.Figure`` objects with an explicit Agg canvas, so
writing a report touches no pyplot global state (no backend switch, no figure registry to leak into) and works
without a display.

A plot that would have no line at all (no policy finished a job, no timeline was recorded, no fairness reference was
run) is not written; ``report.md`` says why instead of linking to an empty image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DASH = "–"  # shown for a value that does not exist (no finished job, no fairness reference)
MAX_POINTS = 2000  # a timeline of 20,000+ rounds is reduced to this many points: the PNG cannot show more anyway
FIGSIZE = (8.0, 4.5)
DPI = 110

FIELDS = ("JCT: finish − arrival; p50/p99 interpolate linearly between jobs. ρ: a job's JCT ÷ its JCT under an "
          "equal split of what it can use of the cluster. Per job, in `<policy>.csv`: arrival, start and finish (s), "
          "GPUs, preemptions, ρ, and `kind_time_s`, the seconds it ran holding GPUs of each kind (a gang spread over "
          "two kinds counts its whole run on each).")

Plotter = Callable[[Axes, list[dict[str, Any]]], bool]


def write_report(folder: Path, results: list[dict], title: str, notes: Sequence[str] = ()) -> Path:
    """Write PNG plots and report.md into folder (created if missing); return the path of report.md. ``notes``:
    what the workload assumed (a replayed log's left-out jobs, say), listed under the table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, str, str, Plotter, str]] = [
        ("jct_cdf.png", "JCT CDF", "The further left and the steeper a line, the sooner its jobs finished; the top "
         "right shows the slowest jobs (log-scale hours).", _plot_jct_cdf, "no policy finished any job"),
        ("utilization.png", "GPU utilisation", "Share of the cluster's GPUs busy over time (moving average): higher "
         "and flatter means fewer idle GPUs while work was waiting.", _plot_utilization,
         "no policy recorded a timeline"),
        ("queue.png", "Queued jobs", "Jobs waiting to be placed over time: a lower, shorter-lived queue means jobs "
         "waited less to start.", _plot_queue, "no policy recorded a timeline"),
        ("rho.png", "Finish-time fairness", "CDF of each job's ρ (its completion time relative to a fair share of "
         "the cluster): lines left of the dashed ρ = 1 line mean jobs did at least as well as under a fair share; "
         "lower is better.", _plot_rho, "no policy was run with a fairness reference, so no job has a ρ"),
    ]
    lines = [f"# {title}", "", *_table(results), "", FIELDS, ""]
    lines += [*(f"- {note}" for note in notes), ""] if notes else []
    lines += [_best_sentence(results), ""]
    lines += _unfinished_notes(results)
    for name, label, caption, plotter, missing in plots:
        if _draw(folder / name, plotter, results):
            lines += [f"![{label}]({name})", "", f"*{caption}*", ""]
        else:
            (folder / name).unlink(missing_ok=True)  # a stale image from an earlier run would contradict the text
            lines += [f"**{label}**: not plotted, {missing}.", ""]
    out = folder / "report.md"
    out.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    return out


# --- the markdown ---------------------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str) -> str:
    """A table cell: the value formatted, or a dash where the run has no such number."""
    if value is None:
        return DASH
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _cell(text: str) -> str:
    """A policy name must not break the table, so a pipe in it is escaped."""
    return text.replace("|", "\\|")


def _hours(value: Any) -> str:
    """Hours as the summary keeps them: 2 decimals, 3 significant digits below an hour (a replay's minutes-long
    jobs read 0.00 h in every cell, and the report called the policies a tie)."""
    if value is None:
        return DASH
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _table(results: list[dict]) -> list[str]:
    """One row per policy, in the order the policies were run."""
    head = ["policy", "avg JCT h", "p50 h", "p99 h", "makespan h", "utilisation", "mean ρ", "max ρ", "preemptions",
            "wall s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in results:
        util = r.get("utilization")
        cells = [
            _cell(str(r.get("policy", "?"))),
            _hours(r.get("avg_jct_h")), _hours(r.get("p50_jct_h")), _hours(r.get("p99_jct_h")),
            _hours(r.get("makespan_h")),
            DASH if util is None else _fmt(100.0 * util, ".1f") + " %",
            _fmt(r.get("mean_rho"), ".2f"), _fmt(r.get("max_rho"), ".2f"),
            _fmt(r.get("preemptions"), "d"), _fmt(r.get("wall_s"), ".1f"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _best_sentence(results: list[dict]) -> str:
    """Name the policy (or the tied policies) with the lowest average JCT, the first thing a reader looks for; only
    among those that finished the most jobs (an average over fewer jobs left out the ones that never ran)."""
    most = max((int(r.get("finished", 0)) for r in results), default=0)
    scored = [(float(r["avg_jct_h"]), str(r.get("policy", "?"))) for r in results
              if r.get("avg_jct_h") is not None and int(r.get("finished", 0)) == most]
    if not scored:
        return "No policy finished any job, so none has an average JCT."
    best = min(s for s, _ in scored)
    names = [f"**{p}**" for s, p in scored if s == best]
    if len(names) == 1:
        return f"Lowest average JCT: {names[0]} ({_hours(best)} h)."
    return f"Lowest average JCT: {', '.join(names[:-1])} and {names[-1]} tie at {_hours(best)} h."


def _unfinished_notes(results: list[dict]) -> list[str]:
    """Averages over finished jobs flatter a policy that left jobs unfinished, so say which ones did."""
    notes = []
    for r in results:
        jobs, finished = r.get("jobs"), r.get("finished")
        if jobs is not None and finished is not None and finished < jobs:
            tail = "no JCT figures" if finished == 0 else "its JCT figures cover only the finished ones"
            notes.append(f"- {r.get('policy', '?')}: {finished} of {jobs} jobs finished; {tail}.")
    return notes + [""] if notes else []


# --- the plots ------------------------------------------------------------------------------------------------------

def _draw(path: Path, plotter: Plotter, results: list[dict]) -> bool:
    """Draw one plot into path; False (and nothing written) when the plotter had no line to draw."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not plotter(ax, results):
        return False
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, format="png")
    return True


def _style(i: int) -> dict[str, Any]:
    """The same policy gets the same colour in every plot, so the plots can be read side by side."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[(i // 10) % 4], "linewidth": 1.4}


def _ecdf(ax: Axes, values: Sequence[float], label: str, i: int) -> None:
    """An empirical CDF as a step line: the fraction of jobs at or below each value."""
    x = np.sort(np.asarray(values, dtype=float))
    y = np.arange(1, x.size + 1) / x.size
    ax.step(x, y, where="post", label=label, **_style(i))


def _plot_jct_cdf(ax: Axes, results: list[dict]) -> bool:
    drawn = False
    for i, r in enumerate(results):
        jct = [(rec["finish_s"] - rec["arrival_s"]) / 3600 for rec in r.get("records", [])
               if rec.get("finish_s") is not None]
        jct = [j for j in jct if j > 0]  # a log axis cannot show 0; a job always runs at least one round anyway
        if jct:
            _ecdf(ax, jct, f"{r.get('policy', '?')} ({len(jct)} jobs)", i)
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_xlabel("job completion time (h, log scale)")
        ax.set_ylabel("fraction of finished jobs")
        ax.set_ylim(0, 1.02)
        ax.set_title("JCT CDF")
    return drawn


def _plot_rho(ax: Axes, results: list[dict]) -> bool:
    values_all: list[float] = []
    for i, r in enumerate(results):
        rho = [float(rec["rho"]) for rec in r.get("records", []) if rec.get("rho") is not None]
        if rho:
            _ecdf(ax, rho, str(r.get("policy", "?")), i)
            values_all += rho
    if not values_all:
        return False
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1.0, label="ρ = 1 (fair share)")
    lo, hi = min(values_all), max(values_all)
    if lo > 0 and hi / lo > 10:  # a wide spread is only readable on a log axis
        ax.set_xscale("log")
    ax.set_xlabel("finish-time fairness ρ (lower is better)")
    ax.set_ylabel("fraction of jobs")
    ax.set_ylim(0, 1.02)
    ax.set_title("Finish-time fairness")
    return True


def _timeline(r: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Times (h) and one series of a run's timeline, cut to the shorter of the two if they disagree."""
    tl = r.get("timeline") or {}
    t = np.asarray(tl.get("t_s") or [], dtype=float)
    y = np.asarray(tl.get(key) or [], dtype=float)
    n = min(t.size, y.size)
    return t[:n] / 3600, y[:n]


def _end_h(r: dict) -> float | None:
    """When the run's last timeline point ends (h), if the run says."""
    end = (r.get("timeline") or {}).get("end_s")
    return float(end[0]) / 3600 if end else None


def _durations(t: np.ndarray, end: float | None = None) -> np.ndarray:
    """How long each point of a timeline lasts (until the next; the last until ``end``, else as long as the
    typical one): a point stands for a round, or for a whole idle stretch the simulation jumped over, so means
    must weigh by time."""
    if end is not None and t.size and end > t[-1]:
        return np.append(np.diff(t), end - t[-1])
    if t.size < 2:
        return np.ones(t.size)
    gaps = np.diff(t)
    return np.append(gaps, np.median(gaps))


def _moving_average(t: np.ndarray, y: np.ndarray, span: float, end: float | None = None) -> np.ndarray:
    """The time-weighted mean of the step function ``y`` (each point holds until the next) over the ``span`` before
    each point's end, so a round-by-round sawtooth reads as a level, and a long idle stretch weighs by its length
    for as long as it lies within the span, and no longer."""
    if span <= 0 or y.size < 2:
        return y
    d = _durations(t, end)
    ends = t + d
    area = np.concatenate([[0.0], np.cumsum(y * d)])  # integral of y from t[0] to t[k] is area[k]

    def integral(x: np.ndarray) -> np.ndarray:
        k = np.clip(np.searchsorted(t, x, side="right") - 1, 0, t.size - 1)
        return area[k] + y[k] * np.clip(x - t[k], 0.0, d[k])

    lo = np.maximum(ends - span, t[0])
    width = ends - lo
    return np.where(width > 0, (integral(ends) - integral(lo)) / np.where(width > 0, width, 1.0), y)


def _reduce(t: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted bucket means over at most max_points buckets: keeps plotting fast without the aliasing of plain
    striding."""
    if t.size <= max_points:
        return t, y
    starts = np.linspace(0, t.size, max_points, endpoint=False).astype(int)
    w = _durations(t)
    total = np.add.reduceat(w, starts)
    plain = np.add.reduceat(y, starts) / np.diff(np.append(starts, t.size))  # buckets of no time: their mean
    return t[starts], np.where(total > 0, np.add.reduceat(y * w, starts) / np.where(total > 0, total, 1.0), plain)


def _plot_series(ax: Axes, results: list[dict], key: str, transform: Callable[[dict, np.ndarray], np.ndarray | None],
                 ylabel: str, title: str) -> bool:
    drawn = False
    for i, r in enumerate(results):
        t, y = _timeline(r, key)
        if t.size == 0:
            continue
        y2 = transform(r, y)
        if y2 is None:
            continue
        t, y2 = _reduce(t, y2)
        end = _end_h(r)
        if end is not None and end > t[-1]:  # the last point holds until the run's end, drawn as wide as it is
            t, y2 = np.append(t, end), np.append(y2, y2[-1])
        # each point holds until the next (a round's mean, or an idle stretch): steps, not lines across gaps
        ax.step(t, y2, where="post", label=str(r.get("policy", "?")), **_style(i))
        drawn = True
    if drawn:
        ax.set_xlabel("time since the start of the simulation (h)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_xlim(left=0)
    return drawn


def _utilization_series(r: dict, busy: np.ndarray) -> np.ndarray | None:
    """busy / total GPUs, smoothed over 1 % of the run's time; None when the cluster size is unknown."""
    total = r.get("total_gpus")
    if not total:
        return None
    t, _ = _timeline(r, "busy_gpus")  # the times of the same points
    span = (t[-1] - t[0] + _durations(t, _end_h(r))[-1]) / 100 if t.size else 0.0
    return _moving_average(t, busy / float(total), span, _end_h(r))


def _plot_utilization(ax: Axes, results: list[dict]) -> bool:
    drawn = _plot_series(ax, results, "busy_gpus", _utilization_series, "busy GPUs / total GPUs", "GPU utilisation")
    if drawn:
        ax.set_ylim(0, 1.05)
    return drawn


def _plot_queue(ax: Axes, results: list[dict]) -> bool:
    drawn = _plot_series(ax, results, "queued", lambda _r, y: y, "queued jobs", "Queued jobs")
    if drawn:
        ax.set_ylim(bottom=0)
    return drawn


__all__ = ["write_report"]
