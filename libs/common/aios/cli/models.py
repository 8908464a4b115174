"""``aios models list|show|register|alias|unalias|tag|describe|delete|compress|eval|gc|serve|endpoints`` and ``aios serve``:
requests to the model-registry service (``aios.registry.<op>``), tables for people, ``--json`` for scripts."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aios.cli.inspect import ask
from aios.cli.output import plain
from aios.cli.jobs import _store
from aios.common.errors import AiosError, ConfigError, NotFound
from aios.scheduler import submission
from aios.scheduler.spec import SpecError, validate_spec

console = Console()


async def request(op: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    try:
        return await ask(f"aios.registry.{op}", body, timeout=timeout)
    except AiosError as exc:
        if "nobody answers" in str(exc):
            raise AiosError("nobody answers aios.registry: is the model-registry service running (aios up)?") from None
        raise


def _print(reply: Any, as_json: bool, human: Any) -> int:
    if as_json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    else:
        human(reply)
    return 0


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "-"


def _list_table(reply: dict[str, Any]) -> None:
    t = Table("model", "latest", "versions", "aliases", "accuracy", "f1 (macro)", "bytes")
    for m in reply["models"]:
        t.add_row(m["name"], str(m["latest"]), str(m["versions"]),
                  ", ".join(f"{a}→{v}" for a, v in m["aliases"].items()) or "-",
                  _pct(m["metrics"].get("accuracy")), _pct(m["metrics"].get("f1_macro")), str(m["size_bytes"]))
    console.print(t)


def _version_table(versions: list[dict[str, Any]]) -> None:
    t = Table("version", "aliases", "source", "parent", "accuracy", "bytes", "digest", "state")
    for v in versions:
        lin = v["lineage"]
        t.add_row(str(v["version"]), ", ".join(v["aliases"]) or "-",
                  lin["source"] + (f" {lin['compression'].get('method')}" if lin.get("compression") else "")
                  + (f" ({lin['job_id']})" if lin.get("job_id") else ""),
                  str(lin.get("parent_version") or "-"), _pct(v["metrics"].get("accuracy")), str(v["size_bytes"]),
                  v["digest"][7:19], "deleted" if v["deleted"] else "live")
    console.print(t)


def _show(reply: dict[str, Any]) -> None:
    if "versions" in reply:
        console.print(f"[bold]{reply['name']}[/]  aliases: "
                      + (", ".join(f"{a}→{v}" for a, v in reply["aliases"].items()) or "none"))
        _version_table(reply["versions"])
        return
    _version_table([reply])
    ev = reply.get("evaluation")
    if ev:
        m = ev["metrics"]
        console.print(f"evaluated on {plain(ev['dataset'])}: accuracy {_pct(m['accuracy'])}, precision {_pct(m['precision_macro'])}"
                      f", recall {_pct(m['recall_macro'])}, F1 {_pct(m['f1_macro'])}")
        t = Table("class", "precision", "recall", "f1", "support")
        for label, c in ev["per_class"].items():
            t.add_row(plain(label), _pct(c["precision"]), _pct(c["recall"]), _pct(c["f1"]), str(int(c["support"])))
        console.print(t)
    for dataset, m in reply.get("evaluations", {}).items():
        console.print(f"also evaluated on {plain(dataset)}: accuracy {_pct(m.get('accuracy'))}, F1 {_pct(m.get('f1_macro'))}")
    if reply["lineage"].get("compression"):
        console.print("compression: " + plain(json.dumps(reply["lineage"]["compression"])))


async def list_models(args: Any) -> int:
    body = {k: v for k, v in (("tag", args.tag), ("metric", args.metric), ("min", args.min), ("name", args.name))
            if v is not None}
    return _print(await request("list", body), args.json, _list_table)


async def show(args: Any) -> int:
    return _print(await request("show", {"model": args.model}), args.json, _show)


async def register(args: Any) -> int:
    from aios.model_registry.state import NAME

    if not NAME.fullmatch(args.name):  # before the upload: a refused name left its bytes behind as an orphan
        raise ConfigError(f"name {args.name!r}: letters, digits, '_' or '-', 1 to 64 characters")
    tags = _key_values(args.tag, "--tag")
    try:
        if Path(args.file).exists() and not Path(args.file).is_file():  # /dev/zero was read for ever
            raise ConfigError(f"{args.file}: not a regular file (a model file is expected)")
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{args.file}: {exc.strerror}") from None
    trainer = _trainer_option(args.trainer)
    from aios.model_registry.blobs import BlobStore

    store = await _store()
    try:  # the bytes go straight to the content-addressed bucket; the request names their digest
        digest = await BlobStore(store).put(data)
    finally:
        await store.close()
    reply = await request("register", {"name": args.name, "digest": digest, "trainer": trainer,
                                       "description": args.description or "", "tags": tags},
                          timeout=300 if trainer else 60)  # an evaluation, as `aios models eval` makes: minutes
    return _print(reply, args.json, lambda r: console.print(f"registered {r['uri']} ({r['size_bytes']} bytes, "
                                                            f"{r['digest'][:19]}...)"))


def _key_values(items: list[str] | None, option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict (one without ``=`` was dropped without a word)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option}: KEY=VALUE expected, got {item!r}")
        out[key] = value
    return out


async def alias(args: Any) -> int:
    body: dict[str, Any] = {"name": args.name, "alias": args.alias, "version": args.version}
    if args.expect is not None:
        if args.expect != "none" and not re.fullmatch(r"[0-9]{1,9}", args.expect):
            raise ConfigError(f"--expect: a version number or 'none', got {args.expect!r}")
        body["expected"] = None if args.expect == "none" else int(args.expect)
    if args.force:
        body["force"] = True
    reply = await request("alias", body)
    return _print(reply, args.json, lambda r: console.print(
        f"{r['name']}@{r['alias']} → {r['version']}" + (" (unchanged)" if not r["changed"] else " (new alias)" if r["previous"] is None
                                           else f" (was {r['previous']})")))


async def unalias(args: Any) -> int:
    reply = await request("unalias", {"name": args.name, "alias": args.alias, **({"force": True} if args.force else {})})
    return _print(reply, args.json, lambda r: console.print(f"removed {r['name']}@{r['alias']} (was {r['removed']})"))


async def tag(args: Any) -> int:
    from aios.model_registry.state import RegistryError, check_tags

    set_tags = _key_values(args.set, "--set")
    try:  # here, before the request: tags too large for one message were a traceback in sending it
        check_tags(set_tags)
    except RegistryError as exc:
        raise ConfigError(f"--set: {exc}") from None
    reply = await request("tag", {"name": args.name, "version": args.version, "set": set_tags,
                                  "remove": args.remove or []})
    return _print(reply, args.json, lambda r: console.print(f"{r['uri']} tags: {r['tags']}"))


async def describe(args: Any) -> int:
    reply = await request("describe", {"name": args.name, "version": args.version, "description": args.text})
    return _print(reply, args.json, lambda r: console.print(f"{r['uri']}: {r['description']}"))


async def delete(args: Any) -> int:
    reply = await request("delete", {"name": args.name, "version": args.version, "reason": args.reason or ""})
    return _print(reply, args.json, lambda r: console.print(
        f"deleted {r['name']}/{r['version']}; freed {r['collected']['bytes']} bytes "
        f"({len(r['collected']['objects'])} objects)"))


async def compress(args: Any) -> int:
    given = {flag: value for flag, value in (("--target-ratio", args.target_ratio), ("--energy", args.energy),
                                              ("--sparsity", args.sparsity)) if value is not None}
    applies = {"svd": ("--target-ratio", "--energy"), "prune": ("--sparsity",), "int8": ()}[args.method]
    for flag in given:  # an option the method ignores was silently dropped (svd --energy 0.9 --target-ratio 0.2)
        if flag not in applies:
            raise ConfigError(f"{flag}: does not apply to {args.method}"
                              + (f" (it takes {' or '.join(applies)})" if applies else " (it takes no option)"))
    if len(given) > 1:
        raise ConfigError("--target-ratio, --energy: give one of them, not both")
    options: dict[str, Any] = {}
    if args.method == "svd":  # 0 is a value, not "unset": it was taken for the default 0.5
        options = {"energy": args.energy} if args.energy is not None else {
            "target_ratio": args.target_ratio if args.target_ratio is not None else 0.5}
    elif args.method == "prune":
        options = {"sparsity": args.sparsity if args.sparsity is not None else 0.5}
    reply = await request("compress", {"model": args.model, "method": args.method, "options": options,
                                       "finetune_steps": args.finetune_steps}, timeout=300)

    def human(r: dict[str, Any]) -> None:
        d = r["deltas"]
        console.print(f"registered {r['uri']} ({args.method} of {r['lineage']['parent_version']}): size "
                      f"{r['size_bytes']} bytes (x{d['size_ratio']})"
                      + (f", accuracy {100 * d['accuracy']:+.2f} points, latency {d['latency_ms_per_1k']:+.3f} ms "
                         f"per 1k examples" if "accuracy" in d else ""))
    return _print(reply, args.json, human)


def _trainer_option(text: str | None) -> Any:
    """``--trainer``'s JSON, or a ConfigError naming the option (register and eval take the same)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--trainer: not JSON ({exc})") from None


