"""The deployment files cannot drift from the code: no Docker engine or Nomad runs here, so the compose file and
the Nomad jobs are parsed and checked against the CLI's commands, the service registry and the environment variables
the code reads; the NATS configs are checked by nats-server itself (``-t``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from aios.cli.main import build_parser
from aios.cli.services import SERVICES
from aios.common import natsauth
from aios.common.config import agent_shutdown_s
from aios.common.natsserver import find_nats_server, free_port

REPO = Path(__file__).parent.parent.parent
DEPLOY = REPO / "deploy"
NOMAD = sorted((DEPLOY / "nomad").glob("*.nomad.hcl"))


def code_env_names() -> set[str]:
    """Every AIOS_* name the code mentions."""
    names: set[str] = set()
    for root in ("libs", "services"):
        for path in (REPO / root).rglob("*.py"):
            names |= set(re.findall(r"AIOS_[A-Z0-9_]+", path.read_text()))
    return names


def cli_accepts(argv: list[str]) -> None:
    """The CLI parses these arguments (a renamed command or option fails here, not in production)."""
    args = build_parser().parse_args(argv)
    if argv[0] == "service":
        assert args.name in SERVICES, f"no service {args.name!r} in aios.cli.services"


def unquote(value: Any) -> Any:
    """python-hcl2 keeps HCL's quotes and marks blocks; plain values are easier to check."""
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_runs_every_service_with_commands_and_settings_the_code_knows(compose: dict[str, Any]) -> None:
    services = compose["services"]
    known_env = code_env_names()
    aios = {name: s for name, s in services.items() if s.get("image") == "aios:latest"}
    for name, svc in aios.items():
        cli_accepts(svc["command"])
        unknown = [k for k in svc["environment"] if k.startswith("AIOS_") and k not in known_env]
        assert unknown == [], f"{name}: the code reads no {unknown}"
        assert svc["restart"] == "unless-stopped"
        # compose fills in ${...} before the URL is parsed; here it is parsed as written
        urls = [re.fullmatch(r"nats://([^:]+):(\$\{[^}]+\})@([^:]+):4222", u)
                for u in svc["environment"]["AIOS_NATS_URL"].split(",")]
        assert all(urls), f"{name}: AIOS_NATS_URL is not user:password@host:4222 thrice"
        hosts = [u.group(3) for u in urls if u]
        assert len(hosts) == 3 and all(h in services for h in hosts), f"{name}: AIOS_NATS_URL names {hosts}"
        role = natsauth.ROLES[natsauth.SERVICE_ROLE[svc["command"][1] if svc["command"][0] == "service"
                                                    else svc["command"][0]]]
        assert {(u.group(1), u.group(2)) for u in urls if u} == \
            {(role.user, f"${{{role.password_env}:?unset}}")}, f"{name} connects as {role.user}"
        assert svc["environment"]["AIOS_STREAM_REPLICAS"] == "3"
    started = {s["command"][1] for s in aios.values() if s["command"][0] == "service"}
    assert started == set(SERVICES), "every registered service is deployed"
    agents = [s for s in aios.values() if s["command"][0] == "agent"]
    trainers = [s for s in aios.values() if s["command"] == ["service", "trainer"]]
    assert len(agents) == 2 and {t["environment"]["AIOS_NODE_ID"] for t in trainers} == \
        {a["command"][a["command"].index("--node") + 1] for a in agents}  # a trainer per node, named alike
    assert services["scheduler"]["deploy"]["replicas"] == 2
    assert services["gateway"]["ports"] == [f"{services['gateway']['environment']['AIOS_GATEWAY_PORT']}:8080"]


def test_compose_nats_is_a_three_node_cluster_with_volumes_and_health(compose: dict[str, Any]) -> None:
    nats = {n: s for n, s in compose["services"].items() if n.startswith("nats-")}
    assert sorted(nats) == ["nats-1", "nats-2", "nats-3"]
    routes = re.findall(r"nats://(nats-\d):6222", (DEPLOY / "nats" / "cluster.conf").read_text())
    assert sorted(routes) == sorted(nats)
    users = re.findall(r'user: "([^"]+)", password: \$(\w+)', (DEPLOY / "nats" / "auth.conf").read_text())
    for name, svc in nats.items():
        assert svc["environment"]["NATS_SERVER_NAME"] == name
        # healthy once the members have a JetStream meta leader (as the Nomad check, below): js-enabled-only was
        # healthy on a member alone, and the services that wait for it crashed creating the log
        assert svc["healthcheck"]["test"][-1] == "http://127.0.0.1:8222/healthz", svc["healthcheck"]
        assert {var for _, var in users} <= set(svc["environment"]), f"{name}: a password of auth.conf is unset"
        assert "./nats/auth.conf:/etc/nats/auth.conf:ro" in svc["volumes"]
        volume = next(v for v in svc["volumes"] if v.endswith(":/data"))
        assert volume.split(":")[0] in compose["volumes"]
        assert (DEPLOY / svc["volumes"][0].split(":")[0]).resolve().is_file()


