"""The job spec: what a user submits, validated at the door with errors that name the field and the reason."""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import msgspec

from aios.common import strictjson
from aios.common.errors import AiosError
from aios.common.events import TenantQuotaSet
from aios.common.textcheck import NOT_UNICODE, encodes

NAME_PATTERN = r"^(?!.*\.\.)[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"
"""No two dots in a row: a name is one or more NATS subject tokens in the log's aggregates (``a..b`` was taken,
and its submission failed in the event store with a 500)."""
_NAME = re.compile(NAME_PATTERN)
KIND_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
"""A device kind as the device agents name them; the HTTP API's schemas state the same pattern."""
_KIND = re.compile(KIND_PATTERN)


class SpecError(AiosError):
    """A job spec is invalid; ``field`` names the offending field (dotted path)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.problems = [(field, reason)]
        """Every (field, reason) found; the first is ``field`` and ``reason``."""

    @classmethod
    def of(cls, problems: list[tuple[str, str]]) -> "SpecError":
        """One error for several problems: its text names each field and reason, separated by "; "."""
        exc = cls(*problems[0])
        exc.problems = list(problems)
        exc.args = ("; ".join(f"{f}: {r}" for f, r in problems),)
        return exc


DEFAULT_STOP_GRACE_S = 10.0


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    tenant: str
    priority: int = 0
    devices: int = 1
    """Accelerators in all (0: a CPU-only job)."""
    device_types: list[str] = []
    """Acceptable device kinds (``h100``, ``a100`` ...); empty: any."""
    throughput: dict[str, float] = {}
    """Optional relative speed per device kind (e.g. {"h100": 3.0, "v100": 1.0}) for heterogeneity-aware policies."""
    max_devices_per_node: int | None = None
    gang: bool = True
    cpu_per_worker: float = 1.0
    memory_gib_per_worker: float = 4.0
    max_runtime_s: float | None = None
    runtime_estimate_s: float | None = None
    """The user's own estimate (backfill uses the learned prediction when absent)."""
    preemptible: bool = True
    command: list[str] | None = None
    trainer: dict[str, Any] | None = None
    serve: dict[str, Any] | None = None
    """A model-serving job: ``{model: "models:/name@alias", max_batch: 256, max_delay_ms: 2}``; one replica per
    device (one on a CPU-only job), each an Open Inference Protocol endpoint; runs until cancelled."""
    env: dict[str, str] = {}
    checkpoint_interval_s: float | None = None
    max_restarts: int = 0
    """Times the job is restarted from its checkpoint when a worker fails (exits non-zero, or is killed) before the
    job fails, as Kubernetes' backoffLimit or Determined's max_restarts; 0: it fails at the first."""
    stop_grace_s: float = DEFAULT_STOP_GRACE_S
    """Seconds a worker asked to stop (preemption, drain, cancel) has to checkpoint and exit before it is killed, as
    Kubernetes' terminationGracePeriodSeconds: a model whose step or checkpoint takes longer lost all work since its
    last periodic checkpoint at every preemption."""


MAX_RESTARTS = 100
MAX_STOP_GRACE_S = 3600.0
SERVE_FIELDS = {"model": str, "max_batch": int, "max_delay_ms": (int, float)}
SERVE_LIMITS = {"max_batch": (1, 65_536), "max_delay_ms": (0, 1_000)}
"""A batch waits at most a second to fill: a lone request waited as long as asked (1e9 ms: the router gave up)."""


def check_serve(serve: dict[str, Any]) -> None:
    unknown = sorted(set(serve) - set(SERVE_FIELDS))
    if unknown:
        raise SpecError(f"serve.{unknown[0]}", f"unknown field (known: {', '.join(SERVE_FIELDS)})")
    model = serve.get("model")
    if not isinstance(model, str) or not re.fullmatch(r"^(models:/)?[A-Za-z0-9][A-Za-z0-9_-]{0,63}([/@][A-Za-z0-9_-]+)?$",
                                                  model):
        raise SpecError("serve.model", "required: models:/<name>[/<version>|@<alias>]")
    for field, kind in SERVE_FIELDS.items():
        value = serve.get(field)
        low, high = SERVE_LIMITS.get(field, (0, 0))
        if field != "model" and value is not None and (isinstance(value, bool) or not isinstance(value, kind)
                                                       or not low <= value <= high):
            raise SpecError(f"serve.{field}", f"must be a whole number from 1 to {high:,}" if field == "max_batch"
                            else f"must be a number of milliseconds from 0 to {high:,}")


