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
        assert bound["avg_jct_lower_bound_h"] <= exact_avg_jct_h(result), policy


def exact_avg_jct_h(result: dict) -> float:
    return sum(r["finish_s"] - r["arrival_s"] for r in result["records"]) / 3600 / len(result["records"])


def test_the_horizon_grows_until_it_no_longer_binds() -> None:
    """The first guess at the horizon divides the work by every GPU, here 200 K80s the long job cannot use, and so
    ends before the best schedule does (the short job, then the long one, on the V100: JCTs 1 h and 11 h less 1 s).
    A bound computed within it was 7.36 h, above that schedule's 6 h."""
    trace = [TraceJob("A", 3600, 1, 1, 0, rates={"v100": 1.0, "k80": 0.1}),
             TraceJob("A", 36000, 1, 1, 1, rates={"v100": 1.0})]
    cluster = {"v100": 1, "k80": 200}
    bound = jct_lower_bound(trace, {}, cluster, slot_h=0.05)
    assert bound["last_slot_used_h"] < bound["horizon_h"] - 0.05
    fifo = simulate(trace, {}, cluster, make_policy("fifo"), round_s=60)
    assert 5.9 < bound["avg_jct_lower_bound_h"] <= exact_avg_jct_h(fifo) < 6.01
    assert jct_lower_bound(trace, {}, cluster, slot_h=0.05, horizon_h=2.0) == bound  # a short first guess too


def test_arrivals_on_slot_edges_of_inexact_slot_lengths() -> None:
    """1.0 // 0.1 is 9 in floating point: an arrival at 1 h fell into the slot before, with no room in it."""
    trace = [TraceJob("A", 3600, 1, 1, 3600), TraceJob("A", 3600, 1, 1, 10800)]
    assert jct_lower_bound(trace, RATES, {"v100": 1}, slot_h=0.1)["avg_jct_lower_bound_h"] == pytest.approx(1.0, abs=2e-3)


def test_the_bound_is_rounded_down() -> None:
    """A lone job of 3,602 s has a JCT of 1.00056 h; the bound may not print 1.001."""
    bound = jct_lower_bound([TraceJob("A", 3602, 1, 1, 0)], RATES, {"v100": 1}, slot_h=0.25)
    assert bound["avg_jct_lower_bound_h"] <= 3602 / 3600


def test_a_job_no_schedule_can_finish_is_named() -> None:
    trace = [TraceJob("A", 3600, 1, 1, 0), TraceJob("A", 7200, 2, 1, 0)]
    with pytest.raises(ValueError, match=r"job 1 \(A, 2 GPUs\).*hold only 1 GPUs"):
        jct_lower_bound(trace, RATES, {"v100": 1})
    with pytest.raises(ValueError, match="no jobs"):
        jct_lower_bound([], RATES, {"v100": 1})
