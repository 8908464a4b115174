"""Each policy on a literal cluster: what it places, what it holds back, whom it preempts, and why."""

from __future__ import annotations

import copy

import pytest

from aios.scheduler import visibility
from aios.scheduler.local import step
from aios.scheduler.policies import POLICIES, make_policy
from aios.scheduler.policies.base import Policy
from aios.scheduler.policies.timeshare import TimeSharedHeteroLAS
from aios.scheduler.rounds import explain, plan_round
from aios.scheduler.state import PENDING, PLACED, PREEMPTING, evolve
from tests.scheduler.helpers import Cluster


def test_registry_has_one_module_per_policy() -> None:
    assert set(POLICIES) == {"fifo", "priority", "fairshare", "las", "hetero", "backfill", "hetero-las",
                             "hetero-ts", "hetero-gittins", "makespan", "fifo-anykind", "gavel", "maxmin"}
    for name, factory in POLICIES.items():
        assert factory().name == name


def test_fifo_blocks_behind_the_head_and_explains() -> None:
    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    c.submit("a", 4)
    c.submit("big", 8)
    c.submit("small", 1)
    fifo = make_policy("fifo")
    plan = step(c.state, fifo, 2.0)
    assert [p.job_id for p in plan.placements] == ["a"] and c.where("a") in ({"n1": 4}, {"n2": 4})
    assert c.status("big") == PENDING and c.status("small") == PENDING
    why = explain(c.state, fifo, "small", 3.0)
    assert "behind big" in why and "position 2 of 2" in why
    why_big = explain(c.state, fifo, "big", 3.0)
    assert "gang of 8" in why_big and "4 free" in why_big and "short by 4" in why_big
    c.finish("a", 10.0)
    step(c.state, fifo, 10.0)  # releases a's devices
    step(c.state, fifo, 10.0)
    assert c.where("big") == {"n1": 4, "n2": 4} and c.status("small") == PENDING


def test_why_names_the_nodes_whose_workers_have_not_started() -> None:
    """Each node's trainer service starts that node's workers. With one of them down, the job stayed placed for ever
    and `aios why` said only "placed on n1:4, n2:4". After a grace it names the nodes whose workers are missing."""
    from aios.common.events import WorkerStarted

    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    c.submit("wide", 8)
    fifo = make_policy("fifo")
    step(c.state, fifo, 2.0)
    job = c.state.jobs["wide"]
    assert job.status == PLACED and explain(c.state, fifo, "wide", 10.0).endswith("n2:4")  # soon after: no hint
    first = job.assignments[0].node_id
    for rank in range(4):  # the first node's trainer started its four
        evolve(c.state, WorkerStarted(aggregate_id="wide", node_id=first, worker=f"rank{rank}-a1", pid=rank,
                                      attempt=1, ts=3.0))
    other = "n2" if first == "n1" else "n1"
    why = explain(c.state, fifo, "wide", 40.0)
    assert f"the workers of {other} have not started" in why and f"is it running on {other}?" in why, why
    c.state.inv.leases.holder.pop(job.assignments[1].device_uuids[0])  # a booking missing: not the trainer's fault
    assert "its devices are not all leased to it yet" in explain(c.state, fifo, "wide", 40.0)


def test_a_job_that_cannot_start_on_the_nodes_there_says_so() -> None:
    """A kind no node has, a gang larger than the cluster, a worker larger than any node: the reason said "none free"
    or "short by 4", as if waiting for other jobs would help; it names the cause and what is online."""
    c = Cluster(("n1", "h100", 4), ("n2", "a100", 2))
    c.submit("busy", 4, device_types=["h100"])
    c.submit("b200", 1, device_types=["b200"])
    c.submit("huge", 8, device_types=["h100", "a100"])
    c.submit("fat", 1, cpu_per_worker=128)
    c.submit("later", 4, device_types=["h100"])
    c.submit("cpu-job", 0, cpu_per_worker=96)
    fifo = make_policy("backfill")
    step(c.state, fifo, 2.0)
    assert c.status("busy") == PLACED
    why = {j: explain(c.state, fifo, j, 3.0) for j in ("b200", "huge", "fat", "later", "cpu-job")}
    assert "no online node has a b200 device (devices online: a100 x2, h100 x4)" in why["b200"], why["b200"]
    assert "at most 6 of its 8 a100/h100 devices even if every other job left" in why["huge"], why["huge"]
    assert "no online node can hold one worker (128 CPU" in why["fat"], why["fat"]
    assert "none free on any online node; held by busy (4)" in why["later"], why["later"]  # waiting helps here
    assert "no online node has 96 CPU and" in why["cpu-job"], why["cpu-job"]


def test_why_names_the_job_that_took_the_devices_first_and_counts_the_holders_it_leaves_out() -> None:
    """From a walkthrough: "held by" named the three largest holders of many, read as the whole story, and left
    out the small job a preemption had made room for, the one answer a user looks for."""
    c = Cluster(("n1", "h100", 8))
    for name, devices in (("a", 2), ("b", 2), ("c", 2), ("d", 1)):
        c.submit(name, devices, priority=10)
    c.submit("victim", 1)
    priority = make_policy("priority")
    step(c.state, priority, 2.0)
    c.submit("urgent", 1, now=3.0, priority=100)
    for t in (4.0, 5.0, 6.0):
        for p in step(c.state, priority, t).preemptions:
            c.workers_exited(p.job_id, t)
    assert (c.status("urgent"), c.status("victim")) == (PLACED, PENDING)
    why = explain(c.state, priority, "victim", 7.0)
    assert "held by urgent (1), a (2), b (2) and 2 more jobs (3 devices)" in why, why


def test_a_job_of_any_kind_is_charged_and_placed_on_a_kind_its_quota_admits() -> None:
    """Kueue's flavor assignment: a job naming no kind was charged against the kind with most free devices (ties
    by name: a100) and placed anywhere; a tenant with quota h100=4 waited for ever on "a100 would be 2 against
    nominal 0" beside four free H100s. It is charged for, and placed on, a kind its quota admits."""
    c = Cluster(("n1", "a100", 4), ("n2", "h100", 4))
    c.quota("solo", "", h100=4)
    c.quota("both", "", a100=2, h100=2)
    c.submit("solo-1", 2, tenant="solo")
    c.submit("both-1", 2, tenant="both")
    c.submit("both-2", 2, tenant="both")
    c.submit("solo-big", 16, tenant="solo")
    policy = make_policy("fairshare")
    step(c.state, policy, 2.0)
    assert c.where("solo-1") == {"n2": 2} and c.state.jobs["solo-1"].borrowed == {}
    assert sorted(next(iter(c.where(j))) for j in ("both-1", "both-2")) == ["n1", "n2"]  # one on each kind
    why = explain(c.state, policy, "solo-big", 3.0)  # no quota wait would let it start: that comes first
    assert "capacity: the cluster could give it at most 8 of its 16 devices" in why, why
    c.submit("solo-2", 4, tenant="solo")
    step(c.state, policy, 4.0)
    assert c.status("solo-2") == PENDING  # 2 of its 4 h100 are used; a100 is not its to use
    assert "quota: " in explain(c.state, policy, "solo-2", 5.0)


@pytest.mark.parametrize("name", ["hetero-ts", "hetero-gittins", "gavel", "makespan", "hetero", "fifo-anykind"])
def test_policies_that_plan_over_kinds_leave_a_cordoned_node_out(name: str) -> None:
    """They read the cluster's capacity per kind, which counted a cordoned node: a job best on the cordoned kind
    was allotted it and waited for ever beside free devices of another kind."""
    from aios.common.events import NodeCordoned
    from aios.scheduler.local import apply

    c = Cluster(("n1", "a100", 4), ("n2", "h100", 4))
    policy = make_policy(name)
    step(c.state, policy, 0.5)
    apply(c.state, [("node.n1", [NodeCordoned(aggregate_id="n1", reason="maintenance")])], 0.7)
    c.submit("j", 4, throughput={"a100": 3.0, "h100": 1.0})
    for t in (2.0, 3.0, 4.0):
        step(c.state, policy, t)
    assert c.where("j") == {"n2": 4}


def test_a_blocked_job_preempts_nobody_on_a_cordoned_node() -> None:
    """Its devices are closed to the blocked job: preempting there evicted a job for nothing, then another."""
    from aios.common.events import NodeCordoned
    from aios.scheduler.local import apply

    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    prio = make_policy("priority")
    c.submit("low-old", 4, now=0.5)
    step(c.state, prio, 1.0)
    c.submit("low-new", 4, now=1.5)
    step(c.state, prio, 2.0)
    closed, other = c.where("low-new"), c.where("low-old")
    node = next(iter(closed))
    apply(c.state, [(f"node.{node}", [NodeCordoned(aggregate_id=node, reason="fan")])], 3.0)
    c.submit("high", 4, priority=10, now=3.5)
    plan = step(c.state, prio, 4.0)
    assert [p.job_id for p in plan.preemptions] == ["low-old"]  # on the open node, not low-new on the closed one
    c.workers_exited("low-old", 5.0)
    for t in (6.0, 7.0, 8.0):
        step(c.state, prio, t)
    assert c.where("high") == other and c.where("low-new") == closed


