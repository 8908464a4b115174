"""Worker processes: pinned to their devices by UUID, output captured line by line, stopped with a grace period."""

from __future__ import annotations

import asyncio
import sys

import pytest

from aios.device_agent.workloads import Workload, WorkloadRunner


async def test_worker_gets_its_devices_and_reports_output_and_exit() -> None:
    lines: list[tuple[str, bytes]] = []
    exits: list[tuple[int | None, int | None]] = []
    done = asyncio.Event()

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        exits.append((code, sig))
        done.set()

    runner = WorkloadRunner(lambda w, stream, line: lines.append((stream, line)), on_exit)
    script = ("import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES']); print(os.environ['CUDA_DEVICE_ORDER']);"
              "print(os.environ['RANK']); print('oops', file=sys.stderr); sys.exit(3)")
    await runner.start("j1", "w0", [sys.executable, "-c", script], {"RANK": "0"}, ["GPU-a", "GPU-b"])
    await asyncio.wait_for(done.wait(), 20)
    assert ("stdout", b"GPU-a,GPU-b\n") in lines and ("stdout", b"PCI_BUS_ID\n") in lines
    assert ("stdout", b"0\n") in lines and ("stderr", b"oops\n") in lines
    assert exits == [(3, None)] and runner.running == {}


async def test_a_worker_inherits_no_secret_or_setting_of_its_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: under `aios up --secure` a job's code printed AIOS_GATEWAY_TOKENS (every tenant's token,
    the administrator's among them) and the NATS passwords, from its agent's environment. A worker takes the
    node's settings for workers and the rest of the environment (PATH, Python's, CUDA's, OTEL_*), no AIOS_* else."""
    for name, value in {"AIOS_GATEWAY_TOKENS": "t0kenT0kenT0ken0=*", "AIOS_NATS_PASS_ADMIN": "pw",
                        "AIOS_DATA_DIR": "/var/lib/aios", "AIOS_HTTP_PORT": "9100", "AIOS_SERVE_HOST": "0.0.0.0",
                        "OTEL_SERVICE_NAME": "kept"}.items():
        monkeypatch.setenv(name, value)
    lines: list[bytes] = []
    done = asyncio.Event()

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        done.set()

    runner = WorkloadRunner(lambda w, stream, line: lines.append(line), on_exit)
    names = ("AIOS_GATEWAY_TOKENS", "AIOS_NATS_PASS_ADMIN", "AIOS_DATA_DIR", "AIOS_HTTP_PORT", "AIOS_SERVE_HOST",
             "OTEL_SERVICE_NAME", "AIOS_JOB_ID")
    script = f"import os; print(sorted(k for k in os.environ if k in {names!r}))"
    await runner.start("j1", "w0", [sys.executable, "-c", script], {"AIOS_JOB_ID": "j1"}, ["GPU-a"])
    await asyncio.wait_for(done.wait(), 20)
    assert lines == [b"['AIOS_JOB_ID', 'AIOS_SERVE_HOST', 'OTEL_SERVICE_NAME']\n"], lines


async def test_stop_sends_sigterm_then_sigkill() -> None:
    exits: list[tuple[int | None, int | None]] = []

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        exits.append((code, sig))

    runner = WorkloadRunner(lambda *a: None, on_exit)
    polite = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); print('up', flush=True); time.sleep(60)"
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    await runner.start("j2", "polite", [sys.executable, "-c", polite], {}, [])
    await runner.start("j2", "stubborn", [sys.executable, "-c", stubborn], {}, [])
    await asyncio.sleep(0.8)
    started = asyncio.get_running_loop().time()
    assert await runner.stop("j2", grace_s=1.0) == 2
    assert asyncio.get_running_loop().time() - started < 5
    await asyncio.sleep(0.2)
    assert sorted(exits, key=str) == sorted([(0, None), (None, 9)], key=str)


async def test_a_device_is_never_shared_with_a_worker_still_stopping() -> None:
    """A requeued attempt's worker may outlive its lease by its grace period; the next worker placed on that
    device waits for it to exit, and is refused, naming the holder, if it stays too long."""
    exited: dict[str, float] = {}

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        exited[w.worker] = asyncio.get_running_loop().time()

    runner = WorkloadRunner(lambda *a: None, on_exit, device_wait_s=5.0)
    slow = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.0), sys.exit(0)));"
            "time.sleep(60)")
    await runner.start("j1", "rank0-a1", [sys.executable, "-c", slow], {}, ["GPU-a"])
    await runner.start("other", "w0", [sys.executable, "-c", "import time; time.sleep(60)"], {}, ["GPU-b"])
    await asyncio.sleep(0.5)
    stopping = asyncio.ensure_future(runner.stop("j1", grace_s=10))  # checkpointing for about a second
    await asyncio.sleep(0.1)
    await runner.start("j1", "rank0-a2", [sys.executable, "-c", "import time; time.sleep(60)"], {}, ["GPU-a"])
    assert "rank0-a1" in exited  # started only once the old worker was gone
    assert [w.worker for w in runner.holders(["GPU-a"])] == ["rank0-a2"]
    await stopping

    runner.device_wait_s = 0.5
    try:
        await runner.start("j2", "w0", [sys.executable, "-c", "pass"], {}, ["GPU-b"])
        raise AssertionError("started on a device another job's worker is using")
    except ValueError as exc:
        assert "w0 of job other on GPU-b" in str(exc)
    await runner.stop_all(cap_s=1)


