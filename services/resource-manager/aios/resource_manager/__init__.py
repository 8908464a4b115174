"""aios.resource_manager: the cluster inventory (nodes, devices, health, topology), the lease ledger, tenant quotas
with cohorts and borrowing, and node-loss detection from heartbeats.

Pipeline: event log -> inventory.fold_commit (pure) -> queries (request/reply on ``aios.rm.*``); heartbeats KV ->
liveness.lost_nodes (pure) -> ``NodeLost`` (against the node's version) -> ``JobRequeued`` for the jobs that were on it.
Quotas: quota.admit / quota.reclaim_plan (pure), used by the scheduler.
"""