def test_choosing_a_kind_under_quota_keeps_what_placed_before() -> None:
    """From review of the kind choice: a gang larger than any one kind still spans kinds; a policy's preferred kind
    is not the only one the quota is asked about; a kind whose quota is lent out is reclaimed; two jobs charged in
    one round see each other's devices; a policy's random kind is drawn once per job and round."""
    c = Cluster(("n1", "a100", 4), ("n2", "h100", 4))
    c.quota("q", "", a100=8, h100=8)
    c.submit("gang8", 8, tenant="q")
    step(c.state, make_policy("fairshare"), 2.0)
    assert c.where("gang8") == {"n1": 4, "n2": 4}  # it waited for ever, pinned to one kind of 4

    c = Cluster(("n1", "a100", 4), ("n2", "h100", 4))
    c.quota("q", "", a100=4)
    c.submit("j", 4, tenant="q", device_types=["a100", "h100"], throughput={"a100": 1.0, "h100": 3.0})
    step(c.state, make_policy("hetero-las"), 2.0)
    assert c.where("j") == {"n1": 4}  # "h100 would be 4 against nominal 0", for ever

    c = Cluster(("n1", "a100", 4), ("n2", "h100", 4))
    c.quota("q", "", a100=8, h100=8)
    c.submit("j1", 4, tenant="q")
    c.submit("j2", 4, tenant="q", now=1.1)
    plan = step(c.state, make_policy("fifo"), 2.0)
    assert sorted(p.job_id for p in plan.placements) == ["j1", "j2"]  # both pinned to the same kind, one waited

    c = Cluster(("n1", "a100", 4), ("n2", "h100", 8))
    c.quota("ta", "c", a100=4, h100=8)
    c.quota("tb", "c")
    c.submit("b-borrow", 4, tenant="tb", device_types=["a100"])
    c.submit("a-h100", 8, tenant="ta", device_types=["h100"], now=1.5)
    fairshare = make_policy("fairshare")
    step(c.state, fairshare, 2.0)
    c.submit("a-any", 4, tenant="ta", now=3.0)
    plan = step(c.state, fairshare, 4.0)
    assert [(p.job_id, p.reason) for p in plan.preemptions] == [
        ("b-borrow", "quota reclaimed by tenant ta (lent to tenant tb)")]

    c = Cluster(("n1", "a100", 4), ("n2", "h100", 4), ("n3", "v100", 4))
    for i in range(3):
        c.submit(f"j{i}", 4)
    anykind = make_policy("fifo-anykind")
    asked: list[str] = []
    draw = anykind.kinds_for
    anykind.kinds_for = lambda job: asked.append(job.job_id) or draw(job)  # type: ignore[method-assign]
    step(c.state, anykind, 2.0)
    assert sorted(asked) == ["j0", "j1", "j2"] and all(c.status(f"j{i}") == PLACED for i in range(3))


def test_a_cordoned_node_gets_no_new_jobs_and_a_drained_one_gives_its_preemptible_jobs_back() -> None:
    from aios.common.events import NodeCordoned
    from aios.scheduler.local import apply

    c = Cluster(("n1", "h100", 2), ("n2", "h100", 2))
    c.submit("keep", 2, preemptible=False)
    c.submit("move", 2)
    fifo = make_policy("fifo")
    step(c.state, fifo, 2.0)
    on = {j: next(iter(c.where(j))) for j in ("keep", "move")}
    apply(c.state, [(f"node.{n}", [NodeCordoned(aggregate_id=n, drain=True, reason="maintenance")])
                    for n in ("n1", "n2")], 3.0)
    plan = step(c.state, fifo, 4.0)
    assert [(p.job_id, p.reason) for p in plan.preemptions] == [("move", f"node {on['move']} drained: maintenance")]
    assert c.status("keep") == PLACED  # not preemptible: it runs to its end, as under Slurm's drain
    c.workers_exited("move", 5.0)
    step(c.state, fifo, 5.0)  # requeued; nowhere to go
    step(c.state, fifo, 6.0)
    assert c.status("move") == PENDING
    why = explain(c.state, fifo, "move", 7.0)
    # the nodes are online and healthy, only cordoned (it read "no online node has any healthy device")
    assert "no uncordoned node has any healthy device (devices uncordoned: none)" in why, why
    assert "n1, n2 is uncordoned" in why, why
    free = on["move"]  # the other node still runs "keep"
    apply(c.state, [(f"node.{free}", [NodeCordoned(aggregate_id=free, cordoned=False)])], 8.0)
    step(c.state, fifo, 9.0)
    step(c.state, fifo, 9.5)
    assert c.where("move") == {free: 2}


def test_gang_prefers_one_node_and_best_fit() -> None:
    c = Cluster(("n1", "h100", 8), ("n2", "h100", 2))
    c.submit("two", 2)
    c.submit("eight", 6)
    step(c.state, make_policy("fifo"), 2.0)
    assert c.where("two") == {"n2": 2}  # best fit keeps the 8-GPU node whole
    assert c.where("eight") == {"n1": 6}


def test_priority_preempts_lower_priority_and_requeues_after_checkpoint() -> None:
    c = Cluster(("n1", "h100", 4))
    c.submit("low", 4, priority=1)
    c.submit("keep", 0, priority=0)
    prio = make_policy("priority")
    step(c.state, prio, 2.0)
    c.submit("urgent", 2, priority=10, now=3.0)
    plan = step(c.state, prio, 4.0)
    assert [p.job_id for p in plan.preemptions] == ["low"] and c.status("low") == PREEMPTING
    assert "preempting low" in plan.reasons["urgent"]
    c.workers_exited("low", 5.0)  # the worker checkpointed and exited
    step(c.state, prio, 5.0)  # requeue + release
    assert c.status("low") == PENDING and c.state.jobs["low"].preemptions == 1
    step(c.state, prio, 6.0)
    assert c.status("urgent") == PLACED and c.status("low") == PENDING


def test_non_preemptible_jobs_are_not_preempted() -> None:
    c = Cluster(("n1", "h100", 2))
    c.submit("steady", 2, priority=0, preemptible=False)
    prio = make_policy("priority")
    step(c.state, prio, 1.0)
    c.submit("urgent", 2, priority=5, now=2.0)
    plan = step(c.state, prio, 3.0)
    assert plan.preemptions == [] and c.status("urgent") == PENDING


def test_fair_share_interleaves_tenants_and_enforces_quota() -> None:
    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    c.quota("nlp", "lab", h100=4)
    c.quota("vision", "lab", h100=4)
    for i in range(4):
        c.submit(f"nlp-{i}", 2, tenant="nlp", now=1.0 + i)
    for i in range(4):
        c.submit(f"vis-{i}", 2, tenant="vision", now=10.0 + i)
    step(c.state, make_policy("fairshare"), 20.0)
    placed = {j for j, s in c.state.jobs.items() if s.status == PLACED}
    assert placed == {"nlp-0", "nlp-1", "vis-0", "vis-1"}  # vision is not starved by nlp's earlier arrivals


def nlp_borrowing_from_vision() -> tuple[Cluster, Policy]:
    """Two tenants of a cohort with 4 H100s each; nlp's four 2-device jobs run, borrowing vision's idle quota."""
    c = Cluster(("n1", "h100", 8))
    c.quota("nlp", "lab", h100=4)
    c.quota("vision", "lab", h100=4)
    for i in range(4):
        c.submit(f"nlp-{i}", 2, tenant="nlp")
    fair = make_policy("fairshare")
    step(c.state, fair, 2.0)
    return c, fair


def test_fair_share_borrowing_and_reclaim() -> None:
    c, fair = nlp_borrowing_from_vision()
    assert sum(c.state.jobs[f"nlp-{i}"].status == PLACED for i in range(4)) == 4  # borrows vision's idle quota
    assert any(c.state.jobs[f"nlp-{i}"].borrowed for i in range(4))
    c.submit("vis-0", 4, tenant="vision", now=3.0)
    plan = step(c.state, fair, 4.0)
    assert len(plan.preemptions) == 2 and all(p.for_job == "vis-0" for p in plan.preemptions)
    assert "quota" in plan.reasons["vis-0"] and "reclaiming 4 h100 from tenant nlp" in plan.reasons["vis-0"]


def test_why_names_no_job_or_tenant_of_another_tenant_to_a_tenant() -> None:
    """`why` for a tenant named the jobs it waits for and the tenant it reclaims from; only ids shaped like
    generated ones (name-xxxxxx) were hidden, so 'nlp-0' and 'tenant nlp' went through."""
    c, fair = nlp_borrowing_from_vision()
    c.submit("vis-0", 4, tenant="vision", now=3.0)
    step(c.state, fair, 4.0)  # two of nlp's jobs are preempted for it, and checkpoint
    assert "from tenant nlp" in explain(c.state, fair, "vis-0", 5.0)  # the administrator sees whose they are
    for_vision = explain(c.state, fair, "vis-0", 5.0, viewer="vision")
    assert "nlp" not in for_vision and "from another tenant" in for_vision, for_vision
    assert "vis-0" in for_vision and "tenant vision" in for_vision  # its own job and name stay

    c = Cluster(("n1", "h100", 2))
    fifo = make_policy("fifo")
    c.submit("hold-0", 2, tenant="nlp")
    step(c.state, fifo, 1.0)
    c.submit("wait-0", 2, tenant="vision", now=2.0)
    assert "held by hold-0" in explain(c.state, fifo, "wait-0", 3.0)
    for_vision = explain(c.state, fifo, "wait-0", 3.0, viewer="vision")
    assert "hold-0" not in for_vision and "held by a job of another tenant" in for_vision, for_vision
    assert "held by hold-0" in explain(c.state, fifo, "wait-0", 3.0, viewer="nlp")  # a job of its own


