"""``aios simulate``: run a workload through the scheduler core under a simulated clock (see aios.scheduler.sim).

Workloads come from a Gavel trace, a native JSONL workload (sim/native.py) or, with ``--from-log``, from the job
events of a live AIOS cluster: the same arrivals replayed under another policy or on another cluster
(counterfactual replay).
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import shlex
from pathlib import Path
from typing import Any

import msgspec
from rich.table import Table

from aios.cli.output import table_console
from aios.common.errors import ConfigError
from aios.scheduler.policies import POLICIES, make_policy
from aios.common.events import TenantQuotaSet
from aios.scheduler.sim.native import LogWorkload, load_log_workload, read_native_workload, write_native_trace
from aios.scheduler.sim.simulator import layout_counts, simulate, summary
from aios.scheduler.sim.traces import (SimNode, Throughputs, TraceJob, gavel_line_of, hinted_rates, kind_rates,
                                      known_rates, parse_cluster, read_gavel_throughputs, read_gavel_trace, read_text)

RECOMMENDED = "hetero-ts"
"""Lowest average JCT on the continuous Gavel trace and the static batch, 1.3% behind ``hetero-gittins`` on ed69ec,
where finished jobs teach that policy sizes; a batch starts with no history (bench/RESULTS.md). Needing none makes
``hetero-ts`` the safer default."""
DEFAULT_THROUGHPUTS = "../shared/traces/gavel-throughputs-isolated.csv"
"""Relative to the repository (not to the working directory: results changed with where the command ran)."""
REPOSITORY = Path(__file__).resolve().parents[4]
DEFAULT_REPORT = "simulate-report"
MIN_ROUND_S, MAX_ROUND_S = 1.0, 86_400.0
"""Round lengths a simulation takes: its cost grows as one over the round (Gavel's is 360 s)."""


def list_policies(as_json: bool) -> int:
    body = {"policies": sorted(POLICIES), "best": RECOMMENDED}
    if as_json:
        print(json.dumps(body))
    else:
        for name in body["policies"]:
            print(name + ("  (recommended)" if name == RECOMMENDED else ""))
    return 0


def read_trace(path: str) -> tuple[list[TraceJob], list[TenantQuotaSet], dict[str, SimNode]]:
    """A Gavel trace, or a native JSONL workload (recognised by a first line that is JSON or a ``#`` comment), and
    the tenant quotas and nodes the native format may set."""
    if not Path(path).exists():
        raise ConfigError(f"--trace: no such file {path!r}")
    if Path(path).is_dir():
        raise ConfigError(f"--trace: {path!r} is a folder, not a file")
    if not read_text(path, "trace").strip():
        raise ConfigError(f"--trace: {path} holds no job")
    return read_native_workload(path) if _is_native(path) else (read_gavel_trace(path), [], {})


def throughput_table(throughputs: str | None, trace: str | None, jobs: list[TraceJob]) -> Throughputs:
    """The throughput table the jobs without their own rates are looked up in. The default path is relative to the
    repository; when it is not there, the table is looked for next to the trace (where the Gavel traces keep it).
    Jobs that have no rates of their own and are not in the table would run at a made-up 1 step/s: for a Gavel
    trace, whose lines carry no speed, that is an error."""
    path = (REPOSITORY / DEFAULT_THROUGHPUTS if throughputs == DEFAULT_THROUGHPUTS else Path(throughputs)) \
        if throughputs else None
    tried = [str(path)] if path is not None else []
    if path is not None and throughputs == DEFAULT_THROUGHPUTS and not path.is_file() and trace:
        path = Path(trace).parent / Path(DEFAULT_THROUGHPUTS).name
        tried.append(str(path))
    if path is not None and not path.exists() and throughputs != DEFAULT_THROUGHPUTS:
        raise ConfigError(f"--throughputs: no such file {throughputs!r}")
    table = read_gavel_throughputs(path) if path is not None and path.exists() else {}
    missing = sorted({(j.job_type, j.gpus) for j in jobs if not j.rates and (j.job_type, j.gpus) not in table})
    if missing and trace and not _is_native(trace):
        if not table:
            looked = f"no throughput table at {' or '.join(map(repr, tried))}" if tried else "no throughput table given"
            raise ConfigError(f"--throughputs: {looked}, and a Gavel trace carries no speeds: give --throughputs FILE")
        line = gavel_line_of(trace, *missing[0])
        raise ConfigError(f"--throughputs: {len(missing)} job type(s) of the trace have no speed in {str(path)!r}, "
                          f"e.g. {missing[0][0]!r} on {missing[0][1]} GPU(s)"
                          + (f" ({trace}:{line})" if line is not None else ""))
    return table


def _is_native(trace: str) -> bool:
    """A native JSONL workload starts with a JSON line or a ``#`` comment; a Gavel trace with a job type."""
    head = next((line.strip() for line in read_text(trace, "trace").splitlines() if line.strip()), "")
    return head.startswith(("{", "#", "["))


async def _log_workload(servers: list[str] | None) -> LogWorkload:
    from aios.common.config import load_settings
    from aios.common.errors import StoreError
    from aios.common.store import open_log

    servers = servers or load_settings().servers
    if not servers:
        raise ConfigError("--from-log: AIOS_NATS_URL is not set (`aios up` prints the export line)")
    try:
        store = await open_log(servers, name="aios-simulate")
    except StoreError as exc:
        raise StoreError(f"--from-log: {exc}") from None
    try:
        return await load_log_workload(store)
    finally:
        await store.close()


def _servers(kind: str, count: int, per_server: int, taken: dict[str, SimNode]) -> list[tuple[str, range]]:
    """Names and device ranges of the servers ``--add`` adds to a cluster of named nodes."""
    out = []
    for s in range((count + per_server - 1) // per_server):
        name = f"added-{kind}-{s:03d}"
        while name in taken:
            name += "-x"
        out.append((name, range(min(per_server, count - s * per_server))))
    return out


def _added_server(kind: str, gpus: int, layout: dict[str, SimNode]) -> SimNode:
    """A server ``--add`` adds: ``gpus`` GPUs of ``kind`` with the CPU cores and memory per GPU of the cluster's
    first node (by name) that has that kind, as "8 more H100s" means more of the servers one has (jobs ask for CPU
    and memory per worker); with no such node, the simulator's default server."""
    like = next((node for _, node in sorted(layout.items()) if kind in node.devices), None)
    if like is None:
        return SimNode({kind: gpus})
    share = gpus / sum(like.devices.values())
    return SimNode({kind: gpus}, max(1, round(like.cpu_cores * share)), max(1 / 1024, like.memory_gib * share))


def add_gpus(cluster: dict[str, int], added: dict[str, int]) -> dict[str, int]:
    """``--add h100=8`` (parsed): the cluster with more GPUs (what-if)."""
    return {**cluster, **{kind: cluster.get(kind, 0) + n for kind, n in added.items()}}


def run(trace: str | None, cluster: str | None, policy: str | None, compare: str | None, throughputs: str | None,
        round_s: float, gpus_per_server: int, as_json: bool, out: str | None, *, from_log: bool = False,
        add: str | None = None, export: str | None = None, servers: list[str] | None = None,
        oracle_estimates: bool = False, on_events: bool | None = None) -> int:
    # every option is checked before the workload is read (a log may be slow to read, or not there)
    if not (math.isfinite(round_s) and MIN_ROUND_S <= round_s <= MAX_ROUND_S):  # 1e-9 ran for ever; 1e300
        # finished every job in its first round, with JCTs of 1e296 s
        raise ConfigError(f"--round: must be {MIN_ROUND_S:g} to {MAX_ROUND_S:,.0f} seconds (a day), got {round_s:g}")
    if bool(trace) == from_log:
        raise ConfigError("give exactly one workload: --trace FILE or --from-log")
    given_cluster = parse_cluster(cluster) if cluster is not None else None
    added = parse_cluster(add, "--add") if add is not None else {}
    if policy is not None and compare is not None:  # --policy was dropped without a word
        raise ConfigError("give --policy (one run) or --compare (several), not both; add it to --compare's list")
    names = [p.strip() for p in compare.split(",")] if compare is not None else \
        [policy if policy is not None else RECOMMENDED]
    if compare is not None and not any(names):
        raise ConfigError("--compare: no policy named (e.g. --compare fifo,hetero-ts)")
    if compare is not None and "" in names:
        raise ConfigError(f"--compare: {compare!r} has an empty name (two commas, or one at an end)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--compare: {twice[0]!r} is named twice")
    policies = [make_policy(name) for name in names]  # unknown names fail before any simulation runs
    if throughputs and throughputs != DEFAULT_THROUGHPUTS:  # a table given but bad fails before the workload is read
        if not Path(throughputs).exists():
            raise ConfigError(f"--throughputs: no such file {throughputs!r}")
        read_gavel_throughputs(throughputs)
    folder = Path(out) if out else (Path(DEFAULT_REPORT) if compare else None)
    if folder is not None:  # before the runs, so that a long one's results are not lost on a bad folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out: cannot use {str(folder)!r} as the report folder: {exc.strerror or exc}") \
                from None
    log: LogWorkload | None = None
    if from_log:
        log = asyncio.run(_log_workload(servers))
        jobs, quotas, layout = log.jobs, log.quotas, dict(log.nodes)
        base = given_cluster if given_cluster is not None else dict(log.cluster)
        if not jobs:
            raise ConfigError("--from-log: the log holds no job that ran or has a runtime estimate"
                              + (f" ({len(log.skipped)} left out: {_left_out(log)})" if log.skipped else ""))
        if not base:
            raise ConfigError("--from-log: the log registers no GPU node; give --cluster")
        source = "the live event log"
    else:
        assert trace is not None
        jobs, quotas, layout = read_trace(trace)
        if not jobs:
            raise ConfigError(f"--trace: {trace} holds no job")
        base = given_cluster if given_cluster is not None else (
            layout_counts(layout) if layout else parse_cluster("v100=12,p100=12,k80=12"))
        source = Path(trace).name
    gpus = add_gpus(base, added)
    nodes: dict[str, SimNode] | None = None
    if layout and given_cluster is None:  # the cluster's own nodes (placements tie-break by node, as live), and
        # what --add adds as servers of --gpus-per-server
        nodes = {**layout, **{name: _added_server(kind, len(devices), layout) for kind, n in added.items()
                              for name, devices in _servers(kind, n, gpus_per_server, layout)}}
    cluster_text = ",".join(f"{k}={v}" for k, v in sorted(gpus.items()))
    decide_on_events = from_log if on_events is None else on_events
    table = throughput_table(throughputs, trace, jobs)
    notes: list[str] = _log_notes(log, given_cluster is not None) if log is not None else []
    if log is None and layout and given_cluster is not None:
        notes.append(f"cluster: as given by --cluster, in servers of {gpus_per_server} GPUs; the {len(layout)} node "
                     "line(s) of the workload are not used")
    for quota in quotas:  # a quota of a kind the cluster lacks holds nothing: a typo would look the same
        named = {*quota.nominal, *(quota.borrowing_limit or {}), *(quota.lending_limit or {})}
        if named - set(gpus):
            notes.append(f"quota of {quota.aggregate_id}: this cluster has no {', '.join(sorted(named - set(gpus)))}")
    for kind in added:
        if not any(kind in kind_rates(job, table, gpus) for job in jobs):
            raise ConfigError(f"--add: no job of the workload can run on {kind!r} (it has no rate there, in the "
                              "workload or the throughput table): the added GPUs would only stand idle")
        if kind not in base and not any(kind in known_rates(job, table) for job in jobs):
            notes.append(f"--add {kind}: no job names this kind; only jobs that named no device_types run there, "
                         "at the assumed 1 step/s (a typo of a kind would look the same)")
    if export:  # with the table's speeds written into each job, the file runs the same anywhere, table or not
        resolved = [job if job.rates else msgspec.structs.replace(job, rates=hinted_rates(job, table))
                    for job in jobs]
        replay = shlex.join(["aios", "simulate", "--trace", export,  # the file's node lines are the cluster
                             *(["--cluster", cluster_text] if nodes is None else []),
                             *(["--compare", ",".join(names)] if compare is not None else ["--policy", names[0]]),
                             "--on-events" if decide_on_events else "--no-on-events", "--round", repr(round_s),
                             "--gpus-per-server", str(gpus_per_server),
                             *(["--oracle-estimates"] if oracle_estimates else [])])
        try:
            write_native_trace(export, resolved, comments=[f"from {source}, on {cluster_text}", f"replay: {replay}"],
                               quotas=quotas, nodes=nodes)
        except OSError as exc:
            raise ConfigError(f"--export: cannot write {export!r}: {exc.strerror or exc}") from None
        notes.append(f"exported {len(resolved)} job(s) to {export}; the same run from the file: {replay}")
    results = [simulate(jobs, table, gpus, p, round_s=round_s, gpus_per_server=gpus_per_server,
                        oracle_estimates=oracle_estimates, on_events=decide_on_events, quotas=quotas, nodes=nodes)
               for p in policies]
    made_up = sorted({j.job_type for j in jobs if not known_rates(j, table)}) if log is None else []
    if made_up:  # a native job whose type the table does not know: its speeds are a guess (a live log's jobs
        # without hints ran at 1.0 on every kind live too)
        notes.append(f"{len(made_up)} job type(s) have no rates of their own and no speed in the throughput table "
                     f"(--throughputs): they run at an assumed 1 step/s on every kind: {_names(made_up)}")
    for r in results:  # what the figures rest on, in every output
        r["cluster"] = dict(sorted(gpus.items()))
        r["notes"] = list(notes)  # --json printed none of them
        if log is not None:
            r["log"] = {"left_out": dict(log.reasons), "ended_live": dict(log.ended),
                        "lost_s": {k: round(v, 3) for k, v in log.lost_s.items()},
                        "running_at_end": list(log.unfinished)}
    report = _write_outputs(folder, results, f"{source} on {cluster_text}", notes) if folder else None
    if as_json:
        # --policy: one summary; --compare: a list, whatever its length, so scripts need not guess the shape
        body: Any = summary(results[0]) if compare is None else [summary(r) for r in results]
        print(json.dumps(body, indent=2))
        return 0
    columns = ("avg_jct_h", "p50_jct_h", "p99_jct_h", "makespan_h", "utilization", "mean_rho", "max_rho",
               "preemptions", "wall_s")
    t = Table("policy", "finished", "avg JCT h", "p50 h", "p99 h", "makespan h", "util", "mean ρ", "max ρ",
              "preemptions", "wall s", title=f"{source} on {cluster_text}, rounds of {round_s:g} s"
              + (", and a decision at every arrival and finish" if results[0]["on_events"] else ""))
    for r in results:
        cells = ("-" if r[c] is None else str(r[c]) for c in columns)
        t.add_row(r["policy"], f"{r['finished']} of {r['jobs']}", *cells)
    console = table_console()
    console.print(t)
    for r in results:
        if r["cut_short"]:
            console.print(f"{r['policy']}: the run stopped at its cap of {r['decisions']:,} decisions; figures "
                          "cover only the jobs that finished by then")
        left = r["jobs"] - r["finished"]
        if left:
            shown = "; ".join(f"{job}: {why}" for job, why in r["unfinished"].items())
            more = f" (and {left - len(r['unfinished'])} more)" if left > len(r["unfinished"]) else ""
            console.print(f"{r['policy']}: {left} job(s) did not finish — {shown}{more}")
    for note in notes:
        console.print(note, markup=False, highlight=False)
    if report:
        console.print(f"report: {report}")
    return 0


LISTED = 10
"""Jobs named per line of a note (the JSON has them all)."""


def _names(jobs: list[str]) -> str:
    more = f" and {len(jobs) - LISTED} more" if len(jobs) > LISTED else ""
    return ", ".join(jobs[:LISTED]) + more


def _left_out(log: LogWorkload) -> str:
    by_reason: dict[str, list[str]] = {}
    for job, why in log.reasons.items():
        by_reason.setdefault(why, []).append(job)
    return "; ".join(f"{_names(jobs)}: {why}" for why, jobs in by_reason.items())


def _log_notes(log: LogWorkload, cluster_given: bool) -> list[str]:
    """What a replay of the log assumed, said next to its figures."""
    quotas = f"the quotas of {', '.join(q.aggregate_id for q in log.quotas)} as the log last set them, from the " \
        "start" if log.quotas else "none set in the log"
    notes = [f"cluster: {'as given by --cluster' if cluster_given else 'the GPU nodes the log registered'}; "
             f"tenant quotas: {quotas}"]
    if log.skipped:
        notes.append(f"left out {len(log.skipped)} job(s) of the log: {_left_out(log)}")
    if log.unfinished:
        notes.append(f"{len(log.unfinished)} job(s) still ran when the log ended, with no runtime_estimate_s; "
                     f"replayed with the work they had done, so they hold devices at least as long as they did "
                     f"live: {_names(log.unfinished)}")
    if log.ended:
        ended = [f"{job} ({how})" for job, how in log.ended.items()]
        notes.append(f"{len(ended)} job(s) failed or were cancelled live; replayed as finishing once they have done "
                     f"the work they did live: {_names(ended)}")
    if log.lost_s:
        lost = [f"{job} {s:.0f} s" for job, s in log.lost_s.items()]
        notes.append(f"{len(lost)} job(s) re-did work live after a preemption or requeue (since their last "
                     f"checkpoint); the replay resumes jobs where they stopped, so that work is not in it: "
                     f"{_names(lost)}")
    return notes


def _write_outputs(folder: Path, results: list[dict[str, Any]], title: str, notes: list[str]) -> Path:
    """Per-job CSV and summary JSON per policy, and the Markdown report with its plots."""
    from aios.scheduler.sim.report import write_report

    from aios.scheduler.policies import POLICIES

    folder.mkdir(parents=True, exist_ok=True)
    names = [r["policy"].replace(" (oracle estimates)", "-oracle") for r in results]
    for old in {f"{p}{o}.{x}" for p in POLICIES for o in ("", "-oracle") for x in ("csv", "json")}:
        if old.rpartition(".")[0] not in names:  # an earlier run's policy in the same folder read as this run's
            (folder / old).unlink(missing_ok=True)
    for r, name in zip(results, names):
        with open(folder / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["job", "arrival_s", "start_s", "finish_s", "gpus", "preemptions", "rho", "kind_time_s"])
            for rec in r["records"]:
                w.writerow([rec["job"], rec["arrival_s"], rec["start_s"], rec["finish_s"], rec["gpus"],
                            rec["preemptions"], rec["rho"], json.dumps(rec["kind_time_s"])])
        (folder / f"{name}.json").write_text(json.dumps(summary(r), indent=2))
    return write_report(folder, results, title, notes)
