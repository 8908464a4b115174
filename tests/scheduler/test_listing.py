"""What `aios jobs`, `aios job` and `aios top` get from the scheduler: filtered there, within one NATS message."""

from __future__ import annotations

import json

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


def test_an_ended_job_holds_no_devices_in_the_listing() -> None:
    """Found by a walkthrough: a failed job was listed with `"held": 1` (the devices of its last placement), which an
    API client reads as devices still taken. Where it ran stays in `nodes`."""
    c = _history(3)
    placed = {j["job"]: j for j in jobs_reply(c.state, "fifo", {})["jobs"]}
    assert placed["j0001"]["held"] == 1 and placed["j0002"]["held"] == 0  # placed; pending
    ended = placed["j0000"]
    assert ended["status"] == "succeeded" and ended["held"] == 0 and ended["nodes"] == ["n1"]
