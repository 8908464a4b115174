"""Finish-time fairness (ρ): a job's JCT under a policy divided by its JCT when the cluster is split equally.

The reference is Gavel's ``isolated`` allocation, computed exactly as a fluid model (no rounds): while ``m`` jobs are
in the system, each is entitled to ``C_k / m`` GPUs of every kind ``k``; a job of ``s`` GPUs therefore runs on kind
``k`` for a fraction ``C_k / (m s)`` of the time, the fractions scaled down together when they add up to more than 1
(a job cannot run more than all the time). Its speed is the sum of fraction times its throughput on each kind. The
rates change only when a job arrives or finishes, so the model steps from event to event.

The split is of what a job could use in the simulation: a gang gets no share of a kind with fewer GPUs than it
asks for, a gang larger than every kind it runs on spans them at the pace of its slowest, and a job that can never
run here (no speed on any kind, or more GPUs than its kinds have) takes no share and gets no reference: it would
otherwise slow everyone's reference for ever, and a gang would be credited a speed no placement gives it.
"""

from __future__ import annotations

import numpy as np


def isolated_finish_times(arrival_s: np.ndarray, work: np.ndarray, gpus: np.ndarray, rates: np.ndarray,
                          capacity: np.ndarray) -> np.ndarray:
    """Finish time of every job under the equal split. ``rates[j, k]``: steps/s of job j on kind k (0: cannot run);
    ``capacity[k]``: GPUs of kind k; ``work[j]``: steps. Infinite for a job that can never run here."""
    rates, runnable = _usable_rates(gpus, rates, capacity)
    order = np.argsort(arrival_s, kind="stable")
    order = order[runnable[order]]
    n = order.size
    finish = np.full(len(arrival_s), np.inf)
    left = work.astype(float).copy()
    # With m jobs in the system, job j's share of kind k is C_k / (m s_j), all scaled down together when they add up
    # to more than 1; so its speed is min(spread_j / m, full_j): spread_j = sum_k C_k r_jk / s_j, and full_j (its
    # speed when it runs all the time, spread over the kinds in proportion to their size) = spread_j s_j / U_j with
    # U_j the GPUs of the kinds it can use.
    usable_gpus = ((rates > 0) * capacity[None, :]).sum(axis=1)
    spread = (rates * capacity[None, :]).sum(axis=1) / gpus
    full = np.where(usable_gpus > 0, spread * gpus / np.maximum(usable_gpus, 1e-12), 0.0)
    active = np.zeros(0, dtype=int)  # kept as an array: 50,000-job workloads step through 100,000 events
    nxt = 0
    now = float(arrival_s[order[0]]) if n else 0.0
    while nxt < n or active.size:
        first = nxt
        while nxt < n and arrival_s[order[nxt]] <= now + 1e-9:
            nxt += 1
        if nxt > first:
            active = np.concatenate([active, order[first:nxt]])
        if not active.size:
            now = float(arrival_s[order[nxt]])
            continue
        idx = active
        speed = np.minimum(spread[idx] / len(idx), full[idx])
        with np.errstate(divide="ignore"):
            to_finish = np.where(speed > 0, left[idx] / speed, np.inf)
        step = float(to_finish.min())
        if nxt < n:
            step = min(step, float(arrival_s[order[nxt]]) - now)
        if not np.isfinite(step):
            finish[idx] = np.inf  # nothing can run these jobs
            active = np.zeros(0, dtype=int)
            continue
        left[idx] -= speed * step
        now += step
        done = left[idx] <= 1e-9 * np.maximum(1.0, work[idx])
        finish[idx[done]] = now
        active = idx[~done]
    return finish


def _usable_rates(gpus: np.ndarray, rates: np.ndarray, capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each job's speed on each kind as the simulation can use it, and whether the job can run at all: 0 on a kind
    too small for its gang; a gang too large for every kind it runs on spans them, at its slowest speed there."""
    usable = rates > 0
    fits = capacity[None, :] >= gpus[:, None]
    holds = (usable & fits).any(axis=1)
    spans = ~holds & ((usable * capacity[None, :]).sum(axis=1) >= gpus)
    slowest = np.where(usable, rates, np.inf).min(axis=1)
    out = np.where(usable & fits, rates, 0.0)
    out[spans] = np.where(usable[spans], slowest[spans, None], 0.0)
    return out, holds | spans


def finish_time_fairness(jct_s: np.ndarray, isolated_jct_s: np.ndarray) -> np.ndarray:
    """ρ per job (NaN where either JCT is unknown)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((isolated_jct_s > 0) & np.isfinite(isolated_jct_s), jct_s / isolated_jct_s, np.nan)
