"""Node, device and lease events (aggregate ``node.<node_id>``).

The node aggregate is where devices are booked: a lease is appended with the node's version as the expected
version, so two writers racing for the same devices cannot both succeed (DESIGN.md §3).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from aios.common.events.base import Event


class MigInstance(msgspec.Struct, frozen=True):
    uuid: str
    memory_bytes: int
    profile: str = ""


class DeviceInfo(msgspec.Struct, frozen=True):
    """What does not change while a node runs: identity and capacity of one accelerator."""

    uuid: str
    index: int
    kind: str
    """Normalised type used by job specs and quotas: ``h100``, ``a100``, ``v100`` ..."""
    model: str
    memory_bytes: int
    pci_bus_id: str = ""
    power_limit_w: float | None = None
    mig_enabled: bool = False
    mig_instances: list[MigInstance] = []


class Link(msgspec.Struct, frozen=True):
    """How two devices of a node talk: ``nvlink`` or the closest common PCIe ancestor."""

    a: str
    b: str
    level: str
    """``nvlink``, ``same-board``, ``pcie-switch``, ``pcie-switches``, ``pcie-host``, ``numa-node`` or ``system``."""


class NodeEvent(Event, frozen=True, kw_only=True):
    AGGREGATE: ClassVar[str] = "node"
    ABSTRACT: ClassVar[bool] = True


class NodeRegistered(NodeEvent, frozen=True, kw_only=True):
    """A device agent started on a node (first time, or again after a restart or a loss)."""

    hostname: str
    agent_id: str
    """Changes at every agent start: tells a restart from a duplicate."""
    cpu_cores: int
    memory_bytes: int
    devices: list[DeviceInfo] = []
    links: list[Link] = []
    labels: dict[str, str] = {}
    backend: str = "nvml"
    driver_version: str = ""


class DeviceUnhealthy(NodeEvent, frozen=True, kw_only=True):
    device_uuid: str
    reason: str
    xid: int | None = None


class DeviceHealthy(NodeEvent, frozen=True, kw_only=True):
    device_uuid: str
    reason: str = "recovered"


class NodeLost(NodeEvent, frozen=True, kw_only=True):
    """Heartbeats stopped for longer than the timeout; the node's leases end with it."""

    reason: str
    last_seen: float
    jobs: list[str] = []


class NodeCordoned(NodeEvent, frozen=True, kw_only=True):
    """No new placements on the node (``aios cordon``, Kubernetes' and Slurm's drain); ``drain`` also moves its
    preemptible jobs off (preempted: they checkpoint and are placed elsewhere; the others run to their end).
    ``cordoned=False`` lifts it. The node's agent drains its node when it shuts down (``by="agent"``): its next
    registration lifts that; an operator's cordon stays until lifted."""

    cordoned: bool = True
    drain: bool = False
    reason: str = ""
    by: str = ""


class DevicesLeased(NodeEvent, frozen=True, kw_only=True):
    """Devices of this node booked for a job (appended against the node's version)."""

    job_id: str
    device_uuids: list[str]
    tenant: str = ""


class DevicesReleased(NodeEvent, frozen=True, kw_only=True):
    """A job's devices on this node given back (job ended, preempted, or requeued)."""

    job_id: str
    device_uuids: list[str] = []
    """Empty: every device the job holds on this node."""
    reason: str = ""


class NodeForgotten(NodeEvent, frozen=True, kw_only=True):
    """An operator removed a lost node from the inventory (decommissioned); an agent that starts there again
    registers it again."""

    by: str = ""
