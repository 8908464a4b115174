"""A job's history is judged once: the rules of the day refuse a bad spec when it is submitted, and a rejection is
recorded as an event. Rebuilding the state with later rules must not rewrite what happened: a job the scheduler of
its time accepted stays accepted, whatever its spec says to today's code."""

from __future__ import annotations

from aios.common.events import (
    Assignment, JobCancelled, JobCancelRequested, JobFailed, JobPlaced, JobSubmitted, JobSucceeded,
)
from aios.scheduler.decisions import housekeeping_commits
from aios.scheduler.local import apply
from aios.scheduler.policies import make_policy
from aios.scheduler.rounds import plan_round
from aios.scheduler.state import CANCELLED, FAILED, PLACED, SUCCEEDED
from tests.scheduler.helpers import Cluster

# a spec today's rules refuse (a model name the registry cannot hold), and one with a field of a newer version
OLD_RULES = {"name": "b", "tenant": "t", "devices": 1, "trainer": {"kind": "mlp", "model_name": "bad name!"}}
NEWER = {"name": "n", "tenant": "t", "devices": 1, "command": ["run"], "max_surge": 2}


def submitted(job: str, spec: dict) -> tuple[str, list]:
    return f"job.{job}", [JobSubmitted(aggregate_id=job, tenant="t", name=spec["name"], spec=spec)]


def placed(job: str) -> JobPlaced:
    return JobPlaced(aggregate_id=job, world_size=1, attempt=1,
                     assignments=[Assignment(node_id="n1", device_uuids=["n1-g0"], ranks=[0])])


def test_a_job_its_scheduler_accepted_is_not_rejudged_by_later_rules() -> None:
    c = Cluster(("n1", "a100", 4))
    apply(c.state, [submitted("b", OLD_RULES), ("job.b", [placed("b"), JobSucceeded(aggregate_id="b")])], 1.0)
    apply(c.state, [submitted("x", OLD_RULES), ("job.x", [JobCancelRequested(aggregate_id="x"),
                                                           JobCancelled(aggregate_id="x", reason="on request")])], 1.0)
    apply(c.state, [submitted("n", NEWER), ("job.n", [placed("n")])], 1.0)  # a newer scheduler placed it
    assert c.status("b") == SUCCEEDED and c.state.jobs["b"].error == ""  # it read "failed: trainer.model_name ..."
    assert c.status("x") == CANCELLED
    assert c.status("n") == PLACED and c.state.jobs["n"].spec.command == ["run"]  # type: ignore[union-attr]


def test_a_rejection_is_recorded_once_as_an_event() -> None:
    c = Cluster(("n1", "a100", 4))
    apply(c.state, [submitted("b", OLD_RULES)], 1.0)
    assert c.status("b") == FAILED and "trainer.model_name" in c.state.jobs["b"].error

    def rejections(now: float) -> list[JobFailed]:
        commits = housekeeping_commits(c.state, plan_round(c.state, make_policy("fifo"), now))
        return [e for x in commits for e in x.events if isinstance(e, JobFailed)]
    failed = rejections(2.0)
    assert [(e.aggregate_id, e.reason) for e in failed] == [("b", c.state.jobs["b"].error)]
    apply(c.state, [("job.b", failed)], 3.0)  # recorded: the event decides from now on, not the rules of the day
    assert c.status("b") == FAILED and c.state.unrecorded == {} and rejections(4.0) == []


def test_a_submission_checked_when_it_was_taken_stays_queued_under_later_rules() -> None:
    """AIOS's own submission path checks a spec before it writes it: such a job, still queued at an upgrade that
    tightened a rule, was failed by the new scheduler."""
    c = Cluster(("n1", "a100", 4))
    apply(c.state, [("job.b", [JobSubmitted(aggregate_id="b", tenant="t", name="b", spec=OLD_RULES, checked=True)])],
          1.0)
    assert c.status("b") == "pending" and c.state.unrecorded == {}


def test_an_event_of_another_aggregate_with_the_same_id_revives_nothing() -> None:
    from aios.common.events import TenantQuotaSet

    c = Cluster(("n1", "a100", 4))
    apply(c.state, [submitted("nlp", {**OLD_RULES, "name": "nlp"}),
                    ("tenant.nlp", [TenantQuotaSet(aggregate_id="nlp", nominal={"a100": 1})])], 1.0)
    assert c.status("nlp") == FAILED and "nlp" in c.state.unrecorded