async def test_a_worker_that_exited_on_its_own_is_not_marked_stopped() -> None:
    """Its output still draining (a child holds the pipe) when a stop comes: it ended on its own, and its exit is the
    job's outcome, not an interruption to requeue (the agent marked every entry it signalled)."""
    seen: list[tuple[int | None, bool]] = []
    done = asyncio.Event()

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        seen.append((code, w.stopping))
        done.set()

    runner = WorkloadRunner(lambda *a: None, on_exit)
    await runner.start("j3", "rank0-a1", ["sh", "-c", "sleep 30 & exit 0"], {}, [])
    w = runner.running[("j3", "rank0-a1")]
    for _ in range(100):
        if w.proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    assert w.proc.returncode == 0 and ("j3", "rank0-a1") in runner.running  # exited; its pipe still open
    await runner.stop("j3", grace_s=2.0)
    await asyncio.wait_for(done.wait(), 10)
    assert seen == [(0, False)]


async def test_a_line_longer_than_the_buffer_goes_in_pieces_and_the_exit_is_reported() -> None:
    """Found by a walkthrough: a 2 MB line (a JSON dump, a progress bar) broke the line reader; the pipe was read no
    more, the worker hung writing, its exit never came, and its device stayed taken after a cancel."""
    out: list[bytes] = []
    exits: list[tuple[int | None, int | None]] = []
    done = asyncio.Event()

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        exits.append((code, sig))
        done.set()

    runner = WorkloadRunner(lambda w, stream, line: out.append(line), on_exit)
    script = "import sys; print('A' * 2_000_000); print('after'); sys.stdout.write('tail')"
    await runner.start("j1", "w0", [sys.executable, "-c", script], {}, ["GPU-a"])
    await asyncio.wait_for(done.wait(), 20)
    assert exits == [(0, None)] and runner.running == {}
    assert b"".join(out) == b"A" * 2_000_000 + b"\nafter\ntail"
    assert len(out) > 3 and max(map(len, out)) <= 1 << 16  # pieces no larger than the buffer


async def test_a_worker_does_not_inherit_the_agents_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a walkthrough: the agent's AIOS_HTTP_PORT (and its data directory) reached user code. The node's
    settings meant for workers (where a replica listens) still do."""
    monkeypatch.setenv("AIOS_HTTP_PORT", "9999")
    monkeypatch.setenv("AIOS_DATA_DIR", "/var/lib/aios")
    monkeypatch.setenv("AIOS_SERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("HOME_LIKE", "kept")
    out: list[bytes] = []
    done = asyncio.Event()

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        done.set()

    runner = WorkloadRunner(lambda w, stream, line: out.append(line), on_exit)
    script = ("import os; print(sorted({'AIOS_HTTP_PORT', 'AIOS_DATA_DIR', 'AIOS_SERVE_HOST', 'AIOS_JOB_ID'} & "
              "set(os.environ)), os.environ['HOME_LIKE'])")
    await runner.start("j1", "w0", [sys.executable, "-c", script], {"AIOS_JOB_ID": "j1"}, [])
    await asyncio.wait_for(done.wait(), 20)
    assert out == [b"['AIOS_JOB_ID', 'AIOS_SERVE_HOST'] kept\n"]


async def test_a_shutdown_stops_every_worker_at_once_each_with_its_jobs_grace() -> None:
    """The agent's shutdown stopped one job after the other with its own 10 s: a node with four jobs took 40 s, past
    the supervisor's kill timeout (30 s), so the last jobs were killed before they checkpointed; and a job whose
    spec gave it 60 s to checkpoint got 10."""
    told: dict[str, float] = {}
    exits: dict[str, tuple[int | None, int | None]] = {}

    def on_output(w: Workload, stream: str, line: bytes) -> None:
        if line.startswith(b"term"):
            told[w.job_id] = asyncio.get_running_loop().time()

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        exits[w.job_id] = (code, sig)

    runner = WorkloadRunner(on_output, on_exit, default_grace_s=1.0)
    checkpointing = ("import signal, sys, time\n"
                     "def term(*a):\n    print('term', flush=True); time.sleep(2.0); sys.exit(75)\n"
                     "signal.signal(signal.SIGTERM, term); print('up', flush=True); time.sleep(60)")
    for job in ("a", "b", "c"):  # their specs give them 5 s to stop; a checkpoint takes them 2 s
        await runner.start(job, "rank0-a1", [sys.executable, "-c", checkpointing], {"AIOS_STOP_GRACE_S": "5.0"}, [])
    await runner.start("d", "rank0-a1", [sys.executable, "-c", checkpointing], {}, [])  # no grace said: 1 s
    await asyncio.sleep(1.0)
    await runner.stop_all(cap_s=10.0)
    assert sorted(told) == ["a", "b", "c", "d"] and max(told.values()) - min(told.values()) < 1.0, told
    assert exits == {"a": (75, None), "b": (75, None), "c": (75, None), "d": (None, 9)}

    # the cap (what the supervisor allows) wins over a job's own grace
    await runner.start("e", "rank0-a1", [sys.executable, "-c", checkpointing], {"AIOS_STOP_GRACE_S": "60"}, [])
    await asyncio.sleep(1.0)
    await runner.stop_all(cap_s=0.5)
    assert exits["e"] == (None, 9)


async def test_a_worker_that_exits_is_reported_while_what_it_started_holds_its_output() -> None:
    """A worker that crashed and left a process behind holding its stdout was never reported exited (its job ran
    on, its devices stayed busy): reported within the drain time now, and what it left in its group is killed."""
    import time

    exits: list[tuple[int | None, float]] = []
    lines: list[bytes] = []

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        exits.append((code, time.monotonic() - started))
    runner = WorkloadRunner(lambda w, stream, line: lines.append(line), on_exit)
    started = time.monotonic()
    w = await runner.start("j", "rank0-a1", ["sh", "-c", "sleep 60 & echo crashing >&2; exit 3"], {}, [])
    deadline = time.monotonic() + 15
    while not exits:
        assert time.monotonic() < deadline, "the exit was never reported"
        await asyncio.sleep(0.1)
    assert exits[0][0] == 3 and exits[0][1] < 8, exits
    assert b"crashing\n" in lines and "rank0-a1" not in {k[1] for k in runner.running}
    assert not _alive_in_group(w.proc.pid)  # the sleep it left behind went with it


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (a reparented zombie waits for whoever reaps it)."""
    import os

    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(entry))
    return alive


