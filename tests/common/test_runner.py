"""The service runner, run as a real process: health and metrics over HTTP, JSON logs, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from aios.common.events import JobSubmitted
from aios.common.natsserver import NatsServer, free_port
from aios.common.store import connect

TAIL = "tail=tail_service:TailService"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_http(url: str, timeout: float = 20) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def test_service_serves_health_metrics_and_drains_on_sigterm(killable_nats: NatsServer,
                                                                   aios_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {**aios_env, "AIOS_NATS_URL": killable_nats.url, "AIOS_HTTP_PORT": str(port), "AIOS_EXTRA_SERVICES": TAIL}
    log_path = tmp_path / "svc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "service", "tail"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        status, body = await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["nats"] == "connected"
        store = await connect([killable_nats.url])
        for i in range(5):
            await store.append(f"job.r{i}", JobSubmitted(aggregate_id=f"r{i}", tenant="t"))
        await store.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _, metrics = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
            if 'aios_test_events_total{type="JobSubmitted"} 5.0' in metrics:
                break
            await asyncio.sleep(0.1)
        assert 'aios_test_events_total{type="JobSubmitted"} 5.0' in metrics
        assert 'aios_service_up{service="tail"} 1.0' in metrics and 'aios_nats_connected{service="tail"} 1.0' in metrics

        killable_nats.kill()  # health reflects a lost NATS connection
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(get, f"http://127.0.0.1:{port}/healthz"))[0] != 503:
            assert time.monotonic() < deadline, "healthz never reported the lost connection"
            await asyncio.sleep(0.1)
        killable_nats.start()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    messages = [(r["service"], r["msg"]) for r in lines]
    assert ("tail", "service started") in messages and ("tail", "service stopped") in messages
    drained = [r for r in lines if r["msg"] == "drained"]
    assert drained and drained[0]["seen"] == 5
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in lines)


def test_service_without_nats_url_says_so(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "service", "tail"],
                         env={**aios_env, "AIOS_EXTRA_SERVICES": TAIL}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "AIOS_NATS_URL is not set" in out.stderr and "Traceback" not in out.stderr


def test_unknown_service_is_a_usage_error(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "service", "nope"], env=aios_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown service 'nope'" in out.stderr and "Traceback" not in out.stderr


def test_bad_extra_services_setting(aios_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "service", "x"],
                         env={**aios_env, "AIOS_EXTRA_SERVICES": "x=nomodule"}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "AIOS_EXTRA_SERVICES: 'x=nomodule' is not 'name=module:attr'" in out.stderr


def test_service_waits_for_nats_to_come_up(aios_env: dict[str, str], tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "late-nats")
    port = free_port()
    env = {**aios_env, "AIOS_NATS_URL": server.url, "AIOS_HTTP_PORT": str(port), "AIOS_EXTRA_SERVICES": TAIL}
    proc = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "service", "tail"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # until it says it is retrying (a fixed 1.5 s was not always enough for it to start on a loaded machine)
        said, deadline = "", time.monotonic() + 60
        while proc.stderr and time.monotonic() < deadline and not (
                "NATS not reachable yet, retrying" in said or '"msg":"nats error"' in said):
            line = proc.stderr.readline()
            if not line:
                break
            said += line
        assert "NATS not reachable yet, retrying" in said or '"msg":"nats error"' in said, said
        assert proc.poll() is None, "the service gave up instead of retrying"
        server.start()
        status, _ = wait_http(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        server.kill()


def test_a_taken_http_port_is_not_fatal(nats_server: NatsServer, aios_env: dict[str, str], tmp_path: Path) -> None:
    """A launcher picks a free port for each service's /healthz; another process may take it before the service
    binds. The service died at start with a traceback (a CI run lost a node that way); now it serves on another
    port, says so, and logs the one it got."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {**aios_env, "AIOS_NATS_URL": nats_server.url, "AIOS_HTTP_PORT": str(port), "AIOS_EXTRA_SERVICES": TAIL}
    log_path = tmp_path / "svc.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "service", "tail"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while "service started" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        started = next(json.loads(line) for line in log_path.read_text().splitlines() if "service started" in line)
        assert started["http"] != f"http://127.0.0.1:{port}" and "http port taken" in log_path.read_text()
        assert wait_http(started["http"] + "/healthz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        taken.close()
        if proc.poll() is None:
            proc.kill()
