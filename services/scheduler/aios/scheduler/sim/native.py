"""The native workload format of the simulator, and the export of a live AIOS log into it (counterfactual replay:
"what would last week have looked like with 8 more H100s, or with fair share?").

Format: JSON Lines, one job per line; blank lines and lines starting with ``#`` are ignored::

    {"name": "train-3f2a1c", "arrival_s": 0.0, "tenant": "vision", "devices": 4, "job_type": "train",
     "priority": 0, "work": 130.0, "rates": {"h100": 2.0, "a100": 1.0}}

* ``arrival_s`` (required, number >= 0): seconds after the start of the workload.
* ``devices`` (required, integer >= 1): GPUs the job holds as one gang.
* ``work`` (required, number > 0): the job's total work in steps.
* ``rates`` (optional, may be omitted or ``{}``): steps per second per GPU kind; the job runs only on these kinds.
  Empty: the simulator looks the job up in its throughput table by ``(job_type, devices)``, else 1 step/s anywhere.
* ``any_kind`` (optional, default false): ``rates`` (or, when empty, the throughput table's row) are only the
  speeds known; the job may also run on every other kind of the cluster, at 1 step/s. The policy is told only the
  known speeds, as the live job told the scheduler. The export of a live log sets it for jobs that named no
  ``device_types``, so a what-if that adds a kind (``--add h100=8``) offers them the new GPUs.
* ``name`` (default ``""``: the simulator names it; unique in the file), ``tenant`` (default ``"trace"``),
  ``job_type`` (default: the name without a trailing ``-<number>``), ``priority`` (whole number from -1000 to 1000,
  default 0: the job spec's priority). Names and tenants follow the job spec's rules (lowercase, digits, ``.-_``).
  The job is submitted under a spec name made of its ``job_type`` (policies that learn per class of job, such as
  ``hetero-gittins`` and the runtime predictor, class jobs by it, as live they class them by the spec's name).
* ``hints`` (optional): the speeds the policy is told, when they are not ``rates`` (a live job that gave a speed
  for some of its kinds only); kinds of ``rates`` and ``hints`` are device kinds as the agents report them.
* ``preemptible`` (default true), ``runtime_estimate_s`` (the user's estimate, seconds > 0; backfill plans with it),
  ``max_devices_per_node`` (whole number >= 1): the job spec's fields of the same names.
* ``serve`` (default false): a serving deployment; it holds its devices while it runs, and is left out of the JCT,
  makespan and fairness figures (its end is when it was stopped, not a completion).
* ``cpu_per_worker`` (default 1), ``memory_gib_per_worker`` (default 4): what each worker (one per GPU) takes of
  its node's CPU cores and memory, as the job spec's fields; placement needs them free beside the GPUs.

A line may instead set a tenant's quota, as ``aios quota`` does, in force from the start of the run (the export of a
live log writes the quotas the log last set)::

    {"quota": {"tenant": "nlp", "cohort": "research", "nominal": {"h100": 4}, "borrowing_limit": {"h100": 2},
               "lending_limit": null}}

* ``tenant`` (required), ``cohort`` (default ``""``: none), ``nominal`` (GPU kind -> whole number >= 0, default
  ``{}``), ``borrowing_limit`` / ``lending_limit`` (the same, or ``null``: no limit). One line per tenant.

A line may also name a node of the cluster and its GPUs (the export of a live log writes the nodes the log
registered, so that a replay places jobs on the same nodes, ties broken alike)::

    {"node": {"name": "sim-1", "devices": {"h100": 4}, "cpu_cores": 96, "memory_gib": 1024}}

* ``name`` (required, unique), ``devices`` (required, GPU kind -> whole number from 1 to 4,096), ``cpu_cores``
  (whole number from 1 to 1,048,576, default 64) and ``memory_gib`` (1/1024 to 2**30, default 512): what
  the node's agent registered, shared by the workers placed there. Without
  ``--cluster``, a workload with node lines runs on those nodes; with it (or without node lines), on servers of
  ``--gpus-per-server`` GPUs.

Unknown fields are rejected so that a misspelt field is an error, not a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import msgspec

from aios.common import strictjson
from aios.common.errors import ConfigError
from aios.common.events import (
    CheckpointSaved, Event, JobCancelled, JobEvent, JobFailed, JobPlaced, JobPreempted, JobRequeued, JobStarted,
    JobSubmitted, JobSucceeded, NodeForgotten, NodeRegistered, TenantQuotaRemoved, TenantQuotaSet,
)
from aios.device_agent.protocol import HEARTBEAT_BUCKET
from aios.scheduler.sim.traces import (
    MAX_ARRIVAL_S, MAX_GPUS, SIM_CPU_CORES, SIM_MEMORY_GIB, SimNode, TraceJob, read_text,
)
from aios.scheduler.spec import (
    CPU_PER_WORKER_RANGE, MAX_CPU_PER_WORKER, MAX_MEMORY_GIB_PER_WORKER, MAX_QUOTA, MEMORY_GIB_PER_WORKER_RANGE,
    MIN_CPU_PER_WORKER, MIN_MEMORY_GIB_PER_WORKER, QUOTA_FIELDS, SpecError, check_tenant, is_device_kind, is_name,
    validate_quota,
)

FIELDS = ("name", "arrival_s", "tenant", "devices", "job_type", "priority", "work", "rates", "any_kind", "hints",
          "preemptible", "runtime_estimate_s", "max_devices_per_node", "serve", "cpu_per_worker",
          "memory_gib_per_worker")
PER_WORKER = {"cpu_per_worker": (MIN_CPU_PER_WORKER, MAX_CPU_PER_WORKER, 1.0, CPU_PER_WORKER_RANGE),
              "memory_gib_per_worker": (MIN_MEMORY_GIB_PER_WORKER, MAX_MEMORY_GIB_PER_WORKER, 4.0,
                                        MEMORY_GIB_PER_WORKER_RANGE)}
"""The job spec's per-worker requests: least, most, default, and the range as its errors say it."""
MAX_NODE_CPU_CORES = 1 << 20
MIN_NODE_MEMORY_GIB = 1 / 1024
MAX_NODE_MEMORY_GIB = float(1 << 30)
HEADER = "# AIOS native workload: one JSON job per line (see aios.scheduler.sim.native)"
RUN_READS_MAX = 50
"""Jobs cut short beyond which the export reads all run reports at once instead of one job's at a time."""
_SUFFIX = re.compile(r"(?:[-_.]\d+)+$")


