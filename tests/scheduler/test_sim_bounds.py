"""The capacity-aware lower bound on average JCT: below every schedule the simulator runs, above the no-queueing
bound where the cluster is too small for the work, and tight on hand-computed cases."""

from __future__ import annotations

import random

import pytest

from aios.scheduler.policies import make_policy
from aios.scheduler.sim.bounds import jct_lower_bound, no_queueing_bound_h
from aios.scheduler.sim.simulator import simulate
from aios.scheduler.sim.traces import TraceJob

RATES = {("A", 1): {"v100": 1.0, "k80": 0.25}, ("A", 2): {"v100": 2.0, "k80": 0.5}}


def test_two_one_hour_jobs_on_one_gpu() -> None:
    """Best schedule: one after the other, JCTs 1 h and 2 h. Splitting the GPU between them gives the same sum, so
    the bound tends to 1.5 h as slots get finer, and never passes it."""
    trace = [TraceJob("A", 3600, 1, 1, 0), TraceJob("A", 3600, 1, 1, 0)]
    coarse = jct_lower_bound(trace, RATES, {"v100": 1}, slot_h=1.0)["avg_jct_lower_bound_h"]
    fine = jct_lower_bound(trace, RATES, {"v100": 1}, slot_h=0.125)["avg_jct_lower_bound_h"]
    assert coarse < fine <= 1.5
    assert fine > 1.45
    assert no_queueing_bound_h(trace, RATES, {"v100": 1}) == 1.0


def test_a_second_gpu_removes_the_queueing() -> None:
    trace = [TraceJob("A", 3600, 1, 1, 0), TraceJob("A", 3600, 1, 1, 0)]
    assert jct_lower_bound(trace, RATES, {"v100": 2}, slot_h=0.25)["avg_jct_lower_bound_h"] == pytest.approx(1.0)


def test_work_that_must_run_on_a_slow_kind_or_wait() -> None:
    """Two 1-h jobs, one V100 and one K80 (a quarter the speed): the best schedule runs one on the V100 (1 h) and the
    other on the K80 for that hour, then on the V100 (1 + 0.75 h): average 1.375 h. The bound is below it (a job
    whose speed changes finishes later than its mean busy time plus half its work) but well above no queueing."""
    trace = [TraceJob("A", 3600, 1, 1, 0), TraceJob("A", 3600, 1, 1, 0)]
    bound = jct_lower_bound(trace, RATES, {"v100": 1, "k80": 1}, slot_h=0.125)["avg_jct_lower_bound_h"]
    assert 1.2 < bound <= 1.375


def test_gangs_count_all_their_gpus() -> None:
    """Two 2-GPU jobs of an hour on two GPUs cannot overlap: as two 1-GPU jobs on one GPU."""
    trace = [TraceJob("A", 7200, 2, 1, 0), TraceJob("A", 7200, 2, 1, 0)]
    bound = jct_lower_bound(trace, RATES, {"v100": 2}, slot_h=0.125)["avg_jct_lower_bound_h"]
    assert 1.45 < bound <= 1.5


def test_the_bound_is_below_every_simulated_schedule() -> None:
    rng = random.Random(3)
    rates = {(t, g): {"v100": v * g, "p100": p * g, "k80": k * g}
             for t, (v, p, k) in {"A": (4.0, 2.0, 1.0), "B": (3.0, 2.5, 0.5)}.items() for g in (1, 2, 4)}
    trace, t = [], 0.0
    for _ in range(30):  # a busy cluster: arrivals faster than it drains them
        t += rng.expovariate(1 / 1200)
        trace.append(TraceJob(rng.choice("AB"), rng.choice([3600, 36000]) * (0.2 + rng.random()),
                              rng.choice([1, 1, 2, 4]), 1, t))
    cluster = {"v100": 2, "p100": 2, "k80": 4}
    bound = jct_lower_bound(trace, rates, cluster, slot_h=0.5)
    assert bound["last_slot_used_h"] < bound["horizon_h"] - 1
    assert bound["avg_jct_lower_bound_h"] > no_queueing_bound_h(trace, rates, cluster) * 1.1  # capacity binds
    for policy in ("fifo", "las", "hetero-ts", "gavel"):
        result = simulate(trace, rates, cluster, make_policy(policy), round_s=360)
        assert result["finished"] == len(trace)
        assert bound["avg_jct_lower_bound_h"] <= result["avg_jct_h"], policy


def test_a_job_no_schedule_can_finish_is_named() -> None:
    trace = [TraceJob("A", 3600, 1, 1, 0), TraceJob("A", 7200, 2, 1, 0)]
    with pytest.raises(ValueError, match=r"job 1 \(A, 2 GPUs\).*hold only 1 GPUs"):
        jct_lower_bound(trace, RATES, {"v100": 1})