async def evaluate(args: Any) -> int:
    trainer = _trainer_option(args.trainer)
    reply = await request("eval", {"model": args.model, "trainer": trainer}, timeout=300)
    return _print(reply, args.json, lambda r: console.print(
        f"{r['name']}/{r['version']} on {r['dataset']}: accuracy {_pct(r['metrics']['accuracy'])}, "
        f"F1 {_pct(r['metrics']['f1_macro'])}"))


async def gc(args: Any) -> int:
    reply = await request("gc", {"orphan_grace_s": args.orphan_grace})
    return _print(reply, args.json, lambda r: console.print(f"freed {r['bytes']} bytes in {len(r['objects'])} objects"))


async def endpoints(args: Any) -> int:
    from aios.model_registry.replica import endpoints as live
    from aios.model_registry.router import router_url

    store = await _store()
    try:
        found = await live(store, args.model)
        router = await router_url(store)
    finally:
        await store.close()
    if args.model and not found:  # a typo listed no replica and exited 0, as a model served by none does
        await request("show", {"model": args.model})  # NotFound (exit 3) when there is no such model
    reply = {"router": router, "replicas": found}

    def human(r: dict[str, Any]) -> None:
        console.print(f"router: {r['router'] or 'none (model-registry not running)'}")
        t = Table("replica", "model", "version", "url")
        for e in r["replicas"]:
            t.add_row(e["key"], e["uri"], str(e["version"]), e["url"])
        console.print(t)
    return _print(reply, args.json, human)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds, 0 or more, got {text!r}")
    return value