def test_las_prefers_jobs_with_less_service() -> None:
    c = Cluster(("n1", "h100", 2))
    las = make_policy("las")
    c.submit("old", 2, now=0.0)
    step(c.state, las, 0.0)
    c.submit("new", 2, now=1.0)
    plan = step(c.state, las, 4000.0)  # old has 8,000 device-seconds: a higher queue than new
    assert [p.job_id for p in plan.preemptions] == ["old"]


def test_hetero_sends_jobs_where_they_run_fastest() -> None:
    c = Cluster(("fast", "h100", 2), ("slow", "v100", 2))
    c.submit("loves-h100", 2, device_types=["h100", "v100"], throughput={"h100": 4.0, "v100": 1.0})
    c.submit("indifferent", 2, device_types=["h100", "v100"], throughput={"h100": 1.0, "v100": 1.0})
    step(c.state, make_policy("hetero"), 2.0)
    assert c.where("loves-h100") == {"fast": 2} and c.where("indifferent") == {"slow": 2}


def test_backfill_runs_short_jobs_without_delaying_the_head() -> None:
    c = Cluster(("n1", "h100", 4))
    c.submit("running", 3, runtime_estimate_s=100)
    bf = make_policy("backfill")
    step(c.state, bf, 0.0)
    c.submit("head", 4, runtime_estimate_s=100, now=1.0)
    c.submit("short", 1, runtime_estimate_s=50, now=2.0)
    c.submit("long", 1, runtime_estimate_s=500, now=3.0)
    plan = step(c.state, bf, 5.0)
    assert [p.job_id for p in plan.placements] == ["short"]
    assert "backfill would delay head" in plan.reasons["long"]


def test_backfill_counts_what_the_running_jobs_have_run_already() -> None:
    """From a walkthrough of `aios simulate`: the head's reservation took each running job's whole estimate from
    now, not what it had left, so a job arriving half-way through was backfilled into the head's time and the
    head started 500 s late."""
    c = Cluster(("n1", "v100", 2))
    c.submit("a", 1, runtime_estimate_s=1000, now=0.0)
    bf = make_policy("backfill")
    step(c.state, bf, 0.0)
    c.submit("head", 2, runtime_estimate_s=1000, now=0.0)
    c.submit("late", 1, runtime_estimate_s=1000, now=500.0)
    plan = step(c.state, bf, 500.0)  # a ends at 1000, the head's start; late would run to 1500
    assert plan.placements == [] and "backfill would delay head" in plan.reasons["late"], plan.reasons
    c.submit("brief", 1, runtime_estimate_s=400, now=501.0)
    assert [p.job_id for p in step(c.state, bf, 501.0).placements] == ["brief"]  # ends at 901: before it


def test_node_loss_and_cancel() -> None:
    c = Cluster(("n1", "h100", 2), ("n2", "h100", 2))
    c.submit("a", 2)
    c.submit("b", 2)
    fifo = make_policy("fifo")
    step(c.state, fifo, 1.0)
    lost = next(iter(c.where("a")))
    c.lose(lost, 2.0)
    assert not c.state.inv.leases.jobs_on(lost)
    c.cancel("b", 3.0)
    plan = step(c.state, fifo, 3.0)
    assert plan.cancels == ["b"] and c.status("b") == "cancelled"


def test_cpu_only_jobs_use_cpu_capacity() -> None:
    c = Cluster(("n1", "h100", 1, 4))
    c.submit("cpu-a", 0, cpu_per_worker=3)
    c.submit("cpu-b", 0, cpu_per_worker=3)
    step(c.state, make_policy("fifo"), 1.0)
    assert c.status("cpu-a") == PLACED and c.status("cpu-b") == PENDING


def test_hetero_las_offers_the_fastest_kind_first() -> None:
    c = Cluster(("fast", "v100", 2), ("slow", "k80", 2))
    c.submit("a", 1, device_types=["v100", "k80"], throughput={"v100": 4.0, "k80": 1.0})
    c.submit("b", 2, device_types=["v100", "k80"], throughput={"v100": 4.0, "k80": 1.0})
    step(c.state, make_policy("hetero-las"), 1.0)
    assert c.where("a") == {"fast": 1}
    assert c.where("b") == {"slow": 2}  # the fast kind is full: any acceptable kind rather than waiting


def test_hetero_ts_gives_the_fast_kind_to_the_job_that_gains_most() -> None:
    c = Cluster(("fast", "v100", 1), ("slow", "k80", 1))
    c.submit("indifferent", 1, device_types=["v100", "k80"], throughput={"v100": 1.2, "k80": 1.0})
    c.submit("loves-v100", 1, device_types=["v100", "k80"], throughput={"v100": 4.0, "k80": 1.0})
    step(c.state, make_policy("hetero-ts"), 1.0)
    assert c.where("loves-v100") == {"fast": 1} and c.where("indifferent") == {"slow": 1}


def test_hetero_ts_time_shares_after_the_quantum_and_not_before() -> None:
    c = Cluster(("n1", "v100", 1))
    ts = make_policy("hetero-ts")  # quantum 360 s
    c.submit("old", 1, now=0.0)
    step(c.state, ts, 0.0)
    c.submit("new", 1, now=10.0)
    plan = step(c.state, ts, 100.0)  # old is inside its quantum: it keeps the device
    assert not plan.preemptions and "time share" in plan.reasons["new"]
    plan = step(c.state, ts, 400.0)  # quantum over: new has less attained service and takes its turn
    assert [(p.job_id, p.reason.split(":")[0]) for p in plan.preemptions] == [("old", "time share")]
    c.workers_exited("old", 401.0)
    step(c.state, ts, 401.0)
    step(c.state, ts, 401.0)
    assert c.status("new") == PLACED and c.status("old") == PENDING
    assert c.state.jobs["old"].work == 400.0


def test_hetero_ts_migrates_a_job_to_a_faster_kind_that_came_free() -> None:
    c = Cluster(("fast", "v100", 1), ("slow", "k80", 1))
    ts = make_policy("hetero-ts")
    hints = {"device_types": ["v100", "k80"], "throughput": {"v100": 4.0, "k80": 1.0}}
    c.submit("first", 1, now=0.0, **hints)
    c.submit("second", 1, now=0.0, **hints)
    step(c.state, ts, 0.0)
    on_k80 = next(j for j in ("first", "second") if c.where(j) == {"slow": 1})
    other = "second" if on_k80 == "first" else "first"
    c.finish(other, 100.0)
    step(c.state, ts, 100.0)
    plan = step(c.state, ts, 400.0)
    assert [p.job_id for p in plan.preemptions] == [on_k80] and "migrating to v100" in plan.preemptions[0].reason
    c.workers_exited(on_k80, 401.0)
    step(c.state, ts, 401.0)
    step(c.state, ts, 401.0)
    assert c.where(on_k80) == {"fast": 1}
    assert c.state.jobs[on_k80].work == 400.0 * 0.25  # 400 s on a kind four times slower


def _kinds(c: Cluster, job: str) -> set[str]:
    return {node.rstrip("0123456789") for node in c.where(job)}


def test_hetero_ts_makes_room_for_a_gang_that_cannot_use_the_free_kind() -> None:
    """The two jobs that gain most pick v100 and p100 first; the gang that cannot run on k80 must still run, with
    one of them moved to k80 (found in the static trace: a 2-hour gang waited 100 hours beside idle k80s)."""
    for ts in (TimeSharedHeteroLAS(), TimeSharedHeteroLAS(assignment_max_jobs=0)):  # with and without the MILP
        c = Cluster(("v", "v100", 4), ("p", "p100", 4), ("k", "k80", 4))
        c.submit("picky", 4, now=0.0, device_types=["v100", "p100"], throughput={"v100": 4.0, "p100": 3.0})
        every = ["v100", "p100", "k80"]
        c.submit("big", 4, now=0.0, device_types=every, throughput={"v100": 10.0, "p100": 5.0, "k80": 1.0})
        c.submit("mid", 4, now=0.0, device_types=every, throughput={"v100": 10.0, "p100": 8.0, "k80": 2.0})
        step(c.state, ts, 1.0)
        assert {j: c.status(j) for j in ("picky", "big", "mid")} == dict.fromkeys(("picky", "big", "mid"), PLACED)
        assert _kinds(c, "picky") <= {"v", "p"}


def test_hetero_ts_makes_room_for_a_job_turned_away_at_admission() -> None:
    """g ranks first and takes the v100s though it could use the k80s; h can only use v100s. Rather than leave h
    waiting beside idle k80s, g moves there."""
    c = Cluster(("v", "v100", 4), ("k", "k80", 4))
    c.submit("g", 4, now=0.0, device_types=["v100", "k80"], throughput={"v100": 2.0, "k80": 1.0})
    c.submit("h", 4, now=1.0, device_types=["v100"], throughput={"v100": 1.0})
    step(c.state, make_policy("hetero-ts"), 2.0)
    assert c.where("h") == {"v": 4} and c.where("g") == {"k": 4}


