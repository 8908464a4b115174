"""Job specs are validated at the door: every mistake comes back naming the field and the reason."""

from __future__ import annotations

import pytest

from aios.scheduler.spec import SpecError, validate_spec

GOOD = {"name": "bert-ft", "tenant": "nlp", "devices": 8, "device_types": ["h100", "a100"],
        "throughput": {"h100": 2.0, "a100": 1.0}, "max_devices_per_node": 4, "gang": True, "priority": 10,
        "cpu_per_worker": 8, "memory_gib_per_worker": 64, "max_runtime_s": 7200, "preemptible": True,
        "command": ["torchrun", "train.py"], "checkpoint_interval_s": 600}


def test_a_full_spec_is_accepted() -> None:
    spec = validate_spec(GOOD)
    assert spec.devices == 8 and spec.throughput == {"h100": 2.0, "a100": 1.0} and spec.max_devices_per_node == 4
    assert validate_spec({"name": "mlp", "tenant": "t", "trainer": {"kind": "mlp", "steps": 3}}).trainer


@pytest.mark.parametrize("change, field, reason", [
    ({"name": "Bert FT"}, "name", "lowercase letters"),
    ({"tenant": ""}, "tenant", "lowercase letters"),
    ({"devices": -1}, "devices", "between 0 and 4096"),
    ({"devices": "8"}, "devices", "Expected `int`, got `str`"),
    ({"priority": 5000}, "priority", "between -1000 and 1000"),
    ({"device_types": ["H100!"]}, "device_types[0]", "is not a device kind"),
    ({"throughput": {"h100": 0}}, "throughput.h100", "positive"),
    ({"throughput": {"v100": 1.0}}, "throughput.v100", "not in device_types"),
    ({"max_devices_per_node": 0}, "max_devices_per_node", "at least 1"),
    ({"cpu_per_worker": 0}, "cpu_per_worker", "positive"),
    ({"max_runtime_s": -5}, "max_runtime_s", "positive number of seconds"),
    ({"command": []}, "command", "non-empty"),
    ({"trainer": {"kind": "mlp"}}, "command", "exactly one of"),
    ({"gpus": 8}, "gpus", "unknown field"),
    # JSON's NaN/Infinity and YAML's .nan were accepted, then stored as null: the job had no spec and failed
    ({"cpu_per_worker": float("nan")}, "cpu_per_worker", "must be a finite number, got NaN"),
    ({"max_runtime_s": float("nan")}, "max_runtime_s", "must be a finite number"),  # was: no limit at all
    ({"throughput": {"h100": float("inf")}}, "throughput.h100", "must be a finite number, got Infinity"),
    ({"command": None, "trainer": {"kind": "mlp", "lr": float("nan")}}, "trainer.lr", "finite"),
    # taken, and every rank failed at start: "never joined the group within 0s"
    ({"command": None, "trainer": {"kind": "mlp", "collective_timeout_s": 0}}, "trainer.collective_timeout_s",
     "must be positive"),
    ({"command": None, "trainer": {"kind": "mlp", "step_delay_s": -1}}, "trainer.step_delay_s", "0 or more"),
    ({"cpu_per_worker": 1e308}, "cpu_per_worker", "at most 4,096 cores"),  # was: pending for ever
    ({"memory_gib_per_worker": 1e300}, "memory_gib_per_worker", "at most"),
    # accepted, then the job failed at start: no process takes these
    ({"command": ["echo", "a\x00b"]}, "command[1]", "NUL character"),
    ({"env": {"A=B": "1"}}, "env.A=B", "not an environment variable name"),
    ({"env": {"A": "x\x00y"}}, "env.A", "NUL character"),
    # "H100" never matched the kind h100 without device_types: the speed-up asked for was silently lost
    ({"throughput": {"H100": 3.0}}, "throughput.H100", "'H100' is not a device kind"),
    # msgspec named the map, not the key: "env[...]"
    ({"env": {"A": 1}}, "env.A", "a string is expected, got int 1 (quote numbers and true/false in YAML)"),
    ({"env": {"A": {"B": "1"}}}, "env.A", "a string is expected, got dict {'B': '1'}"),  # not "quote numbers"
    ({"throughput": {"h100": True}}, "throughput.h100", "a number is expected, got bool True"),
    # a lone surrogate: accepted, then a traceback where the spec was encoded (`aios submit`, HTTP 500)
    ({"command": ["echo", "\ud800"]}, "command[1]", "not valid Unicode"),
    ({"env": {"\udfff": "1"}}, "env", "a key is not valid Unicode"),
    ({"trainer": {"kind": "mlp", "dataset": "\ud800"}}, "trainer.dataset", "not valid Unicode"),
    ({"\ud800": 1}, "\\ud800", "a field name is not valid Unicode"),
    ({"env": {"RANK": "99"}}, "env.RANK", "set by AIOS for each worker"),  # it was overwritten without a word
    ({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, "env.CUDA_VISIBLE_DEVICES", "set by AIOS for each worker"),
    # an unknown field is named as unknown, whatever it holds (it read "[0]: a key must not contain a NUL")
    ({"": [{"\x00": None}]}, "''", "unknown field"),
    ({"colour": float("nan")}, "colour", "unknown field"),
    # `$` matches before a trailing newline: "bert\n" was a job name, and its id a NATS subject with a line break
    ({"name": "bert\n"}, "name", "lowercase letters"),
    ({"tenant": "nlp\n"}, "tenant", "lowercase letters"),
    # two dots in a row: taken, then refused by the event store as an aggregate (HTTP 500, the store's words)
    ({"name": "a..b"}, "name", "no '..'"),
    ({"checkpoint_interval_s": 1e-9}, "checkpoint_interval_s", "at least 1 second"),  # a checkpoint every step
    # the trainer's fields are named as the spec's are ("trainer: Object contains unknown field `bogus`")
    ({"command": None, "trainer": {"kind": "mlp", "bogus": 1}}, "trainer.bogus", "unknown field"),
    ({"command": None, "trainer": {"kind": "mlp", "hidden": [1, 2]}}, "trainer.hidden", "Expected `int`, got `array`"),
    ({"tenant": "a..b"}, "tenant", "no '..'"),
    ({"device_types": ["h100\n"]}, "device_types[0]", "is not a device kind"),
    ({"command": None, "serve": {"model": "models:/m@prod\n"}}, "serve.model", "required: models:/"),
])
def test_bad_fields_are_named(change: dict, field: str, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({**GOOD, **change})
    assert info.value.field == field and reason in str(info.value)


def test_every_broken_rule_is_named_at_once() -> None:
    """One error at a time, a spec with three mistakes took three submissions to get right; Kubernetes lists every
    invalid field. (Type errors still stop at the first: the rest of the spec cannot be read without its types.)"""
    with pytest.raises(SpecError) as info:
        validate_spec({**GOOD, "name": "Bad Name", "devices": -1, "env": {"RANK": "3"}, "stop_grace_s": 0,
                       "throughput": {"H100": 2.0}})
    assert [f for f, _ in info.value.problems] == ["name", "devices", "throughput.H100", "env.RANK", "stop_grace_s"]
    assert info.value.field == "name" and str(info.value).startswith("name: lowercase letters")
    assert "; devices: must be between 0 and" in str(info.value) and "; stop_grace_s: seconds" in str(info.value)
    # a spec that is none of a command, a trainer or a serving job says so, and not the rules of either
    with pytest.raises(SpecError) as info:
        validate_spec({**GOOD, "priority": 10**9, "trainer": {"kind": "mlp", "lr": -1}})
    assert [f for f, _ in info.value.problems] == ["priority", "command"]
    with pytest.raises(SpecError) as info:  # a trainer's memory is not weighed against a memory that is wrong
        validate_spec({**GOOD, "command": None, "memory_gib_per_worker": -1, "trainer": {"kind": "mlp"}})
    assert [f for f, _ in info.value.problems] == ["memory_gib_per_worker"]
    with pytest.raises(SpecError) as info:  # one problem: the message as before
        validate_spec({**GOOD, "max_restarts": -1})
    assert info.value.problems == [(info.value.field, info.value.reason)] and str(info.value).count(": ") == 1


def test_missing_fields_and_wrong_shapes() -> None:
    with pytest.raises(SpecError, match="^name: Object missing required field `name`"):
        validate_spec({"tenant": "t", "command": ["x"]})
    with pytest.raises(SpecError, match="^spec: expected a mapping"):
        validate_spec(["not", "a", "mapping"])
    with pytest.raises(SpecError, match="^trainer.kind: required"):
        validate_spec({"name": "x", "tenant": "t", "trainer": {"epochs": 1}})
    with pytest.raises(SpecError, match="^trainer.epochs: unknown field"):
        validate_spec({"name": "x", "tenant": "t", "trainer": {"kind": "mlp", "epochs": 1}})
    with pytest.raises(SpecError, match="^trainer.lr: must be positive"):
        validate_spec({"name": "x", "tenant": "t", "trainer": {"kind": "mlp", "lr": -1}})


@pytest.mark.parametrize("raw, field, reason", [
    # as Kueue: limits mean nothing outside a cohort, and a tenant lends at most what it has (both were stored)
    ({"nominal": {"a100": 2}, "borrowing_limit": {"a100": 2}}, "borrowing_limit", "needs a cohort"),
    ({"nominal": {"h100": 2}, "lending_limit": {"h100": 1}}, "lending_limit", "needs a cohort"),
    ({"cohort": "lab", "nominal": {"h100": 2}, "lending_limit": {"h100": 5}}, "lending_limit.h100",
     "5 is more than the nominal quota of h100 (2)"),
    # a null cohort or nominal quota was stored as none; an absent nominal quota as a quota of nothing
    ({"cohort": None, "nominal": {"h100": 2}}, "cohort", "expected a string (empty: no cohort), got null"),
    ({"nominal": None}, "nominal", "expected an object of device kind -> count, got null"),
    ({"cohort": "lab"}, "nominal", "required: device kind -> count ({} for none, to borrow only)"),
    # shown as the JSON that was sent, not as Python shows it ("got True")
    ({"nominal": {"h100": True}}, "nominal.h100", "expected a whole number from 0 to 1,000,000, got true"),
])
def test_quota_limits_that_cannot_mean_anything_are_refused(raw: dict, field: str, reason: str) -> None:
    from aios.scheduler.spec import validate_quota

    with pytest.raises(SpecError) as info:
        validate_quota("nlp", raw)
    assert info.value.field == field and reason in str(info.value)
    assert validate_quota("nlp", {"cohort": "lab", "nominal": {"h100": 2}, "lending_limit": {"h100": 2},
                                  "borrowing_limit": {"a100": 4}}).lending_limit == {"h100": 2}


def test_a_kind_given_twice_on_the_command_line_is_refused() -> None:
    from aios.cli.inspect import parse_counts
    from aios.common.errors import ConfigError

    with pytest.raises(ConfigError, match="--nominal: h100 is given twice"):  # it kept the last, silently
        parse_counts("--nominal", "h100=2,H100=3")


@pytest.mark.parametrize("value, reason", [(-1, "a whole number from 0 to 100"), (101, "a whole number from 0 to 100")])
def test_max_restarts_is_bounded(value: int, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "x", "tenant": "t", "command": ["run"], "max_restarts": value})
    assert info.value.field == "max_restarts" and reason in str(info.value)
    assert validate_spec({"name": "x", "tenant": "t", "command": ["run"], "max_restarts": 3}).max_restarts == 3


@pytest.mark.parametrize("name", ["modèle", "bad name!", "-x", "m" * 65])
def test_a_model_name_the_registry_would_refuse_is_refused_at_submit(name: str) -> None:
    """The job trained and succeeded, and its model was then not registered (a line in the registry's log), or was
    registered under another name ("bad name!" as "bad-name")."""
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "x", "tenant": "t", "trainer": {"kind": "mlp", "model_name": name}})
    assert info.value.field == "trainer.model_name" and "letters, digits" in str(info.value)
    spec = validate_spec({"name": "x", "tenant": "t", "trainer": {"kind": "mlp", "model_name": "Digits_v2-a"}})
    assert spec.trainer == {"kind": "mlp", "model_name": "Digits_v2-a"}


