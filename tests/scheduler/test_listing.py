"""What `aios jobs`, `aios job` and `aios top` get from the scheduler: filtered there, within one NATS message."""

from __future__ import annotations

import json

import pytest

from aios.scheduler.listing import jobs_reply
from aios.scheduler.local import step
from aios.scheduler.policies import make_policy
from tests.scheduler.helpers import Cluster


def _history(jobs: int) -> Cluster:
    c = Cluster(("n1", "h100", 2))
    for i in range(jobs):
        c.submit(f"j{i:04d}", 1, tenant="alpha" if i % 2 else "beta", now=float(i))
    step(c.state, make_policy("fifo"), float(jobs))
    c.finish("j0000", float(jobs) + 1)
    return c


def test_a_history_larger_than_one_message_is_answered_newest_first_within_it() -> None:
    """Found by a walkthrough: the reply held every job ever submitted; past about 2,400 jobs it outgrew NATS'
    1 MB message limit, the scheduler sent nothing, and `aios jobs`, `aios job` and `aios top` failed for good."""
    c = _history(3000)
    whole = jobs_reply(c.state, "fifo", {})
    assert len(json.dumps(whole)) < 1_000_000 and whole["matched"] == 3000
    shown = [j["job"] for j in whole["jobs"]]
    assert 1000 < len(shown) < 3000 and shown == sorted(shown) and shown[-1] == "j2999"  # the newest, in order
    assert whole["counts"] == {"pending": 2998, "placed": 1, "succeeded": 1}  # every job, however many are shown


def test_filters_apply_before_the_reply_is_made() -> None:
    c = _history(50)
    assert [j["job"] for j in jobs_reply(c.state, "fifo", {"job": "j0007"})["jobs"]] == ["j0007"]
    assert jobs_reply(c.state, "fifo", {"job": "nosuch"})["jobs"] == []
    alpha = jobs_reply(c.state, "fifo", {"tenant": "alpha", "limit": 3})
    assert [j["job"] for j in alpha["jobs"]] == ["j0045", "j0047", "j0049"] and alpha["matched"] == 25
    assert [j["job"] for j in jobs_reply(c.state, "fifo", {"status": "succeeded"})["jobs"]] == ["j0000"]
    live = jobs_reply(c.state, "fifo", {"live": True})
    assert live["matched"] == 49 and "j0000" not in {j["job"] for j in live["jobs"]}
    assert live["counts"]["succeeded"] == 1 and sum(live["counts"].values()) == 50


def test_a_bad_argument_is_named() -> None:
    c = _history(2)
    for args, error in (({"limit": 0}, "field 'limit'"), ({"limit": True}, "field 'limit'"),
                        ({"status": "runing"}, "field 'status': one of pending"), ({"tenant": 3}, "field 'tenant'"),
                        ({"live": "yes"}, "field 'live'"), ({"page": 2}, "field 'page': unknown")):
        assert jobs_reply(c.state, "fifo", args)["error"].startswith(error), args


def test_a_scheduler_that_is_still_rebuilding_says_so_not_leader() -> None:
    """Found by a walkthrough: 1.3 s after the leader was killed, its successor's /healthz said "leader, 0
    rounds" while it was rebuilding its state and had not taken the lease."""
    from aios.scheduler.service import SchedulerService

    service = SchedulerService()
    assert service.healthy()[1].startswith("starting, ")
    service.leadership = None  # leader election off: it leads once it runs
    assert service.healthy()[1].startswith("leader, ")


def test_the_state_keeps_the_newest_ended_jobs_and_forgets_older_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a walkthrough: every job ever run stayed in the scheduler's and the gateway's memory (about 7 KB a
    job, growing for ever). The newest ended jobs are kept; an older one leaves memory, except while its workers
    still stop (its devices are still its own), and a job still running is never forgotten."""
    from aios.common.events import JobCancelled, JobFailed
    from aios.scheduler import state as state_module
    from aios.scheduler.local import apply

    monkeypatch.setattr(state_module, "MAX_ENDED_KEPT", 3)
    c = Cluster(("n1", "h100", 8))
    for i in range(8):
        c.submit(f"j{i}", 1, now=float(i))
    c.submit("bad", 1, now=8.0, devices_per_node=9)  # no such field: the round records the verdict (JobFailed)
    step(c.state, make_policy("fifo"), 9.0)
    assert c.status("bad") == "failed" and "bad" not in c.state.unrecorded
    apply(c.state, [("run.j0", [state_module.WorkerStarted(aggregate_id="j0", node_id="n1", worker="w", pid=1)])], 9.5)
    apply(c.state, [("job.j0", [JobCancelled(aggregate_id="j0")])], 10.0)  # its worker still stops
    for i in range(1, 4):
        c.finish(f"j{i}", 10.0 + i)
    # ended in order: bad, j0, j1, j2, j3; bad is forgotten, then j0 (stopping) holds the rest back
    assert "bad" not in c.state.jobs and {"j0", "j1", "j2", "j3"} <= set(c.state.jobs)
    c.workers_exited("j0", 14.0)
    apply(c.state, [("job.j4", [JobFailed(aggregate_id="j4", reason="x")])], 15.0)
    ended = sorted(j for j in c.state.jobs if c.state.jobs[j].status in ("succeeded", "failed", "cancelled"))
    assert ended == ["j2", "j3", "j4"], ended
    assert all(c.status(j) == "placed" for j in ("j5", "j6", "j7"))  # running jobs are never forgotten
