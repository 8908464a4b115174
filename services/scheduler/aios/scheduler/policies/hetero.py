"""Heterogeneity-aware allocation, Gavel-style: a linear program over the job x device-kind throughput matrix.

Variables X[j,k] are the share of time job j should spend on kind k. Maximise the sum of each job's normalised
throughput (throughput on k / its best throughput) subject to sum_k X[j,k] <= 1 and, per kind, sum_j devices_j *
X[j,k] <= devices of that kind; solved with ``scipy.optimize.linprog`` (HiGHS). Each round a job is offered its
best-allocated kind first, and jobs are ordered by how far their received service lags their allocation.
Jobs without throughput hints count as equally fast on every acceptable kind.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

from aios.scheduler.policies.base import Estimator, Policy
from aios.scheduler.state import JobState, SchedulerState


def throughput_row(job: JobState, kinds: list[str]) -> np.ndarray:
    spec = job.spec
    assert spec is not None
    ok = set(spec.device_types) if spec.device_types else set(kinds)
    return np.array([float(spec.throughput.get(k, 1.0)) if k in ok else 0.0 for k in kinds])


def allocate(jobs: list[JobState], capacity: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """The LP allocation X (jobs x kinds)."""
    kinds = sorted(capacity)
    if not jobs or not kinds:
        return kinds, np.zeros((len(jobs), len(kinds)))
    T = np.array([throughput_row(j, kinds) for j in jobs])
    best = T.max(axis=1, keepdims=True)
    best[best == 0] = 1.0
    norm = T / best
    nj, nk = T.shape
    c = -norm.ravel()
    rows = []
    b = []
    for j in range(nj):  # time shares of a job sum to at most 1
        r = np.zeros(nj * nk)
        r[j * nk:(j + 1) * nk] = 1
        rows.append(r)
        b.append(1.0)
    devices = np.array([max(1, j.devices) for j in jobs], dtype=float)
    for k in range(nk):  # devices of each kind
        r = np.zeros(nj * nk)
        r[k::nk] = devices
        rows.append(r)
        b.append(float(capacity[kinds[k]]))
    bounds = [(0.0, 1.0 if T[j, k] > 0 else 0.0) for j in range(nj) for k in range(nk)]
    res = linprog(c, A_ub=np.array(rows), b_ub=np.array(b), bounds=bounds, method="highs")
    X = res.x.reshape(nj, nk) if res.status == 0 else np.zeros((nj, nk))
    return kinds, X


class HeteroAware(Policy):
    name = "hetero"

    def __init__(self) -> None:
        self._preferred: dict[str, frozenset[str]] = {}

    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        capacity = {k: row["healthy"] for k, row in state.inv.capacity().items() if row["healthy"]}
        pending = [j for j in state.pending() if j.devices > 0]
        kinds, X = allocate(pending, capacity)
        self._preferred = {}
        keyed = []
        for i, job in enumerate(pending):
            share = float(X[i].sum()) if X.size else 0.0
            if X.size and X[i].max() > 1e-6:
                ranked = [kinds[k] for k in np.argsort(-X[i]) if X[i, k] > 1e-6]
                self._preferred[job.job_id] = frozenset(ranked[:1])
            keyed.append((-share, job.arrival, job))
        cpu_only = [j for j in state.pending() if j.devices == 0]
        return [j for _, _, j in sorted(keyed, key=lambda t: (t[0], t[1]))] + sorted(cpu_only, key=lambda j: j.arrival)

    def kinds_for(self, job: JobState) -> frozenset[str] | None:
        return self._preferred.get(job.job_id) or super().kinds_for(job)