@pytest.mark.parametrize("field, value, reason", [
    # a lone request waited 1e9 ms for a batch to fill: the router gave up after 92 s, saying no replica answered
    ("max_delay_ms", 1e9, "must be a number of milliseconds from 0 to 1,000"),
    ("max_delay_ms", -1, "must be a number of milliseconds from 0 to 1,000"),
    ("max_batch", 10 ** 9, "must be a whole number from 1 to 65,536"),
    ("max_batch", 0, "must be a whole number from 1 to 65,536"),
])
def test_serving_batch_limits_are_bounded(field: str, value: float, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "x", "tenant": "t", "serve": {"model": "models:/m@prod", field: value}})
    assert info.value.field == f"serve.{field}" and reason in str(info.value)


def test_a_stored_spec_holds_the_fields_set_and_reads_back_the_same() -> None:
    """Every field was stored at its default too: rolled back, an older scheduler refused `"max_restarts": 0` as an
    unknown field and failed every job submitted since, running ones included."""
    from aios.scheduler.spec import spec_to_store

    spec = validate_spec({"name": "x", "tenant": "t", "command": ["run"], "devices": 2, "max_restarts": 0,
                          "env": {}, "gang": True})
    assert spec_to_store(spec) == {"name": "x", "tenant": "t", "devices": 2, "command": ["run"]}
    assert validate_spec(spec_to_store(spec)) == spec
    full = validate_spec({"name": "x", "tenant": "t", "trainer": {"kind": "mlp"}, "max_restarts": 3, "priority": -2,
                          "devices": 0, "device_types": ["h100"], "checkpoint_interval_s": 60})
    assert validate_spec(spec_to_store(full)) == full and spec_to_store(full)["max_restarts"] == 3