def check_tenant(tenant: str, field: str = "tenant") -> None:
    """A tenant name is a NATS subject token sequence too (its NATS identity and tenant API subjects)."""
    if not _NAME.fullmatch(tenant):
        raise SpecError(field, "lowercase letters, digits, '.', '_' or '-', 1 to 64 characters, alphanumeric ends, "
                               "no '..'")


_ENV_NAME = re.compile(r"^[^=\x00]{1,256}$")
WORKER_VARIABLES = frozenset({
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "GROUP_WORLD_SIZE",
    "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
    "AIOS_JOB_ID", "AIOS_ATTEMPT", "AIOS_NATS_URL", "AIOS_STOP_GRACE_S",
    "AIOS_CHECKPOINT_STORE", "AIOS_CHECKPOINT_NAME", "AIOS_TRAINER", "AIOS_SERVE", "AIOS_ABORT_SUBJECT",
    "TRACEPARENT", "TRACESTATE"})
"""What the launcher and the device agent set for each worker, whatever a spec's ``env`` says (a spec that set
``AIOS_ABORT_SUBJECT`` to another job's ring made its agent abort that job's training when it exited)."""
MAX_PRIORITY = 1000
MAX_DEVICES = 4096
MAX_CPU_PER_WORKER = 4096.0
MIN_CPU_PER_WORKER = 0.001
"""A thousandth of a core (Kubernetes' smallest CPU request, 1m): 1e-320 cores per worker was taken, and the
scheduler's count of workers a node could hold became infinite."""
MIN_MEMORY_GIB_PER_WORKER = 1 / 1024
MAX_SPEC_BYTES = 256 << 10
MAX_MEMORY_GIB_PER_WORKER = 1 << 20
CPU_PER_WORKER_RANGE = f"at least {MIN_CPU_PER_WORKER:g} and at most {MAX_CPU_PER_WORKER:,.0f} cores"
MEMORY_GIB_PER_WORKER_RANGE = f"at least 1/1024 GiB (1 MiB) and at most {MAX_MEMORY_GIB_PER_WORKER:,} GiB"
"""The ranges, as errors say them (``:g`` showed 1/1024 as 0.000976562, below the least, and 2**20 as 1.04858e+06)."""


def _check_values(value: Any, path: str) -> None:
    """Values JSON or YAML can carry but a job cannot use: NaN and infinities (stored as null, they turned the spec
    into nothing; as a limit, NaN meant none) and NUL characters (no process can be started with them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(path or "spec", f"must be a finite number, got {strictjson.shown(value)}")
    if isinstance(value, str) and "\x00" in value:
        raise SpecError(path or "spec", "must not contain a NUL character")
    if isinstance(value, str) and not encodes(value):  # a lone surrogate: accepted, then a 500 when stored
        raise SpecError(path or "spec", NOT_UNICODE)
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                raise SpecError(path or "spec", "a key must not contain a NUL character")
            if isinstance(key, str) and not encodes(key):
                raise SpecError(path or "spec", f"a key is {NOT_UNICODE}")
            _check_values(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, f"{path}[{i}]")


def _check_map_values(raw: dict[str, Any]) -> None:
    """The values of ``env`` and ``throughput``, named by key (msgspec's error said ``env[...]``)."""
    env, throughput = raw.get("env"), raw.get("throughput")
    for key, value in env.items() if isinstance(env, dict) else ():
        if not isinstance(value, str):  # (the hint said "quote numbers" of a nested mapping too)
            hint = " (quote numbers and true/false in YAML)" if isinstance(value, (int, float)) else ""
            raise SpecError(f"env.{str(key)[:64]}", f"a string is expected, got {type(value).__name__} "
                                                     f"{value!r:.40}{hint}")
    for key, value in throughput.items() if isinstance(throughput, dict) else ():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"throughput.{str(key)[:64]}", f"a number is expected, got {type(value).__name__} "
                                                            f"{value!r:.40}")


_FIELD_NAMES: frozenset[str] = frozenset()