async def serve(args: Any) -> int:
    """Submit a serving job (``serve:``), wait for its replicas to announce themselves, print the endpoint."""
    from aios.model_registry.replica import endpoints as live
    from aios.model_registry.router import router_url
    from aios.model_registry.state import parse_uri, serve_refusal

    name, _, _ = parse_uri(args.model)
    if args.replicas < 1:  # 0 started one CPU-only replica; -1 was refused as "devices: ..."
        raise ConfigError(f"--replicas: must be at least 1, got {args.replicas}")
    # a model, version or alias that is not there is refused now (exit 3), not after the replicas fail to load it
    why = serve_refusal(await request("show", {"model": args.model}))
    if why is not None:
        raise NotFound(f"model: {why}")
    raw = {"name": args.job_name or f"serve-{name.lower()}"[:64], "tenant": args.tenant, "devices": args.replicas,
           "priority": args.priority, "serve": {"model": args.model, "max_batch": args.max_batch,
                                                "max_delay_ms": args.max_delay_ms}}
    try:
        spec = validate_spec(raw)
    except SpecError as exc:
        raise ConfigError(str(exc)) from None
    store = await _store()
    try:
        job_id = (await submission.submit(store, spec)).job
        deadline = time.monotonic() + args.wait
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = [e for e in await live(store, name) if e["key"].startswith(f"{name}.{job_id}.")]
            if len(found) >= max(1, args.replicas):
                break
            await asyncio.sleep(0.5)
        router = await router_url(store)
    finally:
        await store.close()
    reply = {"job": job_id, "replicas": found, "router": router,
             "infer_url": f"{router}/serve/{job_id}/v2/models/{name}/infer" if router else None}
    if len(found) < max(1, args.replicas):
        if args.json:
            print(json.dumps(reply))
        raise AiosError(f"job {job_id}: {len(found)} of {args.replicas} replicas ready after {args.wait:g}s; it "
                        f"stays submitted (aios why {job_id}, aios logs {job_id}; aios cancel {job_id} withdraws it)")

    def human(r: dict[str, Any]) -> None:
        console.print(f"serving {args.model} as job {r['job']}: {len(r['replicas'])} replica(s)")
        for e in r["replicas"]:
            console.print(f"  {e['key']}: models:/{name}/{e['version']} at {e['url']}")
        if r["infer_url"]:
            console.print(f"endpoint: POST {r['infer_url']}")
    return _print(reply, args.json, human)


