"""The native workload format (read, write, errors) and the export of a live log into it for counterfactual replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aios.common.errors import ConfigError
from aios.common.events import (
    Assignment, CheckpointSaved, Event, JobCancelled, JobFailed, JobPlaced, JobPreempted, JobRequeued, JobStarted,
    DeviceInfo, JobSubmitted, JobSucceeded, NodeRegistered, TenantQuotaRemoved, TenantQuotaSet,
)
from aios.common.store import EventStore
from aios.scheduler.local import node_registration
from aios.scheduler.policies import make_policy
from aios.scheduler.sim.native import (jobs_from_events, load_log_workload, read_native_trace, read_native_workload,
                                      write_native_trace)
from aios.scheduler.sim.simulator import simulate
from aios.scheduler.sim.traces import SimNode, TraceJob, kind_rates

GOOD = '{"name": "a-1", "arrival_s": 0, "tenant": "t", "devices": 1, "job_type": "a", "priority": 0, "work": 10}'


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    jobs = [TraceJob("resnet", 130.0, 4, 0.0, 0.0, {"h100": 2.0, "a100": 1.0}, "vision", "resnet-ab12"),
            TraceJob("bert", 1e9 / 3, 1, -2.0, 12.345678901234567, {}, "nlp", "bert-7"),
            TraceJob("A", 3600.0, 2, 1.0, 99.0),
            TraceJob("llm", 50.0, 8, 0.0, 120.0, {"a100": 1.0}, "nlp", "llm-3", any_kind=True)]
    path = tmp_path / "jobs.jsonl"
    write_native_trace(path, jobs)
    assert read_native_trace(path) == jobs
    write_native_trace(path, list(reversed(jobs)))
    assert read_native_trace(path) == jobs  # read back by arrival


def test_tenant_quotas_round_trip_and_hold_in_the_simulation(tmp_path: Path) -> None:
    """A workload may set quotas as `aios quota` does; the simulation admits jobs against them as the live core."""
    quota = TenantQuotaSet(aggregate_id="a", cohort="", nominal={"v100": 1}, borrowing_limit={"v100": 0}, ts=0.0)
    jobs = [TraceJob("A", 3600.0, 1, 0.0, 0.0, {"v100": 1.0}, "a", f"a-{i}") for i in range(2)]
    path = tmp_path / "jobs.jsonl"
    write_native_trace(path, jobs, quotas=[quota])
    assert read_native_workload(path) == (jobs, [quota], {})
    free = simulate(jobs, {}, {"v100": 2}, make_policy("fifo"))
    held = simulate(jobs, {}, {"v100": 2}, make_policy("fifo"), quotas=[quota])
    assert [r["finish_s"] for r in free["records"]] == [3600.0, 3600.0]
    assert [r["finish_s"] for r in held["records"]] == [3600.0, 7200.0]  # one V100 at a time for tenant a


def test_comments_blank_lines_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('# a comment\n\n{"arrival_s": 5, "devices": 2, "work": 7, "name": "llama-7b-12"}\n' + GOOD + "\n")
    late, early = read_native_trace(path)[::-1]
    assert early.name == "a-1" and late == TraceJob("llama-7b", 7.0, 2, 0.0, 5.0, {}, "trace", "llama-7b-12")


@pytest.mark.parametrize("line, field", [
    ('{"name": "b", "arrival_s": 1,', "not valid JSON"),
    ('{"name": "b", "arrival_s": 1, "devices": 1}', "field 'work': required"),
    ('{"name": "b", "arrival_s": 1, "devices": -1, "work": 3}', "field 'devices': expected a positive integer up to 4,096, got -1"),
    ('{"name": "b", "arrival_s": 1, "devices": 1000000000000000000000000000000, "work": 3}', "field 'devices'"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "priority": 1.7}', "field 'priority': expected a whole"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "rates": false}', "field 'rates': expected an object"),
    ('{"name": "a-1", "arrival_s": 1, "devices": 1, "work": 3}', "field 'name': 'a-1' is already the name of line 1"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "rates": {"h100": "fast"}}', "field 'rates.h100'"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "wrok": 3}', "field 'wrok': unknown field"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "any_kind": "yes"}', "field 'any_kind': expected true"),
    ('[1, 2]', "expected a JSON object"),
    ('{"name": "b", "arrival_s": 1, "devices": 4, "work": 3, "devices": 1}', "'devices' is given twice"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 1' + '0' * 400 + '}', "field 'work': expected a number"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "x": ' + '[' * 5000 + ']' * 5000 + '}',
     "nested too deeply to be a job"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "rates": {"H100": 2}}', "field 'rates.H100': not a device"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "hints": {"h100": 0}}', "field 'hints.h100': expected a"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "runtime_estimate_s": 0}', "field 'runtime_estimate_s'"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "max_devices_per_node": 0}', "field 'max_devices_per"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "preemptible": "no"}', "field 'preemptible': expected"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "serve": 1}', "field 'serve': expected true or false"),
    # taken: a job no live cluster could have, and a throughput note naming an empty type
    ('{"name": "A B", "arrival_s": 1, "devices": 1, "work": 3}', "field 'name': lowercase letters"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "job_type": " "}', "field 'job_type': a non-empty"),
    ('{"name": "b", "arrival_s": 1e300, "devices": 1, "work": 3}', "field 'arrival_s': expected seconds from 0 to"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "tenant": ""}', "field 'tenant': lowercase letters"),
    ('{"name": "b", "arrival_s": 1, "devices": 1, "work": 3, "tenant": "NLP"}', "field 'tenant': lowercase"),
    ('{"quota": {"tenant": "nlp", "nominal": {"h100": -1}}}', "field 'quota.nominal.h100': expected a whole number"),
    ('{"quota": {"tenant": "nlp", "lending_limit": [1]}}', "field 'quota.lending_limit': expected an object"),
    ('{"quota": {"nominal": {"h100": 1}}}', "field 'quota.tenant': required"),
    ('{"quota": {"tenant": "nlp", "nomnial": {}}}', "field 'quota.nomnial': unknown field"),
    ('{"quota": {"tenant": "nlp"}, "work": 3}', "field 'work': a quota line holds only the field 'quota'"),
    ('{"quota": {"tenant": "vision", "nominal": {}}}', "field 'quota.tenant': 'vision' has its quota on line 1 already"),
    ('{"quota": {"tenant": "NLP"}}', "field 'quota.tenant': lowercase letters"),
    ('{"quota": {"tenant": "nlp", "nominal": {"H100": 1}}}', "field 'quota.nominal.H100': not a device kind"),
    ('{"quota": {"tenant": "nlp", "cohort": "../x y*"}}', "field 'quota.cohort': lowercase letters"),
    ('{"node": {"name": "n 1", "devices": {"h100": 1}}}', "field 'node.name': expected a node's name"),
    ('{"node": {"name": "n1", "devices": {}}}', "field 'node.devices': expected an object"),
    ('{"node": {"name": "n1", "devices": {"H100": 1}}}', "field 'node.devices.H100': not a device kind"),
    ('{"node": {"name": "n1", "devices": {"h100": 0}}}', "field 'node.devices.h100': expected a whole number"),
    ('{"node": {"name": "n1", "devices": {"h100": 1}, "cpus": 8}}', "field 'node.cpus': unknown field"),
    ('{"node": {"name": "n1", "devices": {"h100": 1}}, "work": 3}', "field 'work': a node line holds only"),
    ('{"node": {"name": "n1", "devices": {"h100": 1}, "cpu_cores": 0}}', "field 'node.cpu_cores': expected a whole"),
    ('{"node": {"name": "n1", "devices": {"h100": 1}, "cpu_cores": 8.5}}', "field 'node.cpu_cores': expected a "),
    ('{"node": {"name": "n1", "devices": {"h100": 1}, "memory_gib": "64"}}', "field 'node.memory_gib': expected a"),
    ('{"node": {"name": "n1", "devices": {"h100": 1}, "memory_gib": 0}}', "field 'node.memory_gib': expected a"),
    ('{"arrival_s": 0, "devices": 1, "work": 3, "cpu_per_worker": 0}', "field 'cpu_per_worker': expected a number "
                                                                         "at least 0.001 and at most 4,096 cores"),
    ('{"arrival_s": 0, "devices": 1, "work": 3, "memory_gib_per_worker": 2000000}', "field 'memory_gib_per_worker': "
     "expected a number at least 1/1024 GiB (1 MiB) and at most 1,048,576 GiB (the job spec's), got 2000000"),
    ('{"node": {"name": "n1", "devices": {"h100": 1}, "memory_gib": 1e-320}}', "field 'node.memory_gib': expected a"),
    ('{"arrival_s": 0, "devices": 1, "work": 3, "memory_gib_per_worker": true}', "field 'memory_gib_per_worker': "
                                                                                  "expected a number, got true"),
])
def test_bad_input_names_file_line_and_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "jobs.jsonl"
    good = GOOD if "vision" not in line else '{"quota": {"tenant": "vision"}}'
    path.write_text(f"{good}\n# comment\n{line}\n")
    with pytest.raises(ConfigError) as err:
        read_native_trace(path)
    assert str(err.value).startswith(f"{path}:3: ") and field in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such workload file"):
        read_native_trace(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="is a folder"):
        read_native_trace(tmp_path)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"name": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match="cannot read the workload"):
        read_native_trace(tmp_path / "latin1.jsonl")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")  # an editor's byte-order mark
    assert read_native_trace(tmp_path / "bom.jsonl")[0].name == "a-1"


def submitted(job: str, ts: float, **spec: object) -> JobSubmitted:
    body = {"name": job.rsplit("-", 1)[0], "tenant": "vision", "devices": 1, "command": ["train"], **spec}
    return JobSubmitted(aggregate_id=job, tenant="vision", name=str(body["name"]), spec=body, ts=ts)


def placed(job: str, ts: float, node: str, *uuids: str) -> JobPlaced:
    return JobPlaced(aggregate_id=job, assignments=[Assignment(node, list(uuids), list(range(len(uuids))))],
                     world_size=len(uuids), ts=ts)


def log_events() -> list[tuple[str, list[Event]]]:
    """Two nodes (one registers twice) and five jobs covering every outcome the export distinguishes."""
    h100, a100 = node_registration("n1", "h100", 8), node_registration("n2", "a100", 4)
    thr = {"h100": 2.0, "a100": 1.0}
    events: list[Event] = [
        *h100[1], *a100[1],
        submitted("train-1", 100.0, throughput=thr, priority=5),
        placed("train-1", 110.0, "n1", "n1-g0"), JobStarted(aggregate_id="train-1", ts=120.0),
        CheckpointSaved(aggregate_id="train-1", step=80, bucket="b", name="train-1", ts=160.0),
        JobPreempted(aggregate_id="train-1", reason="fair share", ts=170.0),
        JobRequeued(aggregate_id="train-1", reason="preempted", ts=175.0),
        *h100[1],  # the agent restarted: still 8 H100s, not 16
        submitted("idle-2", 150.0), JobCancelled(aggregate_id="idle-2", ts=155.0),
        submitted("crash-3", 160.0), placed("crash-3", 160.0, "n2", "n2-g1"),
        JobFailed(aggregate_id="crash-3", reason="exit 1", ts=170.0),
        placed("train-1", 200.0, "n2", "n2-g0"), JobSucceeded(aggregate_id="train-1", ts=230.0),
        submitted("wait-4", 300.0, runtime_estimate_s=60.0, throughput={"h100": 3.0}),
        submitted("run-5", 310.0), placed("run-5", 320.0, "n1", "n1-g1"),
        submitted("est-6", 400.0, runtime_estimate_s=5.0), placed("est-6", 410.0, "n1", "n1-g2"),
        placed("crash-3", 420.0, "n2", "n2-g1"),  # a decision after the end changes nothing
        submitted("late-7", 470.0),
    ]
    return [(ev.aggregate, [ev]) for ev in events]


def test_the_fold_measures_work_on_the_kinds_each_run_used() -> None:
    w = jobs_from_events(log_events())
    assert w.cluster == {"a100": 4, "h100": 8}
    by_name = {j.name: j for j in w.jobs}
    assert list(by_name) == ["train-1", "crash-3", "wait-4", "run-5", "est-6"]
    train = by_name["train-1"]
    # preempted 10 s after its checkpoint: those 10 s were done again by its next run, so they count once
    assert train.total_steps == 40 * 2.0 + 30 * 1.0 and train.arrival_s == 0.0
    assert w.lost_s == {"train-1": 10.0} and w.ended == {"crash-3": "failed"}
    assert (train.job_type, train.gpus, train.tenant, train.priority_weight) == ("train", 1, "vision", 5.0)
    assert train.rates == {"h100": 2.0, "a100": 1.0} and train.any_kind  # named no device_types
    assert by_name["crash-3"].total_steps == 10.0 and by_name["crash-3"].arrival_s == 60.0  # failed: work done
    wait = by_name["wait-4"]
    assert wait.total_steps == 60 * 3.0 and wait.rates == {"h100": 3.0}  # estimate at its fastest
    # no device_types: it may run anywhere, unhinted kinds at 1 step/s, kinds a what-if adds too
    assert kind_rates(wait, {}, w.cluster) == {"a100": 1.0, "h100": 3.0}
    assert kind_rates(wait, {}, {**w.cluster, "b200": 4}) == {"a100": 1.0, "h100": 3.0, "b200": 1.0}
    # running past its estimate: at least what it did up to the log's last job event (470 s)
    assert by_name["est-6"].total_steps == 60.0
    assert sorted(w.skipped) == ["idle-2", "late-7"] and w.start_ts == 100.0
    # running at the end with no estimate: what it did up to the log's end, so it holds its device as long as it
    # did live (left out, the replay had a device the live cluster did not)
    assert by_name["run-5"].total_steps == 470.0 - 320.0 and w.unfinished == ["run-5"]
    # read while the cluster is alive: running jobs have run until then (a job running for days writes no event)
    later = {j.name: j for j in jobs_from_events(log_events(), until=1000.0).jobs}
    assert later["run-5"].total_steps == 1000.0 - 320.0 and later["est-6"].total_steps == 1000.0 - 410.0
    assert later["train-1"].total_steps == train.total_steps  # what ended is what it was
    assert w.reasons["late-7"] == "still pending, with no runtime_estimate_s"
    assert w.reasons["idle-2"] == "cancelled without running"


def test_a_graceful_preemption_keeps_the_work_up_to_its_checkpoint() -> None:
    """Live, JobPreempted comes first; the workers then checkpoint and exit, and JobRequeued follows. The work up to
    the preemption is saved (it was all counted as lost); a late checkpoint of an earlier attempt is not the new
    run's; a job cut short and then cancelled still did its work."""
    node = node_registration("n1", "h100", 1)
    sub = submitted("j", 0.0, device_types=["h100"])
    place = lambda ts, attempt: JobPlaced(aggregate_id="j", assignments=[Assignment("n1", ["n1-g0"], [0])],  # noqa
                                          world_size=1, ts=ts, attempt=attempt)
    saved = lambda ts, attempt: CheckpointSaved(aggregate_id="j", step=1, bucket="b", name="j", ts=ts,  # noqa
                                                attempt=attempt)
    preempt = lambda ts: [JobPreempted(aggregate_id="j", reason="p", ts=ts),  # noqa
                          JobRequeued(aggregate_id="j", reason="p", ts=ts + 0.5)]
    graceful = jobs_from_events([node, sub, place(0.0, 1), JobPreempted(aggregate_id="j", reason="p", ts=100.0),
                                 saved(101.0, 1), JobRequeued(aggregate_id="j", reason="p", ts=102.0),
                                 place(200.0, 2), JobSucceeded(aggregate_id="j", ts=300.0)])
    assert graceful.jobs[0].total_steps == 200.0 and graceful.lost_s == {}
    late = jobs_from_events([node, sub, place(0.0, 1), *preempt(100.0), place(101.0, 2), saved(101.5, 1),
                             *preempt(200.0), place(300.0, 3), JobSucceeded(aggregate_id="j", ts=400.0)])
    assert late.jobs[0].total_steps == 100.0 and late.lost_s == {"j": 100.0 + 99.0}
    cancelled = jobs_from_events([node, sub, place(0.0, 1), JobPreempted(aggregate_id="j", reason="p", ts=100.0),
                                  saved(101.0, 1), JobRequeued(aggregate_id="j", reason="p", ts=102.0),
                                  JobCancelled(aggregate_id="j", ts=150.0)])
    assert cancelled.jobs[0].total_steps == 100.0 and cancelled.ended == {"j": "cancelled"}
    nothing_kept = jobs_from_events([node, sub, place(0.0, 1), *preempt(100.0),
                                     JobCancelled(aggregate_id="j", ts=150.0)])
    assert nothing_kept.reasons == {"j": "cancelled after runs cut short before any checkpoint"}
    never = jobs_from_events([node, sub, place(0.0, 1), JobCancelled(aggregate_id="j", ts=0.0)])
    assert never.reasons == {"j": "cancelled without running"}  # placed and cancelled at once: it never ran
    # being preempted when the log ends (no requeue yet, no checkpoint): it keeps nothing, not the time to the end
    estimate = submitted("j", 0.0, device_types=["h100"], runtime_estimate_s=50.0)
    stopping = jobs_from_events([node, estimate, place(0.0, 1), JobPreempted(aggregate_id="j", reason="p", ts=100.0),
                                 submitted("later", 10_000.0)])
    assert stopping.jobs[0].total_steps == 50.0  # its estimate, not 10,000 s of work


