"""CPU-only jobs and preemption: room for CPU, not more than needed, quotas hold devices only."""
from aios.scheduler.local import step
from aios.scheduler.policies import make_policy
from aios.scheduler.rounds import plan_round
from aios.scheduler.state import PENDING, PLACED, RUNNING
from tests.scheduler.helpers import Cluster


def test_two_cpu_jobs_in_one_round_preempt_more_than_needed() -> None:
    """LAS (not sequential): two CPU jobs blocked in one round. 2 CPU free + 4 per GPU victim: 2 victims free
    10 >= 8 needed, but the second job's trial places the first again after its room was already withheld."""
    c = Cluster(("c1", "h100", 4, 18))
    for i in range(4):
        c.submit(f"g{i}", 1, cpu_per_worker=4, now=1.0 + i * 0.01)
    las = make_policy("las")
    step(c.state, las, 2.0)
    assert all(c.status(f"g{i}") == PLACED for i in range(4))
    c.submit("u1", 0, cpu_per_worker=4, now=5000.0)
    c.submit("u2", 0, cpu_per_worker=4, now=5000.1)
    plan = plan_round(c.state, las, 5001.0)
    victims = [p.job_id for p in plan.preemptions]
    assert len(victims) == 2, victims


def test_cpu_job_of_quota_tenant_preempts_a_no_quota_gpu_job_under_fifo() -> None:
    c = Cluster(("c1", "h100", 1, 8))
    c.quota("q", "", h100=1)
    c.submit("scav", 1, tenant="free", cpu_per_worker=6)  # tenant without quota, GPU job
    fifo = make_policy("fifo")
    step(c.state, fifo, 2.0)
    assert c.status("scav") == PLACED
    c.submit("cpu", 0, tenant="q", cpu_per_worker=4, now=3.0)
    plan = plan_round(c.state, fifo, 4.0)
    assert plan.preemptions == [], plan.preemptions


def test_cpu_job_of_quota_tenant_does_not_preempt_a_no_quota_cpu_job_and_blocks_fifo() -> None:
    c = Cluster(("c1", "h100", 1, 8))
    c.quota("q", "", h100=1)
    c.submit("scav", 0, tenant="free", cpu_per_worker=6)  # tenant without quota, CPU job
    fifo = make_policy("fifo")
    step(c.state, fifo, 2.0)
    assert c.status("scav") == PLACED
    c.submit("cpu", 0, tenant="q", cpu_per_worker=4, now=3.0)
    plan = plan_round(c.state, fifo, 4.0)


