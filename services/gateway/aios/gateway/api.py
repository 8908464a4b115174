"""The HTTP API: one route table that both builds the aiohttp routes and the OpenAPI document, so they cannot drift.

JSON in and out; errors are ``{"error": "<field>: <reason>"}`` with a 4xx status. Every ``/api/v1`` route needs a
bearer token (auth.py); a tenant sees and acts on its own jobs only, an administrator on all.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry

from aios.common import httpjson, strictjson, tracing
from aios.common.httpmetrics import LONG_LIVED, request_metrics
from aios.common.errors import AiosError, ConcurrencyConflict, ConfigError, InvalidAggregate, NotFound
from aios.common.events import JobCancelRequested, timeline_entry
from aios.common.textcheck import unencodable_reason
from aios.gateway.auth import Caller, Forbidden, Unauthorized, authenticate
from aios.resource_manager import queries
from aios.scheduler import submission, visibility
from aios.scheduler.rounds import submission_note
from aios.scheduler.spec import (KIND_PATTERN, MAX_CPU_PER_WORKER, MAX_DEVICES, MAX_MEMORY_GIB_PER_WORKER, MAX_PRIORITY,
                                 MAX_QUOTA, MAX_STOP_GRACE_S, NAME_PATTERN, JobSpec, SpecError, check_tenant,
                                 spec_to_dict, validate_quota, validate_spec)
from aios.model_registry.state import (
    MAX_DESCRIPTION, RegistryError, check_tag_key, check_tags, serve_refusal,
)
from aios.scheduler.tenancy import absent_kinds_note, remove_quota
from aios.scheduler.state import STATUSES, TERMINAL, JobState, job_summary

Handler = Callable[["Api", web.Request, Caller], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def check_query(route: "Route", request: web.Request) -> None:
    """The query holds only the route's parameters, each once, booleans as such: an unknown one (``?tail=2``,
    ``?limit=5``) was ignored and the answer looked filtered; ``follow=True`` meant "do not follow"; of two
    ``status`` the second was dropped."""
    known = {name: kind for name, kind, _ in route.query}
    for name in dict.fromkeys(request.query.keys()):
        if name not in known:
            listed = f"known: {', '.join(known)}" if known else "it takes none"
            raise HttpError(400, f"{name}: not a parameter of this request ({listed})")
        values = request.query.getall(name)
        if len(values) > 1:
            raise HttpError(400, f"{name}: given {len(values)} times; give it once")
        if known[name] == "boolean" and values[0].lower() not in _TRUE + _FALSE:
            raise HttpError(400, f"{name}: true or false (or 1, 0, yes, no), got {values[0]!r}")
        if known[name] == "integer" and not (values[0].isdecimal() and len(values[0]) <= 10
                                             and 1 <= int(values[0]) <= 10**9):  # (int() of 4,301 digits raised)
            raise HttpError(400, f"{name}: a whole number, 1 or more, got {values[0][:32]!r}")


def flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter (checked by :func:`check_query`), false when absent."""
    return request.query.get(name, "0").lower() in _TRUE


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: dict[str, Any] | None = None
    """JSON schema of the request body, if any."""
    query: tuple[tuple[str, str, str], ...] = ()
    """(name, type, description) of query parameters."""
    responses: tuple[int, ...] = (200,)
    admin: bool = False
    token_in_query: bool = False
    """Also accept ``?token=`` (for EventSource, which cannot send headers)."""


_SPEC_NOTES: dict[str, dict[str, Any]] = {
    "name": {"pattern": NAME_PATTERN},
    "tenant": {"pattern": NAME_PATTERN, "description": "defaults to the caller's tenant"},
    "priority": {"minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY, "description": (
        "higher runs first: under the default policy (fairshare) among its tenant's jobs, preempting none; under "
        "AIOS_SCHEDULER_POLICY=priority across tenants, preempting preemptible jobs of lower priority")},
    "devices": {"minimum": 0, "maximum": MAX_DEVICES, "description": "accelerators in all (0: a CPU-only job)"},
    "device_types": {"items": {"type": "string", "pattern": KIND_PATTERN},
                     "description": "acceptable device kinds (h100, a100 ...); empty: any"},
    "throughput": {"propertyNames": {"pattern": KIND_PATTERN}, "additionalProperties": {"type": "number",
                                                                                     "exclusiveMinimum": 0},
                   "description": "relative speed per device kind, for heterogeneity-aware policies"},
    "max_devices_per_node": {"minimum": 1, "description": "at most this many of the job's devices on one node"},
    "gang": {"description": "all devices at once or none"},
    "cpu_per_worker": {"exclusiveMinimum": 0, "maximum": MAX_CPU_PER_WORKER},
    "memory_gib_per_worker": {"exclusiveMinimum": 0, "maximum": MAX_MEMORY_GIB_PER_WORKER},
    "max_runtime_s": {"exclusiveMinimum": 0,
                      "description": "the job fails once it has run this long, over all its attempts"},
    "runtime_estimate_s": {"exclusiveMinimum": 0,
                           "description": "your estimate; backfill uses a learned prediction without it"},
    "preemptible": {"description": "false: never preempted for another job"},
    "command": {"items": {"type": "string", "minLength": 1}, "minItems": 1, "description": "exactly one of command, trainer and serve: the program to run on every worker"},
    "trainer": {"description": "exactly one of command, trainer and serve: the built-in trainer (kind: mlp, steps, "
                               "...)"},
    "serve": {"description": "exactly one of command, trainer and serve: a model-serving job "
                             "(model: models:/name@alias, max_batch, max_delay_ms)"},
    "env": {"description": "environment of every worker (not the variables AIOS sets for each: RANK, WORLD_SIZE, MASTER_ADDR, CUDA_VISIBLE_DEVICES, AIOS_JOB_ID ...)"},
    "checkpoint_interval_s": {"exclusiveMinimum": 0, "description": "checkpoint at least this often (the built-in trainer does; a command "
                                             "reads it from AIOS_CHECKPOINT_INTERVAL_S)"},
    "stop_grace_s": {"exclusiveMinimum": 0, "maximum": MAX_STOP_GRACE_S,
                     "description": "seconds a worker asked to stop (preemption, drain, cancel) has to checkpoint and "
                                    "exit before it is killed"},
}