def test_a_run_preempted_before_its_workers_started_lost_no_work() -> None:
    """Devices held between a placement and a preemption that came before JobStarted were not work done and then
    lost; in a log whose workers report starts, only started runs lose work (a log with no starts at all keeps
    counting from the placement, as the test above does)."""
    node = node_registration("n1", "h100", 1)
    place = lambda ts, attempt: JobPlaced(aggregate_id="j", assignments=[Assignment("n1", ["n1-g0"], [0])],  # noqa
                                          world_size=1, ts=ts, attempt=attempt)
    log = [node, submitted("j", 0.0, device_types=["h100"]), place(0.0, 1),
           JobPreempted(aggregate_id="j", reason="p", ts=30.0), JobRequeued(aggregate_id="j", reason="p", ts=31.0),
           place(40.0, 2), JobStarted(aggregate_id="j", ts=45.0), JobPreempted(aggregate_id="j", reason="p", ts=60.0),
           JobRequeued(aggregate_id="j", reason="p", ts=61.0), place(70.0, 3), JobStarted(aggregate_id="j", ts=75.0),
           JobSucceeded(aggregate_id="j", ts=100.0)]
    w = jobs_from_events(log)
    assert w.lost_s == {"j": 15.0}  # the second run's 15 s; the first never started (it was 30 + 15 s)
    assert w.jobs[0].total_steps == 25.0


