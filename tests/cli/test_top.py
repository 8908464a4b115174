"""What `aios top` and `aios tenants` show of the cluster: names and limits as written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console

from aios.cli.top import frame

if TYPE_CHECKING:
    from _pytest.capture import CaptureFixture
    from nats.aio.msg import Msg

    from aios.common.natsserver import NatsServer


def render(snap: dict) -> str:  # type: ignore[type-arg]
    console = Console(record=True, width=160, color_system=None)
    console.print(frame(snap))
    return console.export_text()


def test_names_are_shown_as_written_not_read_as_markup() -> None:
    """A node, job or tenant may be named with square brackets: rich read ``[bold]`` in a node id as markup (the
    name lost its brackets) and ``[/x]`` raised a MarkupError, so `aios top` died on such a cluster."""
    snap = {"nodes": [{"node": "rack[1]/n[/x]", "online": True, "devices": [
                {"uuid": "GPU-1", "healthy": True, "job": "j[bold]", "utilization_gpu": 40}]}],
            "jobs": {"running": 1},
            "running": [{"job": "j[bold]", "tenant": "t[red]", "status": "running", "devices": 1, "step": 5,
                         "total_steps": 10}],
            "tenants": {"t[red]": {"usage": {"h100": 1}, "nominal": {}}}}
    text = render(snap)
    assert "rack[1]/n[/x]" in text and "j[bold]" in text and "t[red]" in text and "5/10" in text


async def test_aios_tenants_shows_limits_as_written(nats_server: "NatsServer", capsys: "CaptureFixture[str]") -> None:
    """A limit naming a kind with square brackets (a log from before kinds were checked) was read as markup:
    ``[/x]`` raised a MarkupError and `aios tenants` printed a traceback."""
    import json

    import nats

    from aios.cli.inspect import tenants

    nc = await nats.connect(nats_server.url)
    reply = {"tenants": {"nlp": {"cohort": "research", "nominal": {"h100": 2}, "usage": {},
                                 "borrowing_limit": {"gpu[/x]": 1}, "lending_limit": None}}}

    async def answer(msg: "Msg") -> None:
        await msg.respond(json.dumps(reply).encode())
    await nc.subscribe("aios.rm.tenants", cb=answer)
    try:
        assert await tenants(servers=[nats_server.url]) == 0
    finally:
        await nc.close()
    out = capsys.readouterr().out
    assert "gpu[/x]=1" in out and "all unused" in out


async def test_a_cancelled_job_whose_workers_still_stop_is_shown_beside_its_devices(nats_server: "NatsServer") -> None:
    """A cancelled job keeps its devices until its workers have exited: `aios top` showed them busy, and no job."""
    import json

    import nats

    from aios.cli.top import snapshot

    nc = await nats.connect(nats_server.url)
    replies = {
        "aios.rm.nodes": {"nodes": [{"node": "n1"}]},
        "aios.rm.node": {"node": "n1", "online": True, "devices": [
            {"uuid": "GPU-1", "healthy": True, "job": "train-1"}, {"uuid": "GPU-2", "healthy": True, "job": "web-2"},
            {"uuid": "GPU-3", "healthy": True, "job": None}]},
        "aios.sched.jobs": {"jobs": [
            {"job": "train-1", "tenant": "t", "status": "cancelled", "devices": 1, "step": 3, "total_steps": 9},
            {"job": "web-2", "tenant": "t", "status": "running", "devices": 1, "step": 0, "total_steps": 0},
            {"job": "old-3", "tenant": "t", "status": "succeeded", "devices": 1, "step": 9, "total_steps": 9}]},
        "aios.rm.tenants": {"tenants": {}}}
    for subject, reply in replies.items():
        async def answer(msg: "Msg", reply: dict = reply) -> None:  # type: ignore[type-arg]
            await msg.respond(json.dumps(reply).encode())
        await nc.subscribe(subject, cb=answer)
    try:
        snap = await snapshot([nats_server.url], {})
    finally:
        await nc.close()
    assert [(j["job"], j["status"]) for j in snap["running"]] == [("train-1", "cancelled, workers stopping"),
                                                                   ("web-2", "running")]
    assert "cancelled, workers stopping" in render(snap) and "old-3" not in render(snap)


async def test_listings_filter_themselves_against_a_scheduler_of_an_older_version(
        nats_server: "NatsServer", monkeypatch: Any, capsys: Any) -> None:
    """During a roll the CLI may be new and the scheduler old: that scheduler ignores the filters and lists every
    job, so `aios jobs --tenant` listed all tenants' jobs and `aios job --wait` took the oldest job as its own."""
    import json

    import nats

    from aios.cli.jobs import jobs

    monkeypatch.setenv("AIOS_NATS_URL", nats_server.url)
    nc = await nats.connect(nats_server.url)
    old_reply = {"policy": "fifo", "seq": 9, "jobs": [  # the whole list, no "matched"
        {"job": f"j{i}", "name": "n", "tenant": "a" if i % 2 else "b", "status": "succeeded", "devices": 1,
         "held": 0, "priority": 0, "nodes": [], "attempts": 1, "step": 0, "total_steps": 0, "loss": None}
        for i in range(6)]}

    async def answer(msg: "Msg") -> None:
        await msg.respond(json.dumps(old_reply).encode())
    await nc.subscribe("aios.sched.jobs", cb=answer)
    try:
        assert await jobs(True, tenant="a", limit=2) == 0
    finally:
        await nc.close()
    assert [j["job"] for j in json.loads(capsys.readouterr().out)] == ["j3", "j5"]
