"""aios.device_agent: one per node. Reads the accelerators through NVML (or a simulated NVML), registers the node,
heartbeats, publishes telemetry and DCGM-named metrics, turns XIDs/ECC/lost devices into health events, and runs
worker processes on the devices leased to their job.

Pipeline: backend (nvml.py over pynvml; fakenvml.py in sim mode) -> samples and signals -> health.py (pure) ->
events; requests -> lease check (aios.resource_manager.leases) -> workloads.py -> WorkerStarted/WorkerExited.
"""