class _Bad(Exception):
    """One field of one line is wrong; turned into a ConfigError that names the file and line."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"field {name!r}: {reason}")


def _number(obj: dict[str, Any], name: str, default: float | None = None) -> float:
    value = obj.get(name, default)
    if value is None:
        raise _Bad(name, "required")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise _Bad(name, f"expected a number, got {_shown(value)}")
    return float(value)


def _finite(value: int | float) -> bool:
    """A number a float holds (an integer of 400 digits is valid JSON, and float() of it raised OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    """A value for an error message, as JSON writes it, cut to 60 characters (a 400-digit number filled the
    terminal)."""
    return strictjson.shown(value, 60)


def _flag(obj: dict[str, Any], name: str, default: bool) -> bool:
    value = obj.get(name, default)
    if not isinstance(value, bool):
        raise _Bad(name, f"expected true or false, got {_shown(value)}")
    return value


def _speeds_of(obj: dict[str, Any], name: str) -> dict[str, float] | None:
    """``rates`` or ``hints``: GPU kind -> steps per second, each kind as the agents name kinds, each speed > 0."""
    raw = obj.get(name)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _Bad(name, f"expected an object of GPU kind -> steps per second, got {_shown(raw)}")
    speeds: dict[str, float] = {}
    for kind, value in raw.items():
        if not is_device_kind(kind):
            raise _Bad(f"{name}.{kind[:64]}", "not a device kind (lowercase, as the agents report them)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or value <= 0:
            raise _Bad(f"{name}.{kind}", f"expected a positive number, got {_shown(value)}")
        speeds[kind] = float(value)
    return speeds


def _text(obj: dict[str, Any], name: str, default: str) -> str:
    value = obj.get(name, default)
    if not isinstance(value, str):
        raise _Bad(name, f"expected a string, got {_shown(value)}")
    return value


def job_type_of(name: str) -> str:
    """``resnet-12`` -> ``resnet``: runs of one kind of job share a type (the simulator's throughput-table key)."""
    return _SUFFIX.sub("", name) or name


def _job_from_obj(obj: dict[str, Any]) -> TraceJob:
    for key in obj:
        if key not in FIELDS:
            raise _Bad(key, f"unknown field (expected one of {', '.join(FIELDS)})")
    arrival = _number(obj, "arrival_s")
    if not 0 <= arrival <= MAX_ARRIVAL_S:
        raise _Bad("arrival_s", f"expected seconds from 0 to {MAX_ARRIVAL_S:,.0f} (ten years), got "
                                f"{_shown(obj['arrival_s'])}")
    devices = obj.get("devices")
    if devices is None:
        raise _Bad("devices", "required")
    if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= MAX_GPUS:
        raise _Bad("devices", f"expected a positive integer up to {MAX_GPUS:,}, got {_shown(devices)}")
    work = _number(obj, "work")
    if work <= 0:
        raise _Bad("work", f"expected a positive number of steps, got {_shown(obj['work'])}")
    rates = _speeds_of(obj, "rates") or {}
    hints = _speeds_of(obj, "hints")
    estimate = obj.get("runtime_estimate_s")
    if estimate is not None and _number(obj, "runtime_estimate_s") <= 0:
        raise _Bad("runtime_estimate_s", f"expected a positive number of seconds, got {_shown(estimate)}")
    per_node = obj.get("max_devices_per_node")
    if per_node is not None and (isinstance(per_node, bool) or not isinstance(per_node, int)
                                 or not 1 <= per_node <= MAX_GPUS):
        raise _Bad("max_devices_per_node", f"expected a whole number from 1 to {MAX_GPUS:,}, got {_shown(per_node)}")
    name = _text(obj, "name", "")
    if name and not is_name(name):  # "A B" was taken, and named a job no live cluster could have
        raise _Bad("name", "lowercase letters, digits, '.', '_' or '-', 1 to 64, letters or digits at both ends "
                           f"(a job's name), got {_shown(name)}")
    job_type = _text(obj, "job_type", job_type_of(name) or "job")
    if not job_type.strip():  # "" was taken, and the note on its missing throughput named an empty type
        raise _Bad("job_type", "a non-empty name of the kind of job (its throughput table's key)")
    priority = _number(obj, "priority", 0.0)
    if not priority.is_integer() or abs(priority) > 1000:
        raise _Bad("priority", "expected a whole number from -1000 to 1000 (the job spec's), got "
                               f"{_shown(obj['priority'])}")
    per_worker = {}
    for field, (least, most, default, text) in PER_WORKER.items():
        per_worker[field] = value = _number(obj, field, default)
        if not least <= value <= most:
            raise _Bad(field, f"expected a number {text} (the job spec's), got {_shown(obj[field])}")
    tenant = _text(obj, "tenant", "trace")
    try:  # checked here, where the line is known (the simulation named only the job)
        check_tenant(tenant)
    except SpecError as exc:
        raise _Bad("tenant", f"{exc.reason}, got {tenant!r}") from None
    return TraceJob(job_type=job_type, total_steps=work, gpus=devices,
                    priority_weight=priority, arrival_s=arrival, rates=rates, tenant=tenant, name=name,
                    any_kind=_flag(obj, "any_kind", False), hints=hints, preemptible=_flag(obj, "preemptible", True),
                    runtime_estimate_s=None if estimate is None else float(estimate), max_devices_per_node=per_node,
                    serve=_flag(obj, "serve", False), **per_worker)


def _quota_from_obj(obj: Any) -> TenantQuotaSet:
    if not isinstance(obj, dict):
        raise _Bad("quota", f"expected an object with tenant, {', '.join(QUOTA_FIELDS)}, got {obj!r}")
    rest = {"nominal": {}, **{k: v for k, v in obj.items() if k != "tenant"}}  # the format's default (see above)
    if "tenant" not in obj:
        raise _Bad("quota.tenant", "required: the tenant's name")
    try:  # the rules of `aios quota` and the HTTP API
        return msgspec.structs.replace(validate_quota(obj["tenant"], rest), ts=0.0)
    except SpecError as exc:
        raise _Bad(f"quota.{exc.field}", exc.reason) from None


Nodes = dict[str, SimNode]
"""node name -> its GPUs, CPU cores and memory: a cluster's layout."""
_NODE_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,253}")


NODE_FIELDS = ("name", "devices", "cpu_cores", "memory_gib")


def _node_from_obj(obj: Any) -> tuple[str, SimNode]:
    if not isinstance(obj, dict):
        raise _Bad("node", f"expected an object with name and devices, got {_shown(obj)}")
    for key in obj:
        if key not in NODE_FIELDS:
            raise _Bad(f"node.{key}", f"unknown field (expected {', '.join(NODE_FIELDS)})")
    name = obj.get("name")
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
        raise _Bad("node.name", f"expected a node's name (1 to 253 characters, no spaces), got {name!r}")
    devices = obj.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise _Bad("node.devices", f"expected an object of GPU kind -> devices, got {devices!r}")
    for kind, count in devices.items():
        if not is_device_kind(kind):
            raise _Bad(f"node.devices.{kind}", "not a device kind (lowercase, as the agents report them)")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_GPUS:
            raise _Bad(f"node.devices.{kind}", f"expected a whole number from 1 to {MAX_GPUS:,}, got {count!r}")
    cores = obj.get("cpu_cores", SIM_CPU_CORES)
    if isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= MAX_NODE_CPU_CORES:
        raise _Bad("node.cpu_cores", f"expected a whole number from 1 to {MAX_NODE_CPU_CORES:,}, got {_shown(cores)}")
    memory = obj.get("memory_gib", SIM_MEMORY_GIB)
    if isinstance(memory, bool) or not isinstance(memory, (int, float)) or not _finite(memory) \
            or not MIN_NODE_MEMORY_GIB <= memory <= MAX_NODE_MEMORY_GIB:
        raise _Bad("node.memory_gib", f"expected a number of GiB from 1/1024 (1 MiB) to {MAX_NODE_MEMORY_GIB:,.0f}, "
                                      f"got {_shown(memory)}")
    return name, SimNode(dict(devices), cores, float(memory))


def _node_to_obj(name: str, node: SimNode) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": name, "devices": dict(node.devices)}
    if node.cpu_cores != SIM_CPU_CORES:
        obj["cpu_cores"] = node.cpu_cores
    if node.memory_gib != SIM_MEMORY_GIB:
        obj["memory_gib"] = node.memory_gib
    return {"node": obj}


def _quota_to_obj(quota: TenantQuotaSet) -> dict[str, Any]:
    return {"quota": {"tenant": quota.aggregate_id, "cohort": quota.cohort, "nominal": dict(quota.nominal),
                      "borrowing_limit": quota.borrowing_limit, "lending_limit": quota.lending_limit}}


def read_native_trace(path: str | Path) -> list[TraceJob]:
    """The jobs of a native workload file, by arrival (ties keep file order); ConfigError names line and field."""
    return read_native_workload(path)[0]


def read_native_workload(path: str | Path) -> tuple[list[TraceJob], list[TenantQuotaSet], Nodes]:
    """The jobs of a native workload file, by arrival (ties keep file order), the tenant quotas it sets (file
    order) and the nodes it names (file order; empty: none); ConfigError names line and field."""
    text = read_text(path, "workload")
    jobs = []
    quotas: dict[str, tuple[int, TenantQuotaSet]] = {}
    nodes: dict[str, tuple[int, SimNode]] = {}
    lines: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = strictjson.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}: not valid JSON: {exc}") from None
        except RecursionError:  # thousands of nested brackets: valid JSON, no job of ours
            raise ConfigError(f"{path}:{n}: nested too deeply to be a job (a job line is one flat object)") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}:{n}: expected a JSON object (one job), got {type(obj).__name__}")
        try:
            if "quota" in obj:
                if len(obj) > 1:
                    raise _Bad(sorted(set(obj) - {"quota"})[0], "a quota line holds only the field 'quota'")
                quota = _quota_from_obj(obj["quota"])
                if quota.aggregate_id in quotas:
                    raise _Bad("quota.tenant", f"{quota.aggregate_id!r} has its quota on line "
                                               f"{quotas[quota.aggregate_id][0]} already")
                quotas[quota.aggregate_id] = (n, quota)
                continue
            if "node" in obj:
                if len(obj) > 1:
                    raise _Bad(sorted(set(obj) - {"node"})[0], "a node line holds only the field 'node'")
                name, node = _node_from_obj(obj["node"])
                if name in nodes:
                    raise _Bad("node.name", f"{name!r} is named on line {nodes[name][0]} already")
                nodes[name] = (n, node)
                continue
            job = _job_from_obj(obj)
        except _Bad as exc:
            raise ConfigError(f"{path}:{n}: {exc}") from None
        if job.name and job.name in lines:
            raise ConfigError(f"{path}:{n}: field 'name': {job.name!r} is already the name of line {lines[job.name]}")
        lines[job.name] = n
        jobs.append(job)
    return sorted(jobs, key=lambda j: j.arrival_s), [q for _, q in quotas.values()], {
        name: node for name, (_, node) in nodes.items()}