PASSWORDS = {role.password_env: "secret" for role in natsauth.roles_for(["team-a", "team-b"])}


@pytest.mark.parametrize("config", ["single.conf", "cluster.conf"])
def test_nats_configs_are_valid_for_nats_server(config: str) -> None:
    out = subprocess.run([find_nats_server(), "-c", str(DEPLOY / "nats" / config), "-t"], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "NATS_SERVER_NAME": "nats-1", **PASSWORDS})
    assert out.returncode == 0 and "is valid" in (out.stdout + out.stderr), out.stderr


def nomad_jobs() -> dict[str, dict[str, Any]]:
    jobs = {}
    for path in NOMAD:
        for block in unquote(hcl2.load(path.open()))["job"]:
            jobs.update(block)
    return jobs


def tasks(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, task) for group in job["group"] for g in group.values() for t in g["task"] for name, task in t.items()]


def test_nomad_jobs_use_real_commands_and_settings() -> None:
    jobs = nomad_jobs()
    known_env = code_env_names()
    deployed = set()
    for job_name, job in jobs.items():
        for task_name, task in tasks(job):
            config = task["config"][0]
            if config["image"] != "aios:latest":
                continue
            argv = [a.replace("${node.unique.name}", "node-1") for a in config["args"]]
            cli_accepts(argv)
            if argv[0] == "service":
                deployed.add(argv[1])
            env = task["env"][0]
            unknown = [k for k in env if k.startswith("AIOS_") and k not in known_env]
            assert unknown == [], f"{job_name}/{task_name}: the code reads no {unknown}"
    assert deployed == set(SERVICES)


def seconds(text: str) -> float:
    return float(text.rstrip("s"))


AGENT_STOP_S = agent_shutdown_s({})
"""The longest a device agent takes to stop (drain its node, stop its workers, exit), as `aios up` waits for it."""


def test_compose_gives_agents_time_to_drain(compose: dict[str, Any]) -> None:
    agents = {n: s for n, s in compose["services"].items() if s.get("command", [None])[0] == "agent"}
    assert agents and all(seconds(s["stop_grace_period"]) >= AGENT_STOP_S for s in agents.values()), agents


def test_nomad_node_job_is_a_system_job_with_the_gpu_device_and_services_roll_safely() -> None:
    jobs = nomad_jobs()
    node = jobs["aios-node"]
    assert node["type"] == "system"
    agent = dict(tasks(node))["device-agent"]
    assert "nvidia/gpu" in agent["resources"][0]["device"][0]
    assert seconds(agent["kill_timeout"]) >= AGENT_STOP_S  # else its workers are killed before they checkpoint
    # its workers run in its container: a gang's rank 0 and a serving replica must be reachable from other hosts
    assert agent["config"][0]["network_mode"] == "host" and agent["config"][0]["ipc_mode"] == "host"
    variables = {name: v["default"] for block in unquote(hcl2.load((DEPLOY / "nomad" / "aios-node.nomad.hcl").open()))
                 ["variable"] for name, v in block.items()}
    assert agent["resources"][0]["memory"] == "${var.workers_memory_mb}" and variables["workers_memory_mb"] >= 16384
    assert agent["resources"][0]["device"][0]["nvidia/gpu"]["count"] == "${var.gpus_per_node}"
    assert dict(tasks(node))["trainer"]["env"][0]["AIOS_NODE_ID"] == "${node.unique.name}"
    scheduler = jobs["aios-scheduler"]
    assert scheduler["group"][0]["scheduler"]["count"] == 2
    for name, job in jobs.items():
        if job["type"] == "service":
            update = job["update"][0]
            assert update["max_parallel"] == 1 and update["auto_revert"] is True, name
            for group in job["group"]:
                for g in group.values():
                    assert g["constraint"][0]["operator"] == "distinct_hosts", name