def test_hetero_ts_uses_a_kind_the_job_accepts_without_a_throughput_hint() -> None:
    """s1 accepts k80 but gave no throughput for it; s2 needs the one v100. Both run: an unhinted kind is a poor
    choice, not a forbidden one."""
    c = Cluster(("v", "v100", 1), ("k", "k80", 1))
    c.submit("s1", 1, now=0.0, device_types=["v100", "k80"], throughput={"v100": 1.0})
    c.submit("s2", 1, now=1.0, device_types=["v100"], throughput={"v100": 1.0})
    step(c.state, make_policy("hetero-ts"), 2.0)
    assert c.where("s2") == {"v": 1} and c.where("s1") == {"k": 1}


def test_hetero_ts_trades_kinds_between_gangs_and_single_jobs() -> None:
    """The tail of a batch: a gang of 8 and two of 4 that gain most from fast kinds would take all the v100s and
    p100s and leave three one-device jobs on k80s at a third of their speed; trading kinds over all of them puts a
    gang of 4 on k80 and the three single jobs on p100s, where they lose little."""
    c = Cluster(("v1", "v100", 4), ("v2", "v100", 4), ("p1", "p100", 4), ("p2", "p100", 4), ("k1", "k80", 4),
                ("k2", "k80", 4))
    every = ["v100", "p100", "k80"]
    speeds = {"a": (8, 1.0, 0.42, 0.13), "b": (4, 1.0, 0.74, 0.22), "c": (4, 1.0, 0.79, 0.24),
              "d": (1, 1.0, 0.74, 0.33), "e": (1, 1.0, 0.94, 0.29), "f": (1, 0.95, 1.0, 0.27)}
    for job, (n, v, p, k) in speeds.items():
        c.submit(job, n, now=0.0, device_types=every, throughput={"v100": v, "p100": p, "k80": k})
    step(c.state, make_policy("hetero-ts"), 1.0)
    assert all(c.status(j) == PLACED for j in speeds)
    assert _kinds(c, "a") == {"v"}
    assert [_kinds(c, j) for j in ("d", "e", "f")] == [{"p"}] * 3
    assert sorted(_kinds(c, j).pop() for j in ("b", "c")) == ["k", "p"]


def test_gavel_plan_gives_each_job_the_kind_it_gains_most_on() -> None:
    c = Cluster(("fast", "v100", 1), ("slow", "k80", 1))
    c.submit("loves-v100", 1, device_types=["v100", "k80"], throughput={"v100": 4.0, "k80": 1.0})
    c.submit("indifferent", 1, device_types=["v100", "k80"], throughput={"v100": 1.0, "k80": 1.0})
    gavel = make_policy("gavel")
    step(c.state, gavel, 1.0)
    assert c.where("loves-v100") == {"fast": 1} and c.where("indifferent") == {"slow": 1}
    # the fluid plan behind it: each job mostly on the kind where it does best against an equal split
    assert gavel.planned_share("loves-v100")["v100"] > 0.5  # type: ignore[attr-defined]
    assert gavel.planned_share("indifferent")["k80"] > 0.5  # type: ignore[attr-defined]


def test_maxmin_spreads_each_job_over_interchangeable_kinds() -> None:
    c = Cluster(("a", "v100", 2), ("b", "k80", 2))
    for name in ("one", "two"):
        c.submit(name, 1, device_types=["v100", "k80"], throughput={"v100": 4.0, "k80": 1.0})
    maxmin = make_policy("maxmin")  # kinds counted as equally fast: no job is pinned to the v100s
    step(c.state, maxmin, 1.0)
    share = maxmin.planned_share  # type: ignore[attr-defined]
    assert share("one") == share("two") == {"k80": 0.5, "v100": 0.5}


def test_maxmin_keeps_a_job_on_its_kind_until_the_plan_owes_it_more_than_a_quantum_elsewhere() -> None:
    """Each job is owed half its time on each kind; it changes kind every second quantum, not every quantum."""
    c = Cluster(("a", "v100", 1), ("b", "k80", 1))
    for name in ("one", "two"):
        c.submit(name, 1, device_types=["v100", "k80"], throughput={"v100": 4.0, "k80": 1.0})
    maxmin = make_policy("maxmin")
    step(c.state, maxmin, 1.0)
    first = {job: c.where(job) for job in ("one", "two")}
    plan = step(c.state, maxmin, 361.0)  # owed 360 s more on the other kind: one quantum, it stays
    assert not plan.preemptions and {job: c.where(job) for job in ("one", "two")} == first
    plan = step(c.state, maxmin, 721.0)  # owed 720 s more there now: both swap kinds
    assert sorted(p.job_id for p in plan.preemptions) == ["one", "two"]
    assert all("migrating to" in p.reason for p in plan.preemptions)
    for job in ("one", "two"):
        c.workers_exited(job, 722.0)
    step(c.state, maxmin, 722.0)
    step(c.state, maxmin, 722.0)
    assert {job: c.where(job) for job in ("one", "two")} == {"one": first["two"], "two": first["one"]}


def test_gittins_index_by_hand() -> None:
    from aios.scheduler.policies.gittins import gittins_index
    # sizes 1 and 10: a budget of 1 finishes half the jobs for 1 s of service each -> 0.5 per second
    assert gittins_index([1.0, 10.0], 0.0) == 0.5
    assert gittins_index([1.0, 10.0], 2.0) == 1 / 8  # only the 10 s job is left, 8 s from done
    assert gittins_index([1.0, 10.0], 10.0) is None  # older than every job seen


def test_gittins_runs_the_job_whose_kind_finishes_soon_not_the_youngest() -> None:
    """LAS would run the younger image job; finished jobs say recommendation jobs end after ~100 s of service."""
    from aios.scheduler.policies.gittins import GittinsTimeShare
    c = Cluster(("n1", "v100", 1))
    for i in range(6):  # history: short recommendation jobs, long image jobs, run one at a time
        for kind, length in (("rec", 100.0), ("img", 10_000.0)):
            name = f"{kind}-{i}"
            t0 = 1.0 + i * 20_000 + (0 if kind == "rec" else 200)
            c.submit(name, 1, now=t0)
            step(c.state, make_policy("fifo"), t0)
            c.finish(name, t0 + length)
            step(c.state, make_policy("fifo"), t0 + length)
    now = 200_000.0
    c.submit("img-new", 1, now=now - 1)  # first in line: a tie would go its way
    c.submit("rec-new", 1, now=now)
    for name, seconds in {"rec-new": 60.0, "img-new": 10.0}.items():  # service they got before a requeue
        c.state.jobs[name].work = seconds
    chosen = [j.job_id for j in make_policy("hetero-ts").order(c.state, now, lambda j: 0.0)]
    assert chosen == ["img-new"]  # least attained service gets the one device
    chosen = [j.job_id for j in GittinsTimeShare().order(c.state, now, lambda j: 0.0)]
    assert chosen == ["rec-new"]  # ~40 s from done, against at least 9,990 s


def test_gittins_gives_the_fast_kind_to_the_job_its_class_says_is_nearly_done() -> None:
    """Finished jobs of the class (``rec``) all needed 1,000 s: the one with 900 s behind it gets the V100, not the
    younger one (which ``hetero-ts``, taking attained service for the work left, favours)."""
    from aios.scheduler.policies.gittins import GittinsTimeShare, expected_weight
    assert expected_weight([1000.0, 4600.0], 1000.0, 1.0, 3600.0) == 0.5  # only the 4,600 s job is left: 1 h + 1 h
    assert expected_weight([1000.0], 1000.0, 1.0, 3600.0) is None  # older than every job seen

    def placed_on_v100(policy: TimeSharedHeteroLAS) -> str:
        c = Cluster(("fast", "v100", 1), ("slow", "k80", 1))
        for i in range(6):  # history: six jobs of the class that needed 1,000 s each, run one at a time
            t0 = 1.0 + i * 2000
            c.submit(f"rec-{i}", 1, now=t0)
            step(c.state, make_policy("fifo"), t0)
            c.finish(f"rec-{i}", t0 + 1000)
            step(c.state, make_policy("fifo"), t0 + 1000)
        now = 20_000.0
        hints = {"device_types": ["v100", "k80"], "throughput": {"v100": 4.0, "k80": 1.0}}
        for name, seconds in {"rec-7": 900.0, "rec-8": 100.0}.items():  # rec-7 is nearly done, rec-8 young
            c.submit(name, 1, now=now, **hints)
            c.state.jobs[name].work = seconds  # service they got before a requeue
        step(c.state, policy, now)
        assert {job for job in ("rec-7", "rec-8") if c.where(job)} == {"rec-7", "rec-8"}
        return next(job for job in ("rec-7", "rec-8") if c.where(job) == {"fast": 1})

    assert placed_on_v100(TimeSharedHeteroLAS()) == "rec-8"
    assert placed_on_v100(GittinsTimeShare()) == "rec-7"