def field_label(key: str) -> str:
    """An unknown field's name as an error names it: plain when it looks like one, quoted otherwise (an empty or
    odd key read as no name at all, ": unknown field")."""
    return key if re.fullmatch(r"[A-Za-z_][\w-]{0,63}", key) else repr(key[:64])


def validate_spec(raw: Any) -> JobSpec:
    """A :class:`JobSpec` from decoded JSON/YAML, or :class:`SpecError` naming the first bad field."""
    if not isinstance(raw, dict):
        raise SpecError("spec", f"expected a mapping, got {type(raw).__name__}")
    # values first (msgspec stores NaN as null), of known fields only: an unknown one is named as unknown below
    _check_values({k: v for k, v in raw.items() if k in _FIELD_NAMES}, "")
    _check_map_values(raw)
    for key in raw:  # (msgspec raised UnicodeEncodeError naming an unknown one)
        if isinstance(key, str) and not encodes(key):
            raise SpecError(key.encode("utf-8", "backslashreplace").decode()[:64], f"a field name is {NOT_UNICODE}")
    try:
        spec = msgspec.convert(raw, JobSpec)
    except msgspec.ValidationError as exc:
        text = str(exc)
        unknown = re.fullmatch(r"Object contains unknown field `(.*)`", text, re.S)
        if unknown:
            key = unknown.group(1)
            name = field_label(key)
            known = ", ".join(f.name for f in msgspec.structs.fields(JobSpec))
            raise SpecError(name, f"unknown field (known: {known})") from None
        m = re.search(r"at `\$\.([^`]+)`", text)
        field = m.group(1) if m else (re.search(r"field `([^`]+)`", text) or [None, "spec"])[1]
        hint = strictjson.number_as_text_hint(strictjson.value_at(raw, f"$.{field}")) if m else ""
        raise SpecError(field, text.split(" - at ")[0] + hint) from None
    problems = _problems(spec)
    if problems:
        raise SpecError.of(problems)
    return spec


