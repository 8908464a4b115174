"""``aios up``: an embedded NATS server plus every registered service, each in its own process, as deployed."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aios.cli.services import registry
from aios.common import natsauth
from aios.common.config import Settings, agent_shutdown_s
from aios.common.errors import ConfigError
from aios.common.natsserver import NatsServer, die_with_parent, free_port


NODE_SERVICES = frozenset({"trainer"})
"""Services deployed once per node (next to its device agent) rather than once per cluster: with simulated nodes,
each gets its own, with ``AIOS_NODE_ID`` set; without any, one instance serves every node."""


async def _reachable(servers: list[str]) -> None:
    from aios.common.store import connect_once

    nc = await connect_once(servers, name="aios-up")
    await nc.close()


class LocalCluster:
    """Start NATS (unless ``AIOS_NATS_URL`` points at one) and the services; stop them in reverse order."""

    def __init__(self, settings: Settings, services: list[str] | None = None, env: dict[str, str] | None = None,
                 agents: list[tuple[str, str]] | None = None, secure: bool = False,
                 tenants: list[str] | None = None) -> None:
        self.settings = settings
        self.secure = secure
        """Run the embedded NATS with the shipped permissions (aios.common.natsauth), each process as its role."""
        self.tenants = list(tenants or [])
        self.passwords: dict[str, str] = {}
        self.agents = list(agents or [])
        """(node id, sim spec) of the simulated nodes to run, each its own device-agent process."""
        self.env = dict(os.environ if env is None else env)
        self.names = services if services is not None else sorted(registry(self.env))
        self.nats: NatsServer | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.http_ports: dict[str, int] = {}
        self._argv: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        self.nats_url = settings.nats_url or ""
        self._lock: Any = None

    def start(self) -> "LocalCluster":
        data = self.settings.data_dir
        try:
            data.mkdir(parents=True, exist_ok=True)
            (data / "logs").mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"AIOS_DATA_DIR={data}: cannot use it: {exc.strerror}") from None
        if self.settings.nats_url and self.secure:
            raise ConfigError("--secure: only with the embedded NATS (unset AIOS_NATS_URL); an external server "
                              "takes its users from `aios nats-config`")
        if self.settings.nats_url:  # an external server: refuse at once if it is not there, before the services
            # start and each retries it for ever under "AIOS is up"
            asyncio.run(_reachable(self.settings.servers))
        else:
            self._lock_store(data)
            self.nats = NatsServer(data / "jetstream", port=self.settings.nats_port, log_file=data / "nats-server.log")
            if self.secure:
                self.nats.extra_args = ["-c", str(self._write_auth_config(data, self.nats.url))]
            self.nats.start()
            self.nats_url = self.url_as("admin") if self.secure else self.nats.url
        for name in self.names:
            if name in NODE_SERVICES and self.agents:
                continue  # started with each node below
            self._spawn(name, ["service", name])
        for node, spec in self.agents:
            self._spawn(f"agent-{node}", ["agent", "--node", node, "--sim", spec])
            for name in NODE_SERVICES & set(self.names):
                self._spawn(f"{name}-{node}", ["service", name], {"AIOS_NODE_ID": node})
        return self

    def _lock_store(self, data: Path) -> None:
        """One embedded NATS per data directory: nats-server does not lock its store, and a second cluster on
        another port wrote to the same files; events confirmed by one were lost when the store was next read."""
        self._lock = open(data / "aios-up.lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise ConfigError(f"AIOS_DATA_DIR={data} is used by another running cluster (aios up, a demo); stop "
                              "it, or give this one its own AIOS_DATA_DIR") from None

    def _write_auth_config(self, data: Path, url: str) -> Path:
        """A private server config with fresh passwords, and the credentials file the operator reads them from."""
        self.passwords = natsauth.new_passwords(self.tenants)
        conf = data / "nats-auth.conf"
        _write_private(conf, "jetstream {}\n" + natsauth.render(self.tenants, self.passwords))
        creds = data / "nats-credentials.json"
        _write_private(creds, json.dumps({user: natsauth.url_with(url, user, pw)
                                          for user, pw in self.passwords.items()}, indent=1))
        return conf

    def url_as(self, user: str) -> str:
        """The NATS URL with ``user``'s credentials (secure mode), or the plain one."""
        assert self.nats is not None or not self.secure
        return natsauth.url_with(self.nats.url, user, self.passwords[user]) if self.secure and self.nats else self.nats_url

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        self._argv[name] = (argv, extra_env)
        logs = self.settings.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        port = self.http_ports.get(name) or free_port()  # a restart keeps it: scrape configs name it
        role = natsauth.SERVICE_ROLE.get(argv[1] if argv[0] == "service" else argv[0], "admin")
        env = {**self.env, "AIOS_NATS_URL": self.url_as(role), "AIOS_HTTP_PORT": str(port),
               "AIOS_DATA_DIR": str(self.settings.data_dir), **(extra_env or {})}
        with open(logs / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "aios.cli.main", *argv], env=env, stdout=out,
                                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self.http_ports[name] = port

    @property
    def process_names(self) -> list[str]:
        return list(self.procs)

    def describe(self) -> list[tuple[str, str]]:
        rows = [("nats", f"{self.nats_url}" + (f" (embedded, data in {self.nats.store_dir})" if self.nats else ""))]
        for name in self.procs:
            rows.append((name, f"pid {self.procs[name].pid}, http://127.0.0.1:{self.http_ports[name]}/healthz, "
                               f"log {self.settings.data_dir / 'logs' / (name + '.log')}"))
        return rows

    def exited(self) -> dict[str, int]:
        """Processes that have exited, by name, with their exit codes; the embedded NATS server is ``nats``."""
        out = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if self.nats is not None and self.nats.proc is not None and self.nats.proc.poll() is not None:
            out["nats"] = self.nats.proc.returncode  # it was left dead: every service waited for it for ever
        return out

    def stop(self, grace: float = 15.0) -> None:
        """Agents first (their workers checkpoint on SIGTERM), then cluster services, then NATS."""
        agents = [p for n, p in self.procs.items() if n.startswith("agent-")]
        others = [p for n, p in self.procs.items() if not n.startswith("agent-")]
        self._terminate(agents, max(grace, agent_shutdown_s(self.env)))
        self._terminate(others, grace)
        if self.nats is not None:
            self.nats.stop()
        if self._lock is not None:
            self._lock.close()  # and with it the lock
            self._lock = None

    def kill(self, name: str) -> None:
        """SIGKILL one process by its name (``scheduler``, ``trainer-sim-1``, ``agent-sim-2`` ...): chaos tests."""
        proc = self.procs[name]
        proc.kill()
        proc.wait()

    def restart(self, name: str) -> None:
        """Start a killed process again with the arguments and environment it had (NATS on its port and store)."""
        if name == "nats" and self.nats is not None:
            self.nats.start()
            return
        argv, extra = self._argv[name]
        self._spawn(name, argv, extra)

    def kill_agent(self, node: str) -> None:
        """SIGKILL one node's agent (chaos and node-loss tests, the demo)."""
        proc = self.procs[f"agent-{node}"]
        proc.kill()
        proc.wait()

    def stop_agent(self, node: str, grace: float | None = None) -> None:
        """SIGTERM one node's agent, as a shutdown of the node does: its workers are stopped (and checkpoint)."""
        self._terminate([self.procs[f"agent-{node}"]], agent_shutdown_s(self.env) if grace is None else grace)

    def restart_agent(self, node: str) -> None:
        spec = dict(self.agents)[node]
        self._spawn(f"agent-{node}", ["agent", "--node", node, "--sim", spec])

    @staticmethod
    def _terminate(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_private(path: Path, text: str) -> None:
    """Secrets: readable by this user only, from the first byte on."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
