"""Gittins-index time sharing (``hetero-gittins``): ``hetero-ts`` with a learned order of who runs.

``hetero-ts`` ranks by attained service (LAS), which is right when nothing is known of a job's size. But the finished
jobs of a class tell us more: a recommendation job that has run an hour is, unlike an image model, probably almost
done. For a job that got ``a`` seconds of service (normalised, per device) and whose size ``S`` is distributed like
the sizes of finished jobs of its class, the Gittins index

    G(a) = max over d > 0 of  P(S <= a + d | S > a) / E[min(S - a, d) | S > a]

is the best rate at which more service turns into completions. Serving the highest index first minimises the mean
completion time on one machine when sizes are random with known laws; with gangs we divide by the devices asked
for. A class is the job name without its trailing run number, and the size asked for (``bert-ft-12`` on 4 devices:
``bert-ft`` x 4); with fewer than ``min_samples`` finished jobs longer than the job's service so far (a law of its
size does not rest on one job) the index falls back to all finished jobs of that size, then to all of them, then to
a heavy-tail guess. Only finished jobs are read: never a job's own future.

The same sizes weigh the jobs in the kind trades. ``hetero-ts`` weighs a job's lost speed by
``((attained + young_s) / 1 h) ** -youth``, attained service standing in for the work left (heavy tails); here the
weight is the mean of ``((left + young_s) / 1 h) ** -youth`` over the sizes of finished jobs longer than the job's
attained service: the weight the job would get if its work left were known, averaged over what it may be.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Callable

import numpy as np

from aios.scheduler.policies.timeshare import TimeSharedHeteroLAS, left_weight
from aios.scheduler.state import Finished, JobState, SchedulerState, work_done

TAIL_SHAPE = 1.5
"""Past every finished job, sizes are taken as Pareto with this shape, whose index at ``a`` is (shape - 1) / a."""


def job_class(name: str, devices: int) -> str:
    return f"{re.sub(r'[-_.]?[0-9]+$', '', name)}x{devices}"


def gittins_index(sizes: list[float], attained: float) -> float | None:
    """Index of a job with ``attained`` service whose size is drawn from ``sizes`` (sorted); None past them all."""
    start = bisect.bisect_right(sizes, attained)
    if start == len(sizes):
        return None
    left = np.asarray(sizes[start:]) - attained  # service still needed by each survivor, ascending
    n = len(left)
    k = np.arange(1, n + 1)
    spent = np.cumsum(left) + (n - k) * left  # expected service for a budget of left[k-1], times n
    return float(np.max(k / np.maximum(spent, 1e-9)))


def expected_weight(sizes: list[float], attained: float, power: float, offset_s: float) -> float | None:
    """Mean over the sizes (sorted) above ``attained`` of ``((size - attained + offset_s) / 1 h) ** -power``: the
    trade weight of a job whose work left is drawn like theirs. None past them all."""
    start = bisect.bisect_right(sizes, attained)
    if start == len(sizes):
        return None
    return float(np.mean(left_weight(np.asarray(sizes[start:]) - attained, power, offset_s)))


class GittinsTimeShare(TimeSharedHeteroLAS):
    name = "hetero-gittins"

    def __init__(self, min_samples: int = 5, size_power: float = 1.0, **options: float) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.min_samples = min_samples
        self.size_power = size_power
        self._sizes: dict[str, list[float]] = {}
        self._seen: Finished | None = None
        self._cache: dict[tuple[str, str, int, int], float | None] = {}

    def _learn(self, state: SchedulerState) -> None:
        """Fold in the jobs finished since the last call (newest last in ``state.finished``)."""
        history = state.finished
        if not history or history[-1] is self._seen:
            return
        fresh = []
        for done in reversed(history):
            if done is self._seen:
                break
            fresh.append(done)
        self._seen = history[-1]
        for done in fresh:
            if done.work <= 0 or done.devices <= 0:
                continue
            size = done.work / done.devices
            for key in (job_class(done.name, done.devices), f"*x{done.devices}", "*"):
                bisect.insort(self._sizes.setdefault(key, []), size)

    def _learned(self, job: JobState, attained: float, what: str,
                 compute: Callable[[list[float], float], float | None]) -> float | None:
        """``compute(sizes, at)`` over the sizes of the narrowest group of finished jobs (class, then size, then all)
        with at least ``min_samples`` longer than the job's attained service, or None without such a group. Service
        is taken at the lower edge of its 1/16 octave, so a cached value is the same whichever job asked first."""
        devices = max(1, job.devices)
        keys = (job_class(job.spec.name if job.spec else job.job_id, devices), f"*x{devices}", "*")
        bucket = int(math.log2(1.0 + attained) * 16)
        at = 2.0 ** (bucket / 16) - 1.0
        for key in keys:
            sizes = self._sizes.get(key, [])
            if len(sizes) < self.min_samples:
                continue
            cache_key = (what, key, len(sizes), bucket)
            if cache_key in self._cache:
                found = self._cache[cache_key]
            else:
                longer = len(sizes) - bisect.bisect_right(sizes, at)
                found = compute(sizes, at) if longer >= self.min_samples else None
                if len(self._cache) > 200_000:
                    self._cache.clear()
                self._cache[cache_key] = found
            if found is not None:
                return found
        return None

    def index(self, job: JobState, attained: float) -> float:
        found = self._learned(job, attained, "index", gittins_index)
        return (TAIL_SHAPE - 1.0) / max(attained, self.young_s) if found is None else found

    def trade_weight(self, state: SchedulerState, job: JobState, now: float) -> float:
        attained = work_done(state, job, now) / max(1, job.devices)
        found = self._learned(job, attained, "weight",
                              lambda sizes, at: expected_weight(sizes, at, self.youth, self.young_s))
        # too few finished jobs longer than this one: attained service stands in for the work left, as in hetero-ts
        # (a Pareto tail's mean work left, 2 x attained, was tried in its place: 0.05-0.1 h worse on all traces)
        return float(left_weight(attained, self.youth, self.young_s)) if found is None else found

    def prepare(self, state: SchedulerState, now: float, capacity: dict[str, int]) -> None:
        self._learn(state)

    def rank_key(self, state: SchedulerState, job: JobState, now: float) -> float:
        devices = max(1, job.devices)
        return -self.index(job, work_done(state, job, now) / devices) / devices ** self.size_power