def _problems(spec: JobSpec) -> list[tuple[str, str]]:
    """Every rule a well-typed spec breaks, as (field, reason), in the order of the fields: a user fixing a spec
    learns of all its mistakes at once, as Kubernetes lists every invalid field (one at a time, a spec with three
    took three submissions to get right)."""
    out: list[tuple[str, str]] = []

    def check(rule: Callable[[], None]) -> None:
        try:
            rule()
        except SpecError as exc:
            out.extend(exc.problems)
    if not _NAME.fullmatch(spec.name):
        out.append(("name", "lowercase letters, digits, '.', '_' or '-', 1 to 64 characters, alphanumeric ends, "
                            "no '..'"))
    check(lambda: check_tenant(spec.tenant))
    if not -MAX_PRIORITY <= spec.priority <= MAX_PRIORITY:
        out.append(("priority", f"must be between {-MAX_PRIORITY} and {MAX_PRIORITY}"))
    if not 0 <= spec.devices <= MAX_DEVICES:
        out.append(("devices", f"must be between 0 and {MAX_DEVICES}"))
    for i, kind in enumerate(spec.device_types):
        if not _KIND.fullmatch(kind):
            out.append((f"device_types[{i}]", f"{kind!r} is not a device kind (e.g. h100, a100)"))
    for kind, value in spec.throughput.items():
        if not _KIND.fullmatch(kind):  # "H100" never matched the kind h100: the speed-up was silently lost
            out.append((f"throughput.{kind[:64]}", f"{kind!r} is not a device kind (e.g. h100, a100)"))
        elif not value > 0:
            out.append((f"throughput.{kind}", "must be a positive number"))
        elif spec.device_types and kind not in spec.device_types:
            out.append((f"throughput.{kind}", "names a device kind not in device_types"))
    if spec.max_devices_per_node is not None and spec.max_devices_per_node < 1:
        out.append(("max_devices_per_node", "must be at least 1"))
    if not MIN_CPU_PER_WORKER <= spec.cpu_per_worker <= MAX_CPU_PER_WORKER:
        out.append(("cpu_per_worker", f"must be positive, {CPU_PER_WORKER_RANGE}"))
    if not MIN_MEMORY_GIB_PER_WORKER <= spec.memory_gib_per_worker <= MAX_MEMORY_GIB_PER_WORKER:
        out.append(("memory_gib_per_worker", f"must be positive, {MEMORY_GIB_PER_WORKER_RANGE}"))
    for key in spec.env:
        if not _ENV_NAME.fullmatch(key):
            out.append((f"env.{key[:64]}", "not an environment variable name (1 to 256 characters, no '=')"))
        elif key in WORKER_VARIABLES:  # it was overwritten without a word
            out.append((f"env.{key}", "set by AIOS for each worker (torchrun's variables, the job's own and its "
                                      "devices): it cannot be given"))
    if not 0 <= spec.max_restarts <= MAX_RESTARTS:
        out.append(("max_restarts", f"a whole number from 0 to {MAX_RESTARTS}, got {spec.max_restarts}"))
    if not 0 < spec.stop_grace_s <= MAX_STOP_GRACE_S:
        out.append(("stop_grace_s", f"seconds, more than 0 and at most {MAX_STOP_GRACE_S:g}"))
    for field in ("max_runtime_s", "runtime_estimate_s", "checkpoint_interval_s"):
        value = getattr(spec, field)
        if value is not None and value <= 0:
            out.append((field, "must be a positive number of seconds"))
        elif field == "checkpoint_interval_s" and value is not None and value < 1:
            # 1e-9 was taken: a checkpoint after every step, each one a write to the object store
            out.append((field, "at least 1 second between checkpoints"))
    size = len(msgspec.json.encode(spec))
    if size > MAX_SPEC_BYTES:  # it travels in one NATS message (1 MiB at most): a bigger one hung, then failed
        out.append(("spec", f"{size:,} bytes as JSON, more than the {MAX_SPEC_BYTES:,} a job spec may have "
                            "(large inputs belong in files or the model registry, not in env or arguments)"))
    if sum(x is not None for x in (spec.command, spec.trainer, spec.serve)) != 1:
        out.append(("command", "give exactly one of `command` (a list of arguments), `trainer` or `serve`"))
        return out  # which of them the job is, is not known: their own rules would only add noise
    if spec.serve is not None:
        check(lambda: check_serve(spec.serve))  # type: ignore[arg-type]
    if spec.command is not None and (not spec.command or not all(spec.command)):
        out.append(("command", "must be a non-empty list of non-empty strings"))
    if spec.trainer is not None:
        memory_ok = not any(field == "memory_gib_per_worker" for field, _ in out)
        out.extend(p for p in _trainer_problems(spec, spec.trainer) if memory_ok or p[0] != "trainer")
    return out


def _trainer_problems(spec: JobSpec, trainer: dict[str, Any]) -> list[tuple[str, str]]:
    if not isinstance(trainer.get("kind"), str):
        return [("trainer.kind", "required: the built-in trainer to run (e.g. mlp)")]
    try:
        from aios.trainer.mlp import memory_bytes, parse_config
    except ImportError:  # a scheduler deployed without the trainer package: the trainer checks at start
        return []
    try:
        cfg = parse_config(trainer)
    except ValueError as exc:
        field, _, why = str(exc).partition(": ")
        return [(field, why)]
    need = memory_bytes(cfg) / 1024**3
    if need > spec.memory_gib_per_worker:  # placement gives each worker that much of a node's memory, no more
        return [("trainer", f"needs about {need:,.1f} GiB per worker (its samples, hidden units and batch), more "
                            f"than memory_gib_per_worker ({spec.memory_gib_per_worker:g}): ask for more, or train "
                            "on less")]
    return []


def is_name(text: Any) -> bool:
    """A job, tenant or cohort name: lowercase letters, digits, '.', '_' or '-', 1 to 64, alphanumeric ends, no '..'."""
    return isinstance(text, str) and bool(_NAME.fullmatch(text))


def is_device_kind(text: Any) -> bool:
    """A device kind as the device agents name them (``h100``, ``rtx-4090``)."""
    return isinstance(text, str) and bool(_KIND.fullmatch(text))


QUOTA_FIELDS = ("cohort", "nominal", "borrowing_limit", "lending_limit")
MAX_QUOTA = 1_000_000


