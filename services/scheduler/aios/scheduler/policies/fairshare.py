"""Fair share across tenants: dominant resource fairness within a cohort, with quotas and borrowing.

The next job to try belongs to the tenant with the smallest dominant share: its largest, over device kinds, of
devices used divided by the cohort's capacity of that kind. Quotas are enforced by the round (quota.admit); a
tenant whose nominal quota is lent out gets it back by preempting the borrowers' newest jobs (quota.reclaim_plan).
"""

from __future__ import annotations

from aios.scheduler.policies.base import Estimator, Policy
from aios.scheduler.state import HOLDING, JobState, SchedulerState, inventory_shape


def dominant_shares(state: SchedulerState) -> dict[str, float]:
    shape = inventory_shape(state)
    capacity, kind_of = shape.online, shape.kind_of
    used: dict[str, dict[str, int]] = {}
    for job in state.active():
        if job.status in HOLDING:
            per = used.setdefault(job.tenant, {})
            for a in job.assignments:
                for u in a.device_uuids:
                    k = kind_of.get(u, "?")
                    per[k] = per.get(k, 0) + 1
    return {t: max((n / capacity[k] for k, n in per.items() if capacity.get(k)), default=0.0)
            for t, per in used.items()}


class FairShare(Policy):
    name = "fairshare"

    def order(self, state: SchedulerState, now: float, estimate: Estimator) -> list[JobState]:
        shares = dominant_shares(state)
        pending = state.pending()
        # Interleave tenants: each job is charged the share its tenant would have after the jobs before it.
        demand: dict[str, float] = {}
        capacity = max(1, sum(inventory_shape(state).online.values()))
        keyed = []
        for job in sorted(pending, key=lambda j: (-(j.spec.priority if j.spec else 0), j.arrival)):
            share = shares.get(job.tenant, 0.0) + demand.get(job.tenant, 0.0)
            keyed.append((share, job.arrival, job))
            demand[job.tenant] = demand.get(job.tenant, 0.0) + job.devices / capacity
        return [j for _, _, j in sorted(keyed, key=lambda t: (t[0], t[1]))]