def test_an_export_keeps_what_a_live_quota_holds_back(tmp_path: Path) -> None:
    """Live, a quota may name a tenant no job can have or a kind no device has; those hold nothing, and the export
    leaves them out rather than writing a file its own reader refuses."""
    log = [TenantQuotaSet(aggregate_id="NLP", nominal={"h100": 1}, ts=1.0),
           TenantQuotaSet(aggregate_id="nlp", nominal={"H100": 2, "h100": 1}, borrowing_limit={"a100_80gb": 1},
                          ts=2.0),
           submitted("j", 0.0), placed("j", 0.0, "n1", "n1-g0"), JobSucceeded(aggregate_id="j", ts=10.0)]
    w = jobs_from_events([node_registration("n1", "h100", 1), *log])
    assert w.quotas == [TenantQuotaSet(aggregate_id="nlp", nominal={"h100": 1}, borrowing_limit={}, ts=0.0)]
    path = tmp_path / "export.jsonl"
    write_native_trace(path, w.jobs, quotas=w.quotas)
    assert read_native_workload(path) == (w.jobs, w.quotas, {})
    removed = jobs_from_events([node_registration("n1", "h100", 1), *log,
                                TenantQuotaRemoved(aggregate_id="nlp", ts=11.0)])
    assert removed.quotas == []  # a quota removed live holds nothing back in the replay either


