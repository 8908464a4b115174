"""Training progress in the scheduler's fold: the steps a resume trains again (`steps_redone`, shown by `aios job`),
and reports of an attempt the job has left."""

from __future__ import annotations

from aios.common.events import CheckpointSaved, JobProgress, JobRequeued
from aios.scheduler.local import apply, step
from aios.scheduler.policies import make_policy
from aios.scheduler.state import PLACED
from tests.scheduler.helpers import Cluster


def _report(c: Cluster, job: str, *events: object) -> None:
    apply(c.state, [(f"run.{job}", list(events))], 2.0)


def _attempt(c: Cluster, job: str, now: float) -> None:
    """The job's next attempt: its workers' run ends (requeued) if one was placed, and it is placed again."""
    if c.state.jobs[job].attempts:
        apply(c.state, [(f"job.{job}", [JobRequeued(aggregate_id=job, reason="node lost")])], now)
    step(c.state, make_policy("fifo"), now)
    assert c.status(job) == PLACED


def test_steps_past_the_last_checkpoint_count_as_redone_after_a_resume() -> None:
    c = Cluster(("n1", "a100", 4))
    c.submit("j", 1)
    _attempt(c, "j", 1.0)
    _report(c, "j", JobProgress(aggregate_id="j", step=100, attempt=1),
            CheckpointSaved(aggregate_id="j", step=100, bucket="b", name="ck", attempt=1),
            JobProgress(aggregate_id="j", step=130, attempt=1))
    _attempt(c, "j", 3.0)
    _report(c, "j", JobProgress(aggregate_id="j", step=110, attempt=2))  # resumed from step 100
    job = c.state.jobs["j"]
    assert job.steps_redone == 30 and job.step == 130 and job.checkpoint_step == 100


def test_a_progress_report_behind_the_checkpoint_redoes_nothing() -> None:
    """Reports come about once a second, so the last one before a crash can be older than the last checkpoint."""
    c = Cluster(("n1", "a100", 4))
    c.submit("j", 1)
    _attempt(c, "j", 1.0)
    _report(c, "j", JobProgress(aggregate_id="j", step=91, attempt=1),
            CheckpointSaved(aggregate_id="j", step=100, bucket="b", name="ck", attempt=1))
    _attempt(c, "j", 3.0)
    _report(c, "j", JobProgress(aggregate_id="j", step=101, attempt=2))
    assert c.state.jobs["j"].steps_redone == 0


def test_reports_of_an_attempt_the_job_has_left_are_not_taken() -> None:
    """Workers on a node declared lost can run on (a hung agent): their steps interleaved with the next attempt's,
    and one recorded the job's final step while the live attempt was far from it."""
    c = Cluster(("n1", "a100", 4))
    c.submit("j", 1)
    _attempt(c, "j", 1.0)
    _report(c, "j", JobProgress(aggregate_id="j", step=50, attempt=1),
            CheckpointSaved(aggregate_id="j", step=50, bucket="b", name="ck", attempt=1))
    apply(c.state, [("job.j", [JobRequeued(aggregate_id="j", reason="node n1 lost")])], 3.0)
    _report(c, "j", JobProgress(aggregate_id="j", step=60, attempt=1))  # requeued, not placed yet: the old run
    assert c.state.jobs["j"].step == 50
    _attempt(c, "j", 4.0)
    _report(c, "j", JobProgress(aggregate_id="j", step=55, attempt=2),
            JobProgress(aggregate_id="j", step=600, total_steps=600, attempt=1),
            CheckpointSaved(aggregate_id="j", step=600, bucket="b", name="ck", attempt=1))
    job = c.state.jobs["j"]
    assert (job.step, job.checkpoint_step) == (55, 50)
    _report(c, "j", JobProgress(aggregate_id="j", step=70, attempt=0))  # an attempt not said is taken
    assert c.state.jobs["j"].step == 70