def add_parsers(sub: Any) -> None:
    """The ``models`` command group and ``serve``."""
    def run(fn: Any) -> Any:
        return lambda args: asyncio.run(fn(args))

    models = sub.add_parser("models", help="the model registry: versions, aliases, compression, evaluation, serving")
    msub = models.add_subparsers(dest="models_command", required=True)

    def cmd(name: str, fn: Any, help_: str) -> Any:
        p = msub.add_parser(name, help=help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=run(fn))
        return p

    p = cmd("list", list_models, "models with their latest version")
    p.add_argument("--tag", help="KEY or KEY=VALUE on some live version")
    p.add_argument("--metric", help="only models whose latest version has this metric ...")
    p.add_argument("--min", type=float, help="... at least this value")
    p.add_argument("--name", help="substring of the name")
    p = cmd("show", show, "a model (all versions) or one version: NAME, models:/NAME/3, models:/NAME@alias")
    p.add_argument("model")
    p = cmd("register", register, "register a model file (aios-mlp/1) by hand")
    p.add_argument("name")
    p.add_argument("file")
    p.add_argument("--trainer", help="JSON of the built-in trainer config naming its data (to evaluate it)")
    p.add_argument("--description")
    p.add_argument("--tag", action="append", help="KEY=VALUE (repeatable)")
    p = cmd("alias", alias, "point an alias (production, staging, ...) at a version")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version", type=int)
    p.add_argument("--expect", help="only if the alias points at this version now (or 'none'): compare-and-set")
    p.add_argument("--force", action="store_true",
                   help="move it even to a version that takes or gives other shapes while a deployment follows it")
    p = cmd("unalias", unalias, "remove an alias")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("--force", action="store_true", help="remove it even while a deployment follows it")
    p = cmd("tag", tag, "set or remove tags of a version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--remove", action="append", metavar="KEY")
    p = cmd("describe", describe, "set a version's description")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("text")
    p = cmd("delete", delete, "delete a version (kept in the audit trail; its bytes are freed)")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--reason")
    p = cmd("compress", compress, "a compressed new version: svd, int8 or prune")
    p.add_argument("model")
    p.add_argument("method", choices=["svd", "int8", "prune"])
    p.add_argument("--target-ratio", type=float, help="svd: size relative to the parent (default 0.5)")
    p.add_argument("--energy", type=float, help="svd: share of squared singular values to keep, instead")
    p.add_argument("--sparsity", type=float, help="prune: share of weights to remove (default 0.5)")
    p.add_argument("--finetune-steps", type=int, default=1000, help="svd/prune: recovery steps on the training data")
    p = cmd("eval", evaluate, "evaluate a version on its held-out data (or --trainer's)")
    p.add_argument("model")
    p.add_argument("--trainer", help="JSON of a built-in trainer config naming the data")
    p = cmd("gc", gc, "free the bytes no live version references")
    p.add_argument("--orphan-grace", type=float, default=3600.0, help="seconds before an unreferenced object goes")
    p = cmd("endpoints", endpoints, "serving replicas and the router")
    p.add_argument("model", nargs="?")
    for parser in (cmd("serve", serve, "serve a model through the scheduler"), sub.add_parser(
            "serve", help="serve a model: N replicas as a job, behind the registry's router (= aios models serve)")):
        parser.add_argument("model", help="models:/NAME@alias, models:/NAME/3 or NAME")
        parser.add_argument("--replicas", type=int, default=1, help="replicas (one device each)")
        parser.add_argument("--tenant", default="default")
        parser.add_argument("--priority", type=int, default=0)
        parser.add_argument("--job-name")
        parser.add_argument("--max-batch", type=int, default=256)
        parser.add_argument("--max-delay-ms", type=float, default=2.0)
        parser.add_argument("--wait", type=_seconds, default=60.0,
                            help="seconds to wait for the replicas (the job stays submitted if they are not ready)")
        if "--json" not in parser._option_string_actions:  # noqa: SLF001 - the top-level `serve` needs it too
            parser.add_argument("--json", action="store_true")
        parser.set_defaults(handler=run(serve))