def test_the_fold_accepts_bare_events_too() -> None:
    flat = [ev for _, evs in log_events() for ev in evs]
    assert jobs_from_events(flat) == jobs_from_events(log_events())


async def test_load_log_workload_reads_the_store(store: EventStore) -> None:
    aggregate, registered = node_registration("gpu-a", "h100", 4)
    await store.append(aggregate, registered)
    await store.append("job.big-1", [submitted("big-1", 1000.0, devices=2),
                                     placed("big-1", 1010.0, "gpu-a", "gpu-a-g0", "gpu-a-g1")])
    await store.append("job.gone-2", [submitted("gone-2", 1005.0), JobCancelled(aggregate_id="gone-2", ts=1006.0)])
    await store.append("job.big-1", JobSucceeded(aggregate_id="big-1", ts=1100.0))
    # preempted 10 s after a checkpoint its worker reported (on run.<id>, read for jobs cut short), then finished
    await store.append("job.cut-3", [submitted("cut-3", 1020.0), placed("cut-3", 1030.0, "gpu-a", "gpu-a-g2")])
    await store.append("run.cut-3", CheckpointSaved(aggregate_id="cut-3", step=9, bucket="b", name="c", ts=1050.0))
    await store.append("job.cut-3", [JobPreempted(aggregate_id="cut-3", reason="p", ts=1060.0),
                                     placed("cut-3", 1070.0, "gpu-a", "gpu-a-g2"),
                                     JobSucceeded(aggregate_id="cut-3", ts=1080.0)])

    await store.append("tenant.vision", TenantQuotaSet(aggregate_id="vision", nominal={"h100": 1}, ts=900.0))
    await store.append("tenant.vision", TenantQuotaSet(aggregate_id="vision", nominal={"h100": 2}, ts=950.0))

    w = await load_log_workload(store)
    assert w.quotas == [TenantQuotaSet(aggregate_id="vision", nominal={"h100": 2}, ts=0.0)]  # as last set
    assert w.cluster == {"h100": 4} and w.skipped == ["gone-2"]
    assert w.jobs[0] == TraceJob("big", 90.0, 2, 0.0, 0.0, {}, "vision", "big-1", any_kind=True)  # no device_types
    assert (w.jobs[1].name, w.jobs[1].total_steps) == ("cut-3", 20.0 + 10.0) and w.lost_s == {"cut-3": 10.0}


