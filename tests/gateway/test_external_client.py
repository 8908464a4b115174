"""docs/external-clients.md holds: a program with nothing but nats-py submits a job and follows it to the end."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from aios.scheduler.spec import WORKER_VARIABLES, JobSpec
from tests.trainer.test_e2e import start

CLIENT = Path(__file__).parent.parent / "support" / "external_client.py"
DOC = Path(__file__).parent.parent.parent / "docs" / "external-clients.md"


def test_the_client_imports_nothing_of_aios() -> None:
    tree = ast.parse(CLIENT.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "aios" not in imported and "nats" in imported


def test_the_document_lists_every_field_of_the_job_spec() -> None:
    text = DOC.read_text()
    fields = msgspec.json.schema(JobSpec)["$defs"]["JobSpec"]["properties"]
    assert [f for f in fields if f"| `{f}` |" not in text] == []


def test_the_document_lists_every_variable_aios_sets_for_workers() -> None:
    """A spec's ``env`` may not set these; a client reads the document to know which (seven were missing)."""
    assert sorted(v for v in WORKER_VARIABLES if f"`{v}`" not in DOC.read_text()) == []


def test_a_raw_nats_client_submits_and_follows_a_job(aios_env: dict[str, str]) -> None:
    cluster, aios = start(aios_env, nodes=1)
    try:
        deadline = time.monotonic() + 60
        while aios("nodes", "--json").returncode != 0:  # the cluster is up (and its stream exists)
            assert time.monotonic() < deadline
            time.sleep(0.3)
        out = subprocess.run([sys.executable, str(CLIENT), cluster.nats_url, "ext-1"], capture_output=True,
                             text=True, timeout=120, env={k: v for k, v in aios_env.items() if k != "PYTHONPATH"})
        assert out.returncode == 0, out.stderr[-2000:]
        report = json.loads(out.stdout)
        assert report["retry_duplicate"] and report["retry_seq"] == report["seq"]  # stored once
        assert report["second_id_refused"]
        events = report["events"]
        assert events[0] == "JobSubmitted" and events.count("JobSubmitted") == 1
        assert "JobPlaced" in events and events[-1] == "JobSucceeded", events
    finally:
        cluster.stop()
