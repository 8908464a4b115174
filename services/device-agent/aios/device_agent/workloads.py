"""Worker processes on this node: started pinned to their devices, output streamed, stopped with a grace period."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

log = logging.getLogger("aios.device_agent.workloads")
FOR_WORKERS = frozenset({"AIOS_SERVE_HOST", "AIOS_SERVE_PORT", "AIOS_LOG_LEVEL"})
"""The only ``AIOS_*`` settings of the agent's environment its workers inherit: the node's settings for them. The
rest are the agent's own (a worker's /metrics port is not its agent's) or secrets: under ``aios up --secure`` a
job's code read every tenant's gateway token, the administrator's among them, and every NATS password."""


def inherited_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What a worker takes from its agent's environment (PATH, Python's and CUDA's settings, ``OTEL_*``...): all but
    the ``AIOS_*`` settings other than :data:`FOR_WORKERS`; the launcher's and the job's variables come on top."""
    return {k: v for k, v in environ.items() if not k.startswith("AIOS_") or k in FOR_WORKERS}

OutputSink = Callable[["Workload", str, bytes], None]
ExitSink = Callable[["Workload", "int | None", "int | None"], Awaitable[None]]
StuckSink = Callable[["Workload"], Awaitable[None]]


class DevicesBusy(ValueError):
    """A worker's devices are still held by another worker process (stopping, or not stopped)."""


OUTPUT_DRAIN_S = 2.0
"""How long a worker's output is read after it exited, before its exit is reported regardless."""


@dataclass
class Workload:
    job_id: str
    worker: str
    device_uuids: list[str]
    proc: asyncio.subprocess.Process
    started: float = field(default_factory=time.time)
    stopping: bool = False
    attempt: int = 0
    trace: dict[str, str] | None = None
    """The job's trace context from the launcher (its ``TRACEPARENT``): the agent's spans about the worker join it."""
    grace_s: float | None = None
    """The job's ``stop_grace_s`` (the launcher's ``AIOS_STOP_GRACE_S``): what the agent gives it when it stops the
    worker on its own (node shutdown, lease ended, fenced). None: the runner's default."""
    abort_subject: str = ""
    """Where to say that this worker died without being asked to stop (the launcher's ``AIOS_ABORT_SUBJECT``, for
    a rank of a collective): its peers stop at once instead of at their timeout."""
    last_error: str = ""
    """The last line it wrote to stderr (cut to ``LAST_ERROR_CHARS``): the cause a failed job's error names, as
    Kubernetes' termination message taken from the log (a replica that could not load its model crash-looped, and
    why it did was only in its logs)."""
    logged: int = 0
    """Bytes of output it has written (``joblogs.kept_line`` keeps the first ``MAX_BYTES_PER_WORKER``)."""
    unkillable: bool = False
    """It outlived its SIGKILL by the runner's ``unkillable_s`` (stuck in the kernel): its devices were reported
    held (``on_unkillable``) until it exits."""

    @property
    def key(self) -> tuple[str, str]:
        return self.job_id, self.worker


