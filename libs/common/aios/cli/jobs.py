"""Job commands: ``aios submit``, ``aios jobs``, ``aios why``, ``aios cancel``, ``aios checkpoints``."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import msgspec
import yaml
from rich.table import Table

from aios.cli.inspect import ask, cluster_servers
from aios.cli.output import plain, table_console
from aios.common import strictjson, tracing
from aios.common.errors import AiosError, ConcurrencyConflict, ConfigError, NotFound
from aios.common.events import (
    JobCancelled, JobCancelRequested, JobFailed, JobProgress, JobSucceeded, timeline_entry,
)
from aios.common.store import open_log
from aios.scheduler import submission
from aios.scheduler.spec import SpecError, validate_spec


MAX_SPEC_FILE_BYTES = 4 << 20
"""The largest spec file read, as the HTTP API's largest body (`aios submit /dev/zero` grew to 4 GB)."""


def load_spec_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_SPEC_FILE_BYTES >> 20} MiB: no job spec is that large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # was a traceback
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): a job spec is YAML or JSON") from None
    if text.lstrip().startswith("{"):  # JSON as JSON: YAML 1.1 reads 1e1 as a string, the HTTP API as 10.0
        try:
            return strictjson.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        data = strictjson.load_yaml(text)
    except yaml.YAMLError as exc:  # one line with where it went wrong, not PyYAML's five
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML or JSON: {problem}") from None
    except RecursionError:  # 500 nested mappings: a traceback
        raise ConfigError(f"{path}: nested too deeply to be a job spec") from None
    return data


def _known_form(job_id: str) -> str:
    """A job id as the log can hold one; anything else (``*``, ``a b``) is no job (exit 3), not an internal error."""
    from aios.common.errors import InvalidAggregate
    from aios.common.store import validate_aggregate

    try:
        validate_aggregate(f"job.{job_id}")
    except InvalidAggregate:
        raise NotFound(f"no job {job_id!r}") from None
    return job_id


async def _store():  # type: ignore[no-untyped-def]
    servers = cluster_servers()
    # followers (logs -f, job --wait) ride out NATS restarts; a cluster that is starting gets a moment to create the log
    return await open_log(servers, name="aios-cli", append_deadline=10.0, follow=True, wait_for_log_s=10.0)


async def submit(path: str, idempotency_key: str | None, as_json: bool) -> int:
    raw = load_spec_file(path)
    try:
        spec = validate_spec(raw)
    except SpecError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if spec.serve is not None:
        await _check_served_model(path, spec.serve["model"])
    store = await _store()
    try:
        result = await submission.submit(store, spec, idempotency_key)
    finally:
        await store.close()
    note = "" if result.duplicate else await _cannot_start(result.job)
    if as_json:
        print(json.dumps({"job": result.job, "seq": result.seq, "duplicate": result.duplicate,
                          **({"note": note} if note else {})}))
    else:
        print(f"submitted {result.job}" + (" (already submitted)" if result.duplicate else ""))
        if note:
            print(f"note: {note}", file=sys.stderr)
    return 0


async def _cannot_start(job_id: str, within_s: float = 1.5) -> str:
    """What the scheduler says if the job cannot start on the nodes there now, whoever left ("" if it can, or if
    the scheduler does not say within ``within_s``, or is of a version that cannot: the note is a courtesy, the job
    is submitted)."""
    from aios.scheduler.rounds import submission_note  # (the scheduler's core: not loaded for every command)

    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0.05:
        try:
            reply = await ask("aios.sched.cannot_start", {"job": job_id}, timeout=left)
        except AiosError:
            return ""
        if reply.get("known"):
            return submission_note(reply.get("cannot_start") or "")
        await asyncio.sleep(0.1)  # not folded there yet
    return ""


async def _check_served_model(path: str, uri: str) -> None:
    """As ``aios serve`` and the API: a serving job of a model the registry does not hold is refused now, not
    retried until its crash-loop cap; a registry that does not answer checks nothing (said)."""
    from aios.model_registry.state import serve_refusal

    try:
        shown = await ask("aios.registry.show", {"model": uri}, timeout=5.0)
    except (NotFound, ConfigError) as exc:  # not there (exit 3), or no model URI the registry takes (exit 2)
        raise type(exc)(f"{path}: serve.model: {exc}") from None
    except AiosError as exc:
        print(f"note: serve.model not checked ({exc})", file=sys.stderr)
        return
    why = serve_refusal(shown)
    if why is not None:
        raise NotFound(f"{path}: serve.model: {why}")


