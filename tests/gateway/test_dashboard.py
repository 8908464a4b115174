"""The dashboard in headless Chromium against a running cluster: the cluster map shows the nodes and a busy device,
the job queue and tenant usage fill in, a job page shows its timeline, loss curve and logs, live updates arrive by
server-sent events, and a screenshot is taken (kept under .test-artifacts/)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from aios.cli.cluster import LocalCluster
from tests.gateway.test_api import ADMIN, ALICE, call, gateway  # noqa: F401  (the module-scoped cluster fixture)
from tests.support.browser import Browser, chromium

ARTIFACTS = Path(__file__).parent.parent.parent / ".test-artifacts"


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (CI installs it: apt-get install chromium)")
def test_dashboard_shows_the_cluster_jobs_and_a_job_page(gateway: tuple[str, LocalCluster]) -> None:  # noqa: F811
    url, _ = gateway
    trainer = {"kind": "mlp", "steps": 150, "checkpoint_every": 50, "step_delay_s": 0.04}
    status, made = call(url, "POST", "/api/v1/jobs", ALICE, {"name": "curve", "devices": 2, "trainer": trainer})
    assert status == 201
    job = made["job"]

    async def drive() -> None:
        browser = await Browser(chromium()).start()  # type: ignore[arg-type]
        try:
            await browser.goto(f"{url}/?token={ADMIN}")
            await browser.wait_for("document.querySelector('#nodes .node[data-node=\"sim-a\"]') !== null")
            assert await browser.evaluate("document.querySelectorAll('#nodes .device').length") == 2
            # the running job holds both devices: the map turns them busy by itself (server-sent events)
            await browser.wait_for("document.querySelectorAll('#nodes .device[data-state=busy]').length === 2")
            assert await browser.evaluate("document.getElementById('live').className") == "on"
            await browser.wait_for(f"document.querySelector('#jobs tr[data-job=\"{job}\"]') !== null")
            await browser.wait_for("document.querySelector('#tenants tr[data-tenant=\"alice\"]') !== null")
            # alice has no quota: her devices in use are "2 / -", not a red bar over a quota of 0
            row = "document.querySelector('#tenants tr[data-tenant=\"alice\"]')"
            assert await browser.evaluate(f"{row}.children[2].textContent") == "2 / -"
            assert await browser.evaluate(f"{row}.querySelector('.bar') === null")
            ARTIFACTS.mkdir(exist_ok=True)
            size = await browser.screenshot(ARTIFACTS / "dashboard-cluster.png")
            assert size > 10_000  # a rendered page, not a blank one
            # wait for the end, then open the job page from its link
            await browser.wait_for(f"(document.querySelector('#jobs tr[data-job=\"{job}\"] .status') || {{}})"
                                   ".textContent === 'succeeded'", timeout=90)
            await browser.evaluate(f"document.querySelector('#jobs tr[data-job=\"{job}\"] a').click()")
            await browser.wait_for("document.querySelectorAll('#timeline li').length > 3")
            types = await browser.evaluate("[...document.querySelectorAll('#timeline li')].map(li => li.dataset.type)")
            assert types[0] == "JobSubmitted" and "JobProgress" in types and types[-1] == "JobSucceeded"
            await browser.wait_for("document.querySelector('#loss svg polyline') !== null")
            assert "rank0-a1" in await browser.evaluate("document.getElementById('logs').textContent")
            await browser.screenshot(ARTIFACTS / "dashboard-job.png")
            await browser.goto(f"{url}/#models")
            await browser.wait_for("document.querySelector('#models') !== null")
        finally:
            await browser.close()
    asyncio.run(drive())
    assert json.loads(json.dumps(call(url, "GET", f"/api/v1/jobs/{job}", ALICE)[1]["status"])) == "succeeded"
    assert sys.platform  # the screenshots are the artefacts of this run