def _job_to_obj(job: TraceJob) -> dict[str, Any]:
    weight = float(job.priority_weight)
    priority: float | int = int(weight) if weight.is_integer() else weight
    obj = {"name": job.name, "arrival_s": job.arrival_s, "tenant": job.tenant, "devices": job.gpus,
           "job_type": job.job_type, "priority": priority, "work": job.total_steps, "rates": dict(job.rates)}
    if job.any_kind:
        obj["any_kind"] = True
    optional = {"hints": job.hints, "runtime_estimate_s": job.runtime_estimate_s,
                "max_devices_per_node": job.max_devices_per_node}
    obj.update({k: v for k, v in optional.items() if v is not None})
    if not job.preemptible:
        obj["preemptible"] = False
    if job.serve:
        obj["serve"] = True
    for field, (_, _, default, _) in PER_WORKER.items():
        if getattr(job, field) != default:
            obj[field] = getattr(job, field)
    return obj


def write_native_trace(path: str | Path, jobs: list[TraceJob], comments: Iterable[str] = (),
                       quotas: Iterable[TenantQuotaSet] = (), nodes: Nodes | None = None) -> None:
    """Write ``jobs`` in order; each is checked first, so a file this writes always reads back to the same jobs.
    ``comments`` go below the header, one ``#`` line each (where the jobs came from, how to replay them); the
    tenants' ``quotas`` and the ``nodes`` come before the jobs."""
    lines = [HEADER, *(f"# {line}" for text in comments for line in text.splitlines())]
    lines += [json.dumps(_quota_to_obj(q)) for q in quotas]
    lines += [json.dumps(_node_to_obj(name, node), allow_nan=False) for name, node in (nodes or {}).items()]
    for i, job in enumerate(jobs):
        obj = _job_to_obj(job)
        try:
            _job_from_obj(obj)
            lines.append(json.dumps(obj, allow_nan=False))
        except (_Bad, ValueError) as exc:
            raise ConfigError(f"job {i} ({job.name or job.job_type}): {exc}") from None
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- export of a live log ---------------------------------------------------------------------------------------------