def test_gittins_trusts_a_class_only_with_enough_finished_jobs_longer_than_the_job() -> None:
    """One finished job longer than a running one is no law of its size: past the class's bulk, the weight is
    ``hetero-ts``'s (attained service for the work left), not a "nearly done" guess resting on that one job."""
    from aios.scheduler.policies.gittins import GittinsTimeShare
    c = Cluster(("n1", "v100", 1))
    for i, length in enumerate([1000.0] * 5 + [100_000.0]):
        t0 = 1.0 + i * 200_000
        c.submit(f"rec-{i}", 1, now=t0)
        step(c.state, make_policy("fifo"), t0)
        c.finish(f"rec-{i}", t0 + length)
        step(c.state, make_policy("fifo"), t0 + length)
    now = 2_000_000.0
    for name, seconds in {"rec-7": 500.0, "rec-8": 90_000.0}.items():
        c.submit(name, 1, now=now)
        c.state.jobs[name].work = seconds
    gittins, ts = GittinsTimeShare(), TimeSharedHeteroLAS()
    gittins.prepare(c.state, now, {})
    young, old = c.state.jobs["rec-7"], c.state.jobs["rec-8"]
    # 90,000 s behind it, one finished job longer (by 10,000 s): hetero-ts's ((90,000 s + 1 h) / 1 h) ** -0.25
    assert gittins.trade_weight(c.state, old, now) == ts.trade_weight(c.state, old, now) == pytest.approx(0.443, 1e-3)
    # 500 s behind it: five of the six would end in ~500 s, one in ~99,500 s; the weight is their mean
    mean = (5 * ((500 + 3600) / 3600) ** -0.25 + ((99_500 + 3600) / 3600) ** -0.25) / 6
    assert gittins.trade_weight(c.state, young, now) == pytest.approx(mean, abs=2e-3)


def test_a_preempting_job_takes_the_room_it_made_and_evicts_no_more_than_it_needs() -> None:
    """A 4-device job with least service (LAS) or higher priority preempts two of four 2-device jobs. Before, the
    next round, with the victims still checkpointing, counted their devices as not coming free and preempted the
    other two as well; and the placement window gave the freed devices to two requeued 2-device jobs (their
    weights added up to more than the head's), so under LAS the job that preempted never started and preempted
    again every few minutes."""
    for name in ("las", "priority"):
        c = Cluster(("n1", "h100", 8))
        for i in range(4):
            c.submit(f"low-{i}", 2, now=0.0)
        policy = make_policy(name)
        step(c.state, policy, 1.0)
        c.submit("head", 4, priority=10, now=2.0)
        preempted = []
        for t in (5000.0, 5001.0, 5002.0, 5003.0):
            preempted += [p.job_id for p in step(c.state, policy, t).preemptions]
        assert len(preempted) == 2, (name, preempted)
        assert c.status("head") == PLACED, name


def test_a_quota_reclaim_takes_back_what_it_needs_once() -> None:
    """Vision reclaims the 4 H100s it lent to nlp: two of nlp's jobs are preempted, not all four."""
    c, fair = nlp_borrowing_from_vision()
    c.submit("vis-0", 4, tenant="vision", now=3.0)
    preempted = []
    for t in (4.0, 5.0, 6.0, 7.0):
        preempted += [p.job_id for p in step(c.state, fair, t).preemptions]
    assert len(preempted) == 2, preempted
    assert c.status("vis-0") == PLACED
    assert sorted(j for j in ("nlp-0", "nlp-1", "nlp-2", "nlp-3") if c.status(j) == PLACED) == sorted(
        j for j in ("nlp-0", "nlp-1", "nlp-2", "nlp-3") if j not in preempted)


def test_the_placement_window_never_passes_over_a_job_that_fits_for_later_ones() -> None:
    """Three gangs, ranked head (4), a (2), b (2), and four free devices: the head is placed, not a and b."""
    c = Cluster(("n1", "h100", 4))
    c.submit("head", 4, now=1.0)
    c.submit("a", 2, now=2.0)
    c.submit("b", 2, now=3.0)
    for name in ("las", "fairshare", "hetero-las", "makespan"):  # the policies that rank head first
        state = copy.deepcopy(c.state)
        plan = plan_round(state, make_policy(name), 10.0)
        assert [p.job_id for p in plan.placements] == ["head"], (name, plan.placements)


def test_preemption_frees_devices_the_job_can_start_on_not_just_enough_of_them() -> None:
    """A job of at most 2 devices per node needs 2 on each node. Counting devices, the newest low-priority job (2 on
    n2, beside 2 free there) looked enough and was preempted for nothing: only room on n1 lets the job start."""
    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    c.submit("low-a", 4, priority=0, now=0.0)
    policy = make_policy("priority")
    step(c.state, policy, 1.0)
    c.submit("low-b", 2, priority=0, now=2.0)
    step(c.state, policy, 3.0)
    assert c.where("low-a") == {"n1": 4} and c.where("low-b") == {"n2": 2}
    c.submit("high", 4, priority=10, max_devices_per_node=2, now=4.0)
    preempted = []
    for t in (5.0, 6.0, 7.0):
        preempted += [p.job_id for p in step(c.state, policy, t).preemptions]
    assert preempted == ["low-a"]
    assert c.where("high") == {"n1": 2, "n2": 2}


def test_several_blocked_jobs_make_room_in_one_round() -> None:
    """Two newcomers of LAS's first queue each preempt a long-served job in the same round; one a round made the
    second wait two rounds more."""
    c = Cluster(("n1", "h100", 8))
    for i in range(4):
        c.submit(f"old-{i}", 2, now=0.0)
    las = make_policy("las")
    step(c.state, las, 1.0)
    c.submit("new-0", 2, now=2.0)
    c.submit("new-1", 2, now=3.0)
    plan = step(c.state, las, 5000.0)
    assert sorted(p.for_job for p in plan.preemptions) == ["new-0", "new-1"]
    step(c.state, las, 5001.0)
    step(c.state, las, 5002.0)
    assert c.status("new-0") == PLACED and c.status("new-1") == PLACED


def test_a_reclaimed_borrower_waits_instead_of_borrowing_the_same_devices_again() -> None:
    """Vision borrows nlp's idle H100s; nlp submits within its own quota and reclaims them. The preempted job was
    admitted again in the next round, ahead of nlp's (same share, earlier arrival), borrowing the same devices,
    and preempted again, several times a second for ever. Jobs that fit their quota without borrowing are now
    admitted first, as in Kueue. Only a borrower on the reclaimed kind is preempted: a newer vision job on its own
    A100s was taken instead."""
    c = Cluster(("n1", "h100", 4), ("n2", "a100", 4))
    c.quota("nlp", "lab", h100=4)
    c.quota("vision", "lab", a100=4)
    fair = make_policy("fairshare")
    c.submit("v-h100", 2, tenant="vision", device_types=["h100"], now=1.0)
    step(c.state, fair, 2.0)
    c.submit("v-a100", 2, tenant="vision", device_types=["a100"], now=3.0)
    step(c.state, fair, 4.0)  # the newest vision job, on vision's own kind
    assert c.where("v-h100") == {"n1": 2} and c.where("v-a100") == {"n2": 2}
    c.submit("n4", 4, tenant="nlp", device_types=["h100"], now=5.0)
    preempted = []
    for t in range(6, 30):
        preempted += [p.job_id for p in step(c.state, fair, float(t)).preemptions]
    assert preempted == ["v-h100"]
    assert c.where("n4") == {"n1": 4} and c.status("v-h100") == PENDING and c.where("v-a100") == {"n2": 2}

    # and alone, vision's share equals nlp's once preempted: its earlier job came first and took the H100s again
    c = Cluster(("n1", "h100", 4), ("n2", "a100", 4))
    c.quota("nlp", "lab", h100=4)
    c.quota("vision", "lab", a100=4)
    c.submit("v-h100", 2, tenant="vision", device_types=["h100"], now=1.0)
    step(c.state, fair, 2.0)
    c.submit("n4", 4, tenant="nlp", device_types=["h100"], now=5.0)
    preempted = []
    for t in range(6, 30):
        preempted += [p.job_id for p in step(c.state, fair, float(t)).preemptions]
    assert preempted == ["v-h100"] and c.where("n4") == {"n1": 4} and c.status("v-h100") == PENDING


def test_a_tenant_without_quota_gives_way_to_one_within_its_quota() -> None:
    """Nlp and vision have quotas; a job of a tenant with none took all eight devices, and nlp's job, within its
    nominal quota, waited behind it with nothing reclaimed. Tenants without quota now run on what the quotas leave
    idle: a quota job within its nominal share preempts them, and they are admitted after it."""
    for name in ("fairshare", "fifo"):
        c = Cluster(("n1", "h100", 4), ("n2", "a100", 4))
        c.quota("nlp", "lab", h100=4)
        c.quota("vision", "lab", a100=4)
        policy = make_policy(name)
        c.submit("free-for-all", 8, tenant="noq", now=1.0)
        step(c.state, policy, 2.0)
        assert c.status("free-for-all") == PLACED  # idle devices are there to be used
        c.submit("nlp-2", 2, tenant="nlp", device_types=["h100"], now=3.0)
        preempted = []
        for t in range(4, 20):
            plan = step(c.state, policy, float(t))
            preempted += [(p.job_id, p.reason) for p in plan.preemptions]
        assert [j for j, _ in preempted] == ["free-for-all"], (name, preempted)
        assert "tenant noq has no quota" in preempted[0][1]
        assert c.where("nlp-2") == {"n1": 2} and c.status("free-for-all") == PENDING, name
        # as noq reads it in its job's timeline: "within nlp's" named the other tenant
        seen = visibility.redact(preempted[0][1], lambda j: c.state.jobs[j].tenant if j in c.state.jobs else None,
                                 "noq", visibility.tenants_of(c.state))
        assert "nlp" not in seen and "tenant noq has no quota" in seen, seen


