"""Invariants of whole rounds over random workloads, for every policy (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aios.common.snapshot import decode_snapshot, encode_snapshot
from aios.resource_manager.quota import Quota, borrowed, lendable
from aios.scheduler.local import step
from aios.scheduler.policies import POLICIES, make_policy
from aios.scheduler.state import HOLDING, PLACED, STATE_SCHEMA, TERMINAL, SchedulerState
from tests.scheduler.helpers import Cluster

actions = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 6), st.sampled_from(["nlp", "vision", "speech"]), st.integers(0, 5),
              st.booleans(), st.sampled_from([[], ["h100"], ["a100"]])),
    st.tuples(st.just("finish"), st.integers(0, 40)),
    st.tuples(st.just("exit"), st.integers(0, 40)),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("lose"), st.sampled_from(["n1", "n2", "n3"])),
), max_size=40)

QUOTAS = {"nlp": ("lab", 4), "vision": ("lab", 4), "speech": ("", 2)}
SCARCE = {"nlp": ("lab", 4), "vision": ("lab", 1), "speech": ("", 2)}


def check_invariants(c: Cluster) -> None:
    s = c.state
    assert not s.inv.leases.violations, s.inv.leases.violations
    holders: dict[str, str] = {}
    for job in s.jobs.values():
        if job.status == PLACED:
            assigned = [u for a in job.assignments for u in a.device_uuids]
            assert len(assigned) == len(set(assigned))
            if job.spec and job.spec.gang:
                assert len(assigned) == job.spec.devices  # gangs are whole
            for u in assigned:
                assert holders.setdefault(u, job.job_id) == job.job_id  # no device in two placements
    # the index of jobs not yet ended that rounds read instead of every job ever submitted
    assert list(s.live) == [j.job_id for j in s.jobs.values() if j.status not in TERMINAL]
    for u, j in s.inv.leases.holder.items():
        assert j in s.jobs
        assert s.inv.nodes[s.inv.leases.node_of[u]].online  # nothing stays booked on a lost node


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(POLICIES)), actions)
def test_round_invariants(policy_name: str, script: list[tuple]) -> None:  # type: ignore[type-arg]
    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4), ("n3", "a100", 4))
    policy = make_policy(policy_name)
    submitted: list[str] = []
    now = 1.0
    for action in script:
        now += 10.0
        kind = action[0]
        if kind == "submit":
            _, devices, tenant, prio, preemptible, types = action
            job = f"j{len(submitted)}"
            c.submit(job, devices, tenant=tenant, now=now, priority=prio, preemptible=preemptible, device_types=types)
            submitted.append(job)
        elif submitted and kind in ("finish", "exit", "cancel"):
            job = submitted[action[1] % len(submitted)]
            if c.state.jobs[job].status not in TERMINAL:
                {"finish": c.finish, "exit": c.workers_exited, "cancel": c.cancel}[kind](job, now)
        elif kind == "lose":
            c.lose(action[1], now)
        step(c.state, policy, now)
        check_invariants(c)
    # a restart from a snapshot of this state finds the same jobs, index included
    _, _, restored = decode_snapshot(encode_snapshot(c.state.seq, STATE_SCHEMA, c.state), SchedulerState)
    assert restored == c.state and list(restored.live) == list(c.state.live)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["nlp", "vision", "speech"]), st.integers(1, 4)), min_size=1,
                max_size=25))
def test_quotas_hold_and_nobody_starves_under_fair_share(jobs: list[tuple[str, int]]) -> None:
    """Jobs finish after two rounds of running; every job is placed within a bounded number of rounds, and no round
    leaves a tenant beyond what quotas allow."""
    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    for tenant, (cohort, n) in QUOTAS.items():
        c.quota(tenant, cohort, h100=n)
    for i, (tenant, devices) in enumerate(jobs):
        c.submit(f"j{i}", min(devices, 4 if tenant != "speech" else 2), tenant=tenant, now=float(i))
    fair = make_policy("fairshare")
    quotas = {t: Quota(t, cohort, {"h100": n}) for t, (cohort, n) in QUOTAS.items()}
    placed_round: dict[str, int] = {}
    for rnd in range(4 * len(jobs) + 4):
        now = 100.0 + rnd
        for job in list(c.state.jobs.values()):
            if job.status == PLACED and job.job_id in placed_round and rnd - placed_round[job.job_id] >= 2:
                c.finish(job.job_id, now)
        step(c.state, fair, now)
        for job in c.state.jobs.values():
            if job.status == PLACED and job.job_id not in placed_round:
                placed_round[job.job_id] = rnd
        usage = {t: {"h100": 0} for t in QUOTAS}
        for job in c.state.jobs.values():
            if job.status in HOLDING:
                usage[job.tenant]["h100"] += job.held_devices()
        assert usage["speech"]["h100"] <= 2
        lab = [q for q in quotas.values() if q.cohort == "lab"]
        assert sum(borrowed(q, usage[q.tenant]["h100"], "h100") for q in lab) <= sum(
            lendable(q, usage[q.tenant]["h100"], "h100") for q in lab)
        check_invariants(c)
    assert set(placed_round) == set(c.state.jobs), "a job was starved"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["nlp", "vision", "speech"]), st.integers(1, 2), st.integers(0, 3),
                          st.integers(0, 6)), min_size=1, max_size=20))
def test_priority_preemption_under_quotas_settles_and_finishes_every_job(
        jobs: list[tuple[str, int, int, int]]) -> None:
    """Jobs of three tenants (a cohort that lends, and one alone) with priorities arrive over a few rounds; a
    preempted job checkpoints at once and a job finishes after six rounds of running. Every job finishes, and
    none is preempted more often than jobs of higher priority, or of tenants that may reclaim, arrived. (The loop
    review found within a quota needs a sequence this search did not hit in 600 runs of the old code: a unit test
    in test_policies pins it.)"""
    c = Cluster(("n1", "h100", 4), ("n2", "h100", 4))
    for tenant, (cohort, n) in SCARCE.items():  # little to lend: a job that borrows competes for it
        c.quota(tenant, cohort, h100=n)
    policy = make_policy("priority")
    arrivals = sorted((at, i) for i, (_, _, _, at) in enumerate(jobs))
    ran: dict[str, int] = {}
    for rnd in range(10 * len(jobs) + 12):
        now = 100.0 + rnd
        for at, i in arrivals:
            if at == rnd:
                tenant, devices, prio, _ = jobs[i]
                c.submit(f"j{i}", min(devices, SCARCE[tenant][1]), tenant=tenant, priority=prio, now=now)
        for job in list(c.state.jobs.values()):
            if job.status == PLACED:
                ran[job.job_id] = ran.get(job.job_id, 0) + 1
                if ran[job.job_id] > 6:
                    c.finish(job.job_id, now)
            elif job.status == "preempting":
                c.workers_exited(job.job_id, now)
        step(c.state, policy, now + 0.5)
        check_invariants(c)
    assert all(j.status == "succeeded" for j in c.state.jobs.values()), {
        j.job_id: (j.status, j.preemptions) for j in c.state.jobs.values()}
    for i, (tenant, _, prio, _) in enumerate(jobs):  # preempted for a job of higher priority, or a reclaim
        assert c.state.jobs[f"j{i}"].preemptions <= sum(p > prio or t != tenant for t, _, p, _ in jobs), (i, jobs)