async def test_a_live_cluster_replays_its_running_jobs_up_to_now(store: EventStore) -> None:
    """Found by a walkthrough: a job running with no job event since was replayed with the seconds up to the
    log's last job event of anyone (a job submitted last was left out). While nodes heartbeat, the log is read as
    of now."""
    import time

    from aios.device_agent.protocol import HEARTBEAT_BUCKET

    aggregate, registered = node_registration("gpu-b", "h100", 2)
    await store.append(aggregate, registered)
    started = time.time() - 100.0
    await store.append("job.long-1", [submitted("long-1", started - 5.0), placed("long-1", started, "gpu-b",
                                                                                 "gpu-b-g0")])
    w = await load_log_workload(store)  # no heartbeats: a log of a cluster gone, which ended at its last event
    assert w.reasons["long-1"] == "still running, with no runtime_estimate_s"
    kv = await store.js.create_key_value(bucket=HEARTBEAT_BUCKET)
    await kv.put("gpu-b", b"{}")
    try:
        w = await load_log_workload(store)
        long = next(j for j in w.jobs if j.name == "long-1")
        assert 100.0 <= long.total_steps < 130.0 and "long-1" in w.unfinished
    finally:
        await store.js.delete_key_value(HEARTBEAT_BUCKET)


def test_a_name_given_to_an_unnamed_job_that_collides_says_so(tmp_path: Path) -> None:
    """Found by a walkthrough: an unnamed job is called after its type and place; a job named the same way by hand
    read "the name is used twice" of a name the file holds once."""
    from aios.scheduler.sim.simulator import submissions

    path = tmp_path / "jobs.jsonl"
    path.write_text('{"arrival_s": 0, "devices": 1, "work": 3, "job_type": "job"}\n'
                    '{"name": "job-0", "arrival_s": 1, "devices": 1, "work": 3}\n')
    with pytest.raises(ConfigError, match=r"job 'job-0': the name is used twice \(the name an unnamed job, the "
                                          r"workload's job 1, is given: name it\)"):
        submissions(read_native_trace(path), {}, {"v100": 1})


