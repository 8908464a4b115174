"""Training progress in the scheduler's fold: the steps a resume trains again (`steps_redone`, shown by `aios job`)."""

from __future__ import annotations

from aios.common.events import CheckpointSaved, JobProgress
from aios.scheduler.local import apply
from tests.scheduler.helpers import Cluster


def _report(c: Cluster, job: str, *events: object) -> None:
    apply(c.state, [(f"run.{job}", list(events))], 2.0)


def test_steps_past_the_last_checkpoint_count_as_redone_after_a_resume() -> None:
    c = Cluster(("n1", "a100", 4))
    c.submit("j", 1)
    _report(c, "j", JobProgress(aggregate_id="j", step=100, attempt=1),
            CheckpointSaved(aggregate_id="j", step=100, bucket="b", name="ck", attempt=1),
            JobProgress(aggregate_id="j", step=130, attempt=1))
    _report(c, "j", JobProgress(aggregate_id="j", step=110, attempt=2))  # resumed from step 100
    job = c.state.jobs["j"]
    assert job.steps_redone == 30 and job.step == 130 and job.checkpoint_step == 100


def test_a_progress_report_behind_the_checkpoint_redoes_nothing() -> None:
    """Reports come about once a second, so the last one before a crash can be older than the last checkpoint."""
    c = Cluster(("n1", "a100", 4))
    c.submit("j", 1)
    _report(c, "j", JobProgress(aggregate_id="j", step=91, attempt=1),
            CheckpointSaved(aggregate_id="j", step=100, bucket="b", name="ck", attempt=1))
    _report(c, "j", JobProgress(aggregate_id="j", step=101, attempt=2))
    assert c.state.jobs["j"].steps_redone == 0