def device_environment(device_uuids: list[str]) -> dict[str, str]:
    """Pin a process to devices by UUID: NVML's and CUDA's index orders can differ, UUIDs cannot."""
    visible = ",".join(device_uuids)
    return {"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible or "void",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def _own_session_dies_with_agent() -> None:
    """``preexec_fn`` of a worker: its own process group (stopped as a whole), and SIGKILL if the agent dies. A
    worker nobody manages any more must not go on using devices the cluster will give to others once it declares
    the node lost; for the job it is as if the node died."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


LAST_ERROR_CHARS = 300
SHUTDOWN_UNKILLABLE_S = 2.0
"""On the agent's own shutdown, how long a worker may outlive its SIGKILL before it is reported stuck: drain (5 s),
the jobs' grace (up to 20 s) and this must fit a supervisor's kill timeout (30 s in deploy/), or the hold of its
devices is never stored and the next agent knows nothing of the process."""


class WorkloadRunner:
    def __init__(self, on_output: OutputSink, on_exit: ExitSink, device_wait_s: float = 8.0,
                 default_grace_s: float = 10.0, on_unkillable: StuckSink | None = None,
                 unkillable_s: float = 10.0) -> None:
        self.on_output = on_output
        self.on_exit = on_exit
        self.on_unkillable = on_unkillable
        """Told of a worker still there ``unkillable_s`` after its SIGKILL (then its exit comes, if ever, through
        ``on_exit`` as usual)."""
        self.unkillable_s = unkillable_s
        self.default_grace_s = default_grace_s
        """The grace of a worker whose start named none (an older launcher)."""
        self.device_wait_s = device_wait_s
        """How long a new worker waits for a device whose previous worker is still stopping."""
        self.running: dict[tuple[str, str], Workload] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    def holders(self, device_uuids: list[str]) -> list[Workload]:
        """Running workers on any of these devices."""
        wanted = set(device_uuids)
        return [w for w in self.running.values() if wanted.intersection(w.device_uuids)]

    async def _wait_for_devices(self, device_uuids: list[str]) -> None:
        """A lease can end before its workers do: a requeued or preempted attempt's workers get a grace period to
        checkpoint, and the devices may meanwhile be placed again. Never run two workers on one device: wait for the
        old ones to go, and refuse (naming them) if they outstay ``device_wait_s``."""
        deadline = time.monotonic() + self.device_wait_s
        while busy := self.holders(device_uuids):
            if time.monotonic() >= deadline:
                raise DevicesBusy("device(s) still in use by " + ", ".join(
                    f"{w.worker} of job {w.job_id} on {','.join(w.device_uuids)}"
                    + (" (it outlived its SIGKILL)" if w.unkillable else "") for w in busy))
            await asyncio.sleep(0.05)

    async def start(self, job_id: str, worker: str, command: list[str], env: dict[str, str],
                    device_uuids: list[str], cwd: str | None = None,
                    still_wanted: Callable[[], str] | None = None) -> Workload:
        """``still_wanted``: asked after the wait for busy devices; a reason ("" if none) not to start after all
        (its lease ended meanwhile)."""
        if (job_id, worker) in self.running:
            raise ValueError(f"worker {worker!r} of job {job_id!r} is already running")
        await self._wait_for_devices(device_uuids)
        if still_wanted is not None and (why := still_wanted()):
            raise DevicesBusy(why)
        # the agent's own process settings (its HTTP port, data directory) are not the worker's; the node's
        # settings for workers (AIOS_SERVE_HOST for replicas) are
        full_env = {**inherited_environment(os.environ), **env, **device_environment(device_uuids)}
        proc = await asyncio.create_subprocess_exec(
            *command, env=full_env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_own_session_dies_with_agent)
        try:
            attempt = int(env.get("AIOS_ATTEMPT", "0"))
        except ValueError:
            attempt = 0
        workload = Workload(job_id, worker, list(device_uuids), proc, attempt=attempt,
                            grace_s=_positive(env.get("AIOS_STOP_GRACE_S")),
                            abort_subject=env.get("AIOS_ABORT_SUBJECT", ""))
        self.running[workload.key] = workload
        task = asyncio.ensure_future(self._watch(workload))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return workload

    async def _pump(self, workload: Workload, stream: asyncio.StreamReader | None, name: str) -> None:
        """Forward the worker's output a line at a time; a line longer than the stream's buffer (64 KiB: a minified
        JSON dump, a progress bar without newlines) goes in pieces of that size. (``readline`` raised on it, the pipe
        was read no more, the worker hung on its next write, and its exit and its device were never given back.)"""
        if stream is None:
            return
        while True:
            last = False
            try:
                line = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # the end: a last line without a newline, or nothing
                line, last = exc.partial, True
            except asyncio.LimitOverrunError as exc:
                line = await stream.read(min(max(1, exc.consumed), 1 << 16))
            if name == "stderr" and line.strip():  # a last line without a newline is quoted too (it was not)
                workload.last_error = line.decode(errors="replace").strip()[:LAST_ERROR_CHARS]
            if line:
                self.on_output(workload, name, line)
            if last:
                return

    async def _watch(self, workload: Workload) -> None:
        """Forward the output until the worker exits, and report its exit. Exited, it is reported after at most
        ``OUTPUT_DRAIN_S`` more of its output: something it started (a helper server, a process left behind) may
        hold its pipes open for ever, and ``Process.wait`` returns only once they close, so its exit was never
        reported, its job ran on, and its devices stayed busy. What it left behind in its process group is
        killed, as a container's processes die with its main one."""
        proc = workload.proc
        pumps = [asyncio.ensure_future(self._pump(workload, proc.stdout, "stdout")),
                 asyncio.ensure_future(self._pump(workload, proc.stderr, "stderr"))]
        while proc.returncode is None and not all(p.done() for p in pumps):
            await asyncio.wait(pumps, timeout=0.5)
        if not all(p.done() for p in pumps):
            await asyncio.wait(pumps, timeout=OUTPUT_DRAIN_S)
        if not all(p.done() for p in pumps):
            log.warning("a worker exited, and what it started still holds its output: killed",
                        extra={"job": workload.job_id, "worker": workload.worker})
            _signal_group(workload, signal.SIGKILL)
            await asyncio.wait(pumps, timeout=2.0)
            for p in pumps:
                p.cancel()  # a process outside its group (it called setsid) holds them: stop reading
            await asyncio.gather(*pumps, return_exceptions=True)
        for p in pumps:
            failed = None if p.cancelled() else p.exception()
            if failed is not None:  # the output is lost, never the exit: drain what is left unread
                log.error("worker output lost", extra={"job": workload.job_id, "worker": workload.worker,
                                                       "error": repr(failed)})
                for stream in (proc.stdout, proc.stderr):
                    try:
                        while stream is not None and await asyncio.wait_for(stream.read(1 << 16), OUTPUT_DRAIN_S):
                            pass
                    except asyncio.TimeoutError:
                        pass
        code = proc.returncode if proc.returncode is not None else await proc.wait()
        self.running.pop(workload.key, None)
        exit_code, sig = (code, None) if code >= 0 else (None, -code)
        try:
            await self.on_exit(workload, exit_code, sig)
        except Exception:  # noqa: BLE001 - a reporting failure must not lose the watcher's bookkeeping
            log.exception("reporting a worker exit failed", extra={"job": workload.job_id})

    async def stop(self, job_id: str, grace_s: float | None = None, attempt: int = 0,
                   cap_s: float | None = None) -> int:
        """SIGTERM every worker of the job (of one attempt when ``attempt``; its process group), SIGKILL what is
        left after ``grace_s`` (None: each worker's own grace, its job's ``stop_grace_s``), at most ``cap_s``."""
        targets = [w for w in self.running.values() if w.job_id == job_id and (not attempt or w.attempt == attempt)]
        return await self._stop(targets, grace_s, cap_s)

    async def _stop(self, targets: list[Workload], grace_s: float | None, cap_s: float | None,
                    wait_out: bool = True) -> int:
        """``wait_out``: wait for a worker that outlives its SIGKILL until it exits (else: until it is reported
        stuck, as on the agent's own shutdown, which would otherwise never end)."""
        started = time.monotonic()
        for w in targets:
            # only a process still running is stopped by us: one that has exited on its own (its pipes still
            # draining) reports its own outcome, not an interruption
            w.stopping = w.stopping or w.proc.returncode is None
            _signal_group(w, signal.SIGTERM)

        async def reap(w: Workload) -> None:
            grace = grace_s if grace_s is not None else w.grace_s if w.grace_s is not None else self.default_grace_s
            if cap_s is not None:
                grace = min(grace, cap_s)
            try:
                await asyncio.wait_for(w.proc.wait(), max(0.0, started + grace - time.monotonic()))
            except asyncio.TimeoutError:
                _signal_group(w, signal.SIGKILL)
                await self._killed(w, wait_out)
        await asyncio.gather(*(reap(w) for w in targets))
        return len(targets)

    async def _killed(self, w: Workload, wait_out: bool = True) -> None:
        """Wait for a worker sent SIGKILL to go. One still there ``unkillable_s`` later is stuck in the kernel (a
        hung driver or file system; no signal reaches it): ``on_unkillable`` is told, so that its devices are
        taken out of service instead of refusing every worker placed there next, and the wait goes on."""
        try:  # on the agent's own shutdown, sooner: its supervisor's kill timeout would cut the report off
            await asyncio.wait_for(w.proc.wait(), self.unkillable_s if wait_out else min(self.unkillable_s,
                                                                                         SHUTDOWN_UNKILLABLE_S))
            return
        except asyncio.TimeoutError:
            pass
        if not w.unkillable and w.proc.returncode is None:
            w.unkillable = True
            log.error("a worker outlived its SIGKILL: its devices are held until it exits",
                      extra={"job": w.job_id, "worker": w.worker, "pid": w.proc.pid, "devices": w.device_uuids})
            if self.on_unkillable is not None:
                try:
                    await self.on_unkillable(w)
                except Exception:  # noqa: BLE001 - reporting must not end the wait for the exit
                    log.exception("reporting a stuck worker failed", extra={"job": w.job_id})
        if wait_out:
            await w.proc.wait()

    async def stop_all(self, cap_s: float = 10.0) -> None:
        """Every worker at once, each with its job's grace up to ``cap_s``: one job after the other took the sum of
        their graces, and a supervisor's kill timeout (docker's stop_grace_period) cut the later ones off before
        their checkpoint."""
        await self._stop(list(self.running.values()), None, cap_s, wait_out=False)
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=cap_s)


def _signal_group(w: Workload, sig: int) -> None:
    try:
        os.killpg(w.proc.pid, sig)
    except ProcessLookupError:
        pass


def _positive(raw: str | None) -> float | None:
    try:
        value = float(raw or "")
    except ValueError:
        return None
    return value if 0 < value < float("inf") else None