def test_a_replay_places_on_the_live_nodes_and_an_export_keeps_them(tmp_path: Path, capsys: Any) -> None:
    """Found by a walkthrough: a replay renamed the live nodes after their kinds (``a100-000``, ``h100-000``), so
    a kind-blind policy broke its ties the other way, and a job that ran on sim-1's H100s live ran on A100s in the
    replay of the same policy. The log's nodes are replayed by name, and an export writes them as node lines."""
    events = [*node_registration("sim-1", "h100", 2)[1], *node_registration("sim-2", "a100", 2)[1],
              submitted("run-1", 0.0, throughput={"h100": 2.0, "a100": 1.0}), placed("run-1", 1.0, "sim-1", "sim-1-g0"),
              JobSucceeded(aggregate_id="run-1", ts=101.0)]
    w = jobs_from_events([(ev.aggregate, [ev]) for ev in events])
    assert w.nodes == {"sim-1": SimNode({"h100": 2}), "sim-2": SimNode({"a100": 2})}
    on_nodes = simulate(w.jobs, {}, w.cluster, make_policy("fifo"), nodes=w.nodes)
    on_servers = simulate(w.jobs, {}, w.cluster, make_policy("fifo"))
    assert list(on_nodes["records"][0]["kind_time_s"]) == ["h100"]  # where it ran live
    assert list(on_servers["records"][0]["kind_time_s"]) == ["a100"]  # "a100-000" sorts first
    path = tmp_path / "week.jsonl"
    write_native_trace(path, w.jobs, nodes=w.nodes)
    assert read_native_workload(path) == (w.jobs, [], w.nodes)
    from aios.cli import simulate as cli  # --cluster given instead: said, as --from-log says it

    assert cli.run(str(path), "h100=2,a100=2", "fifo", None, None, 360, 4, True, None) == 0
    assert any("node line(s) of the workload are not used" in n for n in json.loads(capsys.readouterr().out)["notes"])


def test_an_export_keeps_what_the_live_core_acted_on_and_a_replay_honours_it(tmp_path: Path) -> None:
    """Found by review: the export dropped ``preemptible``, ``runtime_estimate_s`` and the per-node limit, showed
    the policy 1.0 for kinds the job gave no speed for, and named each replayed spec after its job id (a learning
    policy's class of one): a replay under ``priority`` preempted a job the live core could not."""
    events = [*node_registration("n1", "h100", 2)[1], *node_registration("n2", "a100", 2)[1],
              submitted("low-aaaaaa", 0.0, preemptible=False, device_types=["h100"], devices=2),
              placed("low-aaaaaa", 0.0, "n1", "n1-g0", "n1-g1"),
              submitted("high-bbbbbb", 100.0, priority=10, device_types=["h100"], runtime_estimate_s=90.0,
                        max_devices_per_node=1),
              submitted("mixed-cccccc", 100.0, device_types=["h100", "a100"], throughput={"h100": 2.0}),
              placed("mixed-cccccc", 100.0, "n2", "n2-g0"), JobSucceeded(aggregate_id="mixed-cccccc", ts=200.0),
              JobSucceeded(aggregate_id="low-aaaaaa", ts=1000.0),
              placed("high-bbbbbb", 1000.0, "n1", "n1-g0"), JobSucceeded(aggregate_id="high-bbbbbb", ts=1100.0)]
    w = jobs_from_events([(ev.aggregate, [ev]) for ev in events])
    by = {j.name: j for j in w.jobs}
    assert not by["low-aaaaaa"].preemptible and by["high-bbbbbb"].preemptible
    assert by["high-bbbbbb"].runtime_estimate_s == 90.0 and by["high-bbbbbb"].max_devices_per_node == 1
    assert by["mixed-cccccc"].rates == {"h100": 2.0, "a100": 1.0} and by["mixed-cccccc"].hints == {"h100": 2.0}
    path = tmp_path / "log.jsonl"
    write_native_trace(path, w.jobs, nodes=w.nodes)
    assert read_native_workload(path) == (w.jobs, [], w.nodes)

    from aios.scheduler.sim.simulator import submissions

    specs = {job_id: spec for job_id, _, _, spec in submissions(w.jobs, {}, w.cluster)}
    assert specs["mixed-cccccc"]["throughput"] == {"h100": 2.0}  # as the live job told it
    assert specs["low-aaaaaa"]["name"] == "low-0" and specs["high-bbbbbb"]["name"] == "high-1"
    result = simulate(w.jobs, {}, w.cluster, make_policy("priority"), on_events=True, nodes=w.nodes)
    runs = {r["job"]: (r["start_s"], r["finish_s"], r["preemptions"]) for r in result["records"]}
    assert result["preemptions"] == 0 and runs["low-aaaaaa"] == (0.0, 1000.0, 0)
    assert runs["high-bbbbbb"][0] == 1000.0  # it waited, as live: its victim could not be preempted