class LogWorkload(msgspec.Struct, frozen=True):
    """What a live log shows: its jobs as a native workload, and the cluster they ran on."""

    jobs: list[TraceJob]
    cluster: dict[str, int]
    """GPU kind -> devices, over every node that registered (each node once, as it last registered)."""
    nodes: Nodes = {}
    """The GPU nodes themselves, by name, as they last registered (a replay places on the same nodes)."""
    skipped: list[str] = []
    """Ids of the jobs left out (no work to replay); ``reasons`` says why."""
    reasons: dict[str, str] = {}
    start_ts: float = 0.0
    """Epoch seconds of arrival 0 (the first exported job's submission)."""
    ended: dict[str, str] = {}
    """Exported jobs that failed or were cancelled live (id -> "failed" / "cancelled"): replayed with the work they
    did, as if they had then finished."""
    quotas: list[TenantQuotaSet] = []
    """The tenant quotas as the log last set them (one per tenant)."""
    unfinished: list[str] = []
    """Jobs not ended when the log ends (running, or requeued after some work), with no ``runtime_estimate_s``:
    replayed with the work they had done, so that they hold devices at least as long as they did live (left out,
    they freed them for the others)."""
    lost_s: dict[str, float] = {}
    """Exported jobs that lost run time to a preemption or requeue (id -> seconds since their last checkpoint,
    or the whole run without one; a run stopped before its JobStarted lost nothing when the log has starts): left
    out of their work, as the replay resumes jobs where they stopped."""