def test_nomad_tasks_connect_as_their_own_nats_identity() -> None:
    jobs = nomad_jobs()
    for job_name, job in jobs.items():
        for task_name, task in tasks(job):
            config = task["config"][0]
            if config["image"] == "aios:latest":
                argv = config["args"]
                role = natsauth.SERVICE_ROLE[argv[1] if argv[0] == "service" else argv[0]]
                assert "AIOS_NATS_URL" not in task["env"][0], f"{task_name}: the URL carries a secret: template it"
                urls = [t["data"] for t in task["template"] if t.get("env") and "AIOS_NATS_URL=" in t["data"]]
                assert len(urls) == 1 and urls[0].startswith(f"AIOS_NATS_URL=nats://{role}:"), task_name
                assert f'nomad/jobs/{job_name}\\"' in urls[0], f"{task_name} reads its own job's variable"
            elif task_name == "nats":
                files = [m for t in task["template"] for m in re.findall(r'file\("([^"]+)"\)', t.get("data", ""))]
                assert files == ["deploy/nats/auth.conf"] and (REPO / files[0]).is_file()  # read by `nomad job run`
                rendered = " ".join(t.get("data", "") for t in task["template"] if t.get("env"))
                assert f'nomad/jobs/{job_name}\\"' in rendered, "a job may read only its own variables"
                missing = [v for v in PASSWORDS if f"{v}=" not in rendered]
                assert missing == [], f"the NATS server would not know {missing}"


def test_health_checks_reach_the_services_and_every_gateway_has_the_same_tokens() -> None:
    """Nomad checks /healthz from outside the container: the services bound it to loopback (every check failed,
    no allocation became healthy). The gateway had no tokens under Nomad: each allocation made its own, unknown."""
    from aios.common.config import load_settings

    env = dict(re.findall(r"(AIOS_[A-Z_]+)=(\S+)", (DEPLOY / "Dockerfile").read_text()))
    assert load_settings(env).http_host == "0.0.0.0"
    jobs = nomad_jobs()
    checked = [name for name, job in jobs.items() for group in job["group"] for g in group.values()
               for service in g.get("service", []) for check in service.get("check", []) if check["type"] == "http"]
    assert checked  # the health checks this is about
    for name, job in jobs.items():
        for task_name, task in tasks(job):
            assert task.get("env", [{}])[0].get("AIOS_HTTP_HOST", "0.0.0.0") == "0.0.0.0", task_name
    gateway = dict(tasks(jobs["aios-gateway"]))["gateway"]
    tokens = [t["data"] for t in gateway["template"] if t.get("env") and "AIOS_GATEWAY_TOKENS=" in t["data"]]
    assert len(tokens) == 1 and 'nomad/jobs/aios-gateway\\"' in tokens[0]


def test_tenants_that_would_share_credentials_or_an_inbox_are_refused() -> None:
    """'nlp_x' and 'nlp.x' got the same password variable and reply inbox: one tenant could read the other's
    replies. Such a pair is refused, naming both; a name given twice is one tenant."""
    from aios.common.errors import ConfigError

    for pair in (["nlp_x", "nlp.x"], ["nlp-x", "nlp_x"], ["a.b", "a_b"]):
        with pytest.raises(ConfigError, match=f"tenants: '{pair[0]}' and '{pair[1]}' would share the NATS"):
            natsauth.render(pair)
    assert natsauth.render(["team-a", "team-a"]).count('user: "tenant-team-a"') == 1


def nats_member_config(template: str, *, me: tuple[str, int], client: int, monitor: int,
                       members: list[tuple[str, int]], route_password: str) -> str:
    """The NATS job's config as consul-template renders it on a client, for the functions it uses: the task's
    addresses (``env "NOMAD_ADDR_..."``), the job's Nomad Variable, and the members Consul lists (``range
    service``). The static ports are replaced by the test's own, so that three members share one host."""
    body = re.fullmatch(r'"?<<-EOT\n(.*)\n\s*EOT\n?"?', template, re.S)
    assert body, "the config is an indented heredoc"
    text = textwrap.dedent(body[1])
    text = text.replace('{{ with nomadVar "nomad/jobs/nats" }}{{ .route }}{{ end }}', route_password)
    text = text.replace('{{ env "NOMAD_ADDR_cluster" }}', f"{me[0]}:{me[1]}")
    text = text.replace('{{ env "NOMAD_ADDR_client" }}', f"127.0.0.1:{client}")
    loop = re.search(r'\s*\{\{- range service "nats-cluster" \}\}(.*?)\s*\{\{- end \}\}', text, re.S)
    assert loop, "routes come from the members Consul lists"
    rows = "".join(loop[1].replace("{{ .Address }}", host).replace("{{ .Port }}", str(port)) for host, port in members)
    text = text[:loop.start()] + rows + text[loop.end():]
    assert "{{" not in text, f"a template function this test does not render: {text}"
    for line, port in (("port: 4222", client), ("http_port: 8222", monitor), ("port: 6222", me[1])):
        assert f"\n{line}" in text or f"  {line}" in text, line
        text = re.sub(rf"(?m)^(\s*){line}$", rf"\g<1>{line.split(':')[0]}: {port}", text)
    return text


