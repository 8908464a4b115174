"""The tenant API on NATS: ``aios.tenant.<tenant>.<op>`` requests, for clients that talk to NATS directly.

The tenant is the subject's middle, and the server's subject permissions are what make it true: the shipped config
(``aios nats-config``) lets the identity of tenant ``a`` publish on ``aios.tenant.a.*`` and nowhere else, so a
request arriving here on ``aios.tenant.a.submit`` was sent by tenant ``a``. The operations are the HTTP API's own
(api.Api), with the same validation and the same ``{"error": "<field>: <reason>"}`` answers plus the HTTP status.

ops: ``submit`` (body: a job spec), ``jobs`` ({"status"?}), ``job`` ({"job"}), ``cancel`` ({"job"}).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aios.common import strictjson, tracing
from aios.common.errors import AiosError
from aios.common.textcheck import unencodable_reason
from aios.gateway.api import Api, HttpError
from aios.gateway.auth import Caller
from aios.scheduler.listing import newest_within
from aios.scheduler.spec import field_label

log = logging.getLogger("aios.gateway.tenant_api")

PREFIX = "aios.tenant"
SUBJECTS = f"{PREFIX}.>"
OPS = ("submit", "jobs", "job", "cancel")


def parse_subject(subj: str) -> tuple[str, str]:
    """(tenant, op) of ``aios.tenant.<tenant>.<op>``; tenant names may hold dots."""
    head, _, op = subj.rpartition(".")
    tenant = head[len(PREFIX) + 1:] if head.startswith(PREFIX + ".") else ""
    if not tenant:
        raise HttpError(400, f"subject: expected {PREFIX}.<tenant>.<op>, got {subj!r}")
    if op not in OPS:
        raise HttpError(404, f"op: {op!r} is not one of {', '.join(OPS)}")
    return tenant, op


class TenantApi:
    def __init__(self, api: Api) -> None:
        self.api = api

    async def answer(self, subj: str, data: bytes, idempotency_key: str | None = None) -> dict[str, Any]:
        """The reply to one request: the operation's result, or ``{"error", "status"}``; never raises."""
        try:
            tenant, op = parse_subject(subj)
            try:
                body = strictjson.loads(data) if data.strip() else {}
            except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or a number of over 4,300 digits
                raise HttpError(400, f"body: not JSON ({exc})") from None
            except RecursionError:  # 100,000 nested brackets
                raise HttpError(400, "body: nested too deeply") from None
            if not isinstance(body, dict):
                raise HttpError(400, "body: a JSON object is expected")
            bad = unencodable_reason(body)
            if bad:
                raise HttpError(422, bad)
            return await self._dispatch(Caller(tenant), op, body, idempotency_key)
        except HttpError as exc:
            return {"error": str(exc), "status": exc.status}
        except AiosError as exc:
            return {"error": f"service: {exc}", "status": 503}
        except Exception as exc:  # noqa: BLE001 - a fault of ours: the client gets an answer, not a 10-s timeout
            log.exception("tenant API request failed", extra={"subject": subj})
            return {"error": f"internal error: {type(exc).__name__}", "status": 500}

    async def _dispatch(self, caller: Caller, op: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        # {"tenant": ...} or {"limit": 1} answered every job, as if filtered; {"spec": ..., "idempotency_key": ...}
        # dropped the key without a word (it goes in a header). A submit's body without "spec" is the spec itself
        known = {"submit": ("spec",), "jobs": ("status", "limit")}.get(op, ("job",))
        if op != "submit" or "spec" in body:
            unknown = sorted(set(body) - set(known))
            if unknown:
                raise HttpError(400, f"{field_label(str(unknown[0]))}: not a field of {op} (known: {', '.join(known)})")
        if op == "submit":
            return await self.api.submit_job(body.get("spec", body), caller, key, "nats")
        if op == "jobs":
            status, limit = body.get("status"), body.get("limit")
            if status is not None and not isinstance(status, str):
                raise HttpError(400, "status: a string is expected")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise HttpError(400, "limit: a whole number, 1 or more")
            jobs, matched = self.api.jobs_of(caller, status)
            # within one NATS message, newest first: a tenant's whole history outgrew it, and no reply came
            return {"jobs": newest_within(reversed(jobs), limit), "matched": matched}
        job_id = body.get("job")
        if not isinstance(job_id, str) or not job_id:
            raise HttpError(400, "job: the job id (a string) is required")
        if op == "job":
            return await self.api.job_detail(caller, job_id)
        return await self.api.cancel_job(caller, job_id, "nats")

    async def on_request(self, msg: Any) -> None:
        """nats-py callback: answer on the request's reply subject."""
        if not msg.reply:
            return
        key = (msg.headers or {}).get("Idempotency-Key")
        with tracing.continuing(msg.headers):  # a traced client's submit joins its trace
            reply = await self.answer(msg.subject, msg.data, key)
        try:
            await msg.respond(json.dumps(reply).encode())
        except Exception as exc:  # noqa: BLE001 - the requester went away
            log.warning("could not answer a tenant request", extra={"subject": msg.subject, "error": str(exc)})
