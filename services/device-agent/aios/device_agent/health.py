"""Device health as a pure state machine: NVML signals and samples in, ``DeviceUnhealthy``/``DeviceHealthy`` out.

Critical: XIDs other than the application-level ones NVIDIA's Kubernetes device plugin also ignores, double-bit
ECC errors, a device that fell off the bus, and one whose memory could not be repaired (row remapping failed).
Recovery: a lost device that answers again is healthy at once; one marked by an XID or ECC error is healthy again
after ``quiet_s`` seconds of clean samples with no new error, and not before NVML stops reporting a memory repair
pending at its next reset: after an uncorrectable error NVIDIA's remedy is a GPU reset (``nvidia-smi -r``, or a
reboot), and a device put back before it ran the next job on the memory that had failed.

Held: a worker that outlived its SIGKILL (stuck in the kernel, on a hung driver or file system) still holds its
devices, and a worker placed there next would be refused again and again until its job failed as a crash loop. The
agent marks such devices unhealthy until that process is gone (Slurm drains a node on "Kill task failed"; here only
the devices it holds are taken out). Only the process's exit frees them, not quiet samples: a fresh agent that
finds such a mark in the log frees it once NVML shows no process on the device.
"""

from __future__ import annotations

import msgspec

from aios.device_agent.nvml import DeviceSample, HealthSignal

APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
"""Graphics engine exception, MMU fault, reset channel, preemptive cleanup, video processor, context switch timeout:
caused by the application, not the hardware."""


def is_critical_xid(xid: int) -> bool:
    return xid not in APPLICATION_XIDS


HELD_REASON = "held by a worker that did not exit after SIGKILL"
"""The start of a held device's reason (``hold``); the log keeps it, and a fresh agent knows the mark by it."""


class Transition(msgspec.Struct, frozen=True):
    uuid: str
    healthy: bool
    reason: str
    xid: int | None = None


class HealthTracker:
    def __init__(self, quiet_s: float = 60.0) -> None:
        self.quiet_s = quiet_s
        self.unhealthy: dict[str, tuple[str, float, bool]] = {}
        """uuid -> (reason, time of the last bad sign, lost?)"""
        self._dbe: dict[str, int] = {}
        self.held: dict[str, tuple[bool, str]] = {}
        """uuid -> (carried from the log?, the hold's text). A hold taken by this agent ends with its worker's exit
        (``release``), one carried from the log when NVML lists no process on the device."""

    def _mark(self, uuid: str, reason: str, now: float, lost: bool = False, xid: int | None = None) -> list[Transition]:
        known = self.unhealthy.get(uuid)
        held = self.held.get(uuid)
        shown = f"{reason}; {held[1]}" if held is not None and HELD_REASON not in reason else reason
        self.unhealthy[uuid] = (shown, now, lost)
        if known is None or (held is not None and known[0] != shown):  # the log's reason keeps naming the hold
            return [Transition(uuid, False, shown, xid)]
        return []

    def carry(self, uuid: str, reason: str, now: float) -> None:
        """A device the log holds unhealthy (a previous agent of this node said so) is watched as if this tracker
        had marked it at ``now``: the cluster keeps health across an agent restart, and only the agent can say a
        device recovered, so a fresh tracker that knew nothing of it left the GPU unschedulable for ever."""
        self.unhealthy.setdefault(uuid, (reason, now, False))
        at = reason.find(HELD_REASON)
        if at >= 0:
            self.held.setdefault(uuid, (True, reason[at:]))

    def hold(self, uuid: str, reason: str, now: float) -> list[Transition]:
        """The device is held by a process that would not die: unhealthy until ``release``. ``reason`` starts with
        :data:`HELD_REASON`. One already unhealthy keeps its fault, and the hold is added to its reason (the log
        must say so: a fresh agent would otherwise put it back after the fault's quiet minute, the process still
        on it)."""
        self.held[uuid] = (False, reason)
        known = self.unhealthy.get(uuid)
        if known is None:
            return self._mark(uuid, reason, now)
        if HELD_REASON in known[0]:
            return []
        shown = f"{known[0]}; {reason}"
        self.unhealthy[uuid] = (shown, known[1], known[2])
        return [Transition(uuid, False, shown)]

    def release(self, uuid: str) -> list[Transition]:
        """The process that held the device is gone: healthy again, unless a fault of its own marked it (then it
        stays out under that fault's rule, and the log's reason names the fault alone)."""
        if self.held.pop(uuid, None) is None:
            return []
        state = self.unhealthy.get(uuid)
        if state is None:
            return []
        reason, since, lost = state
        fault = reason[:max(0, reason.find(HELD_REASON))].rstrip("; ") if HELD_REASON in reason else reason
        if not fault:
            del self.unhealthy[uuid]
            return [Transition(uuid, True, "the process that held it has exited")]
        self.unhealthy[uuid] = (fault, since, lost)
        return [Transition(uuid, False, fault)] if fault != reason else []

    def on_signal(self, signal: HealthSignal, now: float) -> list[Transition]:
        if signal.kind == "xid" and signal.xid is not None:
            if not is_critical_xid(signal.xid):
                return []
            return self._mark(signal.uuid, f"critical XID {signal.xid}", now, xid=signal.xid)
        if signal.kind == "ecc-dbe":
            return self._mark(signal.uuid, "double-bit ECC error", now)
        if signal.kind == "lost":
            return self._mark(signal.uuid, "fell off the bus (GPU is lost)", now, lost=True)
        return []

    def on_sample(self, sample: DeviceSample, now: float) -> list[Transition]:
        uuid = sample.uuid
        if sample.lost:
            return self._mark(uuid, "fell off the bus (GPU is lost)", now, lost=True)
        if sample.repair_failed:
            return self._mark(uuid, "row remapping failed: the GPU's memory needs service", now)
        previous = self._dbe.get(uuid)
        if sample.ecc_dbe_total is not None:
            self._dbe[uuid] = sample.ecc_dbe_total
            if previous is not None and sample.ecc_dbe_total > previous:
                return self._mark(uuid, "double-bit ECC error", now)
        if uuid in self.held:
            # a hold carried from the log ends when NVML shows no process on the device (with NVML reporting them)
            listed = not any(e.startswith("nvmlDeviceGetComputeRunningProcesses") for e in sample.errors)
            return self.release(uuid) if self.held[uuid][0] and listed and not sample.processes else []
        state = self.unhealthy.get(uuid)
        if state is None:
            return []
        reason, since, lost = state
        if lost:
            del self.unhealthy[uuid]
            return [Transition(uuid, True, "answers again")]
        if now - since >= self.quiet_s and not sample.repair_pending:
            del self.unhealthy[uuid]
            waited = ", and no memory repair waits for a reset" if sample.repair_pending is not None else ""
            return [Transition(uuid, True, f"no errors for {self.quiet_s:.0f}s{waited}")]
        return []
