"""The scheduler's state as Prometheus gauges, read at scrape time: jobs by state, and per tenant and device kind
the devices in use, borrowed from its cohort and guaranteed by its quota. An operator alerts on them (a queue that
grows, a tenant over its quota) as on Kueue's ClusterQueue metrics; the labels are whatever tenants and kinds the
log holds, so they are collected fresh each scrape, not kept as fixed gauges."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aios.scheduler.rounds import _usage
from aios.scheduler.state import HOLDING, STATUSES, SchedulerState


class StateCollector(Collector):
    def __init__(self, state: Callable[[], SchedulerState]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.state()
        jobs = GaugeMetricFamily("aios_jobs", "jobs by state (those the scheduler keeps)", labels=["state"])
        counts = dict.fromkeys(STATUSES, 0)
        for job in state.jobs.values():
            counts[job.status] = counts.get(job.status, 0) + 1
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        # a tenant's quota kinds are series even at 0: they vanished when its last job ended (alerts on no data)
        quota_kinds = {(tenant, kind): 0 for tenant, quota in state.inv.tenants.items() for kind in quota.nominal}
        in_use = GaugeMetricFamily("aios_tenant_devices_in_use", "devices a tenant's jobs hold, by kind",
                                   labels=["tenant", "kind"])
        used = dict(quota_kinds)
        for tenant, kinds in _usage(state)[0].items():
            used.update({(tenant, kind): n for kind, n in kinds.items()})
        for (tenant, kind), n in sorted(used.items()):
            in_use.add_metric([tenant, kind], n)
        yield in_use
        borrowed = GaugeMetricFamily("aios_tenant_devices_borrowed",
                                     "devices a tenant's running jobs borrowed beyond its nominal quota, by kind",
                                     labels=["tenant", "kind"])
        total = dict(quota_kinds)
        for job in state.active():
            for kind, n in (job.borrowed.items() if job.status in HOLDING else ()):
                total[(job.tenant, kind)] = total.get((job.tenant, kind), 0) + n
        for (tenant, kind), n in sorted(total.items()):
            borrowed.add_metric([tenant, kind], n)
        yield borrowed
        nominal = GaugeMetricFamily("aios_tenant_quota_nominal", "a tenant's nominal quota, by kind",
                                    labels=["tenant", "kind"])
        for tenant, quota in sorted(state.inv.tenants.items()):
            for kind, n in sorted(quota.nominal.items()):
                nominal.add_metric([tenant, kind], n)
        yield nominal