async def test_a_worker_that_outlives_its_sigkill_is_reported_stuck_and_its_exit_still_counts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process in the kernel's uninterruptible sleep (a hung driver or file system) cannot be made here, so the
    kernel's side is played at the signal boundary: SIGKILL is not delivered until the test lets it be. The runner
    tells the agent once the worker has outlived its SIGKILL by ``unkillable_s``, and goes on waiting for the exit,
    which is reported as usual."""
    import os
    import signal

    from aios.device_agent import workloads

    delivered = {"kill": False}
    real = workloads._signal_group

    def kernel(w: Workload, sig: int) -> None:
        if sig != signal.SIGKILL or delivered["kill"]:
            real(w, sig)
    monkeypatch.setattr(workloads, "_signal_group", kernel)
    stuck: list[Workload] = []
    exits: list[tuple[int | None, int | None]] = []

    async def on_stuck(w: Workload) -> None:
        stuck.append(w)

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        exits.append((code, sig))

    runner = WorkloadRunner(lambda *a: None, on_exit, on_unkillable=on_stuck, unkillable_s=0.5)
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    w = await runner.start("j1", "w0", [sys.executable, "-c", deaf], {}, ["GPU-a"])
    await asyncio.sleep(0.8)
    stopping = asyncio.ensure_future(runner.stop("j1", grace_s=0.3))
    for _ in range(100):
        if stuck:
            break
        await asyncio.sleep(0.05)
    assert stuck == [w] and w.unkillable and not stopping.done() and runner.holders(["GPU-a"]) == [w]
    delivered["kill"] = True  # the kernel lets it go at last
    os.killpg(w.proc.pid, signal.SIGKILL)
    assert await asyncio.wait_for(stopping, 10) == 1
    await asyncio.sleep(0.2)
    assert exits == [(None, 9)] and runner.running == {} and len(stuck) == 1


async def test_a_shutdown_does_not_wait_for_ever_on_a_worker_that_outlives_its_sigkill(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: the agent's shutdown capped the grace, not the wait after SIGKILL, so a stuck worker kept
    the agent (and its heartbeats: the node looked online, drained) running until a supervisor killed it. The
    worker is reported stuck (its devices' hold is in the log for the next agent) and the shutdown goes on."""
    import os
    import signal

    from aios.device_agent import workloads

    real = workloads._signal_group
    monkeypatch.setattr(workloads, "_signal_group", lambda w, sig: real(w, sig) if sig != signal.SIGKILL else None)
    stuck: list[Workload] = []

    async def on_stuck(w: Workload) -> None:
        stuck.append(w)

    async def on_exit(w: Workload, code: int | None, sig: int | None) -> None:
        pass

    runner = WorkloadRunner(lambda *a: None, on_exit, on_unkillable=on_stuck, unkillable_s=10.0)
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    w = await runner.start("j1", "w0", [sys.executable, "-c", deaf], {}, ["GPU-a"])
    try:
        await asyncio.sleep(0.8)
        # and sooner than unkillable_s (10 s): the agent's supervisor gives its whole shutdown 30 s, drain and
        # graces included, and would kill it before the hold of the devices is stored
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(runner.stop_all(cap_s=0.3), 8)
        assert asyncio.get_running_loop().time() - started < 0.3 + workloads.SHUTDOWN_UNKILLABLE_S + 2
        assert stuck == [w] and w.proc.returncode is None
    finally:
        real(w, signal.SIGKILL)
        await w.proc.wait()
