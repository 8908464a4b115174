"""The registry's commands against a real nats-server: versions, content digests, aliases under concurrency,
deletion with garbage collection, compression lineage, and errors that name the field."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest

from aios.common.events import Lineage, ModelAliasSet
from aios.common.natsserver import NatsServer
from aios.common.store import EventStore
from aios.model_registry import builtin, nn
from aios.model_registry.blobs import BlobError, BlobStore, digest_of
from aios.model_registry.service import Registry, handle
from aios.model_registry.state import BadInput, NotFound, RegistryError
from aios.trainer.mlp import TrainerConfig
from tests.conftest import open_store

TRAINER = {"kind": "mlp", "dataset": "digits", "classes": 10, "hidden": 32, "steps": 150, "samples": 1000}


@pytest.fixture(scope="module")
def trained() -> nn.Model:
    cfg = TrainerConfig(**TRAINER)  # type: ignore[arg-type]
    return builtin.model_from_params(cfg, builtin.train_locally(cfg))


async def registry(store: EventStore) -> Registry:
    bucket = f"T_MODELS_{store.stream}"  # a bucket of this test alone
    return Registry(store, BlobStore(store, bucket))


async def test_versions_are_numbered_and_bytes_are_stored_once_by_digest(store: EventStore, trained: nn.Model) -> None:
    reg = await registry(store)
    v1 = await reg.register_bytes("digits", trained.encode(), TRAINER, tags={"team": "vision"})
    assert v1["version"] == 1 and v1["uri"] == "models:/digits/1" and v1["digest"] == digest_of(trained.encode())
    assert v1["signature"]["input"] == ["input", "FP32", [64]] and v1["signature"]["output"][2] == [10]
    assert v1["metrics"]["accuracy"] > 0.8 and len(v1["evaluation"]["confusion"]) == 10
    v2 = await reg.register_bytes("digits-copy", trained.encode())
    assert v2["digest"] == v1["digest"] and list((await reg.blobs.digests())) == [v1["digest"]]  # stored once
    again = await reg.register_bytes("digits", trained.encode(), TRAINER)
    assert again["version"] == 2
    _, loaded = await reg.load("models:/digits/2")
    x, _ = builtin.data(TRAINER, "eval")
    assert (loaded.predict(x) == trained.predict(x)).all()
    assert [m["name"] for m in reg.list(tag="team=vision")] == ["digits"]
    assert [m["name"] for m in reg.list(metric="accuracy", min_value=0.5)] == ["digits"]  # the copy has no metrics


async def test_a_corrupted_object_is_detected(store: EventStore, trained: nn.Model) -> None:
    reg = await registry(store)
    v1 = await reg.register_bytes("fragile", trained.encode())
    bucket = await reg.blobs.bucket()
    info = await bucket.get_info(v1["digest"].replace(":", "-"))
    chunks = f"$O.{reg.blobs.bucket_name}.C.{info.nuid}"
    # flip one byte of the stored chunk underneath the object's metadata, as a bad disk would
    await store.js.purge_stream(f"OBJ_{reg.blobs.bucket_name}", subject=chunks)
    data = bytearray(trained.encode())
    data[len(data) // 2] ^= 0xFF
    await store.js.publish(chunks, bytes(data))
    with pytest.raises(BlobError, match="corrupted"):
        await reg.load("models:/fragile/1")
    # and bytes substituted under the digest's name (valid for NATS, wrong for us)
    await bucket.put(v1["digest"].replace(":", "-"), b"something else")
    with pytest.raises(BlobError, match="corrupted: its bytes hash to sha256:"):
        await reg.load("models:/fragile/1")


async def test_aliases_move_atomically_and_concurrent_moves_lose_nothing(nats_server: NatsServer, store: EventStore,
                                                                        trained: nn.Model) -> None:
    reg = await registry(store)
    for _ in range(3):
        await reg.register_bytes("ranker", trained.encode())
    await reg.alias("ranker", "production", 1)
    assert reg.show("models:/ranker@production")["version"] == 1

    # two writers (separate connections, as two registry processes would be) move the alias 40 times at once
    other_store = EventStore(store.nc, store.servers, stream=store.stream, prefix=store.prefix)
    other = Registry(other_store, reg.blobs)
    moves = [(reg if i % 2 else other).alias("ranker", "production", 1 + i % 3) for i in range(40)]
    await asyncio.gather(*moves)
    history = [e for e in (await store.read("model.ranker")).events if isinstance(e, ModelAliasSet)]
    for before, after in zip(history, history[1:]):
        assert after.previous == before.version  # every move was decided on the state the one before left
    await reg.catch_up()
    assert reg.show("models:/ranker@production")["version"] == history[-1].version

    # compare-and-set: two clients that both saw the alias at v so-and-so; one wins, the other is told
    current = history[-1].version
    targets = [v for v in (1, 2, 3) if v != current]
    results = await asyncio.gather(*(r.alias("ranker", "production", t, expected=current)
                                     for r, t in zip((reg, other), targets)), return_exceptions=True)
    assert sum(isinstance(r, dict) for r in results) == 1
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(lost) == 1 and "moved meanwhile" in str(lost[0])


async def test_delete_keeps_the_trail_and_frees_the_bytes(store: EventStore, trained: nn.Model) -> None:
    reg = await registry(store)
    v1 = await reg.register_bytes("old", trained.encode())
    small, _ = __import__("aios.model_registry.compress", fromlist=["int8"]).int8(trained)
    v2 = await reg.register("old", small, Lineage(source="file"))
    await reg.alias("old", "production", 1)
    with pytest.raises(RegistryError, match="aliased as production"):
        await reg.delete("old", 1)
    await reg.unalias("old", "production")
    before = await reg.blobs.stored_bytes()
    result = await reg.delete("old", 1, reason="superseded", by="alice")
    assert result["collected"]["objects"] == [v1["digest"]]
    assert await reg.blobs.stored_bytes() < before - 0.9 * v1["size_bytes"]
    assert set(await reg.blobs.digests()) == {v2["digest"]}
    shown = reg.show("models:/old")
    assert [(v["version"], v["deleted"]) for v in shown["versions"]] == [(1, True), (2, False)]
    assert shown["versions"][0]["deleted_reason"] == "superseded"
    with pytest.raises(NotFound, match="deleted"):
        await reg.load("models:/old/1")
    assert reg.show("models:/old")["versions"][1]["version"] == 2  # version numbers are never reused
    v3 = await reg.register("old", small, Lineage(source="file"))
    assert v3["version"] == 3 and v3["digest"] == v2["digest"]


async def test_compression_makes_a_linked_version_with_measured_deltas(store: EventStore, trained: nn.Model) -> None:
    reg = await registry(store)
    await reg.register_bytes("digits", trained.encode(), TRAINER)
    out = await reg.compress("models:/digits/1", "int8", {})
    assert out["version"] == 2 and out["lineage"]["parent_version"] == 1 and out["lineage"]["source"] == "compression"
    deltas = out["deltas"]
    assert deltas["size_ratio"] < 0.3 and abs(deltas["accuracy"]) <= 0.01 and "latency_ms_per_1k" in deltas
    assert out["tags"] == {"compression": "int8", "parent": "1"}
    assert out["size_bytes"] < 0.3 * reg.show("models:/digits/1")["size_bytes"]
    # what each learned from: a file's is not known (it named the held-out split it was measured on), an int8
    # copy's is its parent's, a fine-tuned one's the training split
    assert reg.show("models:/digits/1")["lineage"]["dataset"] == "" and out["lineage"]["dataset"] == ""
    assert out["evaluation"]["dataset"].endswith("/eval")
    tuned = await reg.compress("models:/digits/1", "prune", {"sparsity": 0.5}, finetune_steps=50)
    assert tuned["lineage"]["dataset"].endswith("/train"), tuned["lineage"]


@pytest.mark.parametrize("op, args, message", [
    ("alias", {"name": "digits", "alias": "production", "version": "two"}, "version: a positive version number"),
    ("alias", {"name": "digits", "alias": "3x", "version": 1}, "alias: '3x' must start with a letter"),
    ("alias", {"name": "digits", "alias": "prod\n", "version": 1}, "alias: 'prod.n' must start with a letter"),
    ("register", {"name": "digits\n", "digest": "sha256:" + "0" * 64}, "name: 'digits.n' must be"),
    ("show", {"model": "models:/digits/zero"}, "version 'zero'"),
    ("show", {"model": "no such/thing/here"}, "is not models:/"),
    ("compress", {"model": "digits", "method": "zip"}, "method: 'zip' is not one of svd, int8, prune"),
    ("compress", {"model": "digits", "method": "svd", "options": {"target_ratio": 2}}, "target_ratio: 2"),
    ("register", {"name": "bad name!", "digest": "sha256:" + "0" * 64}, "name: 'bad name!' must be"),
    ("frobnicate", {}, "op: unknown 'frobnicate'"),
    # a negative grace freed at once the blob a concurrent register had just uploaded
    ("gc", {"orphan_grace_s": -1}, "orphan_grace_s: at least 60 s"),
    ("gc", {"orphan_grace_s": float("nan")}, "orphan_grace_s: at least 60 s"),
    # a trainer that is not an object was taken as "none given" and the lineage's data used instead
    ("eval", {"model": "digits", "trainer": "digits"}, "trainer: an object"),
    # a key with '=' could never be named by a KEY=VALUE filter; a blank one shows as nothing
    ("tag", {"name": "digits", "version": 1, "set": {"a=b": "c"}}, "tags: key 'a=b' must be 1 to 250"),
    ("tag", {"name": "digits", "version": 1, "set": {" ": "c"}}, "tags: key ' ' must be"),
    ("tag", {"name": "digits", "version": 1, "set": {"k": "v" * 5001}}, "tags.k: at most 5000 characters"),
    # 10^8 steps ran for hours in the registry, and nothing could stop it
    ("compress", {"model": "digits", "method": "svd", "finetune_steps": 10 ** 8},
     "finetune_steps: a whole number from 0 to 100,000, got 100000000"),
    # an unknown option was ignored and a version registered without it; a string or null failed in Python's words
    ("compress", {"model": "digits", "method": "int8", "options": {"bogus": 1}},
     r"options.bogus: not an option of int8 \(it takes none\)"),
    ("compress", {"model": "digits", "method": "svd", "options": {"rank": 5}},
     r"options.rank: not an option of svd \(known: energy, target_ratio\)"),
    ("compress", {"model": "digits", "method": "prune", "options": {"sparsity": "abc"}},
     "options.sparsity: a number is expected, got \"abc\""),
    ("compress", {"model": "digits", "method": "prune", "options": {"sparsity": None}},
     "options.sparsity: a number is expected, got null"),
    # "1" was compared with 1 and refused as a conflict (an HTTP 409), and true moved an alias expected at 1
    ("alias", {"name": "digits", "alias": "prod", "version": 1, "expected": "1"},
     r"expected: \"any\", null \(the alias is new\) or a version number, got \"1\""),
    ("alias", {"name": "digits", "alias": "prod", "version": 1, "expected": True}, "expected: .* got true"),
    # internal errors (AttributeError, TypeError), and min without metric listed every model
    ("list", {"tag": 5}, "tag: a string is expected, got 5"),
    ("list", {"metric": ["x"]}, r'metric: a string is expected, got \["x"\]'),
    ("list", {"name": 3}, "name: a string is expected, got 3"),
    ("list", {"min": 0.9}, r"min: needs metric"),
    ("list", {"metric": "accuracy", "min": "high"}, "min: a number is expected, got \"high\""),
])
async def test_bad_requests_name_the_field(store: EventStore, trained: nn.Model, op: str, args: dict[str, Any],
                                           message: str) -> None:
    """A wrong request is BadInput (the CLI exits 2 and scripts can tell it from a refusal the state decides)."""
    reg = await registry(store)
    await reg.register_bytes("digits", trained.encode(), TRAINER)
    with pytest.raises(BadInput, match=message):
        await handle(reg, op, args)


async def test_a_description_too_long_for_describe_is_refused_at_register_too(store: EventStore,
                                                                             trained: nn.Model) -> None:
    reg = await registry(store)
    with pytest.raises(BadInput, match="description: longer than 10,000 characters"):
        await reg.register_bytes("described", trained.encode(), description="x" * 20_000)
    assert (await reg.register_bytes("described", trained.encode(), description="x" * 10_000))["version"] == 1


async def test_a_tag_registered_can_be_changed_and_removed(store: EventStore, trained: nn.Model) -> None:
    """Keys of 129-250 characters were taken at register (MLflow's limit) and refused by `tag` (128), so such a
    tag could never be changed or removed; one rule holds for both now, removed keys included."""
    reg = await registry(store)
    key = "k" * 200
    await reg.register_bytes("digits", trained.encode(), TRAINER, tags={key: "v"})
    await handle(reg, "tag", {"name": "digits", "version": 1, "set": {key: "w"}})
    out = await handle(reg, "tag", {"name": "digits", "version": 1, "remove": [key]})
    assert key not in out["tags"], out
    with pytest.raises(BadInput, match="tags: key 'kkk.* must be 1 to 250"):
        await handle(reg, "tag", {"name": "digits", "version": 1, "remove": ["k" * 251]})
    # a version holds at most 100 tags: 3,000 were taken, and the request was too large for NATS (an HTTP 500)
    with pytest.raises(BadInput, match="tags: at most 100 on a version, got 3,000"):
        await handle(reg, "tag", {"name": "digits", "version": 1, "set": {f"t{i}": "v" for i in range(3000)}})
    await handle(reg, "tag", {"name": "digits", "version": 1, "set": {f"t{i}": "v" for i in range(100)}})
    with pytest.raises(BadInput, match="tags: at most 100 on a version; it would have 101"):
        await handle(reg, "tag", {"name": "digits", "version": 1, "set": {"one-more": "v"}})
    out = await handle(reg, "tag", {"name": "digits", "version": 1, "set": {"one-more": "v"}, "remove": ["t0"]})
    assert len(out["tags"]) == 100 and "one-more" in out["tags"]
    # removing a tag the version does not have is said, not done (a typo exited 0)
    with pytest.raises(NotFound, match="tags: version 1 of model 'digits' has no tag 'nosuch'"):
        await handle(reg, "tag", {"name": "digits", "version": 1, "remove": ["nosuch"]})


class Msg:
    """A request as NATS hands it to the service's callback, keeping the answer."""

    def __init__(self, op: str, args: dict[str, Any]) -> None:
        self.subject, self.data, self.reply = f"aios.registry.{op}", json.dumps(args).encode(), "r"
        self.headers: Any = None
        self.answer: Any = None

    async def respond(self, data: bytes) -> None:
        self.answer = json.loads(data)

    async def answered(self, within_s: float = 5.0) -> Any:
        for _ in range(int(within_s / 0.05)):
            if self.answer is not None:
                break
            await asyncio.sleep(0.05)
        return self.answer


async def test_a_long_compression_holds_up_no_other_request_and_stops_with_the_service(
        store: EventStore, trained: nn.Model) -> None:
    """A compression with a long fine-tuning held the registry's one lock: `aios models list`, the HTTP API and
    every other request timed out behind it, and a stopping registry waited for it (its thread), so the process
    never exited. Reads and other commands now go on beside it, and a stop ends it with nothing registered."""
    from aios.model_registry.service import ModelRegistryService

    service = ModelRegistryService()
    service.reg = await registry(store)
    await service.reg.register_bytes("digits", trained.encode(), TRAINER)
    slow = Msg("compress", {"model": "digits", "method": "prune", "finetune_steps": 100_000})
    # as NATS delivers a subscription's requests: one callback after the other (it awaited the whole compress)
    await asyncio.wait_for(service._on_request(slow), 10)
    await asyncio.sleep(0.5)
    for quick in (Msg("list", {}), Msg("alias", {"name": "digits", "alias": "prod", "version": 1})):
        await asyncio.wait_for(service._on_request(quick), 10)
        answer = await quick.answered()
        assert answer is not None and "error" not in answer, answer
    assert slow.answer is None
    service.reg.stopping.set()
    await asyncio.wait_for(service.finish_requests(), 10)
    assert slow.answer == {"error": "compress: the registry stopped before it finished; nothing was registered"}
    assert [v["version"] for v in (await handle(service.reg, "show", {"model": "digits"}))["versions"]] == [1]


async def test_a_version_a_live_replica_serves_is_not_deleted(store: EventStore, trained: nn.Model) -> None:
    """A deployment following an alias whose alias was then removed kept serving its version, and deleting that
    version was allowed (its bytes collected at once): the registry only knew of pinned URIs. Replicas say which
    version they serve, and a version one of them serves is not deleted."""
    import json

    from aios.model_registry.replica import endpoints_bucket

    reg = await registry(store)
    for _ in range(2):
        await reg.register_bytes("digits", trained.encode(), TRAINER)
    kv = await endpoints_bucket(store)
    await kv.put("digits.web-1.0", json.dumps({"key": "digits.web-1.0", "url": "http://h:1", "model": "digits",
                                               "job": "web-1", "version": 1, "uri": "models:/digits@prod"}).encode())
    try:
        with pytest.raises(RegistryError, match="version: 1 of model 'digits' is being served by web-1"):
            await handle(reg, "delete", {"name": "digits", "version": 1})
        assert (await handle(reg, "delete", {"name": "digits", "version": 2}))["deleted"]
    finally:
        await kv.delete("digits.web-1.0")


async def test_an_alias_a_deployment_follows_does_not_move_to_a_model_its_clients_cannot_call(
        store: EventStore, trained: nn.Model) -> None:
    """Moving `production` to a version that takes 4 features instead of 64 was accepted: the replicas refused to
    load it (a line in their logs), then loaded it at their next restart, and every client request failed. While a
    deployment follows the alias, a move to another signature needs --force."""
    import numpy as np

    from aios.common.events import JobSubmitted

    reg = await registry(store)
    await reg.register_bytes("digits", trained.encode(), TRAINER)
    await reg.register_bytes("digits", trained.encode(), TRAINER)
    small = nn.from_mlp(np.zeros((4, 8)), np.zeros(8), np.zeros((8, 3)), np.zeros(3), ["a", "b", "c"])
    await reg.register_bytes("digits", small.encode())
    await handle(reg, "alias", {"name": "digits", "alias": "production", "version": 1})
    await store.append("job.web-1", JobSubmitted(aggregate_id="web-1", tenant="t", spec={
        "name": "web", "tenant": "t", "devices": 1, "serve": {"model": "models:/digits@production"}}))
    await reg.catch_up()
    with pytest.raises(RegistryError, match=r"version: 3 takes FP32 \[4\] and gives \[3\], but production \(now 1\) "
                                            r"takes FP32 \[64\] and gives \[10\]; web-1 serves digits@production"):
        await handle(reg, "alias", {"name": "digits", "alias": "production", "version": 3})
    assert (await handle(reg, "alias", {"name": "digits", "alias": "production", "version": 2}))["changed"]
    assert (await handle(reg, "alias", {"name": "digits", "alias": "staging", "version": 3}))["changed"]  # unserved
    moved = await handle(reg, "alias", {"name": "digits", "alias": "production", "version": 3, "force": True})
    assert moved["changed"] and moved["previous"] == 2
    with pytest.raises(BadInput, match="force: true or false"):
        await handle(reg, "alias", {"name": "digits", "alias": "production", "version": 3, "force": "yes"})
    # removing it would leave the deployment nothing to load at its next restart (it failed then)
    with pytest.raises(RegistryError, match=r"alias: web-1 serves digits@production; cancel it, or serve another "
                                            r"alias or version, first \(--force removes it anyway\)"):
        await handle(reg, "unalias", {"name": "digits", "alias": "production"})
    assert (await handle(reg, "unalias", {"name": "digits", "alias": "staging"}))["removed"] == 3
    assert (await handle(reg, "unalias", {"name": "digits", "alias": "production", "force": True}))["removed"] == 3


async def test_an_evaluation_on_other_data_is_kept_beside_the_headline_one(store: EventStore,
                                                                          trained: nn.Model) -> None:
    """`aios models eval` on 20 samples of other data replaced the version's metrics and evaluation: `show` and
    `list` then gave the 20-sample accuracy as the model's, and the compression deltas referred to numbers no longer
    shown. An evaluation on other data is kept under its dataset; the one on the version's own data stays the
    headline (and an evaluation on that same data again replaces it)."""
    reg = await registry(store)
    v1 = await reg.register_bytes("digits", trained.encode(), TRAINER)
    headline = (v1["metrics"]["accuracy"], v1["evaluation"]["dataset"])
    other = await handle(reg, "eval", {"model": "models:/digits/1", "trainer": {**TRAINER, "samples": 40, "seed": 5}})
    shown = reg.show("models:/digits/1")
    assert (shown["metrics"]["accuracy"], shown["evaluation"]["dataset"]) == headline
    assert shown["evaluations"] == {other["dataset"]: other["metrics"]} and other["dataset"] != headline[1]
    again = await handle(reg, "eval", {"model": "models:/digits/1"})  # its own data: the headline, again
    assert again["dataset"] == headline[1] and reg.show("models:/digits/1")["evaluation"]["dataset"] == headline[1]


async def test_an_evaluation_of_more_data_than_the_registry_holds_takes_a_part_of_it(
        store: EventStore, trained: nn.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """`aios models eval` with a billion samples was taken, and the registry, which serves every model, grew until
    it was killed. It evaluates (and fine-tunes) on as many rows as its memory budget allows, the same number for
    every model of a config, and the dataset's name says how many."""
    from aios.model_registry import builtin
    from aios.trainer.mlp import parse_config

    reg = await registry(store)
    await reg.register_bytes("digits", trained.encode(), TRAINER)
    assert builtin.within_memory(parse_config(TRAINER)) == parse_config(TRAINER)  # a small set whole
    monkeypatch.setattr(builtin, "MAX_DATA_BYTES", 1 << 20)  # 1 MiB: a few hundred rows of digits
    huge = {**TRAINER, "samples": 10**9}
    rows = builtin.within_memory(parse_config(huge)).samples
    assert 10 <= rows < 2000
    big = await handle(reg, "eval", {"model": "models:/digits/1", "trainer": huge})
    assert f"/n={rows}/eval" in big["dataset"] and 0 <= big["metrics"]["accuracy"] <= 1, big["dataset"]
    x = np.random.default_rng(0).normal(size=(nn.CHUNK_ROWS * 2 + 5, trained.inputs)).astype(np.float32)
    assert np.allclose(trained.logits(x), np.concatenate([trained.logits(x[:1000]), trained.logits(x[1000:])]),
                       atol=1e-5)  # a forward pass in chunks gives what one pass gives


async def test_refusals_that_depend_on_the_state_are_not_bad_input(store: EventStore, trained: nn.Model) -> None:
    reg = await registry(store)
    await reg.register_bytes("digits", trained.encode(), TRAINER)
    await handle(reg, "alias", {"name": "digits", "alias": "production", "version": 1})
    with pytest.raises(RegistryError, match="points at 1, not nothing") as moved:
        await handle(reg, "alias", {"name": "digits", "alias": "production", "version": 1, "expected": None})
    with pytest.raises(BlobError, match="is missing from") as missing:
        await handle(reg, "register", {"name": "fine", "digest": "sha256:" + "0" * 64})
    assert not isinstance(moved.value, BadInput) and not isinstance(missing.value, BadInput)


async def test_the_endpoint_listing_holds_replicas_only(store: EventStore) -> None:
    """The router and the gateway announce their plain-text addresses in the same bucket: listing every model's
    replicas (`aios models endpoints` with no name) parsed them as JSON and crashed."""
    import json

    from aios.model_registry.replica import endpoints, endpoints_bucket

    kv = await endpoints_bucket(store)
    await kv.put("_router", b"http://127.0.0.1:8600")
    await kv.put("_gateway", b"http://127.0.0.1:8080")
    replica = {"key": "digits.j1.0", "uri": "models:/digits@production", "version": 2, "url": "http://h:1"}
    await kv.put("digits.j1.0", json.dumps(replica).encode())
    assert await endpoints(store) == [replica]
    assert await endpoints(store, "digits") == [replica] and await endpoints(store, "other") == []


def test_a_trained_models_metrics_keep_the_last_training_loss() -> None:
    """The final progress report carries only the accuracy: the whole record was replaced by it, and every model
    registered from a job lost its train_loss."""
    from aios.common.events import JobProgress, JobSubmitted
    from aios.common.store import Commit
    from aios.model_registry.service import RegistryView, fold

    view = RegistryView()
    spec = {"name": "m", "tenant": "t", "trainer": {"kind": "mlp"}}
    fold(view, Commit(1, "job.j", [JobSubmitted(aggregate_id="j", tenant="t", spec=spec)]))
    fold(view, Commit(2, "run.j", [JobProgress(aggregate_id="j", step=10, loss=0.5, accuracy=0.8, attempt=1),
                                   JobProgress(aggregate_id="j", step=20, loss=0.25, accuracy=0.9, attempt=1)]))
    fold(view, Commit(3, "run.j", [JobProgress(aggregate_id="j", step=20, accuracy=0.93, attempt=1, final=True)]))
    assert view.final_progress["j"] == {"train_loss": 0.25, "train_accuracy": 0.93}
    # and none from an attempt the job has left (workers of a lost node that ran on)
    from aios.common.events import Assignment, JobPlaced
    fold(view, Commit(4, "job.j", [JobPlaced(aggregate_id="j", world_size=1, attempt=2,
                                             assignments=[Assignment("n2", ["g0"], [0])])]))
    fold(view, Commit(5, "run.j", [JobProgress(aggregate_id="j", step=30, loss=9.0, accuracy=0.1, attempt=1),
                                   JobProgress(aggregate_id="j", step=25, loss=0.2, attempt=2)]))
    assert view.final_progress["j"] == {"train_loss": 0.2, "train_accuracy": 0.93}


async def test_registering_a_job_whose_checkpoint_is_gone_says_why(store: EventStore) -> None:
    """A checkpoint deleted (`aios checkpoints --delete`): a late `register-job` said only "ObjectNotFoundError"."""
    from aios.common.events import JobSubmitted, JobSucceeded

    reg = await registry(store)
    job_id = f"old-{store.stream}"  # no checkpoint of that name in the shared bucket
    await store.append(f"job.{job_id}", [
        JobSubmitted(aggregate_id=job_id, tenant="t", spec={"name": "old", "tenant": "t", "devices": 1,
                                                            "trainer": TRAINER}),
        JobSucceeded(aggregate_id=job_id)])
    await reg.catch_up()
    with pytest.raises(NotFound, match=rf"job '{job_id}': its checkpoint is gone \(deleted by `aios checkpoints "
                                       r"--delete`"):
        await handle(reg, "register-job", {"job": job_id})


async def test_a_collection_keeps_the_bytes_of_a_version_recorded_while_it_runs(store: EventStore,
                                                                                trained: nn.Model) -> None:
    """A compression runs beside other commands, and compressing is deterministic: it stored bytes a collection
    had just found unused (a deleted version's), found them there, recorded its version, and the collection then
    deleted them: a live version with no bytes (found by review)."""
    import asyncio

    from aios.model_registry import compress

    reg = await registry(store)
    small, _ = compress.compress(trained, "int8", {})
    await reg.register_bytes("racy", small.encode())
    await reg.register_bytes("racy", trained.encode())  # the model keeps a live version
    listing = asyncio.Event()
    digests = reg.blobs.digests

    async def slow_listing() -> dict[str, int]:  # a large bucket: the collection lists it for a while
        listing.set()
        await asyncio.sleep(0.5)
        return await digests()

    reg.blobs.digests = slow_listing  # type: ignore[method-assign]
    deleting = asyncio.ensure_future(reg.delete("racy", 1))
    await listing.wait()
    again = await reg.register_bytes("racy", small.encode())  # the same bytes, as a compression makes them
    await deleting
    _, loaded = await reg.load(again["uri"])
    assert loaded.encode() == small.encode()


async def test_registering_a_trained_jobs_model_holds_up_no_command(store: EventStore, trained: nn.Model) -> None:
    """Registering a succeeded job's model (its checkpoint read, then evaluated on up to 512 MiB of data) held the
    registry's command lock: while a sweep's models were registered, every alias, tag and delete waited, and the
    CLI timed out. A request to register the same job meanwhile still gets it once."""
    import msgspec

    from aios.common.events import JobSubmitted, JobSucceeded
    from aios.common.snapshot import object_bucket
    from aios.model_registry.service import CHECKPOINTS, ModelRegistryService
    from aios.trainer import mlp
    from aios.trainer.training import Checkpoint

    service = ModelRegistryService()
    service.reg = reg = await registry(store)
    await reg.register_bytes("digits", trained.encode(), TRAINER)
    job_id = f"sweep-{store.stream.lower()}"
    params = mlp.init_params(TrainerConfig(**TRAINER))  # type: ignore[arg-type]
    checkpoint = Checkpoint.of(150, params, {"m": np.zeros_like(params), "v": np.zeros_like(params)})
    bucket = await object_bucket(store, CHECKPOINTS, "AIOS training checkpoints")
    await bucket.put(job_id, msgspec.msgpack.encode(checkpoint))
    await store.append(f"job.{job_id}", [
        JobSubmitted(aggregate_id=job_id, tenant="t", name="sweep",
                     spec={"name": "sweep", "tenant": "t", "devices": 1, "trainer": TRAINER}),
        JobSucceeded(aggregate_id=job_id)])
    await reg.catch_up()
    release = asyncio.Event()
    evaluate = reg._evaluate

    async def slow_evaluation(*args: Any) -> Any:  # a large held-out split
        await release.wait()
        return await evaluate(*args)
    reg._evaluate = slow_evaluation  # type: ignore[method-assign]
    registering = asyncio.ensure_future(service._register_new_jobs())
    await asyncio.sleep(0.2)
    again = Msg("register-job", {"job": job_id})
    await service._on_request(again)
    alias = Msg("alias", {"name": "digits", "alias": "prod", "version": 1})
    await service._on_request(alias)
    answer = await alias.answered()
    assert answer is not None and "error" not in answer, answer
    release.set()
    await asyncio.wait_for(registering, 30)
    assert (await again.answered(30)) == {"registered": False}  # it waited, then found the job registered
    assert service.registered == 1
    versions = (await handle(reg, "show", {"model": "sweep"}))["versions"]
    assert [v["lineage"]["job_id"] for v in versions] == [job_id]


def test_what_a_registry_answer_says_of_serving_the_model() -> None:
    """Refused at submit: what is not there, what is no model URI, what is deleted; a fault of the registry's own
    is no verdict (the job waits for it, as it would for devices)."""
    from aios.model_registry.state import serve_refusal

    assert serve_refusal({"error": "model 'ghost' is not registered", "not_found": True}) == \
        "model 'ghost' is not registered"
    assert serve_refusal({"error": "version: 'abc' is no version number", "bad_input": True}) == \
        "version: 'abc' is no version number"
    assert serve_refusal({"error": "internal error: disk full", "internal": True}) is None
    assert serve_refusal({"name": "m", "versions": [{"version": 1, "deleted": True}]}) == "model 'm' has no live version"
    assert serve_refusal({"name": "m", "versions": [{"version": 1, "deleted": True}, {"version": 2, "deleted": False}]}) \
        is None
    assert serve_refusal({"name": "m", "version": 2, "deleted": True}) == "version 2 of model 'm' was deleted"
    assert serve_refusal({"name": "m", "version": 2, "deleted": False}) is None