def test_a_requeued_job_keeps_its_work_and_a_serving_job_no_completion_time() -> None:
    """A job preempted and still pending when the log was read was left out (with no runtime estimate), and the
    replay freed its devices for the others; an endpoint serving for a week counted a JCT of a week."""
    serve = {"name": "chat", "tenant": "vision", "devices": 1, "serve": {"model": "models:/chat@prod"}}
    events: list[Event] = [
        *node_registration("n1", "h100", 2)[1],
        JobSubmitted(aggregate_id="chat-aaaaaa", tenant="vision", name="chat", spec=serve, ts=0.0),
        placed("chat-aaaaaa", 0.0, "n1", "n1-g0"),
        submitted("long-bbbbbb", 0.0), placed("long-bbbbbb", 0.0, "n1", "n1-g1"),
        JobStarted(aggregate_id="long-bbbbbb", ts=0.0),
        CheckpointSaved(aggregate_id="long-bbbbbb", step=1, bucket="b", name="c", ts=3500.0),
        JobPreempted(aggregate_id="long-bbbbbb", reason="priority", ts=3600.0),
        JobRequeued(aggregate_id="long-bbbbbb", reason="priority", ts=3601.0),
        submitted("hi-cccccc", 3590.0, priority=10), placed("hi-cccccc", 3601.0, "n1", "n1-g1"),
        JobSucceeded(aggregate_id="hi-cccccc", ts=4201.0)]
    w = jobs_from_events([(ev.aggregate, [ev]) for ev in events], until=7 * 86400.0)
    by = {j.name: j for j in w.jobs}
    assert by["long-bbbbbb"].total_steps == 3500.0 and "long-bbbbbb" in w.unfinished and not w.reasons
    assert by["chat-aaaaaa"].serve and not by["hi-cccccc"].serve
    result = simulate(w.jobs, {}, w.cluster, make_policy("fifo"), on_events=True, nodes=w.nodes)
    assert result["finished"] == 3
    jcts = sorted(r["finish_s"] - r["arrival_s"] for r in result["records"] if not r.get("serve"))
    assert result["avg_jct_h"] == pytest.approx(sum(jcts) / len(jcts) / 3600, abs=0.01)
    assert max(jcts) < 86400 and result["makespan_h"] < 24  # the week of serving is in neither
    assert 0 < result["utilization"] <= 1  # its GPU time counts, over the run it was part of
    assert [r["rho"] for r in result["records"] if r.get("serve")] == [None]


def test_an_any_kind_job_whose_table_row_names_a_kind_the_cluster_lacks_runs() -> None:
    """Its hints (the table's row) named a P100 on a V100 + K80 cluster, where the K80 cannot run it: the spec's
    throughput then named a kind outside its device_types, and the whole simulation was refused."""
    table = {("resnet", 2): {"v100": 2.0, "p100": 1.5, "k80": 0.0}}
    jobs = [TraceJob("resnet", 200.0, 2, 0, 0.0, any_kind=True, name="r-1")]
    result = simulate(jobs, table, {"v100": 2, "k80": 2}, make_policy("fifo"))
    assert result["finished"] == 1 and list(result["records"][0]["kind_time_s"]) == ["v100"]


