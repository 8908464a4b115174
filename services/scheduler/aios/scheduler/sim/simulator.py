"""A discrete-event simulator that drives the live scheduler core (``local.step``: the same policies, quota
admission and placement) with a simulated clock and a simulated cluster, in rounds of ``round_s`` seconds.

Between rounds every placed job advances at its measured throughput on the GPU kind it holds; a job finishes at the
exact moment its steps are done, and its devices come back at the next round, as in Gavel. With ``on_events`` the
scheduler also decides at each arrival and each finish, at once, as the live service does (it wakes on every
commit): a replay of a live log then keeps its timing, and the rounds only bound how long a time share lasts
between events. A policy sees what a live scheduler sees: the job type (its name), its size, throughput hints per
GPU kind, and what it has run so far; never the job's total steps.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from aios.common.errors import ConfigError
from aios.common.events import (
    DeviceInfo, JobSubmitted, JobSucceeded, Link, NodeRegistered, TenantQuotaSet, WorkerExited,
)
from aios.scheduler.local import apply, node_registration, step
from aios.scheduler.placement import BinCache
from aios.scheduler.policies.base import ELAPSED_SLACK_S, Policy
from aios.scheduler.predict import RuntimePredictor
from aios.scheduler.sim.fairness import finish_time_fairness, isolated_finish_times
from aios.scheduler.sim.traces import (
    MAX_ARRIVAL_S, SIM_CPU_CORES, SIM_MEMORY_GIB, SimNode, Throughputs, TraceJob, hinted_rates, kind_rates,
)
from aios.scheduler.spec import SpecError, validate_spec
from aios.scheduler.state import PENDING, PLACED, PREEMPTING, JobState, SchedulerState


@dataclass
class SimJob:
    job_id: str
    trace: TraceJob
    rates: dict[str, float]
    progress: float = 0.0
    start: float | None = None
    finish: float | None = None
    kind_time: dict[str, float] = field(default_factory=dict)
    preemptions: int = 0


def slug(job_type: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", job_type.lower()).strip("-")


def cluster_events(cluster: dict[str, int], gpus_per_server: int) -> list[tuple[str, list[Any]]]:
    out = []
    for kind, count in sorted(cluster.items()):
        for s in range((count + gpus_per_server - 1) // gpus_per_server):
            n = min(gpus_per_server, count - s * gpus_per_server)
            out.append(node_registration(f"{kind}-{s:03d}", kind, n, cpu_cores=SIM_CPU_CORES,
                                         memory_bytes=int(SIM_MEMORY_GIB * 2**30), device_memory_bytes=16 << 30))
    return out


def layout_counts(nodes: dict[str, SimNode]) -> dict[str, int]:
    """GPU kind -> devices over a layout's nodes (the cluster it makes)."""
    counts: dict[str, int] = {}
    for node in nodes.values():
        for kind, n in node.devices.items():
            counts[kind] = counts.get(kind, 0) + n
    return dict(sorted(counts.items()))


def layout_events(nodes: dict[str, SimNode]) -> list[tuple[str, list[Any]]]:
    """Named nodes (a live cluster's, as its log registered them), each with its GPUs of every kind, CPU cores and
    memory; the devices of a kind NVLink-connected, as ``cluster_events``' servers."""
    out = []
    for name, node in nodes.items():
        infos: list[DeviceInfo] = []
        links: list[Link] = []
        for kind, count in sorted(node.devices.items()):
            first = len(infos)
            infos += [DeviceInfo(uuid=f"{name}-g{first + i}", index=first + i, kind=kind, model=kind,
                                 memory_bytes=16 << 30) for i in range(count)]
            links += [Link(infos[a].uuid, infos[b].uuid, "nvlink") for a in range(first, first + count)
                      for b in range(a + 1, first + count)]
        out.append((f"node.{name}", [NodeRegistered(
            aggregate_id=name, hostname=name, agent_id="sim", cpu_cores=node.cpu_cores,
            memory_bytes=int(node.memory_gib * 2**30), devices=infos, links=links)]))
    return out


