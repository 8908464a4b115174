"""The scheduler service: the async shell around the pure round. Folds the log, leads (or stands by), decides,
and appends the decisions: leases against node versions first, then placements for jobs fully booked."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge, Histogram

from aios.common import tracing
from aios.common.errors import AiosError, ConcurrencyConflict, ConfigError
from aios.common.events import JOB_AGGREGATES, CheckpointSaved, JobProgress
from aios.common.runner import Service, ServiceContext
from aios.common.snapshot import Projector, SnapshotStore
from aios.common.store import Commit as StoredCommit
from aios.common.wire import new_token
from aios.scheduler.decisions import Commit, claim_commits, failure_commits, housekeeping_commits, lease_commits
from aios.scheduler.leadership import Leadership
from aios.scheduler.listing import jobs_reply
from aios.scheduler.placement import BinCache
from aios.scheduler.policies import make_policy
from aios.scheduler.predict import RuntimePredictor
from aios.scheduler.rounds import StopsSeen, cannot_start_now, explain, plan_round
from aios.scheduler.state import PENDING, STATE_SCHEMA, SchedulerState, fold_commit, queue_wait

log = logging.getLogger("aios.scheduler")
QUERY_PREFIX = "aios.sched"
REFIT_EVERY = 50
"""The runtime predictor is fitted again after this many more jobs succeeded (and at the first round)."""
FOLDED = tuple(f"{kind}." for kind in (*JOB_AGGREGATES, "node", "tenant"))
"""Aggregates whose commits change the scheduler's state (and so wake a round)."""
REPORTS = (JobProgress, CheckpointSaved)
"""Events no decision reads: folded (``aios jobs`` shows them) but waking no round. Every training job reports its
progress about once a second, and with a few of them each such commit woke a round: rounds ran back to back, a
core busy for as long as anything trained (the half-second tick still runs rounds)."""


