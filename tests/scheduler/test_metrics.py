"""What an operator's Prometheus scrapes of the scheduler: jobs by state, and each tenant's devices in use, borrowed
and guaranteed by kind (there were no job or tenant metrics, only round counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from aios.scheduler.local import step
from aios.scheduler.metrics import StateCollector
from aios.scheduler.policies import make_policy
from tests.scheduler.helpers import Cluster


def test_jobs_and_tenants_are_exported_as_gauges() -> None:
    c = Cluster(("n1", "a100", 4), ("n2", "h100", 2))
    c.quota("nlp", "lab", a100=2)
    c.quota("cv", "lab", a100=2)
    c.submit("big", 3, tenant="nlp", device_types=["a100"], now=1.0)  # borrows one of cv's
    c.submit("h", 2, tenant="free", device_types=["h100"], now=1.0)
    c.submit("late", 8, tenant="cv", now=1.0)
    step(c.state, make_policy("fairshare"), 2.0)
    c.submit("done", 1, tenant="cv", device_types=["a100"], now=3.0)
    c.finish("done", 4.0)
    registry = CollectorRegistry()
    registry.register(StateCollector(lambda: c.state))
    text = generate_latest(registry).decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['aios_jobs{state="placed"}'] == 2 and samples['aios_jobs{state="pending"}'] == 1
    assert samples['aios_jobs{state="succeeded"}'] == 1 and samples['aios_jobs{state="failed"}'] == 0
    assert samples['aios_tenant_devices_in_use{kind="a100",tenant="nlp"}'] == 3
    assert samples['aios_tenant_devices_in_use{kind="h100",tenant="free"}'] == 2
    assert samples['aios_tenant_devices_borrowed{kind="a100",tenant="nlp"}'] == 1
    assert samples['aios_tenant_quota_nominal{kind="a100",tenant="cv"}'] == 2
    # a tenant's quota kinds are series at 0 too (cv's last job ended): they vanished, and alerts saw no data
    assert samples['aios_tenant_devices_in_use{kind="a100",tenant="cv"}'] == 0
    assert samples['aios_tenant_devices_borrowed{kind="a100",tenant="cv"}'] == 0
    assert "# TYPE aios_jobs gauge" in text
