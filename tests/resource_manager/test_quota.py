"""Quotas with cohorts and borrowing: literal cluster cases, and invariants over random admit/release sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aios.resource_manager.quota import Quota, admit, borrowed, fits, lendable, reclaim_plan

Q = {
    "nlp": Quota("nlp", cohort="research", nominal={"h100": 4}),
    "vision": Quota("vision", cohort="research", nominal={"h100": 4}, borrowing_limit={"h100": 2}),
    "speech": Quota("speech", cohort="research", nominal={"h100": 2}, lending_limit={"h100": 1}),
    "solo": Quota("solo", nominal={"h100": 2}),
}


def test_within_nominal_is_admitted_unless_lent_out() -> None:
    assert admit(Q, {"vision": {"h100": 4}, "speech": {"h100": 2}}, "nlp", {"h100": 4}).admitted
    lent = admit(Q, {"nlp": {"h100": 8}}, "vision", {"h100": 3})
    assert not lent.admitted and "within its nominal 4, but cohort research has lent it out: 2" in lent.reason


def test_borrowing_from_the_cohort() -> None:
    decision = admit(Q, {}, "nlp", {"h100": 7})
    assert decision.admitted and decision.borrowed == {"h100": 3}
    # the pool: vision lends its 4 unused, speech at most 1 (lending limit) -> nlp can reach 4 + 5 = 9
    assert admit(Q, {}, "nlp", {"h100": 9}).admitted
    refused = admit(Q, {}, "nlp", {"h100": 10})
    assert not refused.admitted and "cohort research lends 5, borrowers would need 6" in refused.reason


def test_borrowing_limit() -> None:
    assert admit(Q, {}, "vision", {"h100": 6}).admitted
    refused = admit(Q, {}, "vision", {"h100": 7})
    assert not refused.admitted and "nominal 4 + borrowing limit 2" in refused.reason


def test_no_cohort_no_borrowing_and_unknown_tenants() -> None:
    assert admit(Q, {}, "solo", {"h100": 2}).admitted
    assert "no cohort to borrow from" in admit(Q, {}, "solo", {"h100": 3}).reason
    assert admit(Q, {}, "ghost", {"h100": 1}).reason == "tenant 'ghost' has no quota"
    assert "nominal 0" in admit(Q, {}, "nlp", {"a100": 1}).reason


def test_reclaiming_borrowed_devices() -> None:
    usage = {"nlp": {"h100": 8}, "vision": {"h100": 0}, "speech": {"h100": 1}}  # nlp borrows 4 of vision's
    assert not fits(Q, usage, "vision", "h100", 3)[0]
    plan = reclaim_plan(Q, usage, "vision", "h100", 3)
    assert plan == {"nlp": 2}  # vision lends its last 1 and speech 1: nlp may keep borrowing 2
    after = {"nlp": {"h100": 6}, "vision": {"h100": 3}, "speech": {"h100": 1}}
    assert fits(Q, after, "vision", "h100", 0)[0]
    # beyond its nominal quota a tenant may borrow, but never preempt others to do so
    assert reclaim_plan(Q, usage, "vision", "h100", 5) == {}
    assert reclaim_plan(Q, {}, "vision", "h100", 2) == {}  # fits already: nothing to reclaim


tenants = st.sampled_from(sorted(Q))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), tenants, st.integers(1, 4)), max_size=60))
def test_quota_invariants(script: list[tuple[bool, str, int]]) -> None:
    """Admitting only what `admit` allows keeps every tenant within nominal + borrowing limit and keeps the cohort's
    borrowing within what its members lend; and a request within nominal can always be made to fit by reclaiming."""
    usage: dict[str, dict[str, int]] = {t: {"h100": 0} for t in Q}
    for is_admit, tenant, n in script:
        if is_admit:
            if admit(Q, usage, tenant, {"h100": n}).admitted:
                usage[tenant]["h100"] += n
            elif usage[tenant]["h100"] + n <= Q[tenant].nominal["h100"]:
                plan = reclaim_plan(Q, usage, tenant, "h100", n)
                assert plan and all(plan[b] <= borrowed(Q[b], usage[b]["h100"], "h100") for b in plan)
                for b, k in plan.items():
                    usage[b]["h100"] -= k
                assert admit(Q, usage, tenant, {"h100": n}).admitted
                usage[tenant]["h100"] += n
        else:
            usage[tenant]["h100"] = max(0, usage[tenant]["h100"] - n)
        for t, q in Q.items():
            used = usage[t]["h100"]
            if q.borrowing_limit is not None:
                assert borrowed(q, used, "h100") <= q.borrowing_limit["h100"]
            if not q.cohort:
                assert used <= q.nominal["h100"]
        members = [q for q in Q.values() if q.cohort == "research"]
        assert sum(borrowed(q, usage[q.tenant]["h100"], "h100") for q in members) <= sum(
            lendable(q, usage[q.tenant]["h100"], "h100") for q in members)