class SchedulerConfig(msgspec.Struct, frozen=True, kw_only=True):
    policy: str = "fairshare"
    round_interval_s: float = 0.5
    leader_ttl_s: float = 5.0
    leader_election: bool = True
    snapshot_every: int = 5000
    snapshot_min_interval_s: float = 60.0
    """And at most one snapshot this often: the count is of every commit, and with training jobs reporting progress
    about once a second each, 1,000 of them made a snapshot due every 5 s; at 110,000 jobs one takes 0.4 s of the
    loop to encode and 124 MB to store. The next start replays at most this long of the log more."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "SchedulerConfig":
        env = dict(os.environ if env is None else env)
        policy = env.get("AIOS_SCHEDULER_POLICY", "fairshare")
        make_policy(policy)  # validates the name
        try:
            interval = float(env.get("AIOS_SCHEDULER_INTERVAL", "0.5"))
        except ValueError:
            raise ConfigError("AIOS_SCHEDULER_INTERVAL: must be a number of seconds") from None
        return cls(policy=policy, round_interval_s=interval,
                   leader_election=env.get("AIOS_SCHEDULER_LEADER", "on") != "off")


class SchedulerService(Service):
    name = "scheduler"

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig.from_env()
        self.policy = make_policy(self.config.policy)
        self.projector = Projector("scheduler", SchedulerState, None, SchedulerState, STATE_SCHEMA,
                                   fold_commit=fold_commit)
        self.predictor = RuntimePredictor()
        self.identity = f"{os.uname().nodename}-{os.getpid()}-{new_token()[:6]}"
        self.rounds = 0
        self.conflicts = 0
        self.placed = 0
        self._wake = asyncio.Event()
        self._snapshot_tried = -math.inf
        self._last_appended = 0
        self.bins = BinCache()
        self.stops_seen = StopsSeen()
        """When this replica first saw each stop: grace periods are not cut short by another host's clock."""
        self._versions: dict[str, int] = {}
        self._fitted_on = -1

    def healthy(self) -> tuple[bool, str]:
        if not hasattr(self, "leadership"):  # rebuilding its state: it read "leader" before it knew (a walkthrough)
            role = "starting"
        else:
            role = "leader" if self.leadership is None or self.leadership.is_leader else "standby"
        return True, f"{role}, policy {self.policy.name}, {self.rounds} rounds, log at {self.projector.seq}"

    async def run(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._metrics(ctx)
        snapshots = SnapshotStore(ctx.store)
        report = await self.projector.rebuild(ctx.store, snapshots)
        log.info("state rebuilt", extra={"snapshot_seq": report.snapshot_seq, "tail": report.tail_commits,
                                         "seconds": round(report.seconds, 3), "policy": self.policy.name})
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(self.projector.follow(ctx.store, self._on_commit, stop))]
        self.leadership: Leadership | None = None
        if self.config.leader_election:
            self.leadership = Leadership(ctx.store.js, self.identity, ttl_s=self.config.leader_ttl_s,
                                         replicas=ctx.store.replicas)
            tasks.append(asyncio.ensure_future(self.leadership.run(stop)))
        sub = await ctx.nc.subscribe(f"{QUERY_PREFIX}.>", cb=self._handle_query)
        last_snapshot = self.projector.seq
        try:
            while not ctx.stopping.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), self.config.round_interval_s)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                if ctx.stopping.is_set():
                    break
                if self.leadership is not None and not self.leadership.is_leader:
                    continue
                try:
                    await self.round()
                except AiosError as exc:
                    log.warning("round interrupted", extra={"error": str(exc)})
                last_snapshot = await self.snapshot_due(snapshots, last_snapshot)
        finally:
            await sub.unsubscribe()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)  # the campaign ends first: it could take the key
            if self.leadership is not None:                       # back right after the resignation
                await self.leadership.resign()

    async def snapshot_due(self, snapshots: SnapshotStore, last: int) -> int:
        """Save a snapshot once ``snapshot_every`` commits were folded since ``last``, and ``snapshot_min_interval_s``
        since the last try; the sequence of the last try.
        A snapshot only shortens the next start's replay: one the store refuses (full, or unreachable) is said and
        tried again after as many commits more; raised, it ended the scheduler's loop and no job was placed."""
        if (self.projector.seq - last < self.config.snapshot_every
                or time.monotonic() - self._snapshot_tried < self.config.snapshot_min_interval_s):
            return last
        self._snapshot_tried = time.monotonic()
        try:
            await self.projector.save(snapshots)
        except (AiosError, nats.errors.Error) as exc:
            log.warning("snapshot not saved; the next start replays more of the log",
                        extra={"seq": self.projector.seq, "error": str(exc) or type(exc).__name__})
        return self.projector.seq

    def _metrics(self, ctx: ServiceContext) -> None:
        self.m_rounds = Counter("aios_scheduler_rounds", "scheduling rounds run", registry=ctx.metrics)
        self.m_placed = Counter("aios_scheduler_placements", "jobs placed", ["policy"], registry=ctx.metrics)
        self.m_conflicts = Counter("aios_scheduler_conflicts", "appends refused by a version check",
                                   registry=ctx.metrics)
        self.m_round_s = Histogram("aios_scheduler_round_seconds", "time to decide a round", registry=ctx.metrics,
                                   buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.m_latency = Histogram("aios_scheduler_submit_to_placed_seconds",
                                   "time each placement waited in the queue: from the submission, or the last requeue",
                                   registry=ctx.metrics,
                                   buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300))
        pending = Gauge("aios_scheduler_pending_jobs", "jobs waiting", registry=ctx.metrics)
        pending.set_function(lambda: len(self.projector.state.pending()))
        if ctx.metrics is not None:
            from aios.scheduler.metrics import StateCollector

            ctx.metrics.register(StateCollector(lambda: self.projector.state))

    def _on_commit(self, commit: StoredCommit) -> None:
        if commit.aggregate.startswith(FOLDED) and not all(isinstance(e, REPORTS) for e in commit.events):
            self._wake.set()

    def _refit_if_due(self) -> None:
        """The runtime predictor, fitted again every REFIT_EVERY more finished jobs, however many finished since the
        last fit (the history is capped: its length stops moving at MAX_HISTORY, and a round that saw 49 -> 51
        skipped the fit). Before a round, and before an explanation: a standby runs no rounds, and its `aios why`
        named backfill reservations of the default estimate, not the leader's."""
        state = self.projector.state
        if self._fitted_on < 0 or state.finished_total - self._fitted_on >= REFIT_EVERY:
            self.predictor.fit(state.finished)
            self._fitted_on = state.finished_total

    async def round(self) -> None:
        state = self.projector.state
        now = time.time()
        self._refit_if_due()
        started = time.perf_counter()
        self.stops_seen.observe(state, now)
        plan = plan_round(state, self.policy, now, estimate=self.predictor.estimate, cache=self.bins,
                          seen=self.stops_seen)
        self.m_round_s.observe(time.perf_counter() - started)
        self.rounds += 1
        self.m_rounds.inc()
        # 1. housekeeping; 2. claim the jobs (JobPlaced against each job's version); 3. book their devices (one
        # commit per node against its version); 4. jobs not fully booked go back to the queue. Each phase is
        # pipelined: its appends are in flight together.
        # Every commit, with the versions it is conditional on, is built now from the state the plan was made on:
        # the state keeps folding new commits while the appends below are awaited.
        housekeeping = housekeeping_commits(state, plan)
        claims = claim_commits(state, plan, self.policy.name, self.identity)
        all_leases = lease_commits(state, plan, {p.job_id for p in plan.placements})
        # 1. housekeeping; 2. claim the jobs (JobPlaced against each job's version); 3. book their devices (one
        # commit per node against its version); 4. jobs not fully booked go back to the queue. Each phase is
        # pipelined: its appends are in flight together.
        last = 0
        self._versions = {}
        for seq in await self._append_all(housekeeping):
            last = max(last, seq or 0)
        claimed = {c.aggregate.split(".", 1)[1] for c, seq in zip(claims, await self._append_all(claims)) if seq}
        leases = []
        for c in all_leases:
            events = [e for e in c.events if e.job_id in claimed]  # type: ignore[attr-defined]
            if events:  # our own release this round moved the node on: expect that version instead
                leases.append(msgspec.structs.replace(
                    c, events=events, expected_version=self._versions.get(c.aggregate, c.expected_version)))
        booked = {c.aggregate.split(".", 1)[1] for c, seq in zip(leases, await self._append_all(leases)) if seq}
        failures, failed = failure_commits(plan, claimed, booked, self.policy.sequential)
        for seq in await self._append_all(failures):
            last = max(last, seq or 0)
        placed = claimed - failed
        now_s = time.time()
        for job_id in placed:
            job = state.jobs.get(job_id)
            if job is not None:
                self.m_latency.observe(queue_wait(job, now_s))  # (from its submission, a placement after a
                # preemption counted the earlier runs too)
        self.placed += len(placed)
        if placed:
            self.m_placed.labels(self.policy.name).inc(len(placed))
        last = max(last, self._last_appended)
        await self._caught_up(last)

    async def _append_all(self, commits: list[Commit]) -> list[int | None]:
        """Append commits pipelined; the sequence of each, or None where a version check refused it."""
        if not commits:
            return []
        pipe = self.ctx.store.pipeline()
        jobs = self.projector.state.jobs
        for c in commits:
            kind, _, ident = c.aggregate.partition(".")
            job = jobs.get(ident) if kind == "job" else None
            if job is None:
                await pipe.add(c.aggregate, c.events, c.expected_version, idempotency_key=c.idempotency_key)
                continue
            # a decision about a job is part of the job's trace, from its submit on
            with tracing.job_span("schedule " + "+".join(type(e).__name__ for e in c.events), ident, job.trace,
                                  **{"aios.policy": self.policy.name, "aios.tenant": job.tenant}):
                await pipe.add(c.aggregate, c.events, c.expected_version, idempotency_key=c.idempotency_key)
        out: list[int | None] = []
        for result in await pipe.results():
            if isinstance(result, ConcurrencyConflict):
                self.conflicts += 1
                self.m_conflicts.inc()
                out.append(None)
            elif isinstance(result, Exception):
                raise result
            else:
                out.append(result.seq)
                self._last_appended = max(self._last_appended, result.seq)
        for c, seq in zip(commits, out):
            if seq is not None:
                self._versions[c.aggregate] = max(self._versions.get(c.aggregate, 0), seq)
        return out

    async def _caught_up(self, seq: int, timeout: float = 2.0) -> None:
        """Decide the next round on a state that includes this round's own decisions."""
        deadline = time.monotonic() + timeout
        while self.projector.seq < seq and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def _handle_query(self, msg: Msg) -> None:
        what = msg.subject[len(QUERY_PREFIX) + 1:]
        try:
            args: dict[str, Any] = json.loads(msg.data) if msg.data else {}
            if not isinstance(args, dict):
                raise ValueError("a JSON object is expected")
        except ValueError as exc:
            if msg.reply:
                await msg.respond(json.dumps({"error": f"body: {exc}"}).encode())
            return
        state = self.projector.state
        job, viewer = args.get("job"), args.get("viewer")
        if what in ("why", "cannot_start") and not isinstance(job, str):
            body: Any = {"error": "field 'job': a job id is required"}
        elif what == "why":
            self._refit_if_due()
            body = ({"error": "field 'viewer': a tenant name is expected"}
                    if viewer is not None and not isinstance(viewer, str) else
                    {"job": job, "why": explain(state, self.policy, job, time.time(), viewer,
                                               estimate=self.predictor.estimate, cache=self.bins,
                                               seen=self.stops_seen)})
        elif what == "cannot_start":  # `aios submit`'s note: whether nodes must join before it can start at all
            # (asked with `why`, each submission ran a whole round on every scheduler replica for a lookup)
            known = state.jobs.get(job)
            body = {"job": job, "known": known is not None,
                    "cannot_start": cannot_start_now(state, known.spec)
                    if known is not None and known.spec is not None and known.status == PENDING else ""}
        elif what == "jobs":
            body = jobs_reply(state, self.policy.name, args)
        else:
            body = {"error": f"unknown query {what!r} (why, cannot_start, jobs)"}
        if msg.reply:
            await msg.respond(json.dumps(body).encode())


def from_env() -> SchedulerService:
    return SchedulerService()