@pytest.mark.parametrize("value", [0, -1, 3601])
def test_the_stop_grace_is_bounded(value: float) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "x", "tenant": "t", "command": ["run"], "stop_grace_s": value})
    assert info.value.field == "stop_grace_s" and "at most 3600" in str(info.value)
    assert validate_spec({"name": "x", "tenant": "t", "command": ["run"], "stop_grace_s": 120}).stop_grace_s == 120


def test_a_preempted_job_keeps_its_devices_for_its_whole_stop_grace() -> None:
    """The scheduler took a preempted job's devices back after 30 s whatever grace the job had been given."""
    from aios.scheduler.local import step
    from aios.scheduler.policies import make_policy
    from aios.scheduler.state import PREEMPTING
    from tests.scheduler.helpers import Cluster

    c = Cluster(("n1", "a100", 4))
    policy = make_policy("priority")
    c.submit("low", 4, priority=0, stop_grace_s=120, now=1.0)
    step(c.state, policy, 2.0)
    from aios.common.events import JobStarted, WorkerStarted
    from aios.scheduler.local import apply
    apply(c.state, [("job.low", [JobStarted(aggregate_id="low", world_size=4)]),
                    ("run.low", [WorkerStarted(aggregate_id="low", node_id="n1", worker="rank0-a1", pid=1,
                                               device_uuids=[], attempt=1)])], 3.0)
    c.submit("high", 4, priority=10, now=4.0)
    step(c.state, policy, 5.0)
    assert c.status("low") == PREEMPTING
    step(c.state, policy, 60.0)  # its workers still stopping, within their 120 s
    assert c.status("low") == PREEMPTING
    step(c.state, policy, 140.0)
    assert c.status("low") != PREEMPTING
