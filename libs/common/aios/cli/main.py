"""``aios``: the command line. Commands are a dict of handlers (DESIGN.md §9.4); each returns an exit code.

Exit codes: 0 success, 1 failure of the work itself, 2 bad usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Callable

from aios.common.config import load_settings
from aios.common.errors import AiosError


def cmd_up(args: argparse.Namespace) -> int:
    from aios.cli.cluster import LocalCluster

    settings = load_settings()
    cluster = LocalCluster(settings)
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
        print(f"export AIOS_NATS_URL={cluster.nats_url}   # to use this cluster from another shell")
        print("Ctrl-C stops everything.", flush=True)
        while not stop:
            died = cluster.exited()
            if died:
                print(f"service exited: {died}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        print("stopping AIOS ...", flush=True)
        cluster.stop()
        print("stopped.", flush=True)


def cmd_service(args: argparse.Namespace) -> int:
    from aios.cli.services import load_service
    from aios.common.runner import run_service

    return asyncio.run(run_service(load_service(args.name)))


def cmd_bench(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aios", description="AIOS: an operating system for AI workloads")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    up = sub.add_parser("up", help="start a local cluster: embedded NATS (unless AIOS_NATS_URL is set) + services")
    up.set_defaults(handler=cmd_up)

    service = sub.add_parser("service", help="run one service in this process (what `aios up` starts)")
    service.add_argument("name")
    service.set_defaults(handler=cmd_service)

    bench = sub.add_parser("bench", help="benchmarks printing JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="benchmark")
    eventlog = bench_sub.add_parser("eventlog", help="append, replay and restart rates of the event spine")
    eventlog.add_argument("--events", type=_positive, default=100_000, help="events appended and replayed")
    eventlog.add_argument("--restart-events", type=_positive, default=1_000_000, help="log size for restart_s")
    eventlog.add_argument("--tail", type=_positive, default=50_000, help="events after the last snapshot")
    eventlog.add_argument("--nats-url", default=None, help="use this server instead of a private one")
    eventlog.add_argument("--profile", action="store_true", help="add a cProfile of the append path")
    eventlog.set_defaults(handler=cmd_bench)

    demo = sub.add_parser("demo", help="run a workload through a local cluster and show what happens")
    demo.add_argument("--keep", action="store_true", help="stay up after the demo until Ctrl-C")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    if args.command == "bench" and args.restart_events <= args.tail + args.events:
        print("aios bench eventlog: --restart-events must exceed --events + --tail", file=sys.stderr)
        raise SystemExit(2)
    try:
        code = handler(args)
    except AiosError as exc:
        print(f"aios {args.command}: {exc}", file=sys.stderr)
        code = 2 if exc.__class__.__name__ == "ConfigError" else 1
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