Run = tuple[SimJob, list[str], float]
"""A job advancing over the next span: the job, the GPU kinds it holds, its steps/s there."""
CoLocate = Callable[[SchedulerState, dict[str, SimJob], list[Run], float], list[Run]]


WAKE_GRAIN_S = 30.0
"""With ``on_events``, a policy's wake-up (a quantum's end) is taken at the next multiple of this many seconds."""
UNFINISHED_SHOWN = 10
"""Jobs that did not finish, named with the reason in the summary (the first ones, in arrival order)."""


def spec_name(job_id: str) -> str:
    """A job spec name for the job (the spec's rules: lowercase, 64 characters): a live job's id is its name plus a
    token, up to 71 characters, and a workload file may name jobs freely; the id itself stays the job's identity."""
    return re.sub(r"[^a-z0-9._-]+", "-", job_id.lower())[:64].strip("-._") or "job"


def submissions(trace: list[TraceJob], throughputs: Throughputs, cluster: dict[str, int],
                oracle_estimates: bool = False) -> list[tuple[str, TraceJob, dict[str, float], dict[str, Any]]]:
    """Each job's id, its rates on this cluster and the job spec it is submitted with, in arrival order; checked up
    front as the live API would check them, so a bad workload fails before the run with the job and field named."""
    out = []
    seen: set[str] = set()
    unnamed: dict[str, int] = {}  # names given to the jobs a workload left unnamed, by their place in it
    for i, tj in sorted(enumerate(trace), key=lambda pair: pair[1].arrival_s):
        job_id = tj.name or f"{slug(tj.job_type)}-{i}"
        if job_id in seen:
            given = unnamed.get(job_id, i)
            why = (f" (the name an unnamed job, the workload's job {given + 1}, is given: name it)"
                   if not tj.name or job_id in unnamed else " (each job of a workload needs its own)")
            raise ConfigError(f"job {job_id!r}: the name is used twice{why}")
        seen.add(job_id)
        if not tj.name:
            unnamed[job_id] = i
        rates = kind_rates(tj, throughputs, cluster)
        if not float(tj.priority_weight).is_integer():
            raise ConfigError(f"job {job_id!r}: priority: expected a whole number (the job spec's priority), "
                              f"got {tj.priority_weight!r}")
        # named by its type and place, as a live job by its spec's name: learning policies class jobs by the name
        # (a replayed job's id, name plus token, made every job a class of its own)
        spec: dict[str, Any] = {
            "name": spec_name(f"{slug(tj.job_type) or 'job'}-{i}"), "tenant": tj.tenant, "devices": tj.gpus,
            "device_types": sorted(rates), "throughput": rates, "command": ["train"],
            "priority": int(tj.priority_weight), "preemptible": tj.preemptible,
            "cpu_per_worker": tj.cpu_per_worker, "memory_gib_per_worker": tj.memory_gib_per_worker,
            **({"runtime_estimate_s": tj.runtime_estimate_s} if tj.runtime_estimate_s else {}),
            **({"max_devices_per_node": tj.max_devices_per_node} if tj.max_devices_per_node else {})}
        known = hinted_rates(tj, throughputs)
        if rates and (tj.any_kind or not known):  # as a live job that named no kinds: any kind, only the hints it
            # gave (other kinds run at the assumed 1 step/s in the simulation, but the policy is not told so); a
            # kind the table gives 0 steps/s stays out of its list, or the job would be placed there and never move
            spec["device_types"] = [] if len(rates) == len(cluster) else sorted(rates)
            spec["throughput"] = known
        if tj.hints is not None:  # what the live job told the scheduler, where it is not all it runs at
            spec["throughput"] = tj.hints
        if spec["device_types"]:  # a hint for a kind this cluster lacks (or cannot run the job on) is no hint here
            spec["throughput"] = {k: v for k, v in spec["throughput"].items() if k in spec["device_types"]}
        if oracle_estimates and rates:
            spec["runtime_estimate_s"] = tj.total_steps / max(rates.values())
        try:
            validate_spec(spec)
        except SpecError as exc:
            raise ConfigError(f"job {job_id!r}: " + "; ".join(
                f"{field}{f' {spec[field]!r}' if field in spec else ''}: {reason}"
                for field, reason in exc.problems)) from None
        out.append((job_id, tj, rates, spec))
    return out