def test_the_room_a_preemption_makes_in_a_quota_is_kept_for_the_job_that_made_it() -> None:
    """Found by the property test: speech's quota of 2 holds a 1-device job; a 2-device job of higher priority and
    another 1-device job arrive. The urgent one preempted the first, the other took the freed place in the same
    round, was preempted the next, the first came back in its place, and so on for ever. The preemptor's room is
    now its own for the round, so the others wait and it starts once its victim has gone."""
    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    c.quota("speech", "", h100=2)
    policy = make_policy("priority")
    c.submit("first", 1, tenant="speech", now=100.0)
    step(c.state, policy, 100.5)
    c.submit("second", 1, tenant="speech", now=101.0)
    c.submit("urgent", 2, tenant="speech", priority=1, now=101.0)
    plan = step(c.state, policy, 101.5)
    assert [p.job_id for p in plan.preemptions] == ["first"] and c.status("second") == PENDING
    c.workers_exited("first", 102.0)
    preempted = []
    for t in range(102, 110):
        preempted += [p.job_id for p in step(c.state, policy, t + 0.5).preemptions]
    assert preempted == [] and c.status("urgent") == PLACED, preempted
    assert c.state.jobs["first"].preemptions == 1 and c.state.jobs["second"].preemptions == 0


def test_a_higher_priority_job_preempts_lower_ones_of_its_own_tenant_when_the_quota_is_full() -> None:
    """Kueue's preemption within a ClusterQueue (LowerPriority): ml's quota of 4 H100s is full of its own
    low-priority jobs; its urgent job waited behind them for ever, though the policy is priority and they are
    preemptible. It now preempts the fewest of them, lowest priority and newest first, that let its quota admit
    it; a job of its own priority or higher, or one not preemptible, is never taken, and nothing is taken twice
    while the victims checkpoint."""
    c = Cluster(("n1", "h100", 8))
    c.quota("ml", "", h100=4)
    policy = make_policy("priority")
    for t, (name, prio, preemptible) in enumerate([("steady", 0, False), ("low-old", 0, True),
                                                     ("low-new", 0, True), ("peer", 10, True)]):
        c.submit(name, 1, tenant="ml", priority=prio, preemptible=preemptible, now=2.0 * t)
        step(c.state, policy, 2.0 * t + 1)
    assert all(c.status(j) == PLACED for j in ("steady", "low-old", "low-new", "peer"))
    c.submit("urgent", 2, tenant="ml", priority=10, now=9.0)
    plan = step(c.state, policy, 10.0)
    assert [(p.job_id, p.for_job) for p in plan.preemptions] == [("low-new", "urgent"), ("low-old", "urgent")]
    assert "lower priority" in plan.preemptions[0].reason and "ml" in plan.preemptions[0].reason
    assert "preempting low-new, low-old" in plan.reasons["urgent"]
    plan = step(c.state, policy, 11.0)
    assert plan.preemptions == []  # they are still checkpointing: nobody else goes
    assert "waiting for low-old, low-new to leave" in plan.reasons["urgent"]
    c.workers_exited("low-new", 12.0)
    c.workers_exited("low-old", 12.0)
    for t in (13.0, 14.0, 15.0):
        assert step(c.state, policy, t).preemptions == []
    assert c.status("urgent") == PLACED and c.status("low-old") == PENDING and c.status("low-new") == PENDING
    assert c.status("steady") == PLACED and c.status("peer") == PLACED
    # an equal-priority job waits its turn, under any policy; a lower-priority policy order preempts nobody either
    c.submit("urgent-2", 1, tenant="ml", priority=10, now=16.0)
    assert [p for t in (17.0, 18.0) for p in step(c.state, policy, t).preemptions] == []
    assert c.status("urgent-2") == PENDING and "quota" in explain(c.state, policy, "urgent-2", 19.0)


def _settle(c: Cluster, policy: Policy, start: float, rounds: int) -> list[str]:
    """Rounds in which every preempted job checkpoints and exits at once; the jobs preempted, in order."""
    preempted: list[str] = []
    for r in range(rounds):
        preempted += [p.job_id for p in step(c.state, policy, start + r).preemptions]
        for job, state in list(c.state.jobs.items()):
            if state.status == PREEMPTING:
                c.workers_exited(job, start + r + 0.5)
    return preempted


def test_preemption_within_a_quota_makes_room_within_its_nominal_share_and_settles() -> None:
    """Found by review: a job that would have to borrow was admitted after its tenant's lower-priority jobs (those
    within the nominal quota go first), found the quota taken by them and preempted one; the victim was admitted
    again ahead of it the next round, and so on for ever. Room is now made within the nominal share, which the
    job is then admitted to first: two jobs are preempted once, and it starts."""
    c = Cluster(("n1", "h100", 8))
    c.quota("ml", "c", h100=4)
    c.quota("other", "c", h100=1)  # idle: lends one
    policy = make_policy("priority")
    for i in range(3):
        c.submit(f"low{i}", 1, tenant="ml", priority=0, now=1.0 + i)
        step(c.state, policy, 1.5 + i)
    c.submit("urgent", 2, tenant="ml", priority=10, now=10.0)
    c.submit("low-new", 1, tenant="ml", priority=0, now=10.0)
    preempted = _settle(c, policy, 11.0, 12)
    assert c.status("urgent") == PLACED and len(preempted) == len(set(preempted)) <= 2, preempted


def test_a_job_that_can_never_start_preempts_nobody_in_its_quota() -> None:
    """Found by review: an 8-device job on a cluster that had lost half its nodes emptied its tenant's quota of
    four running jobs, then held the whole quota waiting, and the cluster sat idle."""
    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    c.quota("ml", "", h100=8)
    policy = make_policy("priority")
    for i in range(4):
        c.submit(f"low{i}", 1, tenant="ml", priority=0, now=1.0 + i)
        step(c.state, policy, 1.5 + i)
    assert {n for i in range(4) for n in c.where(f"low{i}")} == {"n1"}
    c.lose("n2", 9.0)
    c.submit("urgent", 8, tenant="ml", priority=10, now=10.0)
    assert _settle(c, policy, 11.0, 4) == []
    assert all(c.status(f"low{i}") == PLACED for i in range(4))


def test_preemption_within_a_quota_looks_at_every_kind_the_job_accepts() -> None:
    """Found by review: the job was charged to the kind its quota gives most of, full of a job that may not be
    preempted, and waited for ever though its tenant's low-priority jobs held the other kind it accepts."""
    c = Cluster(("n1", "h100", 4), ("n2", "a100", 2))
    c.quota("ml", "", h100=4, a100=2)
    policy = make_policy("priority")
    c.submit("steady", 4, tenant="ml", preemptible=False, device_types=["h100"], now=1.0)
    step(c.state, policy, 1.5)
    for i in range(2):
        c.submit(f"low{i}", 1, tenant="ml", priority=0, device_types=["a100"], now=2.0 + i)
        step(c.state, policy, 2.5 + i)
    c.submit("urgent", 2, tenant="ml", priority=10, device_types=["h100", "a100"], now=10.0)
    assert sorted(_settle(c, policy, 11.0, 4)) == ["low0", "low1"]
    assert c.where("urgent") == {"n2": 2} and c.status("steady") == PLACED


def test_fifo_keeps_a_full_quota_to_the_jobs_that_hold_it() -> None:
    """Preemption within a tenant's quota follows the policy: under fifo, which preempts nobody, a higher-priority
    job waits for its tenant's running jobs to end."""
    c = Cluster(("n1", "h100", 8))
    c.quota("ml", "", h100=2)
    policy = make_policy("fifo")
    c.submit("low", 2, tenant="ml", priority=0, now=1.0)
    step(c.state, policy, 2.0)
    c.submit("urgent", 2, tenant="ml", priority=10, now=3.0)
    assert [p for t in (4.0, 5.0) for p in step(c.state, policy, t).preemptions] == []
    assert c.status("low") == PLACED and c.status("urgent") == PENDING


def test_devices_a_finished_job_gives_back_are_not_taken_from_another_by_preemption() -> None:
    """A quota job waiting for its tenant's own job to end preempted a tenant without quota in the very round that
    job ended: the ended job's devices were still leased in that round's view. They count as coming free, as a
    preempted job's do, and the waiting job starts on them."""
    for name in ("fairshare", "fifo"):
        c = Cluster(("n1", "a100", 4))
        c.quota("alpha", "", a100=2)
        policy = make_policy(name)
        c.submit("a1", 2, tenant="alpha", now=1.0)
        step(c.state, policy, 2.0)
        c.submit("scav", 2, tenant="beta", now=3.0)
        step(c.state, policy, 4.0)
        c.submit("a2", 2, tenant="alpha", now=5.0)
        step(c.state, policy, 6.0)
        assert c.status("a1") == PLACED and c.status("scav") == PLACED and c.status("a2") == PENDING
        c.finish("a1", 7.0)
        preempted = [p.job_id for t in range(8, 12) for p in step(c.state, policy, float(t)).preemptions]
        assert preempted == [] and c.status("a2") == PLACED and c.status("scav") == PLACED, (name, preempted)


def test_a_removed_quota_holds_nothing_back_and_guarantees_nothing() -> None:
    """There was no way to take a quota away: a tenant once given one stayed bound by it (and others could not
    use what it guaranteed) until an administrator set a huge one. Removed, the tenant is one without a quota."""
    c = Cluster(("n1", "h100", 4), ("n2", "a100", 4))
    c.quota("nlp", "", h100=1)
    policy = make_policy("fairshare")
    c.submit("big", 4, tenant="nlp", device_types=["h100"], now=1.0)
    step(c.state, policy, 2.0)
    assert c.status("big") == PENDING and "quota" in (step(c.state, policy, 3.0).reasons.get("big") or "")
    c.remove_quota("nlp", 4.0)
    assert "nlp" not in c.state.inv.tenants
    step(c.state, policy, 5.0)
    assert c.where("big") == {"n1": 4}
    c.quota("vision", "", h100=4)  # and it gives way to a job within its quota, as any tenant without one does
    c.submit("vis", 4, tenant="vision", device_types=["h100"], now=6.0)
    preempted = [(p.job_id, p.reason) for t in range(7, 12) for p in step(c.state, policy, float(t)).preemptions]
    assert [j for j, _ in preempted] == ["big"] and "tenant nlp has no quota" in preempted[0][1], preempted