@dataclass
class _Run:
    start: float
    uuids: list[str]
    attempt: int = 0
    started: bool = False
    checkpoint: float | None = None
    """When the run last saved a checkpoint: a run cut short resumes from there, and re-does what came after."""
    stop: float | None = None
    """When it was told to stop (JobPreempted): its work ends there, while its workers still checkpoint and exit
    before the requeue (the checkpoint of a graceful preemption comes after the preemption)."""


@dataclass
class _Job:
    job_id: str
    tenant: str
    name: str
    spec: dict[str, Any]
    submitted: float
    runs: list[tuple[float, list[str]]] = field(default_factory=list)
    """(useful seconds, device uuids) of each finished run."""
    open: _Run | None = None
    end: str = ""
    lost_s: float = 0.0
    held_s: float = 0.0
    """Device time of runs cut short before any JobStarted: lost work only if the log records no starts at all
    (a log whose workers never report one), else the workers never ran and the time is only devices held."""
    ran: bool = False

    def close(self, ts: float, cut_short: bool = False) -> None:
        """End the open run at ``ts``: see :func:`_run_time`."""
        run = self.open
        if run is not None:
            kept, lost = _run_time(run, ts, cut_short)
            self.runs.append((kept, run.uuids))
            if run.started:
                self.lost_s += lost
            else:
                self.held_s += lost
            self.ran = self.ran or kept + lost > 0
            self.open = None


def _run_time(run: _Run, ts: float, cut_short: bool) -> tuple[float, float]:
    """(seconds of work the run kept, seconds it lost) if it ends at ``ts``, or where it was told to stop. Cut short
    (requeued): only the time up to its last checkpoint is kept, the rest is done again by the next run."""
    seconds = max(0.0, min(ts, ts if run.stop is None else run.stop) - run.start)
    if not cut_short:
        return seconds, 0.0
    kept = min(seconds, 0.0 if run.checkpoint is None else max(0.0, run.checkpoint - run.start))
    return kept, seconds - kept


def _events(items: Iterable[Any]) -> Iterable[Event]:
    """Accept stored commits, (aggregate, events) pairs, or bare events."""
    for item in items:
        if isinstance(item, Event):
            yield item
        elif isinstance(item, tuple):
            yield from item[1]
        else:
            yield from item.events


