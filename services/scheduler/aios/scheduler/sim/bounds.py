"""Lower bounds on the average JCT of a workload on a cluster: how much room any policy, clairvoyant or not, has left.

The no-queueing bound runs every job alone on its fastest kind from its arrival. Under load some work must wait or
run on slower kinds, and that bound ignores it. ``jct_lower_bound`` adds the cluster's capacity: time is cut into
slots and a linear program chooses, per job, kind and slot, the fraction ``x`` of the job's gang that runs there:

- per kind and slot, the GPUs used are at most the kind's;
- per job and slot, at most the whole gang runs (less in the slot the job arrives in, and nothing before);
- every job gets its work ``p`` done (hours on its fastest kind; a slot on kind k does ``speed_k x`` of it an hour).

Every schedule the simulator can run, with free preemption and gangs spread over kinds (which the simulator runs
at the slowest kind's speed, the program at the mix's), does at least as much work by every moment as a point of
this program. A job whose work progresses at a rate of at most 1 finishes no earlier than its mean busy time (the
work-weighted mean of the times its work is done) plus ``p / 2``; the program minimises the sum of mean busy times
and so bounds the sum of finish times from below. It takes each slot's work ``w`` as done from the slot's start at
full rate (mean time ``start + w / 2``, the ``w^2 / 2`` part kept under tangents of the convex curve), which can only
under-estimate, and the result is rounded down. The bound is loose where the best schedule time-shares (a job at
half rate finishes later than its mean busy time plus ``p / 2``), where it runs part of a gang, and for jobs
shorter than a slot (each is taken to start at the slot's start), so a target between it and a policy's result is
neither shown reachable nor out of reach.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from aios.scheduler.sim.traces import Throughputs, TraceJob, kind_rates


def no_queueing_bound_h(trace: list[TraceJob], throughputs: Throughputs, cluster: dict[str, int]) -> float:
    """Average JCT when every job runs alone on its fastest kind from its arrival."""
    return float(np.mean([tj.total_steps / max(kind_rates(tj, throughputs, cluster).values()) / 3600
                          for tj in trace]))


def _max_rate(speed: np.ndarray, gpus: float, capacity: np.ndarray) -> float:
    """The most work an hour a job alone can get when its gang may be spread over kinds (fastest kinds first)."""
    rate, left = 0.0, 1.0
    for c in np.argsort(-speed):
        if speed[c] <= 0 or left <= 0:
            break
        share = min(left, capacity[c] / gpus)
        rate, left = rate + share * speed[c], left - share
    return rate


def jct_lower_bound(trace: list[TraceJob], throughputs: Throughputs, cluster: dict[str, int], slot_h: float = 1.0,
                    tangents: int = 3, horizon_h: float | None = None) -> dict[str, Any]:
    """The capacity-aware bound (module docstring), rounded down to 3 decimals. ``tangents`` = 0 takes each slot's
    work at the slot's start only; more tangents bound the within-slot part more tightly.

    The program needs a horizon; ``horizon_h`` (default: the last arrival plus the time to do all the work on the
    whole cluster at full speed plus the longest job) is only a first guess. The bound holds for every longer
    horizon once the last slot is left empty (the work of a slot past it would cost more than in the last slot,
    whose rows are slack), so the horizon is doubled while the last slot holds work or the program is infeasible,
    up to one that a schedule running the jobs one at a time after the last arrival would fit in (an error past it)."""
    if not trace:
        raise ValueError("the trace holds no jobs")
    kinds = sorted(cluster)
    n = len(trace)
    arrival = np.array([tj.arrival_s / 3600 for tj in trace])
    speed = np.zeros((n, len(kinds)))
    work = np.zeros(n)
    for j, tj in enumerate(trace):
        rates = kind_rates(tj, throughputs, cluster)
        if sum(cluster[k] for k in rates) < tj.gpus:
            raise ValueError(f"job {j} ({tj.job_type}, {tj.gpus} GPUs): the kinds it runs on hold only "
                             f"{sum(cluster[k] for k in rates)} GPUs of this cluster, so no schedule finishes it")
        best = max(rates.values())
        speed[j] = [rates.get(k, 0.0) / best for k in kinds]
        work[j] = max(tj.total_steps / best / 3600, 1e-9)
    gpus = np.array([tj.gpus for tj in trace], dtype=float)
    capacity = np.array([float(cluster[k]) for k in kinds])
    serial = float(arrival.max() + sum(work[j] / _max_rate(speed[j], gpus[j], capacity) for j in range(n)) + slot_h)
    horizon = max(horizon_h or float(arrival.max() + (work * gpus).sum() / capacity.sum() + work.max()),
                  float(arrival.max()) + slot_h)
    while True:
        solved = _solve(arrival, work, speed, gpus, capacity, slot_h, tangents, horizon)
        if solved is not None and not solved["last_slot_work"]:
            break
        if horizon >= serial:
            raise RuntimeError(f"the lower-bound program still needs its last slot at a {horizon:.0f} h horizon")
        horizon = min(2 * horizon, serial)
    finish = solved["busy"] + work / 2
    return {
        "jobs": n,
        "slot_h": slot_h,
        "tangents": tangents,
        "horizon_h": round(solved["slots"] * slot_h, 1),
        "last_slot_used_h": solved["last_used_h"],
        "variables": solved["variables"],
        "avg_jct_lower_bound_h": math.floor(float(np.mean(finish - arrival)) * 1000) / 1000,
        "no_queueing_bound_h": round(float(np.mean(work)), 3),
        "gpu_hours_per_kind": {k: round(float(h), 1) for k, h in zip(kinds, solved["gpu_hours"])},
    }


def _solve(arrival: np.ndarray, work: np.ndarray, speed: np.ndarray, gpus: np.ndarray, capacity: np.ndarray,
           slot_h: float, tangents: int, horizon_h: float) -> dict[str, Any] | None:
    """The program over ``ceil(horizon_h / slot_h)`` slots; None when infeasible within them."""
    n, m = speed.shape
    slots = int(np.ceil(horizon_h / slot_h))
    starts = np.arange(slots) * slot_h
    # one variable per (job, kind it can run on, slot from its arrival on)
    parts: list[tuple[np.ndarray, ...]] = []
    for j in range(n):
        t = np.arange(max(0, int(arrival[j] // slot_h) - 1), slots)
        begin = np.maximum(starts[t], arrival[j])
        frac = np.minimum(1.0, (starts[t] + slot_h - begin) / slot_h)  # the part of the slot after the arrival
        keep = frac > 1e-9  # (a float division may put the arrival's slot one early)
        t, begin, frac = t[keep], begin[keep], frac[keep]
        for c in np.flatnonzero(speed[j] > 0):
            parts.append((np.full(len(t), j), np.full(len(t), c), t, begin, frac))
    job, kind, slot, begin, frac = (np.concatenate(p) for p in zip(*parts))
    nv = len(job)
    v = np.arange(nv)
    rate = speed[job, kind] * slot_h  # hours of the job's work a whole gang does in the slot
    cost = begin * rate / work[job]  # the variable's share of the job's mean busy time (work at the slot's start)

    n_cap, n_gang = m * slots, n * slots
    rows = [kind * slots + slot, n_cap + job * slots + slot, n_cap + n_gang + job]
    cols = [v, v, v]
    vals = [gpus[job], 1.0 / frac, -rate]
    bounds = [np.repeat(capacity, slots), np.ones(n_gang), -work]
    costs = [cost]
    n_rows, n_cols = n_cap + n_gang + n, nv
    pair, pair_of = np.unique(job * slots + slot, return_inverse=True)
    pair_job = pair // slots
    if tangents:
        # e per (job, slot) >= w0 w - w0^2 / 2 at w0 = the slot's most work x i / tangents, with w the work done
        pair_frac = np.zeros(len(pair))
        np.maximum.at(pair_frac, pair_of, frac)
        e_col = nv + np.arange(len(pair))
        for i in range(1, tangents + 1):
            w0 = pair_frac * slot_h * i / tangents
            row = n_rows + np.arange(len(pair))
            rows += [row[pair_of], row]
            cols += [v, e_col]
            vals += [w0[pair_of] * rate, -np.ones(len(pair))]
            bounds.append(w0 * w0 / 2)
            n_rows += len(pair)
        costs.append(1.0 / work[pair_job])
        n_cols += len(pair)
    all_rows = np.concatenate(rows)
    a = coo_matrix((np.concatenate(vals), (all_rows, np.concatenate(cols))), shape=(n_rows, n_cols)).tocsr()
    used = np.unique(all_rows)  # (job, slot) rows before a job's arrival hold no variable
    res = linprog(np.concatenate(costs), A_ub=a[used], b_ub=np.concatenate(bounds)[used], bounds=(0, None),
                  method="highs")
    if res.status == 2:
        return None
    if res.status != 0:
        raise RuntimeError(f"the lower-bound program failed: {res.message}")
    x = res.x[:nv]
    busy = np.zeros(n)
    np.add.at(busy, job, cost * x)
    if tangents:
        np.add.at(busy, pair_job, res.x[nv:] / work[pair_job])
    gpu_hours = np.zeros(m)
    np.add.at(gpu_hours, kind, x * gpus[job] * slot_h)
    working = x * rate > 1e-9
    return {
        "busy": busy,
        "slots": slots,
        "variables": int(n_cols),
        "last_slot_work": bool(np.any(working & (slot == slots - 1))),
        "last_used_h": round(float(begin[working].max()), 1) if working.any() else 0.0,
        "gpu_hours": gpu_hours,
    }
