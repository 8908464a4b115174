"""`aios submit / jobs / job / why / cancel / top` against a running local cluster, and their exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aios.cli.cluster import LocalCluster
from aios.common.config import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_submit_why_cancel(aios_env: dict[str, str], tmp_path: Path) -> None:
    env = {**aios_env, "AIOS_SCHEDULER_POLICY": "fifo", "AIOS_SCHEDULER_INTERVAL": "0.1"}
    cluster = LocalCluster(load_settings({**env, "AIOS_NATS_PORT": "0"}), env=env,
                           agents=[("sim-1", "2xH100-80GB")]).start()
    env = {**env, "AIOS_NATS_URL": cluster.nats_url}

    def aios(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aios.cli.main", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    def jobs() -> dict[str, Any]:
        out = aios("jobs", "--json")
        return {j["name"]: j for j in json.loads(out.stdout)} if out.returncode == 0 else {}

    def wait(check: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            current = jobs()
            if check(current):
                return current
            assert time.monotonic() < deadline, f"{what}: {current}"
            time.sleep(0.3)

    try:
        long = tmp_path / "long.yaml"
        long.write_text("name: long\ntenant: nlp\ndevices: 2\ncommand: [sleep, '300']\n")
        blocked = tmp_path / "blocked.json"
        blocked.write_text(json.dumps({"name": "blocked", "tenant": "nlp", "devices": 2, "command": ["true"]}))
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: bad\ntenant: nlp\ndevices: -1\ncommand: [x]\n")

        wait(lambda j: True, "scheduler up")
        first = aios("submit", str(long), "--json")
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["job"].startswith("long-")
        wait(lambda j: j.get("long", {}).get("status") in ("placed", "running"), "long placed")
        second = aios("submit", str(blocked))
        assert second.returncode == 0 and second.stdout.startswith("submitted blocked-")
        assert "note:" not in second.stderr  # it waits for devices a job holds: nothing to say at submission
        typo = tmp_path / "typo.json"  # a kind no node has: taken (nodes may join), and said at once
        typo.write_text(json.dumps({"name": "typo", "tenant": "nlp", "devices": 1, "device_types": ["h100x"],
                                    "command": ["true"]}))
        noted = aios("submit", str(typo))
        assert noted.returncode == 0 and noted.stdout.startswith("submitted typo-"), noted
        assert "note: it cannot start on the nodes there now: no online node has a h100x device (devices " \
               "online: h100 x2)" in noted.stderr, noted.stderr
        too_big = tmp_path / "big.json"
        too_big.write_text(json.dumps({"name": "big", "tenant": "nlp", "devices": 4, "command": ["true"]}))
        big = json.loads(aios("submit", str(too_big), "--json").stdout)
        assert "at most 2 of its 4" in big["note"], big
        for made in (noted.stdout.split()[1], big["job"]):
            assert aios("cancel", made).returncode == 0
        job_id = second.stdout.split()[1]
        wait(lambda j: "blocked" in j, "blocked seen")
        why = aios("why", job_id)
        assert why.returncode == 0 and "needs 2 devices" in why.stdout and "held by long-" in why.stdout, why.stdout
        assert aios("cancel", job_id).returncode == 0
        wait(lambda j: j["blocked"]["status"] == "cancelled", "cancelled")

        refused = aios("submit", str(bad))
        assert refused.returncode == 2 and "devices: must be between 0 and 4096" in refused.stderr
        missing = aios("why", "no-such-job")
        assert missing.returncode == 3 and "no job 'no-such-job'" in missing.stderr  # as `aios job`: 3

        # one job's page, waiting for its end; exit codes a script can branch on
        described = aios("job", job_id, "--json")
        assert described.returncode == 0
        detail = json.loads(described.stdout)
        assert detail["status"] == "cancelled" and [e["type"] for e in detail["events"]][0] == "JobSubmitted"
        assert "JobCancelled" in aios("job", job_id).stdout
        assert aios("job", job_id, "--wait").returncode == 4  # it ended, and not well
        assert aios("job", "no-such-job").returncode == 3
        assert aios("cancel", "no-such-job").returncode == 3
        assert aios("cancel", "*").returncode == 3 and aios("job", "a b").returncode == 3  # were internal errors (1)
        as_json = tmp_path / "exp.json"  # JSON read as JSON: YAML 1.1 took 1e1 for a string
        as_json.write_text('{"name": "exp", "tenant": "nlp", "devices": 0, "memory_gib_per_worker": 1e1, '
                           '"command": ["true"]}')
        assert aios("submit", str(as_json)).returncode == 0
        quick = tmp_path / "quick.json"
        quick.write_text(json.dumps({"name": "quick", "tenant": "nlp", "devices": 0, "command": ["true"]}))
        quick_id = aios("submit", str(quick), "--json")
        ok = aios("job", json.loads(quick_id.stdout)["job"], "--wait", "--json")
        assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "succeeded"
        # a worker's last stderr line is quoted as it was written: rich took "[/x]" for markup (a traceback, exit 1)
        # and dropped "[red]"
        loud = tmp_path / "loud.json"
        loud.write_text(json.dumps({"name": "loud", "tenant": "nlp", "devices": 0,
                                    "command": ["sh", "-c", "echo 'bad [red]value[/] in [/x]' >&2; exit 3"]}))
        loud_id = json.loads(aios("submit", str(loud), "--json").stdout)["job"]
        shown = aios("job", loud_id, "--wait")
        assert shown.returncode == 4 and "bad [red]value[/] in [/x]" in shown.stdout, (shown.stdout, shown.stderr)
        late = aios("cancel", json.loads(quick_id.stdout)["job"])  # it said "cancel requested", exit 0
        assert late.returncode == 1 and "has already ended (succeeded): nothing to cancel" in late.stderr, late
        # the events as the HTTP API gives them, with their fields (it gave only type and time)
        exited = [e for e in json.loads(ok.stdout)["events"] if e["type"] == "WorkerExited"]
        assert exited and exited[0]["exit_code"] == 0 and exited[0]["worker"], exited

        # an idempotency key is the tenant's own, and a retry gets the first job (beta's job was dropped as a
        # duplicate of alpha's; a retry with another spec was dropped too)
        mine, theirs = tmp_path / "mine.json", tmp_path / "theirs.json"
        mine.write_text(json.dumps({"name": "keyed", "tenant": "alpha", "devices": 0, "command": ["true"]}))
        theirs.write_text(json.dumps({"name": "keyed", "tenant": "beta", "devices": 0, "command": ["true"]}))
        made = [json.loads(aios("submit", str(f), "--idempotency-key", "k1", "--json").stdout)
                for f in (mine, theirs, mine)]
        assert [m["duplicate"] for m in made] == [False, False, True] and made[2]["job"] == made[0]["job"]
        # filters, as squeue -u / -t and the HTTP API's ?tenant= and ?status= (there were none)
        listed = json.loads(aios("jobs", "--tenant", "beta", "--json").stdout)
        assert {j["tenant"] for j in listed} == {"beta"} and listed
        listed = json.loads(aios("jobs", "--status", "cancelled", "--json").stdout)
        assert sorted(j["name"] for j in listed) == ["big", "blocked", "typo"]
        newest = aios("jobs", "--limit", "1", "--json")  # filtered by the scheduler, which says what it left out
        assert len(json.loads(newest.stdout)) == 1 and "aios jobs: the newest 1 of " in newest.stderr, newest
        typo = aios("jobs", "--status", "runing")
        assert typo.returncode == 2 and "--status: 'runing' is no job state" in typo.stderr, typo.stderr
        typo = aios("jobs", "--tenant", "Beta")  # no tenant can have that name: it listed nothing, as if idle
        assert typo.returncode == 2 and "--tenant: lowercase letters" in typo.stderr and "'Beta'" in typo.stderr
        assert made[1]["job"] != made[0]["job"]
        mine.write_text(json.dumps({"name": "keyed", "tenant": "alpha", "devices": 0, "command": ["false"]}))
        reused = aios("submit", str(mine), "--idempotency-key", "k1")
        assert reused.returncode == 2 and "already used for job " + made[0]["job"] in reused.stderr, reused.stderr

        top = aios("top", "--json")
        assert top.returncode == 0, top.stderr
        snap = json.loads(top.stdout)
        assert [n["node"] for n in snap["nodes"]] == ["sim-1"] and len(snap["nodes"][0]["devices"]) == 2
        assert snap["jobs"]["cancelled"] == 3 and snap["jobs"]["succeeded"] >= 1
        assert any(d["utilization_gpu"] is not None for d in snap["nodes"][0]["devices"])  # agents' telemetry
        frame = aios("top", "--once")
        assert frame.returncode == 0 and "sim-1" in frame.stdout and "nlp" in frame.stdout
    finally:
        cluster.stop()


def test_commands_pointed_at_a_dead_server_fail_at_once(aios_env: dict[str, str]) -> None:
    """nats-py takes ``max_reconnect_attempts=0`` as no limit: `aios nodes` and `aios top` retried a dead port for
    ever, printing a traceback per try, and `aios submit` and `aios quota` retried for ever too. Now: one line with
    the server and the reason, and a non-zero exit."""
    from aios.common.natsserver import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    for args in (["nodes"], ["top", "--once"], ["jobs"], ["submit", str(REPO / "examples" / "digits-train.yaml")],
                 ["quota", "t", "--nominal", "h100=1"]):
        out = subprocess.run([sys.executable, "-m", "aios.cli.main", *args], env={**aios_env, "AIOS_NATS_URL": url},
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and f"cannot reach NATS at {url}: " in out.stderr, (args, out.stderr[-300:])
        assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, (args, out.stderr[-300:])
    # a quota for a tenant no job can belong to is refused before any connection
    for args, message in ((["NLP", "--nominal", "h100=1"], "tenant 'NLP': lowercase letters"),
                          (["t", "--nominal", "h100=²"], "--nominal: 'h100=²' is not KIND=N"),  # was a traceback
                          (["t", "--nominal", "h1 00=1"], "--nominal h1 00: not a device kind"),
                          (["t", "--nominal", "h100=1", "--cohort", "../x y*"], "--cohort: lowercase letters")):
        out = subprocess.run([sys.executable, "-m", "aios.cli.main", "quota", *args],
                             env={**aios_env, "AIOS_NATS_URL": url}, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr[-300:])
    # these were tracebacks
    latin = Path(aios_env["AIOS_DATA_DIR"]) / "latin1.yaml"
    latin.parent.mkdir(parents=True, exist_ok=True)
    latin.write_bytes(b"name: caf\xe9\n")
    broken = latin.parent / "broken.yaml"
    broken.write_text(": : :\n")
    for args, message in ((["submit", str(latin)], "not UTF-8 text"),
                          # PyYAML's five lines, as one with the place
                          (["submit", str(broken)], "broken.yaml:1:1: not valid YAML or JSON: expected <block end>"),
                          (["models", "alias", "digits", "prod", "1", "--expect", "abc"], "--expect: a version number"),
                          (["models", "eval", "m", "--trainer", "{bad"], "--trainer: not JSON"),
                          (["models", "register", "../x", str(latin)], "name '../x': letters"),  # before the upload
                          # a tag without '=' was dropped without a word
                          (["models", "register", "x", str(latin), "--tag", "production"],
                           "--tag: KEY=VALUE expected, got 'production'"),
                          (["models", "tag", "x", "1", "--set", "=v"], "--set: KEY=VALUE expected, got '=v'")):
        out = subprocess.run([sys.executable, "-m", "aios.cli.main", *args], env={**aios_env, "AIOS_NATS_URL": url},
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-300:]


def test_a_command_waits_for_a_starting_cluster_to_create_its_log(aios_env: dict[str, str],
                                                                  killable_nats: Any) -> None:
    """A command never creates or reconfigures the event log (its defaults reset a replicated log to one replica,
    and a wrong URL grew an empty AIOS log), but it gives the services of a cluster that is starting a moment to
    create it; and a successful command prints no 'nats disconnected' when it closes its own connection."""
    import asyncio

    from aios.common.store import connect

    env = {**aios_env, "AIOS_NATS_URL": killable_nats.url}
    quota = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "quota", "t", "--nominal", "h100=1"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the command is waiting for the log

    async def services_start() -> None:
        store = await connect([killable_nats.url], replicas=1)
        await store.close()

    asyncio.run(services_start())
    out, err = quota.communicate(timeout=30)
    assert quota.returncode == 0 and "quota of t set" in out, err[-300:]
    assert "disconnected" not in err and "Traceback" not in err, err[-300:]


def test_a_closed_pipe_and_a_missing_service_get_one_line(aios_env: dict[str, str], nats_server: Any) -> None:
    """`aios nodes --json | head` printed a BrokenPipeError traceback; with the scheduler down, `aios jobs` asked
    whether the resource manager was running."""
    env = {**aios_env, "AIOS_NATS_URL": nats_server.url}
    reader_gone = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "simulate", "--list-policies"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader_gone.stdout is not None and reader_gone.stderr is not None
    reader_gone.stdout.close()  # the reader left before the first line
    assert reader_gone.wait(timeout=60) == 0
    assert reader_gone.stderr.read() == b""
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "jobs"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "is the scheduler running?" in out.stderr, out.stderr


async def test_cancel_gets_through_to_a_job_that_never_stops_changing(store: Any, monkeypatch: Any) -> None:
    """`aios cancel` appends against the job's version, so that an end recorded meanwhile is seen. A job requeued
    several times a second conflicted five times in a row and the cancel gave up ("kept changing; try again"),
    while it was the job most in need of one. The last try now appends whatever the version, as the API does."""
    import asyncio

    from aios.cli import jobs as cli_jobs
    from aios.common.events import JobAdmitted, JobSubmitted
    from aios.scheduler.state import SchedulerState, evolve

    await store.append("job.busy", JobSubmitted(aggregate_id="busy", tenant="t", spec={
        "name": "busy", "tenant": "t", "command": ["run"]}), expected_version=0)
    append = store.append

    async def churning(aggregate: str, events: Any, expected_version: Any = None, **kw: Any) -> Any:
        if expected_version is not None:  # the job changes between every read and append
            await append(aggregate, JobAdmitted(aggregate_id="busy", tenant="t"))
        return await append(aggregate, events, expected_version, **kw)
    monkeypatch.setattr(store, "append", churning)
    monkeypatch.setattr(store, "close", lambda: asyncio.sleep(0))

    async def same_store() -> Any:
        return store
    monkeypatch.setattr(cli_jobs, "_store", same_store)
    assert await cli_jobs.cancel("busy") == 0
    state = SchedulerState()
    for seq, ev in enumerate((await store.read("job.busy")).events, start=1):
        evolve(state, ev, seq)
    assert state.jobs["busy"].cancel_requested


def test_a_log_reader_that_goes_away_gets_no_traceback(aios_env: dict[str, str], nats_server: Any) -> None:
    """`aios logs JOB | head` printed "Task exception was never retrieved" with a ConnectionClosedError traceback."""
    import asyncio

    from aios.common import joblogs
    from aios.common.events import JobSubmitted, WorkerStarted
    from aios.common.store import connect

    async def fill() -> None:
        store = await connect([nats_server.url])
        try:
            await store.append("job.chatty-1", JobSubmitted(aggregate_id="chatty-1", tenant="t", name="chatty", spec={
                "name": "chatty", "tenant": "t", "devices": 0, "command": ["x"]}, checked=True))
            await store.append("run.chatty-1", WorkerStarted(aggregate_id="chatty-1", node_id="n", worker="rank0-a1",
                                                             pid=1, attempt=1))
            await joblogs.ensure_stream(store.js)
            for i in range(3000):
                await store.nc.publish(joblogs.subject_of("chatty-1", "rank0-a1", "stdout"), f"line {i}".encode())
            await store.nc.flush()
        finally:
            await store.close()
    asyncio.run(fill())
    env = {**aios_env, "AIOS_NATS_URL": nats_server.url}
    out = subprocess.run(f"{sys.executable} -m aios.cli.main logs chatty-1 | head -2", shell=True, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ["[rank0-a1] line 0", "[rank0-a1] line 1"], out
    assert "Traceback" not in out.stderr and "exception" not in out.stderr, out.stderr


def test_a_jobs_timeline_folds_runs_of_progress_reports() -> None:
    """Found by a walkthrough: `aios job` printed every progress report, 166 lines for a job of 3,000 steps, one a
    second, and the events that matter scrolled away. A run of them shows its first and last and counts the rest
    (`--json` keeps them all)."""
    from aios.cli.jobs import timeline_rows
    from aios.common.events import JobPlaced, JobProgress, JobSucceeded, WorkerExited, timeline_entry

    history: list[Any] = [JobPlaced(aggregate_id="j", assignments=[], world_size=1, ts=100.0)]
    history += [JobProgress(aggregate_id="j", step=10 * i, total_steps=1000, ts=101.0 + i) for i in range(1, 101)]
    history += [WorkerExited(aggregate_id="j", node_id="n", worker="w", exit_code=0, ts=202.0),
                JobProgress(aggregate_id="j", step=1000, total_steps=1000, ts=202.5),
                JobSucceeded(aggregate_id="j", ts=203.0)]
    rows = timeline_rows(history, [timeline_entry(e) for e in history])
    assert [r[1] for r in rows] == ["JobPlaced", "JobProgress", "", "JobProgress", "WorkerExited", "JobProgress",
                                    "JobSucceeded"]
    assert rows[2][2] == "... 98 more progress reports" and '"step": 10' in rows[1][2] and '"step": 1000' in rows[3][2]
    assert rows[0][0] == "0.0" and rows[-1][0] == "103.0"
