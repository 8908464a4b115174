"""Finish-time fairness (ρ): a job's JCT under a policy divided by its JCT when the cluster is split equally.

The reference is Gavel's ``isolated`` allocation, computed exactly as a fluid model (no rounds): while ``m`` jobs are
in the system, each is entitled to ``C_k / m`` GPUs of every kind ``k``; a job of ``s`` GPUs therefore runs on kind
``k`` for a fraction ``C_k / (m s)`` of the time, the fractions scaled down together when they add up to more than 1
(a job cannot run more than all the time). Its speed is the sum of fraction times its throughput on each kind. The
rates change only when a job arrives or finishes, so the model steps from event to event.
"""

from __future__ import annotations

import numpy as np


def isolated_finish_times(arrival_s: np.ndarray, work: np.ndarray, gpus: np.ndarray, rates: np.ndarray,
                          capacity: np.ndarray) -> np.ndarray:
    """Finish time of every job under the equal split. ``rates[j, k]``: steps/s of job j on kind k (0: cannot run);
    ``capacity[k]``: GPUs of kind k; ``work[j]``: steps."""
    n = len(arrival_s)
    order = np.argsort(arrival_s, kind="stable")
    finish = np.full(n, np.nan)
    left = work.astype(float).copy()
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
        usable = rates[idx] > 0
        share = np.where(usable, capacity[None, :] / (len(idx) * gpus[idx, None]), 0.0)
        share /= np.maximum(1.0, share.sum(axis=1, keepdims=True))
        speed = (share * rates[idx]).sum(axis=1)
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


def finish_time_fairness(jct_s: np.ndarray, isolated_jct_s: np.ndarray) -> np.ndarray:
    """ρ per job (NaN where either JCT is unknown)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((isolated_jct_s > 0) & np.isfinite(isolated_jct_s), jct_s / isolated_jct_s, np.nan)
