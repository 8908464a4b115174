"""``aios``: the command line. Commands are a dict of handlers (DESIGN.md §9.4); each returns an exit code.

Exit codes: 0 success, 1 failure of the work itself, 2 bad usage or configuration, 3 not found, 4 a job waited for
did not succeed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from aios.common.config import load_settings
from aios.common.errors import AiosError, ConfigError


DEFAULT_SIM_NODES = ["sim-1=4xH100-80GB", "sim-2=4xA100-40GB"]


def gateway_token(token_file: Path, env: Mapping[str, str]) -> str | None:
    """The token that opens the dashboard, when the gateway made one: with ``AIOS_GATEWAY_TOKENS`` set it makes no
    token file, and a file left from an earlier run would be the wrong one."""
    if env.get("AIOS_GATEWAY_TOKENS", "").strip() or not token_file.is_file():
        return None
    return token_file.read_text().strip()


def dashboard_line(gateway: str, token_file: Path, env: Mapping[str, str]) -> str:
    """Where the dashboard is and which token opens it (the line named a token file that did not exist)."""
    token = gateway_token(token_file, env)
    if env.get("AIOS_GATEWAY_TOKENS", "").strip():
        return f"dashboard: {gateway}/?token=<token>   (API: {gateway}/api/v1, tokens from AIOS_GATEWAY_TOKENS)"
    return f"dashboard: {gateway}/?token={token or '<token>'}   (API: {gateway}/api/v1, token in {token_file})"


def _sim_nodes(items: list[str]) -> list[tuple[str, str]]:
    from aios.common.store import check_node_id
    from aios.device_agent.fakenvml import parse_sim_spec

    nodes = []
    for item in items:
        node, sep, spec = item.partition("=")
        if not sep or not node:
            raise ConfigError(f"--sim {item!r}: expected NODE=SPEC, e.g. sim-1=4xH100-80GB")
        if node in dict(nodes):  # two agents for one node: the second hid the first, left running after `down`
            raise ConfigError(f"--sim {item!r}: node {node!r} is given twice")
        check_node_id(node, "--sim")
        try:
            parse_sim_spec(spec)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        nodes.append((node, spec))
    return nodes


RESTARTS_MAX = 5
RESTART_WINDOW_S = 60.0
"""``aios up`` restarts a process that dies, unless it has already restarted it ``RESTARTS_MAX`` times in this
window (then the cluster stops)."""


def cmd_up(args: argparse.Namespace) -> int:
    from aios.cli.cluster import LocalCluster

    if args.tenant and not args.secure:  # it was ignored: the tenant's clients then found no identity to use
        raise ConfigError("--tenant: needs --secure (it creates the tenant's NATS identity, and without --secure "
                          "there are none: every client connects as it likes)")
    settings = load_settings()
    agents = [] if args.no_sim else _sim_nodes(args.sim or DEFAULT_SIM_NODES)
    cluster = LocalCluster(settings, agents=agents, secure=args.secure, tenants=args.tenant or [])
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster.start()
    try:
        print("AIOS is up:")
        for name, where in cluster.describe():
            print(f"  {name:<18} {where}")
        if not cluster.names:
            print("  (no services are registered yet: NATS only)")
        if cluster.secure:
            print(f"every process connects as its own NATS user; credentials in "
                  f"{settings.data_dir / 'nats-credentials.json'} (the CLI below uses 'admin')")
        print(f"export AIOS_NATS_URL={cluster.nats_url}   # to use this cluster from another shell")
        if "gateway" in cluster.names:
            gateway = asyncio.run(_announced(cluster.nats_url, "_gateway"))
            if gateway:
                print(dashboard_line(gateway, settings.data_dir / "gateway-token", os.environ))
        print("Ctrl-C stops everything.", flush=True)
        restarts: dict[str, list[float]] = {}
        while not stop:
            now = time.monotonic()
            for name, code in cluster.exited().items():
                # a supervisor's restart on failure (systemd's Restart=, Nomad's restart stanza): one process dying
                # stopped the whole cluster, NATS and every node with it. A configuration error (exit 2) or a
                # crash loop still stops it: starting again would not help
                recent = [t for t in restarts.get(name, []) if now - t < RESTART_WINDOW_S]
                if code == 2 or len(recent) >= RESTARTS_MAX:
                    why = "a configuration error" if code == 2 else f"{len(recent)} restarts in a minute"
                    print(f"{name} exited with {code} ({why}; see its log); stopping", file=sys.stderr)
                    return 1
                cluster.restart(name)
                pid = cluster.nats.proc.pid if name == "nats" and cluster.nats and cluster.nats.proc else \
                    cluster.procs[name].pid
                print(f"{name} exited with {code}; started it again (pid {pid})", file=sys.stderr, flush=True)
                restarts[name] = [*recent, now]
            time.sleep(0.2)
        return 0
    finally:
        with contextlib.suppress(OSError):  # `aios up | tee`: Ctrl-C ended tee too, and the print's broken pipe
            print("stopping AIOS ...", flush=True)  # skipped the orderly stop (NATS went with the agents)
        cluster.stop()
        with contextlib.suppress(OSError):
            print("stopped.", flush=True)


async def _announced(url: str, key: str, wait_s: float = 15.0) -> str | None:
    """An address a service announced in the endpoints bucket (the gateway's, the router's), once it has."""
    from aios.common.store import connect
    from aios.model_registry.replica import endpoints_bucket

    deadline = time.monotonic() + wait_s
    store = await connect([url], name="aios-up")
    try:
        kv = await endpoints_bucket(store)
        while time.monotonic() < deadline:
            try:
                entry = await kv.get(key)
                if entry.value:
                    return str(entry.value.decode())
            except Exception:  # noqa: BLE001 - not announced yet
                pass
            await asyncio.sleep(0.3)
        return None
    finally:
        await store.close()


def cmd_service(args: argparse.Namespace) -> int:
    from aios.cli.services import load_service
    from aios.common.runner import run_service

    return asyncio.run(run_service(load_service(args.name)))


def cmd_agent(args: argparse.Namespace) -> int:
    from aios.common.runner import run_service
    from aios.device_agent.service import DeviceAgentService

    return asyncio.run(run_service(DeviceAgentService(agent_config(args))))


def agent_config(args: argparse.Namespace, env: dict[str, str] | None = None) -> Any:
    """The agent's configuration: its flags over the environment's settings."""
    import msgspec

    from aios.device_agent.service import AgentConfig

    base = AgentConfig.from_env(env)
    # the flags over the environment, the rest of it kept (built anew, AIOS_AGENT_FENCE_AFTER, the stop grace and
    # the labels were dropped: no agent started by `aios agent`, so none in any deployment, ever fenced itself)
    from aios.common.store import check_node_id

    node = check_node_id(args.node, "--node") if args.node else base.node_id
    config = msgspec.structs.replace(base, node_id=node, sim=args.sim or base.sim,
                                     telemetry_interval_s=args.telemetry_interval or base.telemetry_interval_s,
                                     heartbeat_interval_s=args.heartbeat_interval or base.heartbeat_interval_s)
    for option, value in (("--telemetry-interval", config.telemetry_interval_s),
                          ("--heartbeat-interval", config.heartbeat_interval_s)):
        if not 0.05 <= value <= 3600:  # -1 made the heartbeat loop spin (asyncio.sleep of a negative time)
            raise ConfigError(f"{option}: expected seconds from 0.05 to 3600, got {value:g}")
    if config.sim:
        from aios.device_agent.fakenvml import parse_sim_spec

        try:
            parse_sim_spec(config.sim)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return config


def cmd_nodes(args: argparse.Namespace) -> int:
    from aios.cli import inspect

    return asyncio.run(inspect.nodes(args.node, as_json=args.json))


def cmd_cordon(args: argparse.Namespace) -> int:
    from aios.cli import inspect

    on = args.command != "uncordon"
    return asyncio.run(inspect.cordon(args.node, on, args.command == "drain", getattr(args, "reason", "") or ""))


def cmd_submit(args: argparse.Namespace) -> int:
    from aios.cli import jobs

    return asyncio.run(jobs.submit(args.spec, args.idempotency_key, args.json))


def cmd_jobs(args: argparse.Namespace) -> int:
    from aios.cli import jobs

    from aios.scheduler.state import STATUSES

    if args.status is not None and args.status not in STATUSES:  # a typo listed nothing, as if none were there
        raise ConfigError(f"--status: {args.status!r} is no job state (one of {', '.join(STATUSES)})")
    if args.tenant is not None:  # a name no tenant can have ('Ab c') listed nothing, as if it had no jobs
        from aios.scheduler.spec import SpecError, check_tenant

        try:
            check_tenant(args.tenant, "--tenant")
        except SpecError as exc:
            raise ConfigError(f"{exc}, got {args.tenant!r}") from None
    return asyncio.run(jobs.jobs(args.json, args.tenant, args.status, args.limit))


def cmd_why(args: argparse.Namespace) -> int:
    from aios.cli import jobs

    return asyncio.run(jobs.why(args.job, args.json))


def cmd_logs(args: argparse.Namespace) -> int:
    from aios.cli import jobs

    return asyncio.run(jobs.logs(args.job, args.follow, args.worker))


def cmd_job(args: argparse.Namespace) -> int:
    from aios.cli import jobs

    return asyncio.run(jobs.job(args.job, args.json, args.wait))


def cmd_top(args: argparse.Namespace) -> int:
    from aios.cli import top

    return asyncio.run(top.run(args.once, args.json))


def cmd_cancel(args: argparse.Namespace) -> int:
    from aios.cli import jobs

    return asyncio.run(jobs.cancel(args.job))


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """Inside the block, what native code writes to file descriptor 1 goes to stderr, while Python's ``print``
    still reaches the real stdout: HiGHS (behind scipy's milp) prints debug lines straight to fd 1, which would
    otherwise break ``--json`` output."""
    sys.stdout.flush()
    try:
        real = os.dup(1)
    except OSError:  # no stdout at all: nothing to protect
        yield
        return
    os.dup2(2, 1)
    old = sys.stdout
    sys.stdout = open(real, "w", buffering=1, encoding="utf-8", closefd=False)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = old
        os.dup2(real, 1)
        os.close(real)


def cmd_simulate(args: argparse.Namespace) -> int:
    from aios.cli import simulate

    if args.list_policies:
        return simulate.list_policies(args.json)
    if not args.trace and not args.from_log:
        raise ConfigError("--trace FILE or --from-log is required (or --list-policies)")
    with native_stdout_to_stderr():
        return _simulate(args)


def _simulate(args: argparse.Namespace) -> int:
    from aios.cli import simulate

    return simulate.run(args.trace, args.cluster, args.policy, args.compare, args.throughputs, args.round,
                        args.gpus_per_server, args.json, args.out, from_log=args.from_log, add=args.add,
                        export=args.export, oracle_estimates=args.oracle_estimates, on_events=args.on_events)


def cmd_tenants(args: argparse.Namespace) -> int:
    from aios.cli import inspect

    return asyncio.run(inspect.tenants(as_json=args.json))


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from aios.cli import jobs

    return asyncio.run(jobs.checkpoints(args.sweep, args.retention_h, args.orphan_grace_s, args.dry_run, args.json,
                                        args.delete))


def cmd_forget(args: argparse.Namespace) -> int:
    from aios.cli import inspect

    return asyncio.run(inspect.forget(args.node))


def cmd_quota(args: argparse.Namespace) -> int:
    from aios.cli import inspect

    if args.remove:
        given = [o for o, v in (("--nominal", args.nominal), ("--cohort", args.cohort),
                                ("--borrowing-limit", args.borrowing_limit), ("--lending-limit", args.lending_limit)) if v]
        if given:
            raise ConfigError(f"--remove: takes no quota options (got {', '.join(given)})")
        return asyncio.run(inspect.remove_quota(args.tenant))
    if args.nominal is None:
        raise ConfigError("--nominal: required to set a quota (KIND=N,...; or --remove to take the quota away)")
    def joined(values: list[str] | None) -> str | None:  # repeated: one list (the last one alone was kept)
        return None if values is None else ",".join(values)
    return asyncio.run(inspect.set_quota(args.tenant, args.cohort, joined(args.nominal), joined(args.borrowing_limit),
                                         joined(args.lending_limit)))


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench == "scheduler":
        from aios.bench import scheduler

        result = asyncio.run(scheduler.run(nodes=args.nodes, gpus_per_node=args.gpus_per_node, pending=args.pending,
                                           rate=args.rate, seconds=args.seconds, blocked=args.blocked))
    elif args.bench == "simulator":
        from aios.bench import simulator

        if not Path(args.throughputs).is_file():
            raise ConfigError(f"--throughputs: no such file {args.throughputs!r}")
        with native_stdout_to_stderr():
            return simulator.main(gpus=args.gpus, jobs=args.jobs, policies=args.policy, load=args.load,
                                  throughputs=args.throughputs)
    elif args.bench == "compress":
        from aios.bench import compress

        result = compress.main(seeds=args.seeds)
    elif args.bench == "serve":
        from aios.bench import serve

        result = serve.main(seconds=args.seconds, concurrency=args.concurrency, rows=args.rows, hidden=args.hidden)
    elif args.bench == "allreduce":
        from aios.bench import allreduce

        result = allreduce.main(ranks=args.ranks, sizes_mb=args.mb, iters=args.iters, rounds=args.rounds)
    elif args.bench == "inventory":
        from aios.bench import inventory

        result = asyncio.run(inventory.run(nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                                           agent_seconds=args.agent_seconds))
    else:
        from aios.bench import eventlog

        result = asyncio.run(eventlog.run(events=args.events, restart_events=args.restart_events, tail=args.tail,
                                          nats_url=args.nats_url, profile=args.profile))
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from aios.cli import demo

    return asyncio.run(demo.run(keep=args.keep))


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def _mib_list(text: str) -> list[int]:
    try:
        sizes = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes in MiB, comma-separated integers (e.g. 1,16,64)") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive integers")
    return sizes


def cmd_nats_config(args: argparse.Namespace) -> int:
    from aios.common import natsauth
    from aios.scheduler.spec import SpecError, check_tenant

    for tenant in args.tenant:
        try:
            check_tenant(tenant, f"--tenant {tenant!r}")
        except SpecError as exc:
            raise ConfigError(str(exc)) from None
    sys.stdout.write(natsauth.render(args.tenant))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aios", description="AIOS: an operating system for AI workloads",
        epilog="exit codes: " + ", ".join(f"{code} {what}" for what, code in EXIT_CODES.items()))
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    up = sub.add_parser("up", help="start a local cluster: embedded NATS (unless AIOS_NATS_URL is set) + services")
    up.add_argument("--sim", action="append", metavar="NODE=SPEC",
                    help="a simulated node, e.g. sim-1=2xH100-80GB,2xA100-40GB (repeatable; default: "
                         + " and ".join(DEFAULT_SIM_NODES) + ")")
    up.add_argument("--no-sim", action="store_true", help="no simulated nodes (real agents join on their own)")
    up.add_argument("--secure", action="store_true",
                    help="embedded NATS with a user per service and the shipped subject permissions (docs/security.md)")
    up.add_argument("--tenant", action="append", metavar="NAME",
                    help="with --secure: also create the NATS identity of this tenant's clients (repeatable)")
    up.set_defaults(handler=cmd_up)

    natsconf = sub.add_parser("nats-config", help="print the NATS authorization block: a user per service, subject "
                                                  "permissions, one user per tenant (docs/security.md)")
    natsconf.add_argument("--tenant", action="append", metavar="NAME", default=[],
                          help="a tenant whose clients get their own identity (repeatable)")
    natsconf.set_defaults(handler=cmd_nats_config)

    agent = sub.add_parser("agent", help="run the device agent of this node (NVML, or --sim)")
    agent.add_argument("--node", help="node id (default: AIOS_NODE_ID or the host name)")
    agent.add_argument("--sim", metavar="SPEC", help="simulate the devices, e.g. 2xH100-80GB,4xA100-40GB")
    agent.add_argument("--telemetry-interval", type=float, help="seconds between telemetry samples (default 1)")
    agent.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats (default 2)")
    agent.set_defaults(handler=cmd_agent)

    nodes = sub.add_parser("nodes", help="nodes and their devices, from the resource manager")
    nodes.add_argument("node", nargs="?", help="show one node in detail")
    nodes.add_argument("--json", action="store_true", help="machine-readable output")
    nodes.set_defaults(handler=cmd_nodes)
    for verb, what in (("cordon", "no new jobs start on the node (running ones stay); lifted by uncordon"),
                       ("drain", "cordon, and move the node's preemptible jobs elsewhere (they checkpoint first); "
                                 "others run to their end"),
                       ("uncordon", "open a cordoned or drained node to jobs again")):
        p = sub.add_parser(verb, help=what)
        p.add_argument("node")
        if verb != "uncordon":
            p.add_argument("--reason", default="", help="shown by aios nodes and aios why")
        p.set_defaults(handler=cmd_cordon)

    service = sub.add_parser("service", help="run one service in this process (what `aios up` starts)")
    service.add_argument("name")
    service.set_defaults(handler=cmd_service)

    submit = sub.add_parser("submit", help="submit a job spec (YAML or JSON)")
    submit.add_argument("spec")
    submit.add_argument("--idempotency-key", help="retrying with the same key submits once")
    submit.add_argument("--json", action="store_true")
    submit.set_defaults(handler=cmd_submit)
    jobs_p = sub.add_parser("jobs", help="jobs and their state, from the scheduler")
    jobs_p.add_argument("--tenant", help="only this tenant's jobs")
    jobs_p.add_argument("--status", help="only jobs in this state (pending, placed, running, ...)")
    jobs_p.add_argument("--limit", type=_positive, metavar="N",
                        help="the newest N jobs (default: as many as one reply of the scheduler holds)")
    jobs_p.add_argument("--json", action="store_true")
    jobs_p.set_defaults(handler=cmd_jobs)
    job_p = sub.add_parser("job", help="one job: state, progress and its event timeline")
    job_p.add_argument("job")
    job_p.add_argument("--wait", action="store_true", help="until it ends; exit 0 if it succeeded, 4 if not")
    job_p.add_argument("--json", action="store_true")
    job_p.set_defaults(handler=cmd_job)
    top = sub.add_parser("top", help="live cluster view: devices, jobs, tenants' usage (Ctrl-C to leave)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    top.set_defaults(handler=cmd_top)
    why = sub.add_parser("why", help="why a job is pending (quota, capacity, gang size, order)")
    why.add_argument("job")
    why.add_argument("--json", action="store_true")
    why.set_defaults(handler=cmd_why)
    logs = sub.add_parser("logs", help="a job's worker output (kept in JetStream after the workers are gone)")
    logs.add_argument("job")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    logs.add_argument("--worker", help="only this worker (e.g. rank0-a1)")
    logs.set_defaults(handler=cmd_logs)
    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job")
    cancel.set_defaults(handler=cmd_cancel)

    ckpts = sub.add_parser("checkpoints", help="training checkpoints kept, and what a sweep deletes (--sweep: now; "
                           "--delete JOB: an ended job's)")
    ckpts.add_argument("--sweep", action="store_true", help="delete what a sweep would delete, now")
    ckpts.add_argument("--dry-run", action="store_true", help="say what --sweep would delete, delete nothing")
    ckpts.add_argument("--delete", nargs="+", metavar="JOB", help="delete these ended jobs' checkpoints (a succeeded "
                       "job's is kept until deleted)")
    ckpts.add_argument("--retention-h", default=None, metavar="HOURS|off",
                       help="keep a failed or cancelled job's checkpoint this many hours (default 168, the trainers' "
                            "default; theirs is AIOS_CHECKPOINT_RETENTION_S)")
    ckpts.add_argument("--orphan-grace-s", type=float, default=3600.0,
                       help="purge chunks no checkpoint refers to once this old (default 3600, at least 60)")
    ckpts.add_argument("--json", action="store_true")
    ckpts.set_defaults(handler=cmd_checkpoints)

    sim = sub.add_parser("simulate", help="run a workload trace through the scheduler core under a simulated clock")
    sim.add_argument("--trace", help="workload: a Gavel trace (../shared/traces/*.trace) or a native JSONL file")
    sim.add_argument("--from-log", action="store_true",
                     help="workload: the jobs of the live cluster's event log (AIOS_NATS_URL), replayed")
    sim.add_argument("--cluster", help="GPUs per kind, e.g. v100=12,p100=12 (default: v100=12,p100=12,k80=12, "
                                       "or with --from-log the nodes the log registered)")
    sim.add_argument("--add", metavar="KIND=N,...", help="what-if: add GPUs to the cluster, e.g. h100=8")
    sim.add_argument("--export", metavar="FILE", help="also write the workload as native JSONL")
    sim.add_argument("--oracle-estimates", action="store_true",
                     help="give every job its true duration as its runtime estimate (labelled; not the headline)")
    sim.add_argument("--policy", help="policy to run (default: the recommended one)")
    sim.add_argument("--compare", help="comma-separated policies to run side by side")
    sim.add_argument("--throughputs", default="../shared/traces/gavel-throughputs-isolated.csv",
                     help="steps/s of each job type per GPU count and kind (Gavel's CSV or JSON; default: %(default)s)")
    sim.add_argument("--round", type=float, default=360.0, help="round length in seconds")
    sim.add_argument("--on-events", action=argparse.BooleanOptionalAction, default=None,
                     help="also decide at every arrival and finish, at once, as the live scheduler does (default: "
                          "on with --from-log, so a replay keeps the log's timing; off for traces, as in Gavel)")
    sim.add_argument("--gpus-per-server", type=_positive, default=4,
                     help="GPUs in each simulated server (default: 4)")
    sim.add_argument("--out", help="folder for per-job records (CSV), summaries (JSON) and report.md with plots "
                                   "(default with --compare: ./simulate-report)")
    sim.add_argument("--list-policies", action="store_true")
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(handler=cmd_simulate)

    from aios.cli import models as models_cli

    models_cli.add_parsers(sub)

    tenants = sub.add_parser("tenants", help="tenants: quotas, cohorts and devices in use")
    tenants.add_argument("--json", action="store_true", help="machine-readable output")
    tenants.set_defaults(handler=cmd_tenants)

    forget = sub.add_parser("forget", help="remove a lost node from the inventory (decommissioned)")
    forget.add_argument("node")
    forget.set_defaults(handler=cmd_forget)

    quota = sub.add_parser("quota", help="set a tenant's quota (appends TenantQuotaSet), or remove it")
    quota.add_argument("tenant")
    quota.add_argument("--nominal", metavar="KIND=N,...", action="append",
                       help="e.g. h100=8,a100=4, or repeated (required unless --remove)")
    quota.add_argument("--remove", action="store_true",
                       help="take the tenant's quota away: it then runs on what quotas leave idle")
    quota.add_argument("--cohort", default="", help="cohort whose unused quota the tenant may borrow and lends to")
    quota.add_argument("--borrowing-limit", metavar="KIND=N,...", action="append",
                       help="most it may borrow beyond nominal")
    quota.add_argument("--lending-limit", metavar="KIND=N,...", action="append",
                       help="most of its unused quota others may borrow")
    quota.set_defaults(handler=cmd_quota)

    bench = sub.add_parser("bench", help="benchmarks printing JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="benchmark")
    eventlog = bench_sub.add_parser("eventlog", help="append, replay and restart rates of the event spine")
    eventlog.add_argument("--events", type=_positive, default=100_000, help="events appended and replayed")
    eventlog.add_argument("--restart-events", type=_positive, default=1_000_000, help="log size for restart_s")
    eventlog.add_argument("--tail", type=_positive, default=50_000, help="events after the last snapshot")
    eventlog.add_argument("--nats-url", default=None, help="use this server instead of a private one")
    eventlog.add_argument("--profile", action="store_true", help="add a cProfile of the append path")
    eventlog.set_defaults(handler=cmd_bench)
    inventory = bench_sub.add_parser("inventory", help="heartbeats the resource manager sustains; agent CPU")
    inventory.add_argument("--nodes", type=_positive, default=1000)
    inventory.add_argument("--gpus-per-node", type=_positive, default=8)
    inventory.add_argument("--agent-seconds", type=_positive, default=20, help="how long to measure the agent")
    inventory.set_defaults(handler=cmd_bench)
    sched = bench_sub.add_parser("scheduler", help="placement core, committed placements, submit-to-placed latency")
    sched.add_argument("--nodes", type=_positive, default=1000)
    sched.add_argument("--gpus-per-node", type=_positive, default=8)
    sched.add_argument("--pending", type=_positive, default=10_000)
    sched.add_argument("--rate", type=float, default=100.0, help="submissions per second for the latency part")
    sched.add_argument("--seconds", type=float, default=10.0, help="how long to submit for the latency part")
    sched.add_argument("--blocked", type=_positive, default=3_000,
                       help="queued jobs that cannot start, for the round-cost part (a full cluster of 800 devices)")
    sched.set_defaults(handler=cmd_bench)
    simb = bench_sub.add_parser("simulator", help="trace simulator speed on a large synthetic cluster and workload")
    simb.add_argument("--gpus", type=_positive, default=10_000)
    simb.add_argument("--jobs", type=_positive, default=50_000)
    simb.add_argument("--policy", default="hetero-ts", help="policy, or comma-separated policies")
    simb.add_argument("--load", type=float, default=0.8, help="offered load, share of the GPUs (fastest-kind time)")
    simb.add_argument("--throughputs", default="../shared/traces/gavel-throughputs-isolated.csv")
    simb.set_defaults(handler=cmd_bench)
    allr = bench_sub.add_parser("allreduce", help="all-reduce bandwidth (algbw/busbw) of the nats and gloo backends")
    allr.add_argument("--ranks", type=_positive, default=2, help="processes in the group (default 2)")
    allr.add_argument("--mb", type=_mib_list, default=[1, 16, 64], help="sizes in MiB, comma-separated (1,16,64)")
    allr.add_argument("--iters", type=_positive, default=20,
                      help="timed operations per size and round (nccl-tests' default; median reported)")
    allr.add_argument("--rounds", type=_positive, default=3,
                      help="rounds in which the backends take turns (the median is over all of them)")
    allr.set_defaults(handler=cmd_bench)

    serve_b = bench_sub.add_parser("serve", help="requests/s and p50/p99 latency of one serving replica, batched and not")
    serve_b.add_argument("--seconds", type=float, default=10.0, help="timed load per mode (default 10)")
    serve_b.add_argument("--concurrency", type=_positive, default=32, help="requests in flight (default 32)")
    serve_b.add_argument("--rows", type=_positive, default=1, help="examples per request (default 1)")
    serve_b.add_argument("--hidden", type=_positive, default=128, help="hidden units of the served MLP (default 128)")
    serve_b.set_defaults(handler=cmd_bench)

    comp = bench_sub.add_parser("compress", help="accuracy, size and latency of int8, SVD and pruning on digits")
    comp.add_argument("--seeds", type=_positive, default=3, help="models trained and compressed (default 3)")
    comp.set_defaults(handler=cmd_bench)

    demo = sub.add_parser("demo", help="run a workload through a local cluster and show what happens")
    demo.add_argument("--keep", action="store_true", help="stay up after the demo until Ctrl-C")
    demo.set_defaults(handler=cmd_demo)
    return parser


EXIT_CODES = {"ok": 0, "error": 1, "bad input": 2, "not found": 3, "job did not succeed": 4, "interrupted": 130}
"""What ``aios`` exits with (``aios --help`` prints it): scripts can tell a typo from a missing job from a failure."""


def exit_code(exc: AiosError) -> int:
    from aios.common.errors import NotFound

    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, NotFound):
        return 3
    return 1


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    if args.command == "bench" and args.bench == "eventlog" and args.restart_events <= args.tail + args.events:
        print("aios bench eventlog: --restart-events must exceed --events + --tail", file=sys.stderr)
        raise SystemExit(2)
    traced = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if traced and args.command in ("submit", "cancel", "serve", "models"):  # a job's trace, or a registry operation's
        from aios.common import tracing

        tracing.setup_tracing("aios-cli")
    try:
        code = handler(args)
    except AiosError as exc:
        print(f"aios {args.command}: {exc}", file=sys.stderr)
        code = exit_code(exc)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `aios nodes --json | head`: the reader has what it wanted; no traceback, no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush fails too
        code = 0
    if traced:
        from aios.common import tracing

        tracing.flush()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
