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