def test_an_old_spec_naming_kinds_in_capitals_does_not_stop_the_export(tmp_path: Path) -> None:
    """Kinds are checked since the format checks them: one job of an old log naming "H100" made the whole
    export unwritable. Kinds no device has are dropped; a job left with none is skipped, with the reason."""
    events = [*node_registration("n1", "h100", 2)[1],
              submitted("old-aaaaaa", 0.0, device_types=["H100"], runtime_estimate_s=600),
              submitted("mixed-bbbbbb", 1.0, device_types=["H100", "h100"], throughput={"H100": 3, "h100": 2},
                        runtime_estimate_s=600)]
    w = jobs_from_events([(ev.aggregate, [ev]) for ev in events])
    assert "no device kind" in w.reasons["old-aaaaaa"]
    assert [(j.name, j.rates) for j in w.jobs] == [("mixed-bbbbbb", {"h100": 2.0})]
    write_native_trace(tmp_path / "old.jsonl", w.jobs, nodes=w.nodes)
    assert read_native_workload(tmp_path / "old.jsonl")[0] == w.jobs


def test_a_replay_keeps_the_cpu_and_memory_of_live_nodes_and_jobs(tmp_path: Path) -> None:
    """The export kept GPUs only: every replayed node had 64 cores and 512 GiB and every job the spec's defaults,
    so two jobs that could not share a node's 8 cores live ran side by side in the replay. Nodes keep what their
    agents registered, jobs their CPU and memory per worker, an export writes both, and placement honours them."""
    node = ("node.small", [NodeRegistered(aggregate_id="small", hostname="small", agent_id="a", cpu_cores=8,
                                          memory_bytes=48 << 30, devices=[
                                              DeviceInfo(uuid=f"small-g{i}", index=i, kind="a100", model="A100",
                                                         memory_bytes=40 << 30) for i in range(2)])])
    events: list[Event] = [*node[1]]
    for i, ts in enumerate((0.0, 1.0)):
        job = f"prep-{i}"
        events += [submitted(job, ts, throughput={"a100": 1.0}, device_types=["a100"], cpu_per_worker=6,
                             memory_gib_per_worker=16.5),
                   placed(job, 100.0 * i + 1, "small", f"small-g{i}"), JobSucceeded(aggregate_id=job, ts=100.0 * i + 100)]
    w = jobs_from_events([(ev.aggregate, [ev]) for ev in events])
    assert w.nodes == {"small": SimNode({"a100": 2}, cpu_cores=8, memory_gib=48.0)}
    assert [(j.cpu_per_worker, j.memory_gib_per_worker) for j in w.jobs] == [(6.0, 16.5), (6.0, 16.5)]
    path = tmp_path / "week.jsonl"
    write_native_trace(path, w.jobs, nodes=w.nodes)
    text = path.read_text()
    assert '"cpu_cores": 8, "memory_gib": 48.0' in text and '"cpu_per_worker": 6.0' in text
    assert read_native_workload(path) == (w.jobs, [], w.nodes)
    replay = simulate(w.jobs, {}, w.cluster, make_policy("fifo"), nodes=w.nodes, on_events=True)
    first, second = sorted(replay["records"], key=lambda r: r["start_s"])
    assert second["start_s"] >= first["finish_s"] - 1e-6, replay["records"]  # 6 + 6 cores > 8: one at a time
    roomy = {"small": SimNode({"a100": 2}, cpu_cores=16, memory_gib=48.0)}
    side_by_side = simulate(w.jobs, {}, w.cluster, make_policy("fifo"), nodes=roomy, on_events=True)
    assert max(r["start_s"] for r in side_by_side["records"]) < min(r["finish_s"] for r in side_by_side["records"])
    # "two more of our A100s": the servers --add adds have the CPU and memory per GPU of the node of that kind
    from aios.cli import simulate as cli

    what_if = tmp_path / "what-if.jsonl"
    assert cli.run(str(path), None, "fifo", None, None, 360, 2, True, None, add="a100=2", export=str(what_if)) == 0
    assert read_native_workload(what_if)[2] == {"small": SimNode({"a100": 2}, cpu_cores=8, memory_gib=48.0),
                                                "added-a100-000": SimNode({"a100": 2}, cpu_cores=8, memory_gib=48.0)}


def test_a_deployment_that_came_first_does_not_start_the_makespan(tmp_path: Path) -> None:
    """From a walkthrough: a deployment serving from 0 s and one training job from 10,000 to 10,100 s read a
    makespan of 10,100 s; serving jobs are left out of it, as out of the JCTs."""
    path = tmp_path / "w.jsonl"
    path.write_text('{"name": "s", "arrival_s": 0, "devices": 1, "work": 20000, "serve": true, "rates": {"v100": 1}}\n'
                    '{"name": "t", "arrival_s": 10000, "devices": 1, "work": 100, "rates": {"v100": 1}}\n')
    jobs, _, _ = read_native_workload(path)
    result = simulate(jobs, {}, {"v100": 2}, make_policy("fifo"), on_events=True)
    assert result["makespan_h"] == pytest.approx(100 / 3600, rel=0.01) and result["avg_jct_h"] == result["makespan_h"]