def test_a_gang_larger_than_any_kind_runs_across_the_kinds_its_quota_and_cohort_cover() -> None:
    """A gang was charged to one kind: nlp's 8-device job, with 4 H100s of quota and 4 A100s its cohort could lend,
    could never be admitted (and before that, `why` read as if a wait would do). Charged every device of each kind it
    may be placed on, it waits while its tenant's other job holds the H100s, says so, and then runs across both,
    borrowing vision's idle A100s."""
    c = Cluster(("n1", "h100", 4), ("n2", "a100", 4))
    c.quota("nlp", "lab", h100=4)
    c.quota("vision", "lab", a100=4)
    c.submit("wide", 8, tenant="nlp", now=1.0)
    c.submit("fits", 4, tenant="nlp", now=1.0)
    fair = make_policy("fairshare")
    step(c.state, fair, 2.0)
    why = explain(c.state, fair, "wide", 3.0)
    assert "capacity: a gang of 8 larger than any one kind, and 4 free over the kinds it accepts" in why, why
    assert c.status("fits") == PLACED
    c.finish("fits", 4.0)
    for t in (5.0, 6.0):
        step(c.state, fair, t)
    assert c.where("wide") == {"n1": 4, "n2": 4} and c.state.jobs["wide"].borrowed == {"a100": 4}


def test_why_of_an_ended_job_names_no_devices() -> None:
    c = Cluster(("n1", "h100", 4))
    c.submit("done", 2, now=1.0)
    fifo = make_policy("fifo")
    step(c.state, fifo, 2.0)
    assert explain(c.state, fifo, "done", 3.0) == "done is placed on n1:2"
    c.finish("done", 4.0)
    assert explain(c.state, fifo, "done", 5.0) == "done is succeeded"  # it read "succeeded on n1:2"


def test_a_head_that_cannot_start_on_the_nodes_there_does_not_hold_the_queue() -> None:
    """Strict order (priority, fifo): the head blocks the jobs behind it while it waits for devices to come free.
    A head that cannot start on the nodes there now, whoever leaves (8 devices with one of two 4-device nodes
    drained), kept every other job waiting beside 4 idle devices."""
    from aios.common.events import NodeCordoned
    from aios.scheduler.local import apply

    for name in ("priority", "fifo"):
        c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
        apply(c.state, [("node.n1", [NodeCordoned(aggregate_id="n1", drain=True, reason="maintenance")])], 0.5)
        policy = make_policy(name)
        c.submit("wide", 8, priority=20, now=1.0)
        c.submit("small", 4, priority=10, now=2.0)
        step(c.state, policy, 3.0)
        assert c.status("wide") == PENDING and c.where("small") == {"n2": 4}, name
        assert "uncordoned" in explain(c.state, policy, "wide", 4.0)


def test_why_names_the_job_that_may_not_be_preempted() -> None:
    """Found by a walkthrough: a priority-20 gang waited behind a priority-5 job marked preemptible: false, and
    `aios why` said only "short by 2". It names the job its policy would have preempted but for that."""
    c = Cluster(("n1", "h100", 8))
    policy = make_policy("priority")
    c.submit("mid", 2, priority=5, preemptible=False, now=1.0)
    c.submit("low", 2, priority=1, now=1.5)
    step(c.state, policy, 2.0)
    c.submit("big", 8, priority=20, now=3.0)
    plan = step(c.state, policy, 4.0)
    assert [p.job_id for p in plan.preemptions] == []  # low alone would not make room
    assert "would preempt but for preemptible: false: mid (2)" in plan.reasons["big"], plan.reasons["big"]
    assert "mid (2)" in explain(c.state, policy, "big", 5.0)
    fifo = make_policy("fifo")  # a policy that preempts nobody has nobody to name
    assert "preemptible: false" not in step(c.state, fifo, 6.0).reasons["big"]


@pytest.mark.parametrize("name", ["las", "hetero-las"])
def test_a_round_asks_the_policy_for_victims_once_for_jobs_it_treats_alike(name: str) -> None:
    """Found by measuring a long queue: under `las`, a cluster held by jobs that may not be preempted and 3,000
    queued jobs made a round take 55 s, since every queued job asked the policy for its victims (a walk of every
    running job) and then up to 20 times more to name who stays. Jobs in the same LAS queue get the same victims:
    asked once, every job is still told who holds the room."""
    calls = []
    base = type(make_policy(name))

    class Counting(base):  # type: ignore[valid-type, misc]
        def victims(self, state, now, job):  # type: ignore[no-untyped-def]
            calls.append(job.job_id)
            return super().victims(state, now, job)
    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    for i in range(4):
        c.submit(f"hold{i}", 2, priority=1, preemptible=False, now=1.0)
    policy = Counting()
    step(c.state, policy, 2.0)
    for i in range(30):
        c.submit(f"q{i}", 2, priority=5, now=3.0 + i)
    plan = step(c.state, policy, 4_000.0)
    for job in [f"q{i}" for i in range(30)]:
        assert "would preempt but for preemptible: false: hold" in plan.reasons[job], plan.reasons[job]
    assert len(calls) <= 1 + 4, calls  # once for the queue, once for each job that stays (4 of them)


@pytest.mark.parametrize("name", ["fifo", "fairshare", "priority"])
def test_a_tenant_without_quota_holds_no_quota_kind_with_a_job_that_cannot_be_preempted(name: str) -> None:
    """Found by review: a tenant without a quota ran a preemptible: false job on all four H100s, which tenants a
    and b's quotas cover; a's job within its quota then waited for ever (the devices can only come back by
    preemption). Such a job runs only on kinds no quota covers, and waits, saying so, if it accepts no other."""
    c = Cluster(("h1", "h100", 4), ("c1", "t4", 2))
    c.quota("a", "c", h100=2)
    c.quota("b", "c", h100=2)
    policy = make_policy(name)
    c.submit("np-free", 4, tenant="free", device_types=["h100"], preemptible=False, now=1.0)
    c.submit("np-any", 2, tenant="free", preemptible=False, now=1.0)
    plan = step(c.state, policy, 2.0)
    assert c.status("np-free") == PENDING and "preemptible: false runs only on kinds no tenant's quota covers" \
        in plan.reasons["np-free"] and plan.reasons["np-free"].endswith("h100 is covered"), plan.reasons
    assert c.status("np-any") == PLACED and c.where("np-any") == {"c1": 2}  # the kind nobody's quota covers
    c.submit("a-need", 1, tenant="a", device_types=["h100"], now=3.0)
    step(c.state, policy, 4.0)
    assert c.status("a-need") == PLACED
    c.submit("scav", 3, tenant="free", device_types=["h100"], now=5.0)  # preemptible: runs on what is idle
    step(c.state, policy, 6.0)
    assert c.status("scav") == PLACED


@pytest.mark.parametrize("name", ["fifo", "fairshare", "priority"])
def test_a_job_preempts_no_scavenger_for_room_on_kinds_its_quota_does_not_let_it_use(name: str) -> None:
    """Room was judged on any kind the job accepts, but the job is placed on the kind its quota was charged for:
    nlp's 4-device job (quota a100=4) preempted speech's job for 2 H100s + 2 A100s, could not start on 2 A100s, and
    the scavenger was placed back on its devices and preempted again, about 40 times a second, for ever."""
    c = Cluster(("h1", "h100", 4), ("h2", "h100", 4), ("a1", "a100", 4), ("a2", "a100", 4))
    c.quota("nlp", "", h100=2, a100=4)
    c.quota("ops", "", h100=6, a100=6)
    policy = make_policy(name)
    for job, n, kind in (("hog-h4", 4, "h100"), ("hog-h2", 2, "h100"), ("hog-a6", 6, "a100")):
        c.submit(job, n, tenant="ops", device_types=[kind], preemptible=False, now=1.0)
    step(c.state, policy, 2.0)
    c.submit("scav", 4, tenant="speech", now=3.0)
    step(c.state, policy, 4.0)
    assert c.status("scav") == PLACED and sorted(c.where("scav")) == ["a2", "h2"]
    c.submit("nlpjob", 4, tenant="nlp", now=5.0)
    preempted = []
    for t in range(6, 200, 20):  # past the preemption grace each time: the victim's devices come back
        preempted += [p.job_id for p in step(c.state, policy, float(t)).preemptions]
    assert preempted == [] and c.status("scav") == PLACED and c.status("nlpjob") == PENDING, preempted


def _running_on_one_of_two_nodes(policy: Policy) -> Cluster:
    """Job j (4 devices) placed at 100 s on one of two 4-device nodes, running since 101 s."""
    from aios.common.events import JobStarted
    from aios.scheduler.local import apply

    c = Cluster(("n1", "a100", 4), ("n2", "a100", 4))
    c.submit("j", 4, now=1.0)
    step(c.state, policy, 100.0)
    apply(c.state, [("job.j", [JobStarted(aggregate_id="j", world_size=4)])], 101.0)
    return c