def validate_quota(tenant: Any, raw: Any) -> TenantQuotaSet:
    """A tenant's quota from decoded JSON (the HTTP API, the CLI, a simulator workload), or :class:`SpecError` naming
    the field: the same rules everywhere, so that no path stores a quota another refuses, or one that can hold no
    job (a tenant in capitals, a kind no device has)."""
    if not isinstance(tenant, str):
        raise SpecError("tenant", f"expected a string, got {strictjson.shown(tenant)}")
    check_tenant(tenant)
    if not isinstance(raw, dict):
        raise SpecError("quota", f"expected an object with {', '.join(QUOTA_FIELDS)}")
    for key in raw:
        if key not in QUOTA_FIELDS:
            raise SpecError(str(key)[:64], f"unknown field (known: {', '.join(QUOTA_FIELDS)})")
    cohort = raw.get("cohort", "")
    if cohort is None:  # a null was stored as "no cohort": say what is expected instead of guessing
        raise SpecError("cohort", "expected a string (empty: no cohort), got null")
    if not isinstance(cohort, str) or (cohort and not is_name(cohort)):
        raise SpecError("cohort", "lowercase letters, digits, '.', '_' or '-', 1 to 64 characters (or empty: none)")

    def counts(field: str, limit: bool) -> dict[str, int] | None:
        value = raw.get(field)
        if value is None and limit:
            return None
        if value is None and field in raw:
            raise SpecError(field, "expected an object of device kind -> count, got null")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise SpecError(field, "expected an object of device kind -> count" + (" (or null: no limit)" if limit
                                                                                  else ""))
        for kind, n in value.items():
            if not is_device_kind(kind):
                raise SpecError(f"{field}.{str(kind)[:32]}", "not a device kind (lowercase, e.g. h100, a100)")
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_QUOTA:
                raise SpecError(f"{field}.{kind}",
                                f"expected a whole number from 0 to {MAX_QUOTA:,}, got {strictjson.shown(n)}")
        return dict(value)

    nominal = counts("nominal", False) or {}
    borrowing, lending = counts("borrowing_limit", True), counts("lending_limit", True)
    if "nominal" not in raw:  # as Kueue's nominalQuota: an absent one was a quota of nothing, as if meant
        raise SpecError("nominal", "required: device kind -> count ({} for none, to borrow only)")
    for field, value in (("borrowing_limit", borrowing), ("lending_limit", lending)):
        if value and any(value.values()) and not cohort:  # as Kueue: limits mean nothing outside a cohort (zero
            # limits, harmless, are kept as older workloads hold them)
            raise SpecError(field, "needs a cohort to borrow from or lend to (--cohort)")
    for kind, n in (lending or {}).items():
        if n > nominal.get(kind, 0):  # as Kueue: a tenant lends at most what it has
            raise SpecError(f"lending_limit.{kind}", f"{n} is more than the nominal quota of {kind} "
                                                     f"({nominal.get(kind, 0)})")
    return TenantQuotaSet(aggregate_id=tenant, cohort=cohort, nominal=nominal, borrowing_limit=borrowing,
                          lending_limit=lending)


def judge_spec(raw: Any) -> tuple[JobSpec | None, str]:
    """A stored submission's spec as well as it decodes (fields this version does not know are left out), and
    today's verdict on it ("" if valid). The verdict is for new submissions only: a job the scheduler of its day
    accepted keeps its history, whatever later rules say (the state is rebuilt from the log after every upgrade)."""
    try:
        return validate_spec(raw), ""
    except SpecError as exc:
        verdict = str(exc)
    known = {k: v for k, v in raw.items() if k in _FIELD_NAMES} if isinstance(raw, dict) else None
    try:
        return msgspec.convert(known, JobSpec), verdict
    except (msgspec.ValidationError, TypeError):
        return None, verdict


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    return msgspec.to_builtins(spec)


def spec_to_store(spec: JobSpec) -> dict[str, Any]:
    """The spec as a submission stores it: the fields the user set, not those at their defaults, so that a version
    from before a field existed still reads the job (rolled back, it refused ``"max_restarts": 0`` as unknown, and
    failed every job submitted since, running ones included)."""
    out = msgspec.to_builtins(spec)
    for f in msgspec.structs.fields(JobSpec):
        if not f.required:
            default = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
            if f.encode_name in out and out[f.encode_name] == msgspec.to_builtins(default):
                del out[f.encode_name]
    return out


_FIELD_NAMES = frozenset(f.encode_name for f in msgspec.structs.fields(JobSpec))