def _spec_number(spec: dict[str, Any], name: str) -> float | None:
    value = spec.get(name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _speeds(spec: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """The spec's relative speed per kind (valid entries only) and its acceptable kinds."""
    raw = spec.get("throughput")
    speeds = {k: float(v) for k, v in raw.items()
              if isinstance(k, str) and is_device_kind(k) and isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v) and v > 0} if isinstance(raw, dict) else {}
    types = spec.get("device_types")
    # a log from before kinds were checked may name "H100": no device has that kind, and the format refuses it
    kinds = [k for k in types if isinstance(k, str) and is_device_kind(k)] if isinstance(types, list) else []
    return speeds, kinds


def _rates(spec: dict[str, Any]) -> tuple[dict[str, float], bool]:
    """Where the job may run and how fast, as the live scheduler saw it, and whether it may run on any kind: kinds
    missing from ``throughput`` at 1.0.

    A job that names no ``device_types`` runs anywhere (``any_kind``: its hints, and 1 step/s on every other kind
    of the simulated cluster, including kinds added for the counterfactual); with no hint at all it gets ``{}``."""
    speeds, kinds = _speeds(spec)
    if kinds:
        return {k: speeds.get(k, 1.0) for k in kinds}, False
    return speeds, True


def jobs_from_events(commits_or_events: Iterable[Any], until: float | None = None) -> LogWorkload:
    """Fold the job, node and tenant events of a live log (in log order) into a native workload, its cluster and
    its tenants' quotas (as last set: a replay applies them from its start).

    Work of a job = the sum over its runs (JobPlaced, or JobStarted when present, until JobPreempted, JobRequeued,
    JobSucceeded, JobFailed or JobCancelled) of run seconds x its ``throughput`` on the kind it ran on (1.0 when not
    given; the slowest kind when a gang spanned kinds). A run cut short (requeued, after a JobPreempted or a lost
    node) counts from its start to its preemption, and of that only up to its last CheckpointSaved of the same
    attempt (none: nothing; a graceful preemption checkpoints after JobPreempted), since the next run starts again
    from there; the replay resumes jobs
    where they stopped, so work done twice live is done once. Failed and cancelled jobs keep the work they did (and
    are listed in ``ended``); jobs still pending or running use ``runtime_estimate_s`` x their fastest rate (at
    least the work done so far, up to the log's end); without one, jobs that did work (running, or requeued)
    keep the work done so far (listed in ``unfinished``) and pending ones that never ran are skipped. The log ends at its last job event, or at ``until``
    if later (the moment it is read, while the cluster is alive: a job running for days writes no job event). Device kinds are resolved
    after the fold, so commit order across aggregates does not matter.
    """
    jobs: dict[str, _Job] = {}
    nodes: dict[str, list[str]] = {}
    hosts: dict[str, tuple[int, float]] = {}  # node -> CPU cores and GiB of memory, as it last registered
    kind_of: dict[str, str] = {}
    orphans: dict[str, str] = {}
    quotas: dict[str, TenantQuotaSet] = {}
    last_ts = 0.0
    starts_seen = False
    for ev in _events(commits_or_events):
        kind = type(ev)
        if kind is TenantQuotaSet:
            quotas[ev.aggregate_id] = ev  # type: ignore[assignment]
            continue
        if kind is TenantQuotaRemoved:
            quotas.pop(ev.aggregate_id, None)
            continue
        if kind is NodeRegistered:
            nodes[ev.aggregate_id] = [d.kind for d in ev.devices]  # type: ignore[attr-defined]
            hosts[ev.aggregate_id] = (ev.cpu_cores, ev.memory_bytes / 2**30)  # type: ignore[attr-defined]
            kind_of.update((d.uuid, d.kind) for d in ev.devices)  # type: ignore[attr-defined]
            continue
        if kind is NodeForgotten:  # decommissioned: not part of the cluster a replay runs on
            nodes.pop(ev.aggregate_id, None)
            continue
        if not isinstance(ev, JobEvent):
            continue
        last_ts = max(last_ts, ev.ts)
        if kind is JobSubmitted:
            if ev.aggregate_id not in jobs:  # a duplicate submit changes nothing, as in the scheduler's fold
                sub: JobSubmitted = ev  # type: ignore[assignment]
                spec = sub.spec if isinstance(sub.spec, dict) else {}
                jobs[sub.aggregate_id] = _Job(sub.aggregate_id, sub.tenant, sub.name or str(spec.get("name") or ""),
                                              spec, sub.ts)
            continue
        job = jobs.get(ev.aggregate_id)
        if job is None:
            if kind in (JobPlaced, JobSucceeded, JobFailed):
                orphans[ev.aggregate_id] = "no JobSubmitted in the log (trimmed by retention?)"
            continue
        if job.end:
            continue
        if kind is JobPlaced:
            job.close(ev.ts, cut_short=job.open is not None and job.open.stop is not None)
            job.open = _Run(ev.ts, [u for a in ev.assignments for u in a.device_uuids],  # type: ignore[attr-defined]
                            ev.attempt)  # type: ignore[attr-defined]
        elif kind is JobStarted:
            starts_seen = True
            if job.open is not None and not job.open.started:
                job.open.start, job.open.started = max(job.open.start, ev.ts), True
        elif kind is CheckpointSaved:
            run = job.open  # a checkpoint of another attempt (a late report) is not this run's
            if run is not None and ev.attempt in (0, run.attempt):  # type: ignore[attr-defined]
                run.checkpoint = ev.ts
        elif kind is JobPreempted:
            if job.open is not None and job.open.stop is None:
                job.open.stop = ev.ts
        elif kind is JobRequeued:
            job.close(ev.ts, cut_short=True)
        elif kind in (JobSucceeded, JobFailed, JobCancelled):
            job.close(ev.ts)
            job.end = {JobSucceeded: "succeeded", JobFailed: "failed", JobCancelled: "cancelled"}[kind]

    cluster = dict(sorted(Counter(k for kinds in nodes.values() for k in kinds).items()))
    out: list[tuple[float, TraceJob]] = []
    reasons: dict[str, str] = {}
    ended: dict[str, str] = {}
    lost: dict[str, float] = {}
    unfinished: list[str] = []
    end = max(last_ts, until or 0.0)
    for job in jobs.values():
        tj, why = _export(job, kind_of, cluster, end)
        if tj is None:
            reasons[job.job_id] = why
            continue
        if why == "unfinished":
            unfinished.append(job.job_id)
        out.append((job.submitted, tj))
        if job.end in ("failed", "cancelled"):
            ended[job.job_id] = job.end
        lost_s = job.lost_s + (0.0 if starts_seen else job.held_s)
        if lost_s > 0:
            lost[job.job_id] = lost_s
    for job_id, why in orphans.items():
        reasons.setdefault(job_id, why)
    start = min((ts for ts, _ in out), default=0.0)
    exported = sorted((msgspec.structs.replace(tj, arrival_s=ts - start) for ts, tj in out),
                      key=lambda j: j.arrival_s)
    replayable = [q for q in map(_replayable_quota, quotas.values()) if q is not None]
    layout = {name: _sim_node(dict(sorted(Counter(kinds).items())), *hosts[name])
              for name, kinds in sorted(nodes.items()) if kinds}
    return LogWorkload(exported, cluster, layout, list(reasons), reasons, start, ended, replayable, unfinished, lost)


def _sim_node(devices: dict[str, int], cpu_cores: int, memory_gib: float) -> SimNode:
    """The node as registered; CPU cores or memory a replayed node cannot have (an agent that found none, or an old
    log's zeros) stay the simulator's defaults."""
    return SimNode(devices, cpu_cores if 1 <= cpu_cores <= MAX_NODE_CPU_CORES else SIM_CPU_CORES,
                   memory_gib if MIN_NODE_MEMORY_GIB <= memory_gib <= MAX_NODE_MEMORY_GIB else SIM_MEMORY_GIB)


def _replayable_quota(quota: TenantQuotaSet) -> TenantQuotaSet | None:
    """The quota as the native format can hold it, holding back the same jobs: logs written before quotas were
    checked may name a tenant no job can have (``NLP``: job tenants are lowercase) or a kind no device has
    (``H100``): those hold nothing live, and are left out here; a cohort name the checks refuse still groups the
    same tenants under a name they accept."""
    if not is_name(quota.aggregate_id):
        return None

    def kinds(counts: dict[str, int] | None) -> dict[str, int] | None:
        return None if counts is None else {k: min(v, MAX_QUOTA) for k, v in counts.items() if is_device_kind(k)
                                            and isinstance(v, int) and not isinstance(v, bool) and v >= 0}

    cohort = quota.cohort if not quota.cohort or is_name(quota.cohort) else \
        f"cohort-{hashlib.sha256(quota.cohort.encode()).hexdigest()[:12]}"
    return msgspec.structs.replace(quota, ts=0.0, cohort=cohort, nominal=kinds(quota.nominal) or {},
                                   borrowing_limit=kinds(quota.borrowing_limit),
                                   lending_limit=kinds(quota.lending_limit))


def _export(job: _Job, kind_of: dict[str, str], cluster: dict[str, int],
            last_ts: float) -> tuple[TraceJob | None, str]:
    """The job as native workload, or None and why it cannot be replayed."""
    spec = job.spec
    devices = spec.get("devices", 1)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        return None, f"a CPU job (devices {devices!r}): only GPU jobs are simulated"
    speeds, _ = _speeds(spec)
    rates, any_kind = _rates(spec)
    if any_kind and isinstance(spec.get("device_types"), list) and spec["device_types"]:
        return None, (f"its device_types {spec['device_types']!r} name no device kind (a spec from before kinds "
                      "were checked): no device could take it")
    done = 0.0
    runs = list(job.runs)
    if job.open is not None:  # running when the log ends: what it did so far (being preempted: what it keeps)
        runs.append((_run_time(job.open, last_ts, cut_short=job.open.stop is not None)[0], job.open.uuids))
    for seconds, uuids in runs:
        kinds = {kind_of[u] for u in uuids if u in kind_of}
        done += seconds * (min(speeds.get(k, 1.0) for k in kinds) if kinds else 1.0)
    if job.end == "succeeded" or (job.end and done > 0):
        work = done
    elif job.end:
        return None, (f"{job.end} after runs cut short before any checkpoint" if job.ran
                      else f"{job.end} without running")
    else:
        estimate = _spec_number(spec, "runtime_estimate_s")
        if (estimate is None or estimate <= 0) and done > 0:  # running, or requeued with work kept
            return _trace_job(job, spec, devices, done, rates, any_kind), "unfinished"
        if estimate is None or estimate <= 0:
            return None, f"still {'running' if job.open is not None else 'pending'}, with no runtime_estimate_s"
        on_logged = {**{k: 1.0 for k in cluster}, **rates} if any_kind else rates  # its speeds on the logged nodes
        work = max(done, estimate * max(on_logged.values(), default=1.0))
    if work <= 0:
        return None, f"{job.end or 'unfinished'} with no recorded run time"
    return _trace_job(job, spec, devices, work, rates, any_kind), ""


def _trace_job(job: _Job, spec: dict[str, Any], devices: int, work: float, rates: dict[str, float],
               any_kind: bool) -> TraceJob:
    """The job with what of its spec the live scheduler acted on: the kinds and speeds it was told (``hints`` where
    they are not all of ``rates``), whether it could be preempted, its user's runtime estimate (backfill plans with
    it), its per-node limit, and whether it served (its run is no completion time)."""
    job_type = spec.get("job_type")
    if not isinstance(job_type, str) or not job_type:
        job_type = job_type_of(job.name or job.job_id)
    speeds, _ = _speeds(spec)
    hints = {k: v for k, v in speeds.items() if k in rates}
    estimate = _spec_number(spec, "runtime_estimate_s")
    per_node = spec.get("max_devices_per_node")
    return TraceJob(job_type=job_type, total_steps=work, gpus=devices,
                    priority_weight=_spec_number(spec, "priority") or 0.0, arrival_s=0.0, rates=rates,
                    tenant=job.tenant, name=job.job_id, any_kind=any_kind,
                    hints=None if any_kind or hints == rates else hints,
                    preemptible=spec.get("preemptible") is not False,
                    runtime_estimate_s=estimate if estimate is not None and estimate > 0 else None,
                    max_devices_per_node=per_node if isinstance(per_node, int) and not isinstance(per_node, bool)
                    and 1 <= per_node <= MAX_GPUS else None,
                    serve=isinstance(spec.get("serve"), dict), **_per_worker(spec))


def _per_worker(spec: dict[str, Any]) -> dict[str, float]:
    """The spec's CPU and memory per worker, where the rules of today take them (else their defaults)."""
    out = {}
    for field, (least, most, default, _) in PER_WORKER.items():
        value = _spec_number(spec, field)
        out[field] = value if value is not None and least <= value <= most else default
    return out


async def load_log_workload(store: Any) -> LogWorkload:
    """Read every job.*, node.* and tenant.* commit of ``store`` (an EventStore), and the run.* reports of jobs cut
    short, and fold them with :func:`jobs_from_events`.

    The subject filters are replayed one after the other and merged by stream sequence, so the fold sees log order
    without decoding the other aggregates (models, say). The nodes' reports on a job's runs (``run.<id>``: its
    progress, about one a second, and its checkpoints) are read only for jobs whose runs were cut short, the only
    ones whose checkpoints change the work."""
    commits: list[Any] = []
    for aggregate in ("job", "node", "tenant"):
        await store.replay(commits.append, filter_subject=f"{store.prefix}.{aggregate}.>")
    cut_short = sorted({ev.aggregate_id for c in commits for ev in c.events if type(ev) in (JobPreempted, JobRequeued)})
    if len(cut_short) > RUN_READS_MAX:  # one pass over all reports costs less than that many reads
        await store.replay(commits.append, filter_subject=f"{store.prefix}.run.>")
    else:
        for job_id in cut_short:
            await store.replay(commits.append, filter_subject=f"{store.prefix}.run.{job_id}")
    commits.sort(key=lambda c: c.seq)
    return jobs_from_events(commits, until=time.time() if await _nodes_alive(store) else None)


async def _nodes_alive(store: Any) -> bool:
    """Whether any node's agent heartbeats (its entries live a minute in the server's memory): the cluster runs, and
    its running jobs have run until now. (Read only the log's events, a job started an hour ago with no event since
    counted seconds, and one started last was left out.)"""
    try:
        kv = await store.js.key_value(HEARTBEAT_BUCKET)
        return bool(await kv.keys())
    except Exception:  # noqa: BLE001 - no bucket, no keys, or a server without it: a log of a cluster gone
        return False