def job_spec_schema() -> dict[str, Any]:
    """The body of a submission: JobSpec's own JSON schema (msgspec), so every field the scheduler accepts is
    documented with its type and default, plus the bounds ``validate_spec`` checks that a type cannot say. (It was
    written by hand and listed half the fields.)"""
    schema: dict[str, Any] = dict(msgspec.json.schema(JobSpec)["$defs"]["JobSpec"])
    schema.pop("title", None)
    schema["required"] = ["name"]  # the tenant defaults to the caller's
    properties = {}
    for field, prop in schema["properties"].items():
        notes = dict(_SPEC_NOTES.get(field, {}))
        branches = prop.get("anyOf")
        if branches:  # an optional value: its bounds go to the branch they bound, beside the null
            bounds = {k: notes.pop(k) for k in list(notes) if k != "description"}
            prop = {**prop, "anyOf": [{**b, **bounds} if b.get("type") != "null" else b for b in branches]}
        properties[field] = {**prop, **notes}
    schema["properties"] = properties
    return schema


JOB_SPEC_SCHEMA = job_spec_schema()
_COUNTS = {"type": "object", "propertyNames": {"pattern": KIND_PATTERN},
           "additionalProperties": {"type": "integer", "minimum": 0, "maximum": MAX_QUOTA}}
QUOTA_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["nominal"],
    "properties": {"nominal": _COUNTS, "cohort": {"type": "string"},
                   "borrowing_limit": {"oneOf": [_COUNTS, {"type": "null"}]},
                   "lending_limit": {"oneOf": [_COUNTS, {"type": "null"}]}}}


MAX_JOBS_PER_TENANT = 1000
"""Jobs a tenant may have not yet ended (pending or holding devices) when it submits through the gateway, as Slurm's
MaxSubmitJobs: a tenant's burst of 1,500 jobs that could never start stayed pending for ever and slowed every other
tenant's placements (each round looks at the whole queue). ``AIOS_GATEWAY_MAX_JOBS_PER_TENANT`` sets it (``off``:
none); administrators are not held to it."""


