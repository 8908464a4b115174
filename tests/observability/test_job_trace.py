"""One OpenTelemetry trace per job, across every process that touches it: the CLI's submit is the root; the
scheduler's decisions, each node trainer's launch, every worker's training (with sampled steps and checkpoints),
the outcome and the registry's registration of the model hang below it. An OTLP/HTTP receiver in the test collects
what all the processes export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.trainer.test_e2e import start, wait_job


class Receiver:
    """OTLP over HTTP (protobuf), as ``OTEL_EXPORTER_OTLP_ENDPOINT`` exporters send it."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            attrs = {a.key: a.value.string_value or a.value.int_value for a in s.attributes}
                            spans.append({"service": service, "name": s.name, "trace": s.trace_id.hex(),
                                          "span": s.span_id.hex(), "parent": s.parent_span_id.hex(), "attrs": attrs,
                                          "error": s.status.code == s.status.STATUS_CODE_ERROR})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_training_job_is_one_trace_across_all_services(aios_env: dict[str, str], tmp_path: Path) -> None:
    receiver = Receiver()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    cluster, aios = start({**aios_env, **otel}, nodes=2)
    try:
        trainer = {"kind": "mlp", "steps": 120, "checkpoint_every": 60, "step_delay_s": 0.02}
        spec = tmp_path / "traced.json"
        spec.write_text(json.dumps({"name": "traced", "tenant": "ml", "devices": 4, "max_devices_per_node": 2,
                                    "trainer": trainer}))
        out = aios("submit", str(spec), "--json")
        assert out.returncode == 0, out.stderr
        job_id = json.loads(out.stdout)["job"]
        done = wait_job(aios, "traced", ("succeeded", "failed"))
        assert done["status"] == "succeeded", aios("job", job_id).stdout[-3000:]

        def of_job() -> list[dict[str, Any]]:
            return [s for s in receiver.spans if s["attrs"].get("aios.job") == job_id]
        deadline = time.monotonic() + 30
        while not any(s["name"] == "register model" for s in of_job()):
            assert time.monotonic() < deadline, sorted({(s["service"], s["name"]) for s in of_job()})
            time.sleep(0.3)
        # a serve job's trace began at a bare publish span: `aios serve` now roots it as `aios submit` does
        out = aios("serve", "models:/traced/1", "--replicas", "1", "--json")
        assert out.returncode == 0, out.stderr[-2000:]
        serve_job = json.loads(out.stdout)["job"]
        while not any(s["attrs"].get("aios.job") == serve_job and s["name"] == "launch" for s in receiver.spans):
            assert time.monotonic() < deadline + 30, sorted({s["name"] for s in receiver.spans
                                                             if s["attrs"].get("aios.job") == serve_job})
            time.sleep(0.3)
        # a registry command from the CLI and what the registry does for it were separate traces
        assert aios("models", "alias", "traced", "production", "1").returncode == 0
        while not any(s["name"] == "process aios.registry.alias" for s in receiver.spans):
            assert time.monotonic() < deadline + 40
            time.sleep(0.3)
        # a failed job's spans said nothing of the failure (trace viewers filter by status)
        failing = tmp_path / "failing.json"
        failing.write_text(json.dumps({"name": "failing", "tenant": "ml", "devices": 1,
                                       "command": [sys.executable, "-c", "raise SystemExit(3)"]}))
        failing_job = json.loads(aios("submit", str(failing), "--json").stdout)["job"]
        # a job submitted from a shell without tracing, then cancelled from one with it: the cancel was a trace of
        # its own, unconnected, and the scheduler's decision about it another
        untraced = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        untraced.update(AIOS_NATS_URL=cluster.nats_url)
        sleeper = tmp_path / "sleeper.json"
        sleeper.write_text(json.dumps({"name": "sleeper", "tenant": "ml", "devices": 1,
                                       "command": [sys.executable, "-c", "import time; time.sleep(300)"]}))
        out = subprocess.run([sys.executable, "-m", "aios.cli.main", "submit", str(sleeper), "--json"],
                             env=untraced, capture_output=True, text=True, timeout=60)
        sleeper_job = json.loads(out.stdout)["job"]
        assert wait_job(aios, "failing", ("failed",))["status"] == "failed"
        wait_job(aios, "sleeper", ("running",))
        assert aios("cancel", sleeper_job).returncode == 0
        wait_job(aios, "sleeper", ("cancelled",))
        while not any(s["attrs"].get("aios.job") == sleeper_job and s["name"].startswith("stop workers")
                      for s in receiver.spans) or not any(
                s["attrs"].get("aios.job") == failing_job and s["name"] == "finish failed" for s in receiver.spans):
            assert time.monotonic() < deadline + 60, sorted(s["name"] for s in receiver.spans
                                                            if s["attrs"].get("aios.job") in (sleeper_job, failing_job))
            time.sleep(0.3)
        time.sleep(1.0)  # the publish spans below them come in the same or the next batch
    finally:
        cluster.stop()
        receiver.server.shutdown()

    mine = of_job()
    trace_id = {s["trace"] for s in mine}
    assert len(trace_id) == 1, "every span about the job is in one trace"
    everything = [s for s in receiver.spans if s["trace"] in trace_id]
    by_id = {s["span"]: s for s in everything}
    roots = [s for s in everything if not s["parent"]]
    assert [(r["service"], r["name"]) for r in roots] == [("aios-cli", "submit traced")]
    orphans = [(s["service"], s["name"]) for s in everything if s["parent"] and s["parent"] not in by_id]
    assert orphans == [], "every parent was exported: the tree is connected"

    names = defaultdict(set)
    for s in mine:
        names[s["service"]].add(s["name"].split(" ")[0] if s["name"].startswith(("step", "checkpoint")) else s["name"])
    assert any("JobPlaced" in n for n in names["aios-scheduler"]), names["aios-scheduler"]
    assert names["aios-trainer"] >= {"launch", "finish succeeded"}
    assert names["aios-trainer-worker"] >= {"train", "step", "checkpoint"}
    # the agents' spans about the workers they start and see exit were traces of their own
    assert names["aios-device-agent"] == {f"worker {what} rank{r}-a1" for what in ("started", "exited")
                                          for r in range(4)}, names["aios-device-agent"]
    assert "register model" in names["aios-model-registry"]
    launches = [s for s in mine if s["name"] == "launch"]
    assert len(launches) == 2  # one per node's trainer (2 devices on each of 2 nodes)
    trains = [s for s in mine if s["name"] == "train"]
    assert len(trains) == 4 and all(by_id[t["parent"]]["name"] == "launch" for t in trains)

    def ancestry(span: dict[str, Any]) -> list[str]:
        chain = []
        while span["parent"]:
            span = by_id[span["parent"]]
            chain.append(span["name"])
        return chain
    step = next(s for s in mine if s["name"].startswith("step"))
    assert ancestry(step)[-1] == "submit traced" and "train" in ancestry(step) and "launch" in ancestry(step)
    register = next(s for s in mine if s["name"] == "register model")
    assert "finish succeeded" in ancestry(register)

    served = [s for s in receiver.spans if s["attrs"].get("aios.job") == serve_job]
    serve_trace = {s["trace"] for s in served}
    assert len(serve_trace) == 1, "the serve job is one trace too"
    serve_roots = [(s["service"], s["name"]) for s in receiver.spans if s["trace"] in serve_trace and not s["parent"]]
    assert serve_roots == [("aios-cli", "submit serve-traced")], serve_roots

    handled = next(s for s in receiver.spans if s["name"] == "process aios.registry.alias")
    in_trace = [s for s in receiver.spans if s["trace"] == handled["trace"]]
    assert [(s["service"], s["name"]) for s in in_trace if not s["parent"]] == [
        ("aios-cli", "publish aios.registry.alias")]
    assert any(s["service"] == "aios-model-registry" and s["name"].startswith("publish ") and s["name"] != handled["name"]
               for s in in_trace), sorted((s["service"], s["name"]) for s in in_trace)  # the alias event it appended

    failed = {s["name"]: s["error"] for s in receiver.spans if s["attrs"].get("aios.job") == failing_job}
    assert failed["finish failed"] and failed["worker exited rank0-a1"], failed
    assert not any(s["error"] for s in mine), "a job that succeeded has no error in its trace"

    cancelled = [s for s in receiver.spans if s["attrs"].get("aios.job") == sleeper_job]
    assert len({s["trace"] for s in cancelled}) == 1, sorted((s["trace"][:6], s["name"]) for s in cancelled)
    names = {s["name"] for s in cancelled}
    assert f"cancel {sleeper_job}" in names and any(n.startswith("stop workers") for n in names), names
    assert any("JobCancelled" in n for n in names) and any("JobPlaced" in n for n in names), names
    stopped = next(s for s in cancelled if s["name"] == "worker exited rank0-a1")
    assert not stopped["error"], "a worker stopped on request did not fail"
