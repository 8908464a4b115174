"""CPU-only jobs and preemption: room for their CPU, no more victims than needed, and quotas hold devices only."""

from __future__ import annotations

import pytest

from aios.scheduler.local import step
from aios.scheduler.policies import make_policy
from aios.scheduler.rounds import plan_round
from aios.scheduler.state import PENDING, PLACED
from tests.scheduler.helpers import Cluster


def test_two_cpu_jobs_blocked_in_one_round_preempt_only_what_they_need() -> None:
    """2 CPUs free and 4 per GPU job: two victims free the 8 the two CPU jobs need. The second job's trial placed
    the first again after its room had already been withheld, and a third victim was requeued for nothing."""
    c = Cluster(("c1", "h100", 4, 18))
    for i in range(4):
        c.submit(f"g{i}", 1, cpu_per_worker=4, now=1.0 + i * 0.01)
    las = make_policy("las")
    step(c.state, las, 2.0)
    assert all(c.status(f"g{i}") == PLACED for i in range(4))
    c.submit("u1", 0, cpu_per_worker=4, now=5000.0)
    c.submit("u2", 0, cpu_per_worker=4, now=5000.1)
    plan = plan_round(c.state, las, 5001.0)
    assert len(plan.preemptions) == 2, plan.preemptions


@pytest.mark.parametrize("scavenger_devices", [1, 0])
def test_a_cpu_job_of_a_quota_tenant_takes_no_place_of_a_tenant_without_quota(scavenger_devices: int) -> None:
    """Quotas hold devices: a CPU-only job is charged none, so it has no quota claim to preempt a tenant without
    quota for (under fifo, which never preempts otherwise, it evicted such a GPU job for its CPU)."""
    c = Cluster(("c1", "h100", 1, 8))
    c.quota("q", "", h100=1)
    c.submit("scav", scavenger_devices, tenant="free", cpu_per_worker=6)
    fifo = make_policy("fifo")
    step(c.state, fifo, 2.0)
    assert c.status("scav") == PLACED
    c.submit("cpu", 0, tenant="q", cpu_per_worker=4, now=3.0)
    plan = step(c.state, fifo, 4.0)
    assert plan.preemptions == [] and c.status("cpu") == PENDING and c.status("scav") == PLACED


def test_a_gpu_job_short_of_cpu_preempts_lower_priority_cpu_jobs_on_its_node() -> None:
    """The GPUs were free, the CPU held by lower-priority CPU-only jobs: preemption counted devices only, found
    nothing to free, and the GPU job waited for ever under ``priority``."""
    c = Cluster(("c1", "h100", 2, 8), ("c2", "cpu", 0, 8))
    c.submit("etl1", 0, cpu_per_worker=4, priority=0)
    c.submit("etl2", 0, cpu_per_worker=4, priority=0, now=1.01)
    c.submit("etl3", 0, cpu_per_worker=4, priority=0, now=1.02)
    c.submit("etl4", 0, cpu_per_worker=4, priority=0, now=1.03)
    prio = make_policy("priority")
    step(c.state, prio, 2.0)
    assert all(c.status(f"etl{i}") == PLACED for i in range(1, 5))
    c.submit("train", 2, cpu_per_worker=2, priority=10, now=3.0)
    plan = step(c.state, prio, 4.0)
    victims = [p.job_id for p in plan.preemptions]
    on_gpu_node = {j for j in ("etl1", "etl2", "etl3", "etl4")
                   if c.state.jobs[j].assignments[0].node_id == "c1"}
    assert len(victims) == 1 and set(victims) <= on_gpu_node, (victims, on_gpu_node)  # one frees the 4 it needs
    assert "preempting" in plan.reasons["train"]


def test_waiting_reasons_say_cpu_when_cpu_is_what_is_short() -> None:
    """A CPU-only job read "needs 0 devices ... none free", and a GPU job beside free GPUs "0 free in the cluster"."""
    c = Cluster(("c1", "h100", 2, 8))
    c.submit("etl", 0, cpu_per_worker=8)
    fifo = make_policy("fifo")
    step(c.state, fifo, 2.0)
    c.submit("more", 0, cpu_per_worker=4, now=3.0)
    # short enough to be backfilled before "more"'s reservation, so it tries and says what it lacks (under fifo,
    # "train" waits behind "more", and says so)
    c.submit("train", 2, cpu_per_worker=2, runtime_estimate_s=60, now=3.1)
    plan = step(c.state, make_policy("backfill"), 4.0)
    assert plan.reasons["more"].startswith("capacity: its worker needs 4 CPU and 4 GiB on one node; the most free "
                                           "on one node is 0 CPU"), plan.reasons["more"]
    assert "2 devices are free, but their nodes lack the CPU or memory for its workers (2 CPU, 4 GiB each)" in \
        plan.reasons["train"], plan.reasons["train"]


def test_cpu_victims_of_a_gpu_job_are_taken_on_one_node_when_cpu_jobs_spread_over_many() -> None:
    """CPU-only jobs are placed one a node in turn: the first 32 lower-priority ones in the policy's order sat on
    32 nodes, one core each, so trying them freed enough CPU nowhere and the GPU job never got a victim."""
    c = Cluster(*[(f"c{i:02d}", "h100", 2, 8) for i in range(40)])
    for i in range(320):
        c.submit(f"etl{i:03d}", 0, cpu_per_worker=1, memory_gib_per_worker=1, now=1.0 + i * 1e-4)
    prio = make_policy("priority")
    step(c.state, prio, 2.0)
    assert all(c.status(f"etl{i:03d}") == PLACED for i in range(320))
    c.submit("train", 2, cpu_per_worker=2, priority=10, now=3.0)
    plan = step(c.state, prio, 4.0)
    nodes = {c.state.jobs[p.job_id].assignments[0].node_id for p in plan.preemptions}
    assert len(plan.preemptions) == 4 and len(nodes) == 1, plan.preemptions


def test_a_per_node_limit_is_not_called_a_cpu_shortage() -> None:
    c = Cluster(("c1", "h100", 4), ("c2", "h100", 4))
    c.submit("big", 4, cpu_per_worker=1, max_devices_per_node=4)
    fifo = make_policy("fifo")
    step(c.state, fifo, 2.0)
    c.submit("spread", 2, cpu_per_worker=1, max_devices_per_node=1, now=3.0)
    plan = step(c.state, fifo, 4.0)
    assert c.status("spread") == PENDING and "lack the CPU" not in plan.reasons["spread"], plan.reasons["spread"]
