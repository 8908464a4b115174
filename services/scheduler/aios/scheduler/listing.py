"""The scheduler's answer to ``aios.sched.jobs``: jobs filtered where they are, newest first, within one reply. Pure.

Every job ever submitted stays in the state (for the API and the predictor), and the answer used to hold them all:
past about 2,400 jobs it outgrew NATS' largest message (1 MB), the scheduler sent nothing, and ``aios jobs``,
``aios job`` and ``aios top`` failed for good. Filters now apply before the reply is made, ``limit`` takes the
newest, and the reply stops short of the payload limit, saying how many it matched.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable

from aios.scheduler.state import STATUSES, SchedulerState, job_summary

MAX_REPLY_BYTES = 900_000
"""Below NATS' default ``max_payload`` (1 MB), with room for the reply's other fields."""
FILTERS = ("job", "status", "tenant", "live", "limit")


def newest_within(newest_first: Iterable[dict[str, Any]], limit: int | None,
                  max_bytes: int = MAX_REPLY_BYTES) -> list[dict[str, Any]]:
    """The first ``limit`` of ``newest_first`` whose JSON fits in ``max_bytes``, oldest first (as lists show)."""
    shown: list[dict[str, Any]] = []
    size = 0
    for summary in newest_first:
        if limit is not None and len(shown) >= limit:
            break
        size += len(json.dumps(summary)) + 2
        if size > max_bytes:
            break
        shown.append(summary)
    shown.reverse()
    return shown


def jobs_reply(state: SchedulerState, policy: str, args: dict[str, Any],
               max_bytes: int = MAX_REPLY_BYTES) -> dict[str, Any]:
    """The jobs ``args`` ask for, oldest first, at most ``limit`` (the newest of them) and ``max_bytes`` of JSON.

    ``job``: that job alone; ``status``, ``tenant``: those only; ``live``: the jobs not yet ended, and ended jobs
    whose workers still stop (``aios top``'s jobs on devices). The reply says how many jobs matched (``matched``)
    and counts every job by status (``counts``). A bad argument is ``{"error": ...}`` naming it."""
    unknown = sorted(set(args) - set(FILTERS))
    if unknown:
        return {"error": f"field {unknown[0][:64]!r}: unknown (known: {', '.join(FILTERS)})"}
    for name in ("job", "status", "tenant"):
        if args.get(name) is not None and not isinstance(args[name], str):
            return {"error": f"field {name!r}: a string is expected"}
    if args.get("status") is not None and args["status"] not in STATUSES:
        return {"error": f"field 'status': one of {', '.join(STATUSES)}"}
    limit = args.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        return {"error": "field 'limit': a whole number, 1 or more"}
    if not isinstance(args.get("live", False), bool):
        return {"error": "field 'live': true or false"}
    if args.get("job") is not None:
        found = state.jobs.get(args["job"])
        pool = [found] if found is not None else []
    elif args.get("live"):
        pool = state.active() + [state.jobs[i] for i in state.stopping if i in state.jobs and i not in state.live]
    else:
        pool = list(state.jobs.values())
    matched = [j for j in pool if (args.get("status") is None or j.status == args["status"])
               and (args.get("tenant") is None or j.tenant == args["tenant"])]
    if args.get("live"):  # the jobs still stopping come after the live ones; the whole history is in arrival
        # order already (sorting it cost 23 ms a listing at 110,000 jobs)
        matched.sort(key=lambda j: j.arrival)
    shown = newest_within((job_summary(j) for j in reversed(matched)), limit, max_bytes)
    return {"jobs": shown, "matched": len(matched), "counts": dict(Counter(j.status for j in state.jobs.values())),
            "seq": state.seq, "policy": policy}