def simulate(trace: list[TraceJob], throughputs: Throughputs, cluster: dict[str, int], policy: Policy,
             round_s: float = 360.0, gpus_per_server: int = 4, max_rounds: int = 2_000_000,
             oracle_estimates: bool = False, on_events: bool = False,
             on_round: Callable[[SchedulerState, float], None] | None = None,
             quotas: Iterable[TenantQuotaSet] = (), nodes: dict[str, SimNode] | None = None,
             co_locate: CoLocate | None = None) -> dict[str, Any]:
    """Run ``trace`` under ``policy``; the summary keys, per-job ``records`` and a per-round ``timeline``.

    ``oracle_estimates`` gives every job a perfect runtime estimate (its true duration on its fastest kind), as a
    user's estimate would be at best; results that use it are labelled and kept apart from the headline.
    ``on_events``: decide at every arrival and finish too, and when the policy asks to be woken (``wake_at``: a
    quantum ends), not only every ``round_s``. The timeline has one point per round, the time-weighted mean of its
    GPUs at work, queued and running jobs, and a zero point where the clock jumps over an idle cluster.
    ``max_rounds`` caps the decisions (rounds, and events with ``on_events``). ``on_round(state, now)`` sees the
    state after each decision, before time runs on (probes read it). ``quotas``: tenant quotas in force from the
    start, admitted by the live core's quota check as they would be live. ``nodes``: the cluster's layout by node
    name (a live cluster's; ``cluster`` must count the same GPUs); without it, ``cluster`` in servers of
    ``gpus_per_server``.
    ``co_locate(state, jobs, runs, now)``: a what-if the live core cannot decide (bench/space_share_probe.py): it
    gets each placed job's (SimJob, kinds, steps/s) for the span to come and returns the runs to advance instead,
    say two jobs sharing one GPU at their pair throughputs. A job it adds stays pending in the scheduler's view.

    JCT percentiles interpolate linearly between jobs (numpy's default). A record's ``kind_time_s`` gives, per GPU
    kind, the seconds the job ran holding GPUs of that kind: a gang spread over two kinds counts its whole run on
    each."""
    started = time.perf_counter()
    state = SchedulerState()
    if nodes:
        counted = layout_counts(nodes)
        if counted != {k: v for k, v in sorted(cluster.items()) if v}:
            raise ValueError(f"the nodes hold {counted}, the cluster says {cluster}")
    apply(state, layout_events(nodes) if nodes else cluster_events(cluster, gpus_per_server), 0.0)
    apply(state, [(f"tenant.{q.aggregate_id}", [q]) for q in quotas], 0.0)
    predictor = RuntimePredictor()
    finished_count = fitted_at = 0

    def estimate(job: JobState) -> float:
        """The learned predictor, refitted on the finished jobs when at least 20 more finished since its last fit;
        only when a policy asks (fitting thousands of jobs every few rounds dominated large runs)."""
        nonlocal fitted_at
        if finished_count - fitted_at >= 20:
            predictor.fit(state.finished)
            fitted_at = finished_count
        return predictor.estimate(job)
    jobs: dict[str, SimJob] = {}
    pending_arrivals = submissions(trace, throughputs, cluster, oracle_estimates)
    unrunnable = {job_id: "no rate on any GPU kind of this cluster" for job_id, _, rates, _ in pending_arrivals
                  if not rates}
    for job_id, tj, rates, _ in pending_arrivals:  # a job of 1e300 steps, or at 1e-9 steps/s, ran rounds for ever
        if rates and tj.total_steps / max(rates.values()) > MAX_ARRIVAL_S:
            years = tj.total_steps / max(rates.values()) / (365 * 86400)
            unrunnable[job_id] = (f"would run {years:,.3g} years even on its fastest kind (at most "
                                  f"{MAX_ARRIVAL_S / (365 * 86400):.0f} are simulated)")
    next_arrival = 0
    now = 0.0
    rounds = decisions = 0
    decide_s = 0.0
    preemptions = 0
    busy_gpu_s = 0.0
    total_gpus = sum(cluster.values())
    stalled = 0
    waiting_reason: dict[str, str] = {}  # the scheduler's last word on why a job waits (as `aios why` shows it)
    bins = BinCache()
    next_round = 0.0  # the next round's start
    timeline: dict[str, list[float]] = {"t_s": [], "busy_gpus": [], "queued": [], "running": []}
    in_round = [0.0, 0.0, 0.0, 0.0]  # this round so far: seconds, and busy GPUs, queued, running jobs x seconds

    def close_round() -> None:
        """The finished round's point of the timeline: the time-weighted mean of its decisions' states."""
        if len(timeline["busy_gpus"]) < len(timeline["t_s"]):
            for key, total in zip(("busy_gpus", "queued", "running"), in_round[1:]):
                timeline[key].append(total / in_round[0] if in_round[0] > 0 else 0.0)
        in_round[:] = [0.0, 0.0, 0.0, 0.0]

    def idle_point() -> None:
        """A point for the idle stretch the clock jumps over (no round is run there), so the timeline shows it."""
        close_round()
        timeline["t_s"].append(now)
        for key in ("busy_gpus", "queued", "running"):
            timeline[key].append(0.0)

    while decisions < max_rounds:
        # arrivals up to now, in arrival order
        while next_arrival < len(pending_arrivals) and pending_arrivals[next_arrival][1].arrival_s <= now:
            job_id, tj, rates, spec = pending_arrivals[next_arrival]
            next_arrival += 1
            jobs[job_id] = SimJob(job_id, tj, rates)
            if job_id in unrunnable:
                continue  # never submitted: an empty device_types would mean "any kind" to the scheduler
            apply(state, [(f"job.{job_id}", [JobSubmitted(aggregate_id=job_id, tenant=tj.tenant, spec=spec)])],
                  tj.arrival_s)
        t0 = time.perf_counter()
        for _ in range(8):  # a live scheduler decides again at once on its own releases; so does the simulation
            plan = step(state, policy, now, estimate=estimate, cache=bins)
            waiting_reason.update(plan.reasons)
            if plan.preemptions:  # workers checkpoint and stop at once in the simulation
                preemptions += len(plan.preemptions)
                apply(state, [(f"run.{p.job_id}", [WorkerExited(aggregate_id=p.job_id, node_id="-", worker="w",
                                                                exit_code=0)]) for p in plan.preemptions], now)
            if not (plan.preemptions or plan.releases or plan.requeues):
                break
        decide_s += time.perf_counter() - t0
        if on_round is not None:
            on_round(state, now)
        decisions += 1
        running = [js for js in state.active() if js.status == PLACED]
        if now >= next_round - ELAPSED_SLACK_S:  # a round starts
            close_round()
            rounds += 1
            timeline["t_s"].append(now)
            next_round = now + round_s
        runs = []
        for js in running:
            sj = jobs[js.job_id]
            kinds = js.run_kinds
            runs.append((sj, kinds, min(sj.rates.get(k, 0.0) for k in kinds) if kinds else 0.0))
        if co_locate is not None:
            runs = co_locate(state, jobs, runs, now)
        span = round_s
        if on_events:  # time runs on to the next round, arrival or finish, whichever comes first
            span = next_round - now
            if next_arrival < len(pending_arrivals):
                span = min(span, pending_arrivals[next_arrival][1].arrival_s - now)
            wake = policy.wake_at(state, now)
            if wake is not None and wake > now:  # on the next mark of a WAKE_GRAIN_S grid: quanta that end
                # close together are decided together (one wake per running job made thousands of decisions a run)
                span = min(span, math.ceil(wake / WAKE_GRAIN_S) * WAKE_GRAIN_S - now)
            for sj, _, rate in runs:
                if rate > 0:
                    span = min(span, (sj.trace.total_steps - sj.progress) / rate)
        end = now + span
        in_round[0] += span
        in_round[2] += span * sum(1 for js in state.active() if js.status == PENDING)
        # jobs that arrive within the span wait from their arrival, though they are submitted at the next decision
        # (in rounds, a job arriving mid-round was counted as queued nowhere)
        later = next_arrival
        while later < len(pending_arrivals) and pending_arrivals[later][1].arrival_s < end:
            in_round[2] += end - max(now, pending_arrivals[later][1].arrival_s)
            later += 1
        in_round[3] += span * len(running)
        finished = []
        for sj, kinds, rate in runs:
            if sj.start is None:
                sj.start = now
            need = (sj.trace.total_steps - sj.progress) / rate if rate > 0 else math.inf
            dt = min(span, need)
            sj.progress = sj.trace.total_steps if need <= span else sj.progress + rate * dt
            busy_gpu_s += dt * sj.trace.gpus
            in_round[1] += dt * sj.trace.gpus  # GPUs at work, as the summary counts them: a job that finished
            # mid-round holds its devices to the round's end, idle
            for k in kinds:
                sj.kind_time[k] = sj.kind_time.get(k, 0.0) + dt
            if rate > 0 and sj.progress >= sj.trace.total_steps - 1e-9:
                sj.finish = now + dt
                finished.append(sj)
        now = end
        if finished:
            apply(state, [(f"job.{sj.job_id}", [JobSucceeded(aggregate_id=sj.job_id)]) for sj in finished], now)
            for sj in finished:
                sj.preemptions = state.jobs[sj.job_id].preemptions
                # a finished job leaves the state (its devices are released as those of an unknown job), so every
                # round costs what the live jobs cost, not the whole history
                del state.jobs[sj.job_id]
            finished_count += len(finished)
        stalled = stalled + 1 if not running and next_arrival >= len(pending_arrivals) else 0
        if stalled > 3:  # nothing runs, nothing can arrive: the jobs left can never be placed on this cluster
            break
        active = any(s.status in (PLACED, PREEMPTING, PENDING) for s in state.active())
        if not active:
            if next_arrival >= len(pending_arrivals):
                break
            gap = pending_arrivals[next_arrival][1].arrival_s - now
            if on_events:  # idle cluster: jump to the next arrival, and let it start a round
                idle_point()
                now, next_round = now + max(0.0, gap), now + max(0.0, gap)
            elif gap > round_s:  # idle cluster: jump to the round of the next arrival
                idle_point()
                now += (gap // round_s) * round_s
    for sj in jobs.values():
        if sj.job_id in state.jobs:  # still in the system when the simulation stopped
            sj.preemptions = state.jobs[sj.job_id].preemptions
    close_round()
    timeline["end_s"] = [now]  # where the last point ends (the plots drew the last round with no width)
    hit_cap = decisions >= max_rounds
    unfinished: dict[str, str] = {}
    for job_id, tj, rates, _ in pending_arrivals:
        if job_id in jobs and jobs[job_id].finish is not None:
            continue
        room = sum(cluster.get(k, 0) for k in rates)
        if job_id in unrunnable:
            unfinished[job_id] = unrunnable[job_id]
        elif tj.gpus > room:
            unfinished[job_id] = f"needs {tj.gpus} GPUs; the kinds it runs on have {room}"
        elif job_id not in jobs:
            unfinished[job_id] = f"had not arrived (at {tj.arrival_s:g} s) when the run stopped at its decision cap"
        elif hit_cap:
            unfinished[job_id] = f"still in the system when the run stopped at its cap of {max_rounds:,} decisions"
        elif job_id in waiting_reason:  # the scheduler says why (a quota that holds it back, say)
            unfinished[job_id] = f"still waiting when nothing more could run: {waiting_reason[job_id]}"
        else:
            unfinished[job_id] = "waited behind jobs that can never be placed on this cluster"
    cut_short = hit_cap and any(job_id not in unrunnable for job_id in unfinished)
    rho = _rho(list(jobs.values()), cluster)
    # a serving deployment's end is when it was stopped: no completion time to average (it still held its GPUs)
    finished_all = sum(j.finish is not None for j in jobs.values())
    done = [j for j in jobs.values() if j.finish is not None and not j.trace.serve]
    if any(j.trace.serve for j in jobs.values()):
        rho[np.array([j.trace.serve for j in jobs.values()])] = np.nan
    jct = np.array([(j.finish - j.trace.arrival_s) / 3600 for j in done])  # type: ignore[operator]
    makespan = max((j.finish for j in done), default=0.0)  # type: ignore[type-var]
    # GPUs at work over the whole run, serving included (over the training jobs' makespan alone, a week of
    # serving read as a utilisation of 8,450 %)
    busy_until = max((j.finish for j in jobs.values() if j.finish is not None), default=0.0)  # type: ignore[type-var]
    first = min((j.trace.arrival_s for j in jobs.values()), default=0.0)
    # the training jobs' span: a deployment that came first started it (serving from 0 s, one training job from
    # 10,000 to 10,100 s read a makespan of 10,100 s)
    first_training = min((j.trace.arrival_s for j in jobs.values() if not j.trace.serve), default=first)
    return {
        "policy": policy.name + (" (oracle estimates)" if oracle_estimates else ""),
        "jobs": len(pending_arrivals), "finished": finished_all,
        "avg_jct_h": hours(float(jct.mean())) if jct.size else None,
        "p50_jct_h": hours(float(np.percentile(jct, 50))) if jct.size else None,
        "p99_jct_h": hours(float(np.percentile(jct, 99))) if jct.size else None,
        "makespan_h": hours((makespan - first_training) / 3600) if done else None,  # as precise as the JCTs
        "utilization": round(busy_gpu_s / (total_gpus * max(1.0, busy_until - first)), 3),
        "mean_rho": round(float(np.nanmean(rho)), 3) if np.isfinite(rho).any() else None,
        "max_rho": round(float(np.nanmax(rho)), 2) if np.isfinite(rho).any() else None,
        "preemptions": preemptions, "rounds": rounds, "decisions": decisions, "round_s": round_s,
        "on_events": on_events,
        "scheduler_ms_per_round": round(1000 * decide_s / max(1, rounds), 3),
        "wall_s": round(time.perf_counter() - started, 1),
        "cut_short": cut_short,
        "unfinished": dict(list(unfinished.items())[:UNFINISHED_SHOWN]),
        "total_gpus": total_gpus,
        "records": [{"job": j.job_id, "arrival_s": j.trace.arrival_s, "start_s": j.start, "finish_s": j.finish,
                     "gpus": j.trace.gpus, "kind_time_s": j.kind_time, "preemptions": j.preemptions,
                     "rho": None if not np.isfinite(r) else round(float(r), 4),
                     **({"serve": True} if j.trace.serve else {})}
                    for j, r in zip(jobs.values(), rho)],
        "timeline": timeline,
    }


def _rho(jobs: list[SimJob], cluster: dict[str, int]) -> np.ndarray:
    """Finish-time fairness of every job against the equal split of the same cluster (fairness.py)."""
    if not jobs:
        return np.array([])
    kinds = sorted(cluster)
    arrival = np.array([j.trace.arrival_s for j in jobs])
    reference = isolated_finish_times(arrival, np.array([j.trace.total_steps for j in jobs]),
                                      np.array([j.trace.gpus for j in jobs]),
                                      np.array([[j.rates.get(k, 0.0) for k in kinds] for j in jobs]),
                                      np.array([cluster[k] for k in kinds], dtype=float))
    jct = np.array([np.nan if j.finish is None else j.finish - j.trace.arrival_s for j in jobs])
    return finish_time_fairness(jct, reference - arrival)


def hours(h: float) -> float:
    """Hours to 2 decimals, or to 3 significant digits below an hour: a replay of a live cluster's minutes-long jobs
    read 0.01 h for every policy (and the report called them a tie)."""
    return round(h, 2) if abs(h) >= 1 else float(f"{h:.3g}")


def summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("records", "timeline")}


__all__ = ["simulate", "summary", "statistics"]