def _healthz(monitor: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz", timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _route_names(monitor: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/routez", timeout=2) as reply:
        return {r.get("remote_name", "") for r in json.load(reply).get("routes") or []}


def test_nomad_nats_members_find_each_other_authenticate_routes_and_are_healthy_only_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Nomad job's NATS config, rendered as on three clients, makes a cluster: each member starts on a route to
    itself before Consul lists the others (JetStream refuses a cluster with no route), joins them when the routes
    are re-rendered and reloaded (SIGHUP), and the health check Nomad rolls by fails on a member alone. Routes
    need the route password. (It used Compose's hostnames nats-1..3, which no Nomad client resolves, a check that
    passed on a member that had never met the others, and no route authentication on a port open on every host.)"""
    nats = dict(tasks(nomad_jobs()["nats"]))["nats"]
    template = next(t["data"] for t in nats["template"] if t.get("destination") == "secrets/nats.conf")
    check = next(s for g in nomad_jobs()["nats"]["group"] for grp in g.values() for s in grp["service"]
                 if s["name"] == "nats")["check"][0]
    assert check["path"] == "/healthz"
    for name, value in {**PASSWORDS, "AIOS_NATS_ROUTE_PASS": "route-secret"}.items():
        monkeypatch.setenv(name, value)  # the passwords' env file, rendered from the same Variable
    ports = [(free_port(), free_port(), free_port()) for _ in range(4)]  # client, monitor, cluster
    cluster = [("127.0.0.1", p[2]) for p in ports[:3]]

    def member(i: int, listed: list[tuple[str, int]], password: str = "route-secret") -> Path:
        home = tmp_path / f"m{i}"
        home.mkdir(exist_ok=True)
        (home / "auth.conf").write_text((DEPLOY / "nats" / "auth.conf").read_text())
        conf = home / "nats.conf"
        conf.write_text(nats_member_config(template, me=("127.0.0.1", ports[i][2]), client=ports[i][0],
                                           monitor=ports[i][1], members=listed, route_password=password))
        return conf

    servers: list[subprocess.Popen[bytes]] = []
    try:
        def start(i: int, conf: Path) -> subprocess.Popen[bytes]:
            conf.write_text(conf.read_text().replace('"/data/jetstream"', f'"{tmp_path / f"store{i}"}"'))
            server = subprocess.Popen([find_nats_server(), "-c", str(conf), "-l", str(conf.parent / "log")],
                                      env={**os.environ, "NATS_SERVER_NAME": f"nats-{i}", "GOMAXPROCS": "1"},
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append(server)
            deadline = time.monotonic() + 20
            while _healthz(ports[i][1]) == 0:
                assert server.poll() is None and time.monotonic() < deadline, (conf.parent / "log").read_text()
                time.sleep(0.05)
            return server

        first = start(0, member(0, []))  # Consul lists nobody yet
        time.sleep(1.0)
        assert _healthz(ports[0][1]) == 503  # alone: no meta leader, so not healthy
        member(0, cluster)  # the template re-rendered as the others register
        first.send_signal(signal.SIGHUP)
        for i in (1, 2):
            start(i, member(i, cluster))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_healthz(p[1]) != 200 for p in ports[:3]):
            time.sleep(0.2)
        assert [_healthz(p[1]) for p in ports[:3]] == [200, 200, 200]
        assert _route_names(ports[0][1]) >= {"nats-1", "nats-2"}
        start(3, member(3, cluster, password="guessed"))  # a host that does not know the route password
        time.sleep(2.0)
        assert "nats-3" not in _route_names(ports[0][1]) and _healthz(ports[3][1]) == 503
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