def _devices(summary: dict[str, Any]) -> str:
    """Devices asked for, or "4 of 6" when a job that need not start whole (gang: false) holds fewer."""
    held = summary.get("held") or 0
    return f"{held} of {summary['devices']}" if 0 < held < summary["devices"] else str(summary["devices"])


ENDED = {JobSucceeded: "succeeded", JobFailed: "failed", JobCancelled: "cancelled"}


async def cancel(job_id: str) -> int:
    store = await _store()
    try:
        for attempt in range(5):  # against the job's version: an end recorded meanwhile is seen, not cancelled
            history = await store.read(f"job.{_known_form(job_id)}")
            if history.version == 0:
                raise NotFound(f"no job {job_id!r}")
            ended = [ENDED[type(e)] for e in history.events if type(e) in ENDED]
            if ended:  # it printed "cancel requested" and exited 0 for a job that had succeeded (the API: 409)
                raise AiosError(f"job {job_id} has already ended ({ended[0]}): nothing to cancel")
            try:
                # a job that never stops changing (requeued again and again) is the one most in need of a cancel:
                # the last try appends whatever the version, as the API does (a request on an ended job is ignored)
                with tracing.job_span(f"cancel {job_id}", job_id, history.trace or None, **{"aios.via": "cli"}):
                    # in the job's trace: a cancel was a one-span trace of its own, unconnected to the job's
                    await store.append(f"job.{job_id}", JobCancelRequested(aggregate_id=job_id, requested_by="cli"),
                                       history.version if attempt < 4 else None,
                                       idempotency_key=f"cli-cancel-request-{job_id}")
                break
            except ConcurrencyConflict:
                continue
    finally:
        await store.close()
    print(f"cancel requested for {job_id}")
    return 0


async def jobs(as_json: bool, tenant: str | None = None, status: str | None = None, limit: int | None = None) -> int:
    """The jobs the scheduler knows, filtered by it (the whole history in one reply outgrew NATS' message limit at
    about 2,400 jobs, and every listing failed); the newest ``limit``, or as many as one reply holds."""
    query = {k: v for k, v in (("tenant", tenant), ("status", status), ("limit", limit)) if v is not None}
    reply = await ask("aios.sched.jobs", query)
    if "matched" not in reply:  # a scheduler of an older version (during a roll) ignores the filters: applied here
        reply["jobs"] = [j for j in reply["jobs"] if (tenant is None or j["tenant"] == tenant)
                         and (status is None or j["status"] == status)][-(limit or 0):]
    left = reply.get("matched", len(reply["jobs"])) - len(reply["jobs"])
    if left:  # on stderr: --json's output stays one JSON document
        print(f"aios jobs: the newest {len(reply['jobs']):,} of {reply['matched']:,} shown; narrow with --status, "
              "--tenant or --limit", file=sys.stderr)
    if as_json:
        print(json.dumps(reply["jobs"], indent=2))
        return 0
    table = Table("job", "tenant", "status", "devices", "prio", "nodes", "tries", "step", "loss",
                  title=f"policy {reply['policy']}")
    for j in reply["jobs"]:
        step = f"{j['step']}/{j['total_steps']}" if j.get("total_steps") else "-"
        loss = f"{j['loss']:.4f}" if j.get("loss") is not None else "-"
        table.add_row(plain(j["job"]), plain(j["tenant"]), j["status"], _devices(j), str(j["priority"]),
                      plain(",".join(sorted(set(j["nodes"]))) or "-"), str(j["attempts"]), step, loss)
    table_console().print(table)
    return 0


async def why(job_id: str, as_json: bool) -> int:
    reply = await ask("aios.sched.why", {"job": job_id})
    if reply.get("why") == f"no job {job_id!r}":  # as `aios job` and HTTP's 404: exit 3, not 0
        raise NotFound(reply["why"])
    print(json.dumps(reply) if as_json else reply["why"])
    return 0