class Api:
    """The handlers; ``backend`` gives the folded jobs, the event store and request/reply to the other services."""

    def __init__(self, backend: Any, tokens: dict[str, str],
                 max_jobs_per_tenant: int | None = MAX_JOBS_PER_TENANT) -> None:
        self.backend = backend
        self.tokens = tokens
        self.max_jobs_per_tenant = max_jobs_per_tenant

    # -- helpers ------------------------------------------------------------------------------------------------------
    async def _job(self, caller: Caller, job_id: str) -> JobState:
        """The job, if the caller may see it. Another tenant's job is a 404 worded as an unknown one's: a 403 told a
        tenant that the id exists (GitHub answers so for a private repository). One this gateway has not seen is
        looked for again once it has read the log as far as it goes now: a job submitted through another gateway
        (or through this one, its 201 sent before it had folded the submit) got a 404 for its cancel, and ran."""
        job = self.backend.jobs().get(job_id)
        if job is None or not caller.may_see(job.tenant):  # another tenant's job too: the wait (a JetStream round
            await self.backend.caught_up_with_log()  # trip, up to 3 s) told an unknown id from a hidden one
            job = self.backend.jobs().get(job_id)
        if job is None or not caller.may_see(job.tenant):
            raise HttpError(404, f"job: no job {job_id!r}")
        return job

    @staticmethod
    async def _json(request: web.Request) -> Any:
        try:
            body = await httpjson.read_json(request, strictjson.loads)  # a key given twice is refused
        except httpjson.BodyError as exc:
            raise HttpError(400, str(exc)) from None
        bad = unencodable_reason(body)  # "\ud800" decodes, then failed wherever it was stored: a 500
        if bad:
            raise HttpError(422, bad)
        return body

    async def _ask(self, subject: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = await self.backend.ask(subject, body, timeout)
        except AiosError as exc:
            raise HttpError(503, f"service: {exc}") from None
        if "error" in reply:
            missing = reply.get("not_found") or "no node" in reply["error"] or "no job" in reply["error"]
            raise HttpError(404 if missing else 400, reply["error"])
        return reply

    # -- jobs: transport-neutral (the HTTP routes below and the NATS tenant API in tenant_api.py) -------------------
    async def submit_job(self, raw: Any, caller: Caller, key: str | None, via: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise HttpError(400, "body: a JSON object (a job spec) is expected")
        if caller.admin and "tenant" not in raw:
            raise HttpError(422, "tenant: an administrator must name the tenant of the job")  # a field, like a spec's
        raw.setdefault("tenant", caller.tenant)
        if not isinstance(raw["tenant"], str):  # a typing mistake, not a trespass (it was a 403 "None is not yours")
            raise HttpError(422, f"tenant: a string is expected, got {json.dumps(raw['tenant'])}")
        if not caller.may_see(raw["tenant"]):
            raise HttpError(403, f"tenant: {raw['tenant']!r} is not yours ({caller.tenant})")
        try:
            spec = validate_spec(raw)
        except SpecError as exc:
            raise HttpError(422, str(exc)) from None
        # the job the key was first used for, whatever its name: a retry with the key and another spec is
        # refused however late it comes (the key alone made a second job once the duplicate window had passed)
        earlier = self.backend.keyed_job(spec.tenant, key) if key else None
        most = self.max_jobs_per_tenant
        if most is not None and earlier is None and not caller.admin:  # (a retry of a stored submit is no new job)
            # over the live jobs: every job ever submitted cost 11 ms a submit at 110,000
            live = sum(1 for j in self.backend.live_jobs() if j.tenant == spec.tenant)
            if live >= most:
                raise HttpError(429, f"tenant {spec.tenant} has {live} jobs not yet ended, the most it may have "
                                     f"({most}, AIOS_GATEWAY_MAX_JOBS_PER_TENANT): wait for some to end, or cancel some")
        if spec.serve is not None and earlier is None:
            await self._check_served_model(spec.serve["model"])
        try:
            result = await submission.submit(self.backend.store, spec, key, job_id=earlier, via=via)
        except submission.KeyReused as exc:
            raise HttpError(409, f"Idempotency-Key: {exc}") from None
        except submission.BadKey as exc:
            raise HttpError(400, f"Idempotency-Key: {exc}") from None
        await self.backend.caught_up(result.seq)
        reply: dict[str, Any] = {"job": result.job, "duplicate": result.duplicate, "seq": result.seq}
        note = "" if result.duplicate else submission_note(self.backend.cannot_start_now(spec))  # (a retry's spec
        # is not the job's)
        if note:  # kept (nodes may join), but said now: a typo in device_types waited without a word
            reply["note"] = note
        return reply

    async def _check_served_model(self, uri: str) -> None:
        """A serving job of a model the registry does not hold (or only deleted) is refused now, as ``aios serve``
        refuses it: accepted, its replicas failed to load it until the crash-loop cap failed the job. A registry
        that does not answer checks nothing (the job waits for it, as for devices)."""
        try:
            shown = await self.backend.ask("aios.registry.show", {"model": uri}, 5.0)
        except AiosError:
            return
        why = serve_refusal(shown)
        if why is not None:
            raise HttpError(422, f"serve.model: {why}")

    def jobs_of(self, caller: Caller, status: str | None, tenant: str | None = None,
                limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """The jobs the caller may see (of ``status``, of ``tenant``), oldest first: the newest ``limit`` of them,
        and how many there are in all."""
        if status is not None and status not in STATUSES:  # a typo listed no jobs, as if there were none
            raise HttpError(422, f"status: {status!r} is no job state (one of {', '.join(STATUSES)})")
        seen = self._as_seen_by(caller)
        matched = [j for j in self.backend.jobs().values()  # in arrival order, as folded (sorting cost 23 ms a
                   # listing at 110,000 jobs)
                   if caller.may_see(j.tenant) and (status is None or j.status == status)
                   and (tenant is None or j.tenant == tenant)]
        return [seen(job_summary(j)) for j in matched[-limit if limit else 0:]], len(matched)

    async def job_detail(self, caller: Caller, job_id: str) -> dict[str, Any]:
        job = await self._job(caller, job_id)
        history = await self.backend.store.read_job(job.job_id)
        detail = {**job_summary(job), "spec": spec_to_dict(job.spec) if job.spec else None,
                  "events": [timeline_entry(e) for e in history]}
        return self._as_seen_by(caller)(detail)

    def _as_seen_by(self, caller: Caller) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A job's summary or detail as ``caller`` sees it: what the scheduler wrote (the events, the error)
        without other tenants' job ids or names (a preempted job's events named the job it gave way to, and that
        job's tenant); the spec the tenant wrote itself is left as it is."""
        if caller.admin:
            return lambda view: view
        jobs, tenants = self.backend.jobs(), self.backend.tenants()

        def tenant_of(job_id: str) -> str | None:
            return other.tenant if (other := jobs.get(job_id)) else None

        def seen(view: dict[str, Any]) -> dict[str, Any]:
            return {**view, **{k: visibility.redact_value(view[k], tenant_of, caller.tenant, tenants)
                               for k in ("error", "events") if k in view}}
        return seen

    async def cancel_job(self, caller: Caller, job_id: str, via: str) -> dict[str, Any]:
        job = await self._job(caller, job_id)
        if job.status in TERMINAL:  # it answered 202 "cancel requested" for a job that had already succeeded
            raise HttpError(409, f"job {job.job_id} has already ended ({job.status}): nothing to cancel")
        with tracing.job_span(f"cancel {job.job_id}", job.job_id, job.trace or None,
                              **{"aios.via": via, "aios.tenant": caller.tenant}):
            await self.backend.store.append(f"job.{job.job_id}", JobCancelRequested(
                aggregate_id=job.job_id, requested_by=f"{via}:{caller.tenant}"),
                idempotency_key=f"{via}-cancel-request-{job.job_id}")
        return {"job": job.job_id, "cancel_requested": True}

    # -- jobs over HTTP -----------------------------------------------------------------------------------------------
    async def submit(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        reply = await self.submit_job(await self._json(request), caller, request.headers.get("Idempotency-Key"), "http")
        return web.json_response(reply, status=201)

    async def list_jobs(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        tenant = request.query.get("tenant")
        if tenant is not None:  # a name no tenant can have listed nothing, as if it had no jobs
            try:
                check_tenant(tenant)
            except SpecError as exc:
                raise HttpError(422, f"tenant: {exc.reason}, got {tenant[:64]!r}") from None
        # the newest ``limit``: with thousands of jobs in history the whole list was megabytes, fetched again by
        # every dashboard on every change
        limit = int(request.query["limit"]) if "limit" in request.query else None
        jobs, matched = self.jobs_of(caller, request.query.get("status"), tenant, limit)
        return web.json_response({"jobs": jobs, "matched": matched})

    async def describe(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return web.json_response(await self.job_detail(caller, request.match_info["job"]))

    async def cancel(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return web.json_response(await self.cancel_job(caller, request.match_info["job"], "http"), status=202)

    async def why(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        job = await self._job(caller, request.match_info["job"])
        return web.json_response(await self._ask("aios.sched.why", {"job": job.job_id, **(
            {} if caller.admin else {"viewer": caller.tenant})}))

    async def logs(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        """Plain text, one line per output line (``[worker] line``); ``follow=1`` streams until the job has ended
        (or the client goes)."""
        from aios.common import joblogs

        job = await self._job(caller, request.match_info["job"])
        follow = flag(request, "follow")
        try:
            joblogs.check_worker(request.query.get("worker"))  # before the reply begins: a 400, not a cut stream
        except ConfigError as exc:
            raise HttpError(400, str(exc)) from None
        missing = joblogs.unknown_worker(await self.backend.store.read_job(job.job_id), job.job_id,
                                         request.query.get("worker"), follow)
        if missing:  # a 200 with nothing in it, where the CLI says which workers there are
            raise HttpError(404, missing)
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        response[LONG_LIVED] = follow  # a fetch that ends is timed; a follow lasts as long as its reader wants
        await response.prepare(request)
        await joblogs.ensure_stream(self.backend.store.js, self.backend.store.replicas)
        async def job_ended() -> bool:  # or the reader went: a silent job wrote nothing that would have noticed,
            # and each follower gone kept its consumer and its task for as long as the job ran
            if request.transport is None or request.transport.is_closing():
                return True
            now = self.backend.jobs().get(job.job_id)
            return now is None or now.status in TERMINAL
        try:
            async for worker, stream, line in joblogs.lines(self.backend.store.js, job.job_id,
                                                            request.query.get("worker"), follow, ended=job_ended):
                tag = f"[{worker}{' stderr' if stream == 'stderr' else ''}] "
                await response.write((tag + line + "\n").encode())
            await response.write_eof()
        except ConnectionResetError:  # the reader went away (a follow ended with Ctrl-C): nothing went wrong here
            pass
        return response

    # -- cluster ------------------------------------------------------------------------------------------------------
    async def nodes(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        if not flag(request, "detail"):
            return web.json_response(await self._ask("aios.rm.nodes", {}))
        # every node's devices at once, from the inventory this gateway folds (the resource manager's reply must fit
        # one NATS message, and the dashboard asked it once a node on every refresh: 1,000 requests, and 0.7 s of
        # this process, each time anything changed)
        inv = self.backend.inventory()
        nodes = [self._holders_seen_by(caller, queries.node_detail(inv, n)) for _, n in sorted(inv.nodes.items())]
        for n in nodes:  # half the reply at 8 GPUs a node (1.5 of 3.1 MB at 1,000 nodes); a node's own page has them
            del n["links"]
        return web.json_response({"nodes": nodes, "seq": inv.seq})

    async def node(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        detail = await self._ask("aios.rm.node", {"node": request.match_info["node"]})
        return web.json_response(self._holders_seen_by(caller, detail))

    def _holders_seen_by(self, caller: Caller, detail: dict[str, Any]) -> dict[str, Any]:
        """A node's devices as ``caller`` may see them: another tenant's job holding one is busy, not named."""
        if not caller.admin:
            jobs = self.backend.jobs()
            for d in detail.get("devices", []):
                holder = jobs.get(d.get("job") or "")
                if d.get("job") and (holder is None or holder.tenant != caller.tenant):
                    d["job"] = visibility.OTHER_JOB
        return detail

    async def _node_op(self, op: Any) -> web.StreamResponse:
        try:
            await op
        except NotFound as exc:
            raise HttpError(404, str(exc)) from None
        except AiosError as exc:  # refused by the node's state (forgetting an online node)
            raise HttpError(409, str(exc)) from None
        return web.json_response({"ok": True})

    async def cordon_node(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        from aios.resource_manager import nodeops

        body = await self._body(request)
        unknown = sorted(set(body) - {"reason", "drain"})
        if unknown:
            raise HttpError(422, f"{unknown[0]}: unknown field (known: reason, drain)")
        reason, drain = body.get("reason", ""), body.get("drain", False)
        if not isinstance(reason, str) or len(reason) > nodeops.MAX_REASON:
            raise HttpError(422, f"reason: a string of at most {nodeops.MAX_REASON} characters")
        if not isinstance(drain, bool):
            raise HttpError(422, "drain: true or false")
        return await self._node_op(nodeops.cordon(self.backend.store, request.match_info["node"], True, drain, reason,
                                                  f"http:{caller.tenant}"))

    async def _no_fields(self, request: web.Request) -> None:
        """A body a route takes nothing from is empty: a field was ignored without a word (``cordon`` refuses
        the ones it does not know)."""
        body = await self._body(request)
        if body:
            raise HttpError(422, f"{sorted(body)[0]}: unknown field (this takes none)")

    async def uncordon_node(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        from aios.resource_manager import nodeops

        await self._no_fields(request)
        return await self._node_op(nodeops.cordon(self.backend.store, request.match_info["node"], False, False, "",
                                                  f"http:{caller.tenant}"))

    async def forget_node(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        from aios.resource_manager import nodeops

        await self._no_fields(request)
        return await self._node_op(nodeops.forget(self.backend.store, request.match_info["node"],
                                                  f"http:{caller.tenant}"))

    async def tenants(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        reply = await self._ask("aios.rm.tenants", {})
        return web.json_response({"tenants": {t: v for t, v in reply["tenants"].items() if caller.may_see(t)}})

    async def set_quota(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        tenant = request.match_info["tenant"]
        body = await self._json(request)
        if not isinstance(body, dict):
            raise HttpError(400, "body: a JSON object is expected")
        try:
            event = validate_quota(tenant, body)
        except SpecError as exc:  # a tenant name that is no subject token was a 500
            raise HttpError(422 if exc.field != "tenant" else 400, str(exc)) from None
        result = await self.backend.store.append(f"tenant.{tenant}", event)
        try:  # as the CLI does: set all the same, with a warning when a kind it names is on no node
            nodes = await self.backend.ask("aios.rm.nodes", {}, 2.0)
        except AiosError:
            nodes = {}  # the resource manager is not there to ask
        note = absent_kinds_note(event, nodes["nodes"]) if "nodes" in nodes else None
        return web.json_response({"tenant": tenant, "seq": result.seq, "warnings": [note] if note else []})

    async def remove_quota(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        tenant = request.match_info["tenant"]  # any name a quota was stored under (older rules took "NLP")
        try:
            result = await remove_quota(self.backend.store, tenant)
        except InvalidAggregate:
            raise HttpError(400, f"tenant: {tenant[:64]!r} cannot name a quota (no spaces, '*', '>' or '..')") from None
        except ConcurrencyConflict:
            raise HttpError(409, f"tenant {tenant}: its quota was set again meanwhile; nothing removed") from None
        if result is None:
            raise HttpError(404, f"tenant {tenant} has no quota")
        return web.json_response({"tenant": tenant, "seq": result.seq})

    # -- models -------------------------------------------------------------------------------------------------------
    async def models(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        known = ("tag", "metric", "min", "name")
        query: dict[str, Any] = {k: request.query[k] for k in known if k in request.query}
        if "min" in query:
            try:
                query["min"] = float(query["min"])
            except ValueError:
                raise HttpError(422, f"min: {query['min']!r} is not a number") from None
            if not math.isfinite(query["min"]):
                raise HttpError(422, f"min: {request.query['min']!r} is not a number")
            if "metric" not in query:
                raise HttpError(422, "min: needs metric (the metric to compare)")
        key, _, job_id = str(query.get("tag", "")).partition("=")
        if key == "job" and job_id and not caller.admin:
            job = self.backend.jobs().get(job_id)
            if job is not None and not caller.may_see(job.tenant):
                # what a job of another tenant trained is not listed by its id: a hit confirmed that id, which
                # the model's own page hides ("a job of another tenant")
                return web.json_response({"models": []})
        return web.json_response(await self._ask("aios.registry.list", query))

    async def model(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return await self._show_model(request.match_info["model"], caller)

    async def _show_model(self, uri: str, caller: Caller) -> web.StreamResponse:
        reply = await self._ask("aios.registry.show", {"model": uri})
        for version in reply.get("versions", [reply]) if isinstance(reply, dict) else ():
            lineage = version.get("lineage") if isinstance(version, dict) else None
            spec = lineage.get("spec") if isinstance(lineage, dict) else None
            owner = spec.get("tenant") if isinstance(spec, dict) else None
            if isinstance(owner, str) and not caller.may_see(owner):
                # a tenant sees its own jobs only: the spec of another's training job (its command, its
                # environment) is not shown through the model either, nor the job's id (in the lineage, the
                # version's tags and its description), as no route shows it
                lineage["spec"] = {}
                lineage["command"] = []
                lineage["spec_hidden"] = f"trained by {visibility.OTHER_JOB}"
                seen = self._as_seen_by(caller)
                for key in ("lineage", "tags", "description"):
                    if key in version:
                        version[key] = seen({"events": version[key]})["events"]
        return web.json_response(reply)

    async def model_version(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return await self._show_model(f"models:/{request.match_info['model']}/{self._version(request)}", caller)

    async def _registry(self, op: str, args: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """A registry command: bad input is a 422, a refusal the registry's state decides (an alias moved
        meanwhile, a version still served) a 409, what is not there a 404, a fault of the registry's own a 500 (it
        was a 409, as if the request had lost a race)."""
        try:
            reply: dict[str, Any] = await self.backend.ask(f"aios.registry.{op}", args, timeout)
        except AiosError as exc:
            raise HttpError(503, f"service: {exc}") from None
        if "error" in reply:
            raise HttpError(404 if reply.get("not_found") else 422 if reply.get("bad_input")
                            else 500 if reply.get("internal") else 409, reply["error"])
        return reply

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await self._json(request) if request.can_read_body else {}
        if not isinstance(body, dict):
            raise HttpError(400, "body: a JSON object is expected")
        return body

    def _version(self, request: web.Request) -> int:
        text = request.match_info["version"]
        if not re.fullmatch(r"[0-9]{1,9}", text):  # (isdigit() took "²", and int() then raised: a bare 500)
            raise HttpError(404, f"version: {text!r} is no version number")
        if int(text) == 0:  # as absent as "abc" (it was a 422 naming a URI the caller never wrote)
            raise HttpError(404, "version: 0 is no version (versions are numbered from 1)")
        return int(text)

    async def set_alias(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        body = await self._body(request)
        unknown = sorted(set(body) - {"version", "expected", "force"})
        if unknown:
            raise HttpError(422, f"{unknown[0]}: unknown field (known: version, expected, force)")
        args = {"name": request.match_info["model"], "alias": request.match_info["alias"], "version": body.get("version"),
                **{k: body[k] for k in ("expected", "force") if k in body}}
        return web.json_response(await self._registry("alias", args))

    async def remove_alias(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        force = flag(request, "force")
        return web.json_response(await self._registry("unalias", {"name": request.match_info["model"],
                                                                  "alias": request.match_info["alias"], "force": force}))

    async def update_version(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        body = await self._body(request)
        unknown = sorted(set(body) - {"tags", "remove_tags", "description"})
        if unknown or not body:
            raise HttpError(422, f"{unknown[0] if unknown else 'body'}: "
                                 f"{'unknown field' if unknown else 'nothing to change'} (known: tags, remove_tags, "
                                 "description)")
        name, version = request.match_info["model"], self._version(request)
        try:  # all of it checked before any of it is applied (the tags were stored, then the description refused)
            check_tags(body.get("tags", {}))
            removed = body.get("remove_tags", [])
            if not isinstance(removed, list):
                raise HttpError(422, "remove_tags: a list of tag keys is expected")
            for key in removed:
                check_tag_key(key)
            if "description" in body and (not isinstance(body["description"], str)
                                          or len(body["description"]) > MAX_DESCRIPTION):
                raise HttpError(422, f"description: a string of at most {MAX_DESCRIPTION:,} characters")
        except RegistryError as exc:
            raise HttpError(422, str(exc)) from None
        reply: dict[str, Any] = {}
        if "tags" in body or "remove_tags" in body:
            reply = await self._registry("tag", {"name": name, "version": version, "set": body.get("tags", {}),
                                                 "remove": body.get("remove_tags", [])})
        if "description" in body:
            reply = await self._registry("describe", {"name": name, "version": version,
                                                      "description": body["description"]})
        return web.json_response(reply)

    async def delete_version(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return web.json_response(await self._registry("delete", {
            "name": request.match_info["model"], "version": self._version(request),
            "reason": request.query.get("reason", ""), "by": caller.tenant}))

    async def compress_version(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        body = await self._body(request)
        unknown = sorted(set(body) - {"method", "options", "finetune_steps"})
        if unknown:
            raise HttpError(422, f"{unknown[0]}: unknown field (known: method, options, finetune_steps)")
        uri = f"models:/{request.match_info['model']}/{self._version(request)}"
        return web.json_response(await self._registry("compress", {"model": uri, **body, "by": caller.tenant},
                                                      timeout=300.0))

    async def evaluate_version(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        body = await self._body(request)
        unknown = sorted(set(body) - {"trainer"})
        if unknown:
            raise HttpError(422, f"{unknown[0]}: unknown field (known: trainer)")
        uri = f"models:/{request.match_info['model']}/{self._version(request)}"
        return web.json_response(await self._registry("eval", {"model": uri, **body}, timeout=300.0))

    # -- live -------------------------------------------------------------------------------------------------------
    async def telemetry(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return web.json_response({"devices": self.backend.telemetry()})

    async def events(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        """Server-sent events: ``change`` with the aggregate that changed (a job of the caller's, a node, a tenant,
        a model), its id the event log's incarnation and sequence; ``telemetry`` every few seconds; ``reset`` when changes were
        missed that cannot be given (the client fetches everything again). A client that reconnects with
        ``Last-Event-ID`` (browsers send it by themselves) first gets the changes it missed. The dashboard refetches
        what it shows."""
        last_event_id = request.headers.get("Last-Event-ID", request.query.get("last_event_id"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        response[LONG_LIVED] = True
        await response.prepare(request)
        queue = self.backend.listen(last_event_id)
        try:
            await response.write(b"retry: 2000\n\nevent: hello\ndata: {}\n\n")
            while True:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), 15.0)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if kind == "bye":
                    break
                if kind == "change" and data.get("tenant") is not None and not caller.may_see(data["tenant"]):
                    continue
                ident = f"id: {data['id']}\n" if kind == "change" else ""
                await response.write(f"{ident}event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.backend.unlisten(queue)
        return response

    # -- plumbing -----------------------------------------------------------------------------------------------------
    def wrap(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                header = request.headers.get("Authorization")
                if header is None and route.token_in_query and request.query.get("token"):
                    header = f"Bearer {request.query['token']}"
                caller = authenticate(self.tokens, header)
                if route.admin and not caller.admin:
                    raise Forbidden(f"{route.summary}: administrators only")
                check_query(route, request)
                return await route.handler(self, request, caller)
            except Unauthorized as exc:
                return web.json_response({"error": f"authorization: {exc}"}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="aios"'})
            except Forbidden as exc:
                return web.json_response({"error": str(exc)}, status=403)
            except HttpError as exc:
                return web.json_response({"error": str(exc)}, status=exc.status)
        return handle


ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/jobs", Api.submit, "Submit a job", body=JOB_SPEC_SCHEMA,
          responses=(201, 400, 401, 403, 409, 422, 429)),
    Route("GET", "/api/v1/jobs", Api.list_jobs, "List jobs",
          query=(("status", "string", f"only jobs in this state ({', '.join(STATUSES)})"),
                 ("tenant", "string", "only this tenant's jobs (of those the caller may see)"),
                 ("limit", "integer", "the newest N of them (the list is oldest first; `matched` counts them all)")),
          responses=(200, 400, 422)),
    Route("GET", "/api/v1/jobs/{job}", Api.describe, "Describe a job, with its event timeline",
          responses=(200, 401, 404)),
    Route("POST", "/api/v1/jobs/{job}/cancel", Api.cancel, "Cancel a job", responses=(202, 401, 404, 409)),
    Route("GET", "/api/v1/jobs/{job}/why", Api.why, "Why a job is pending", responses=(200, 401, 404, 503)),
    Route("GET", "/api/v1/jobs/{job}/logs", Api.logs, "A job's output (text; follow=1 streams)",
          query=(("follow", "boolean", "keep streaming new lines"), ("worker", "string", "one worker, e.g. rank0-a1")),
          responses=(200, 400, 401, 404)),
    Route("GET", "/api/v1/nodes", Api.nodes, "Nodes and their devices", responses=(200, 400, 401, 503),
          query=(("detail", "boolean", "each node's devices and their holders, as GET /api/v1/nodes/{node} gives "
                                       "them (its NVLink links there only)"),)),
    Route("GET", "/api/v1/nodes/{node}", Api.node, "One node: devices, leases, topology", responses=(200, 404, 503)),
    Route("POST", "/api/v1/nodes/{node}/cordon", Api.cordon_node,
          "Cordon a node (no new jobs), or drain it (drain: its preemptible jobs move elsewhere too)",
          body={"type": "object", "additionalProperties": False,
                "properties": {"reason": {"type": "string", "maxLength": 500}, "drain": {"type": "boolean"}}},
          responses=(200, 403, 404, 422), admin=True),
    Route("POST", "/api/v1/nodes/{node}/uncordon", Api.uncordon_node, "Open a node to jobs again",
          responses=(200, 403, 404), admin=True),
    Route("DELETE", "/api/v1/nodes/{node}", Api.forget_node, "Forget a lost (decommissioned) node",
          responses=(200, 403, 404, 409), admin=True),
    Route("GET", "/api/v1/tenants", Api.tenants, "Tenants: quotas and usage", responses=(200, 401, 503)),
    Route("PUT", "/api/v1/tenants/{tenant}/quota", Api.set_quota, "Set a tenant's quota", body=QUOTA_SCHEMA,
          responses=(200, 400, 401, 403, 422), admin=True),
    Route("DELETE", "/api/v1/tenants/{tenant}/quota", Api.remove_quota,
          "Remove a tenant's quota (it then runs on what quotas leave idle)", responses=(200, 400, 401, 403, 404, 409),
          admin=True),
    Route("GET", "/api/v1/models", Api.models, "Registered models",
          query=(("tag", "string", "KEY or KEY=VALUE"), ("metric", "string", "has this metric"),
                 ("min", "number", "with metric: its value on the latest version is at least this"),
                 ("name", "string", "name contains")), responses=(200, 400, 422, 503)),
    Route("GET", "/api/v1/models/{model}", Api.model, "A model's versions, or one (models:/name/3, name@alias)",
          responses=(200, 404, 503)),
    Route("GET", "/api/v1/models/{model}/versions/{version}", Api.model_version, "One version of a model",
          responses=(200, 404, 503)),
    Route("PUT", "/api/v1/models/{model}/aliases/{alias}", Api.set_alias,
          "Point an alias at a version (expected: compare-and-set; force: to another signature while served)",
          body={"type": "object", "required": ["version"], "additionalProperties": False,
                "properties": {"version": {"type": "integer"}, "expected": {"type": ["integer", "null"]},
                               "force": {"type": "boolean"}}},
          responses=(200, 403, 404, 409, 422, 503), admin=True),
    Route("DELETE", "/api/v1/models/{model}/aliases/{alias}", Api.remove_alias, "Remove an alias",
          query=(("force", "boolean", "even while a deployment follows it"),),
          responses=(200, 403, 404, 409, 503), admin=True),
    Route("PATCH", "/api/v1/models/{model}/versions/{version}", Api.update_version,
          "Set or remove tags, or describe, a version",
          body={"type": "object", "additionalProperties": False,
                "properties": {"tags": {"type": "object", "additionalProperties": {"type": "string"}},
                               "remove_tags": {"type": "array", "items": {"type": "string"}},
                               "description": {"type": "string"}}},
          responses=(200, 403, 404, 409, 422, 503), admin=True),
    Route("DELETE", "/api/v1/models/{model}/versions/{version}", Api.delete_version,
          "Delete a version (its bytes are collected)", query=(("reason", "string", "recorded with the deletion"),),
          responses=(200, 403, 404, 409, 503), admin=True),
    Route("POST", "/api/v1/models/{model}/versions/{version}/compress", Api.compress_version,
          "A compressed new version (int8, svd, prune) with its measured deltas",
          body={"type": "object", "required": ["method"], "additionalProperties": False,
                "properties": {"method": {"enum": ["int8", "svd", "prune"]}, "options": {"type": "object"},
                               "finetune_steps": {"type": "integer", "minimum": 0, "maximum": 100000}}},
          responses=(200, 403, 404, 409, 422, 503), admin=True),
    Route("POST", "/api/v1/models/{model}/versions/{version}/evaluate", Api.evaluate_version,
          "Evaluate a version (on its own data, or a trainer config's)",
          body={"type": "object", "additionalProperties": False, "properties": {"trainer": {"type": "object"}}},
          responses=(200, 403, 404, 409, 422, 503), admin=True),
    Route("GET", "/api/v1/telemetry", Api.telemetry, "Latest utilisation, memory and temperature of every device"),
    Route("GET", "/api/v1/events", Api.events, "Server-sent events: what changed (text/event-stream)",
          query=(("token", "string", "the bearer token, for clients that cannot send headers"),
                 ("last_event_id", "string", "the id of the last change seen, for clients that cannot send the "
                  "Last-Event-ID header: the changes after it come first, or a reset event")),
          token_in_query=True),
)


def openapi(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in routes:
        codes = set(r.responses) | {401} | ({403} if r.admin else set())  # every route needs a token
        op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler.__name__,
                              "security": [{"bearer": []}],
                              "responses": {str(code): {"description": _STATUS.get(code, "")} for code in sorted(codes)}}
        params = [{"name": p.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in r.path.split("/") if p.startswith("{")]
        params += [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
                   for n, t, d in r.query]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": r.body}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {"openapi": "3.1.0", "info": {"title": "AIOS API", "version": "1"},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": paths}


_STATUS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad request (the error names the field)",
           401: "Missing or unknown token", 403: "Not the caller's tenant, or administrators only", 404: "Not found (or another tenant's job)",
           409: "Conflicts with the job's state, or an Idempotency-Key reused for another body",
           422: "Invalid value (the error names the field)", 503: "A service behind the gateway does not answer"}


MAX_BODY_BYTES = 4 << 20


def build_app(api: Api, extra: Callable[[web.Application], None] | None = None,
              metrics: CollectorRegistry | None = None) -> web.Application:
    """The API, OpenAPI document, health check and dashboard; with ``metrics``, every request counted and timed."""
    counted = [request_metrics(metrics, "aios_gateway")] if metrics is not None else []
    app = httpjson.application(MAX_BODY_BYTES, *counted, errors_under="/api/")
    doc = openapi()
    for route in ROUTES:
        app.router.add_route(route.method, route.path, api.wrap(route))

    async def openapi_json(_request: web.Request) -> web.Response:
        return web.json_response(doc)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "ts": time.time()})
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    from aios.gateway import dashboard

    dashboard.add_routes(app)
    if extra is not None:
        extra(app)
    return app


async def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
