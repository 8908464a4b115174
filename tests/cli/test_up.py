"""`aios up`: embedded NATS plus each service in its own process, reported, and all stopped on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from aios.common.natsserver import NatsServer


def read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 30) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if re.search(pattern, seen):
            return seen
    raise AssertionError(f"{pattern!r} not printed; got:\n{seen}")


def wait_healthy(url: str, timeout: float = 20) -> None:
    """Until the service's /healthz answers, connected to NATS."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                assert json.loads(resp.read())["nats"] == "connected"
                return
        except OSError:
            assert time.monotonic() < deadline, f"{url} does not answer"
            time.sleep(0.2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return False


def test_up_starts_embedded_nats_and_services_and_stops_on_ctrl_c(aios_env: dict[str, str], tmp_path: Path) -> None:
    env = {**aios_env, "AIOS_NATS_PORT": "0", "AIOS_EXTRA_SERVICES": "tail=tail_service:TailService"}
    proc = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out = read_until(proc, r"Ctrl-C stops everything")
        url = re.search(r"export AIOS_NATS_URL=(nats://\S+)", out).group(1)  # type: ignore[union-attr]
        health = re.search(r"tail\s+pid (\d+), (http://\S+/healthz)", out)
        assert health, out
        service_pid, health_url = int(health.group(1)), health.group(2)
        assert "embedded, data in" in out
        dashboard = re.search(r"dashboard: (http://\S+)/\?token=(\S+)", out)
        assert dashboard, out
        with urllib.request.urlopen(dashboard.group(1) + "/", timeout=5) as resp:
            assert b"dashboard.js" in resp.read()
        request = urllib.request.Request(dashboard.group(1) + "/api/v1/jobs",
                                         headers={"Authorization": f"Bearer {dashboard.group(2)}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert json.loads(resp.read()) == {"jobs": [], "matched": 0}
        assert (tmp_path / "data" / "jetstream").is_dir()
        wait_healthy(health_url)
        nats_pids = subprocess.run(["pgrep", "-f", f"nats-server.*{url.rsplit(':', 1)[1]}"], capture_output=True,
                                   text=True).stdout.split()
        assert nats_pids, "embedded nats-server not found"
        # one process dying is restarted, as a supervisor does (it stopped the whole cluster, NATS and nodes too)
        os.kill(service_pid, signal.SIGKILL)
        said = read_until(proc, r"tail exited with -9; started it again \(pid \d+\)")
        service_pid = int(re.findall(r"tail exited with -9; started it again \(pid (\d+)\)", said)[-1])
        assert pid_alive(service_pid) and proc.poll() is None and all(pid_alive(int(p)) for p in nats_pids)
        wait_healthy(health_url)  # on the port the listing named: a scrape config built from it still works
        # the embedded NATS server too: left dead, every service waited for it for ever
        for pid in nats_pids:
            os.kill(int(pid), signal.SIGKILL)
        said = read_until(proc, r"nats exited with -9; started it again \(pid \d+\)")
        nats_pids = re.findall(r"nats exited with -9; started it again \(pid (\d+)\)", said)[-1:]
        assert pid_alive(int(nats_pids[0])) and proc.poll() is None
        wait_healthy(health_url)  # the service is connected to it again

        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, rest
        assert "stopped." in rest
        assert not pid_alive(service_pid)
        assert not any(pid_alive(int(p)) for p in nats_pids)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_up_uses_an_external_server_when_configured(aios_env: dict[str, str], nats_server: NatsServer) -> None:
    env = {**aios_env, "AIOS_NATS_URL": nats_server.url}
    proc = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out = read_until(proc, r"Ctrl-C stops everything")
        assert f"nats               {nats_server.url}\n" in out and "embedded" not in out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert nats_server.running()  # not ours to stop


@pytest.mark.parametrize("argv, code, message", [
    (["bench", "eventlog", "--events", "0"], 2, "must be a positive integer"),
    (["bench", "eventlog", "--events", "10", "--restart-events", "20", "--tail", "15"], 2, "--restart-events must exceed"),
    (["frobnicate"], 2, "invalid choice"),
    (["serve", "models:/m@prod", "--wait", "-1"], 2, "--wait: expected seconds, 0 or more, got '-1'"),
    (["models", "serve", "models:/m@prod", "--wait", "nan"], 2, "--wait: expected seconds, 0 or more, got 'nan'"),
    (["agent", "--node", "n1", "--sim", "1xH100-80GB", "--heartbeat-interval", "-1"], 2,
     "--heartbeat-interval: expected seconds from 0.05 to 3600, got -1"),
    # were taken: a node of 0 GB GPUs, and one of 13 billion GB
    (["agent", "--node", "n1", "--sim", "4xH100-0GB"], 2, "--sim: '4xH100-0GB': from 1 to 1,024 GB per device"),
    (["agent", "--node", "n1", "--sim", "2xH100-99999999999999GB"], 2, "from 1 to 1,024 GB per device"),
    # a node id the log cannot hold: the cluster started, then its agent died with the store's words
    (["up", "--sim", "a..b=2xH100-80GB"], 2, "--sim='a..b': a node id has no spaces"),
    (["agent", "--node", "a..b", "--sim", "1xH100-80GB"], 2, "--node='a..b': a node id has no spaces"),
    # tags too large for one request: a traceback in sending it
    (["models", "tag", "digits", "1", "--set", "k=" + "x" * 100_000], 2, "--set: tags.k: at most 5000 characters"),
    # "" was a quota of nothing: every job of the tenant then waited
    (["quota", "acme", "--nominal", ""], 2, "--nominal: no KIND=N given"),
    (["models", "register", "m", "/dev/zero"], 2, "/dev/zero: not a regular file"),  # it read for ever
])
def test_cli_usage_errors(aios_env: dict[str, str], argv: list[str], code: int, message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", *argv], env=aios_env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == code and message in out.stderr and "Traceback" not in out.stderr


def test_up_refuses_a_port_another_server_holds_and_an_external_server_that_is_not_there(
        aios_env: dict[str, str], nats_server: NatsServer, tmp_path: Path) -> None:
    """A second `aios up` on a taken port printed "embedded, data in ..." and its services joined the other
    cluster; with AIOS_NATS_URL pointing nowhere it printed "AIOS is up" and its services retried for ever."""
    taken = {**aios_env, "AIOS_DATA_DIR": str(tmp_path / "second"), "AIOS_NATS_PORT": str(nats_server.port)}
    taken.pop("AIOS_NATS_URL", None)
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "up", "--no-sim"], env=taken, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and f"port {nats_server.port} on 127.0.0.1 is taken" in out.stderr, out
    assert "AIOS is up" not in out.stdout and "Traceback" not in out.stderr
    nowhere = {**aios_env, "AIOS_DATA_DIR": str(tmp_path / "third"), "AIOS_NATS_URL": "nats://127.0.0.1:1"}
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", "up", "--no-sim"], env=nowhere, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "cannot reach NATS at nats://127.0.0.1:1" in out.stderr, out
    assert "AIOS is up" not in out.stdout and "Traceback" not in out.stderr
    assert nats_server.running()


def test_the_dashboard_line_names_a_token_file_only_when_there_is_one(tmp_path: Path) -> None:
    """With AIOS_GATEWAY_TOKENS set the gateway writes no token file, and `aios up` named one that did not exist."""
    from aios.cli.main import dashboard_line

    token_file = tmp_path / "gateway-token"
    token_file.write_text("s3cret\n")
    assert dashboard_line("http://h:1", token_file, {}) == (
        f"dashboard: http://h:1/?token=s3cret   (API: http://h:1/api/v1, token in {token_file})")
    line = dashboard_line("http://h:1", token_file, {"AIOS_GATEWAY_TOKENS": "abc=alice,def=*"})
    assert "tokens from AIOS_GATEWAY_TOKENS" in line and "s3cret" not in line and str(token_file) not in line


def test_the_demo_shows_the_token_file_s_token_only_when_the_gateway_made_it(tmp_path: Path) -> None:
    """`aios demo` printed ``?token=?`` (and a curl with ``Bearer ?``) when the gateway took its tokens from
    AIOS_GATEWAY_TOKENS, and would have shown a file left by an earlier run."""
    from aios.cli.main import gateway_token

    token_file = tmp_path / "gateway-token"
    assert gateway_token(token_file, {}) is None
    token_file.write_text("s3cret\n")
    assert gateway_token(token_file, {}) == "s3cret"
    assert gateway_token(token_file, {"AIOS_GATEWAY_TOKENS": "abc=alice"}) is None


def test_a_second_cluster_on_the_same_data_dir_is_refused(aios_env: dict[str, str], tmp_path: Path) -> None:
    """nats-server does not lock its store: a second `aios up` on another port wrote to the same files, and
    events one of them had confirmed were lost (found by review)."""
    from aios.common.natsserver import free_port

    env = {**aios_env, "AIOS_DATA_DIR": str(tmp_path / "shared"), "AIOS_NATS_PORT": str(free_port())}
    env.pop("AIOS_NATS_URL", None)
    first = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "up", "--no-sim"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        read_until(first, r"Ctrl-C stops everything")
        second = subprocess.run([sys.executable, "-m", "aios.cli.main", "up", "--no-sim"],
                                env={**env, "AIOS_NATS_PORT": str(free_port())}, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2 and "is used by another running cluster" in second.stderr, second
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0
    again = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "up", "--no-sim"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # stopped, it left the directory free
        read_until(again, r"Ctrl-C stops everything")
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(60) == 0


@pytest.mark.parametrize("argv, env_extra, message", [
    (["up", "--sim", "n1=1xH100-80GB", "--sim", "n1=1xA100-40GB"], {}, "node 'n1' is given twice"),
    (["up", "--no-sim", "--secure"], {"AIOS_NATS_URL": "nats://127.0.0.1:1"}, "--secure: only with the embedded"),
    (["up", "--no-sim"], {"AIOS_DATA_DIR": "FILE"}, "cannot use it"),
    (["up", "--no-sim", "--tenant", "team-a"], {}, "--tenant: needs --secure"),  # it was ignored
])
def test_up_refuses_what_it_cannot_run_by_name(aios_env: dict[str, str], tmp_path: Path, argv: list[str],
                                               env_extra: dict[str, str], message: str) -> None:
    """Each was a traceback, or (a node given twice) two agents for one node, one of them left running after."""
    afile = tmp_path / "afile"
    afile.write_text("")
    env = {**aios_env, "AIOS_DATA_DIR": str(tmp_path / "data"),
           **{k: (str(afile) if v == "FILE" else v) for k, v in env_extra.items()}}
    out = subprocess.run([sys.executable, "-m", "aios.cli.main", *argv], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out


def test_up_stops_in_order_when_its_output_is_gone(aios_env: dict[str, str], tmp_path: Path) -> None:
    """`aios up | tee log` and Ctrl-C: tee died too, the "stopping" print raised BrokenPipeError, the orderly stop
    was skipped and the services were left to die with their parent, NATS among them, agents last."""
    env = {**aios_env, "AIOS_NATS_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "up", "--no-sim"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        out = read_until(proc, r"Ctrl-C stops everything")
        pids = [int(p) for p in re.findall(r"\bpid (\d+)", out)]
        assert pids, out
        proc.stdout.close()  # type: ignore[union-attr]  # the reader (tee) is gone
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        assert not [p for p in pids if pid_alive(p)], "services outlived `aios up`: the orderly stop was skipped"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_aios_agent_keeps_the_fence_stop_grace_and_labels_its_environment_sets() -> None:
    """From a walkthrough: `aios agent` built its configuration anew from its flags and dropped
    AIOS_AGENT_FENCE_AFTER (and the stop grace): an agent cut off from NATS never stopped its workers, while the
    cluster ran its jobs again elsewhere. Every deployment starts its agents this way."""
    from aios.cli.main import agent_config, build_parser

    args = build_parser().parse_args(["agent", "--node", "n1", "--sim", "1xH100-80GB", "--heartbeat-interval", "1"])
    config = agent_config(args, {"AIOS_AGENT_FENCE_AFTER": "15", "AIOS_AGENT_STOP_GRACE_S": "3"})
    assert (config.node_id, config.sim, config.heartbeat_interval_s) == ("n1", "1xH100-80GB", 1.0)
    assert (config.fence_after_s, config.stop_grace_s) == (15.0, 3.0)