async def logs(job_id: str, follow: bool, worker: str | None) -> int:
    """Print a job's worker output from the AIOS_LOGS stream, oldest first, each line tagged with its worker;
    with ``follow``, keep printing new lines until the job has ended (or until interrupted)."""
    from aios.common import joblogs

    store = await _store()
    try:
        history = await store.read_job(_known_form(job_id))
        if not history:
            raise NotFound(f"no job {job_id!r}")
        missing = joblogs.unknown_worker(history, job_id, worker, follow)
        if missing:
            raise NotFound(missing)
        await joblogs.ensure_stream(store.js, store.replicas)

        async def job_ended() -> bool:
            return any(isinstance(e, (JobSucceeded, JobFailed, JobCancelled))
                       for e in await store.read_job(_known_form(job_id)))
        async for name, stream, line in joblogs.lines(store.js, job_id, worker, follow, ended=job_ended):
            print(f"[{name}{' stderr' if stream == 'stderr' else ''}] {line}", flush=True)
    finally:
        await store.close()
    return 0


async def job(job_id: str, as_json: bool, wait: bool) -> int:
    """One job: its summary (from the scheduler) and its event timeline (from the log); with ``wait``, block until
    it ends and exit 0 if it succeeded, 4 if not."""
    store = await _store()
    try:
        while True:
            history = await store.read_job(_known_form(job_id))
            if not history:
                raise NotFound(f"no job {job_id!r}")
            # checked here too: a scheduler of an older version (during a roll) ignores the filter and lists all
            listed = (await ask("aios.sched.jobs", {"job": job_id}))["jobs"]
            summary = next((j for j in listed if j["job"] == job_id), None)
            done = summary is not None and summary["status"] in ("succeeded", "failed", "cancelled")
            if not wait or done:
                break
            time.sleep(0.5)
    finally:
        await store.close()
    events = [timeline_entry(e) for e in history]
    if as_json:
        print(json.dumps({**(summary or {"job": job_id}), "events": events}, indent=2))
    else:
        console = table_console()
        if summary:
            steps = f", step {summary['step']}/{summary['total_steps']}" if summary["total_steps"] else ""
            console.print(f"[bold]{plain(job_id)}[/] ({plain(summary['tenant'])}): {summary['status']}, "
                          f"{_devices(summary)} device(s) on {plain(', '.join(sorted(set(summary['nodes']))) or '-')}"
                          f", attempt {summary['attempts']}{steps}"
                          + (f"\n  {plain(summary['error'])}" if summary["error"] else ""))
        table = Table("+s", "event", "detail")
        for row in timeline_rows(history, events):
            table.add_row(*row)
        console.print(table)
    if wait and summary is not None and summary["status"] != "succeeded":
        return 4
    return 0


PROGRESS_RUN_SHOWN = 3
"""Of a run of progress reports in a row, the first and last shown and the rest counted (``--json`` has them all):
a job of 3,000 steps printed 166 lines of them, one a second, and the events around them scrolled away."""