def test_a_job_on_a_lost_node_is_requeued_whatever_the_resource_manager_s_clock_says() -> None:
    """Found by review: the resource manager stamps NodeLost and its JobRequeued with its own clock. 30 s behind
    the scheduler's, its requeue looked older than the job's placement and was dropped as late, and the fallback
    saw the node lost "before" the placement too: the job ran on a dead node for ever, charged to its tenant. What
    happened first is now told by log sequence; a requeue about a placement made after the loss is still late."""
    from aios.common.events import JobRequeued, JobStarted
    from aios.scheduler.local import apply

    policy = make_policy("fifo")
    for skew in (-30.0, -300.0, +300.0):
        c = _running_on_one_of_two_nodes(policy)
        lost = next(iter(c.where("j")))
        c.lose(lost, 110.0 + skew)
        loss = c.state.inv.nodes[lost].lost_seq
        assert loss == c.state.seq
        apply(c.state, [("job.j", [JobRequeued(aggregate_id="j", reason=f"node {lost} lost", node_id=lost,
                                               node_seq=loss)])], 110.0 + skew)
        assert c.status("j") == PENDING and c.state.jobs["j"].requeues == 1, skew
        step(c.state, policy, 120.0)
        assert c.status("j") == PLACED and lost not in c.where("j")
        # the same requeue once more (a retry past the duplicate window): about the loss, before this placement
        apply(c.state, [("job.j", [JobRequeued(aggregate_id="j", reason=f"node {lost} lost", node_id=lost,
                                               node_seq=loss)])], 200.0 + skew)
        assert c.status("j") == PLACED and c.state.jobs["j"].requeues == 1, skew

        # the resource manager died before its requeue: the scheduler's fallback, by sequence as well (its grace is
        # counted from the loss's stamp: a resource manager ahead of the scheduler delays this backstop by as much)
        there = next(iter(c.where("j")))
        apply(c.state, [("job.j", [JobStarted(aggregate_id="j", world_size=4)])], 121.0)
        c.lose(there, 130.0 + skew)
        plan = step(c.state, policy, 175.0 + max(0.0, skew))
        assert plan.requeue_reasons.get("j") == f"node {there} lost; back in the queue", (skew, plan.requeue_reasons)

    # the live scheduler counts that grace from when it saw the loss, if later than the resource manager's stamp
    from aios.scheduler.rounds import StopsSeen, plan_round
    c = _running_on_one_of_two_nodes(policy)
    there = next(iter(c.where("j")))
    c.lose(there, 130.0 - 300)  # its resource manager 5 minutes behind, and dead before its requeue
    assert "j" in plan_round(c.state, policy, 131.0).requeues  # by the stamp: the grace looked over at once
    seen = StopsSeen()
    seen.observe(c.state, 131.0)
    assert "j" not in plan_round(c.state, policy, 150.0, seen=seen).requeues
    assert "j" in plan_round(c.state, policy, 162.0, seen=seen).requeues


def test_a_job_on_a_lost_node_is_requeued_even_if_the_resource_manager_never_did() -> None:
    """The resource manager appends NodeLost, then JobRequeued: dying between the two (or failing the second) left
    the job "running" for ever, charged to its tenant's quota. And a requeue about a node the job has left since
    (late) must not requeue its new placement."""
    from aios.common.events import JobRequeued, JobStarted
    from aios.scheduler.local import apply
    from aios.scheduler.state import RUNNING

    c = Cluster(("n1", "a100", 4), ("n2", "a100", 4))
    policy = make_policy("fifo")
    c.submit("j", 4, now=1.0)
    step(c.state, policy, 2.0)
    lost = next(iter(c.where("j")))
    apply(c.state, [("job.j", [JobStarted(aggregate_id="j", world_size=4)])], 3.0)
    assert c.status("j") == RUNNING
    c.lose(lost, 10.0)  # NodeLost only: the resource manager died before its JobRequeued
    step(c.state, policy, 20.0)
    assert c.status("j") == RUNNING  # the resource manager's own requeue comes within the grace
    plan = step(c.state, policy, 45.0)
    assert plan.requeue_reasons["j"] == f"node {lost} lost; back in the queue"
    step(c.state, policy, 46.0)
    assert c.status("j") == PLACED and lost not in c.where("j")
    apply(c.state, [("job.j", [JobRequeued(aggregate_id="j", reason=f"node {lost} lost", node_id=lost)])], 47.0)
    assert c.status("j") == PLACED and c.state.jobs["j"].requeues == 1  # the late one is about a node it left
    now_on = next(iter(c.where("j")))  # and one written before this placement, about the node it runs on now
    apply(c.state, [("job.j", [JobRequeued(aggregate_id="j", reason=f"node {now_on} lost", node_id=now_on)])], 44.0)
    assert c.status("j") == PLACED and c.state.jobs["j"].requeues == 1

    # the same when the node registers again (a new agent) before the fallback: the job held nothing there
    from tests.scheduler.helpers import node as registration
    there = next(iter(c.where("j")))
    apply(c.state, [("job.j", [JobStarted(aggregate_id="j", world_size=4)])], 48.0)
    c.lose(there, 50.0)
    apply(c.state, [registration(there, "a100", 4)], 55.0)
    assert c.state.inv.nodes[there].online and c.status("j") == RUNNING
    plan = step(c.state, policy, 90.0)
    assert plan.requeue_reasons.get("j") == f"node {there} lost; back in the queue", plan.requeue_reasons


def test_a_cpu_only_job_preempts_a_lower_priority_one_for_the_cpus_it_needs() -> None:
    """A job without accelerators used to find "room" in every round (it needs no device, so the trial placement
    always fitted) and preempted nobody: an urgent CPU job waited behind a low one for ever, and under a sequential
    policy the whole queue behind it."""
    c = Cluster(("c1", "h100", 0, 8))
    c.submit("low", 0, priority=1, cpu_per_worker=6)
    prio = make_policy("priority")
    step(c.state, prio, 2.0)
    assert c.status("low") == PLACED
    c.submit("urgent", 0, priority=10, cpu_per_worker=6, now=3.0)
    c.submit("later", 0, priority=5, cpu_per_worker=4, now=3.5)
    plan = step(c.state, prio, 4.0)
    assert [p.job_id for p in plan.preemptions] == ["low"] and "preempting low" in plan.reasons["urgent"]
    c.workers_exited("low", 5.0)
    step(c.state, prio, 5.0)
    step(c.state, prio, 6.0)
    assert c.status("urgent") == PLACED and c.where("urgent") == {"c1": 0}
    assert c.status("low") == PENDING and c.status("later") == PENDING


def test_a_cpu_only_job_preempts_nobody_when_no_victim_would_free_enough() -> None:
    c = Cluster(("c1", "h100", 0, 8))
    c.submit("low", 0, priority=1, cpu_per_worker=2)
    c.submit("steady", 0, priority=1, cpu_per_worker=4, preemptible=False)
    prio = make_policy("priority")
    step(c.state, prio, 2.0)
    c.submit("urgent", 0, priority=10, cpu_per_worker=7, now=3.0)
    plan = step(c.state, prio, 4.0)
    assert plan.preemptions == [] and c.status("low") == PLACED and c.status("urgent") == PENDING


def test_a_job_no_node_there_could_ever_hold_is_named_at_submission() -> None:
    """Found by a walkthrough: a typo in device_types ("h100x") was taken without a word and waited until someone
    asked `aios why` (Slurm refuses such a job; Kueue marks it inadmissible). Nodes may join, so it is kept, and
    the submission says why it cannot start: a kind no node has, a gang larger than all such devices."""
    from aios.scheduler.rounds import cannot_start_now
    from aios.scheduler.spec import validate_spec

    c = Cluster(("n1", "h100", 8), ("n2", "a100", 4))

    def spec(**fields: object) -> object:
        return validate_spec({"name": "x", "tenant": "t", "command": ["run"], **fields})
    assert "no online node has a h100x device (devices online: a100 x4, h100 x8)" in cannot_start_now(
        c.state, spec(devices=1, device_types=["h100x"]))
    assert "at most 4 of its 6 a100 devices" in cannot_start_now(c.state, spec(devices=6, device_types=["a100"]))
    assert cannot_start_now(c.state, spec(devices=12)) == ""  # a gang over both kinds fits the cluster
    c.submit("all", 8, device_types=["h100"])
    step(c.state, make_policy("fifo"), 2.0)
    assert cannot_start_now(c.state, spec(devices=8, device_types=["h100"])) == ""  # busy is not "never"


def test_why_reserves_backfill_with_the_rounds_estimate() -> None:
    """Found by a scale probe: `aios why` ran its own round with the default runtime estimate (an hour) while the
    live rounds used the learned one, so it named a reservation other than the one in force. It now takes the
    rounds' estimate (and their cache of the nodes' bins)."""
    c = Cluster(("n1", "h100", 4))
    policy = make_policy("backfill")
    c.submit("a", 3, now=1.0)
    step(c.state, policy, 2.0)
    c.submit("b", 4, now=3.0)
    c.submit("c", 1, now=4.0)
    assert "reserved at t+3592s" in explain(c.state, policy, "c", 10.0)  # a placed at 2 s, an hour's estimate
    assert "reserved at t+492s" in explain(c.state, policy, "c", 10.0, estimate=lambda j: 500.0)