def timeline_rows(history: list[Any], entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``aios job``'s table: (seconds since the first event, type, detail) a row, runs of progress reports folded
    as ``kubectl describe`` folds repeated events."""
    rows: list[tuple[str, str, str]] = []
    t0 = history[0].ts if history else 0.0

    def row(i: int) -> tuple[str, str, str]:
        detail = {k: v for k, v in entries[i].items() if k not in ("type", "ts", "trace_id", "spec")}
        return f"{history[i].ts - t0:.1f}", type(history[i]).__name__, plain(json.dumps(detail, default=str)[:100])
    i = 0
    while i < len(history):
        end = i
        while isinstance(history[i], JobProgress) and end + 1 < len(history) and isinstance(history[end + 1],
                                                                                            JobProgress):
            end += 1
        if end - i + 1 > PROGRESS_RUN_SHOWN:
            rows += [row(i), ("", "", f"... {end - i - 1} more progress reports"), row(end)]
            i = end + 1
            continue
        rows.append(row(i))
        i += 1
    return rows


async def checkpoints(sweep: bool, retention: str | None, orphan_grace_s: float, dry_run: bool, as_json: bool,
                      delete: list[str] | None = None) -> int:
    """``aios checkpoints``: the checkpoint store, and what a sweep with these settings does with each object; with
    ``--sweep``, that sweep now (``--dry-run``: only say it); ``--delete JOB``: an ended job's checkpoint, now."""
    from aios.common.snapshot import Projector
    from aios.scheduler.state import STATE_SCHEMA, SchedulerState, fold_commit
    from aios.trainer import checkpoints as ckpt

    retention_s: float | None = ckpt.DEFAULT_RETENTION_S
    if retention is not None and retention.strip().lower() == "off":
        retention_s = None
    elif retention is not None:
        try:
            hours = float(retention)
        except ValueError:
            hours = -1.0
        if not 0 < hours < 1e7:
            raise ConfigError(f"--retention-h: {retention!r} is not a positive number of hours, or 'off'")
        retention_s = hours * 3600.0
    if not ckpt.MIN_ORPHAN_GRACE_S <= orphan_grace_s < 1e9:
        raise ConfigError(f"--orphan-grace-s: at least {ckpt.MIN_ORPHAN_GRACE_S:g} s (a checkpoint being written "
                          f"names its object only after its last chunk), got {orphan_grace_s:g}")
    store = await _store()
    try:
        projector = Projector("cli-checkpoints", SchedulerState, None, SchedulerState, STATE_SCHEMA,
                              fold_commit=fold_commit)
        await projector.rebuild(store)
        jobs = projector.state.jobs
        if delete:
            return await _delete_checkpoints(store, jobs, delete, as_json)
        if sweep or dry_run:
            reply = await ckpt.collect(store, jobs, retention_s=retention_s, orphan_grace_s=orphan_grace_s,
                                       dry_run=dry_run, timeout_s=120.0, by="aios checkpoints --sweep")
            if as_json:
                print(json.dumps(reply, indent=2))
            else:
                verb = "would delete" if dry_run else "deleted"
                n = len(reply["deleted"])
                print(f"{verb} {n} checkpoint{'' if n == 1 else 's'} of ended jobs ({reply['bytes']:,} bytes)"
                      + (f": {', '.join(reply['deleted'])}" if reply["deleted"] else "")
                      + f"; {'would purge' if dry_run else 'purged'} {reply['orphaned_chunks']} chunks no "
                        "checkpoint refers to"
                      + ("" if reply["orphans_checked"] else " (not looked for: some metadata was unreadable)"))
            return 0
        found = await asyncio.wait_for(ckpt.survey(store), 120.0)
        mark = await asyncio.wait_for(ckpt.last_sweep(store), 30.0)
    finally:
        await store.close()
    decided = ckpt.plan(found, jobs, time.time(), retention_s, orphan_grace_s)
    if as_json:
        print(json.dumps({"retention_s": retention_s, "checkpoints": msgspec.to_builtins(decided.verdicts),
                          "orphaned_chunks": sum(c.chunks for c in decided.orphans),
                          "last_sweep": msgspec.to_builtins(mark)}, indent=2))
        return 0
    if not decided.verdicts:
        print("no checkpoints stored")
    else:
        shown = "off" if retention_s is None else f"{retention_s / 3600:g} h"
        table = Table("checkpoint", "job", "status", "bytes", "with this retention",
                      title=f"retention of failed and cancelled jobs' checkpoints: {shown} (the trainers' own: "
                            "AIOS_CHECKPOINT_RETENTION_S)")
        for v in decided.verdicts:
            table.add_row(v.name, v.job or "-", v.status, f"{v.size:,}", v.why)
        table_console().print(table)
    if decided.orphans:
        print(f"{sum(c.chunks for c in decided.orphans)} chunks of checkpoint writes that died refer to no "
              "checkpoint: a sweep purges them")
    if mark is None:
        print("no sweep recorded yet (the trainers sweep every AIOS_CHECKPOINT_SWEEP_S, an hour by default)")
    else:
        when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mark.at)) if mark.at is not None
                else "at an unknown time")
        print(f"last sweep: {when}, by {mark.by or 'an unnamed sweeper'}")
    return 0


async def _delete_checkpoints(store: Any, jobs: dict[str, Any], names: list[str], as_json: bool) -> int:
    """Each named checkpoint deleted, if its job has ended (a running job would lose its resume point)."""
    from aios.scheduler.state import TERMINAL
    from aios.trainer import checkpoints as ckpt

    for name in names:  # all checked before any is deleted
        job = ckpt.owner(name, jobs)
        if job is not None and job.status not in TERMINAL:
            raise ConfigError(f"--delete: {name!r} is the checkpoint of job {job.job_id}, which is {job.status}: "
                              "cancel it first")
    deleted = [name for name in names if await ckpt.delete(store, name)]
    missing = [name for name in names if name not in deleted]
    if as_json:
        print(json.dumps({"deleted": deleted, "not_found": missing}))
    else:
        print(f"deleted {', '.join(deleted) or 'nothing'}" + (f"; no checkpoint named {', '.join(missing)}"
                                                                if missing else ""))
    if missing:
        raise NotFound(f"--delete: no checkpoint named {', '.join(missing)}")
    return 0
