"""The NVML backend: everything the agent knows about its GPUs, read through ``pynvml`` (nvidia-ml-py).

On a GPU node ``pynvml`` loads ``libnvidia-ml.so.1``; in sim mode and tests a :class:`~.fakenvml.FakeNvml` plays that
library, so this module runs the same code either way. Every NVML call goes through :meth:`NvmlBackend._call`: a
failing call never raises out of a reading; it leaves the field empty and is counted and reported, and a
``GPU_IS_LOST`` marks the device as fallen off the bus.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import socket
import threading
from typing import Any, Callable, TypeVar

import msgspec
import pynvml as N

from aios.common.errors import AiosError
from aios.common.events import DeviceInfo, Link, MigInstance

log = logging.getLogger("aios.device_agent.nvml")
T = TypeVar("T")


class NvmlUnavailable(AiosError):
    """NVML cannot be used on this machine (no driver, no permission)."""


class DeviceSample(msgspec.Struct, frozen=True):
    """One telemetry reading of one device; None where the device would not say."""

    uuid: str
    index: int
    utilization_gpu: int | None = None
    utilization_memory: int | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    ecc_sbe_total: int | None = None
    ecc_dbe_total: int | None = None
    processes: list[tuple[int, int]] = []
    lost: bool = False
    repair_pending: bool | None = None
    """A memory repair (a remapped row, or a retired page on GPUs before Ampere) that takes effect at the device's
    next reset: NVIDIA's answer to an uncorrectable error is to reset the GPU before new work. None: not reported."""
    repair_failed: bool = False
    """A row could not be remapped (no spare rows left): the GPU needs service."""
    errors: list[str] = []


class HealthSignal(msgspec.Struct, frozen=True):
    """An NVML event about a device: an XID, an ECC error, or the device lost."""

    uuid: str
    kind: str
    """``xid``, ``ecc-dbe``, ``ecc-sbe`` or ``lost``."""
    xid: int | None = None


_KINDS = re.compile(r"\b(H100|H200|B200|A100|A10G|A10|A30|A40|L40S|L40|L4|V100|T4|P100|P40|K80|RTX\s?\w+)\b", re.I)


def device_kind(model: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``h100``; unknown models keep a slug of their name."""
    m = _KINDS.search(model)
    if m:
        return m.group(1).lower().replace(" ", "")
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-") or "gpu"


_LEVELS = {
    N.NVML_TOPOLOGY_INTERNAL: "same-board",
    N.NVML_TOPOLOGY_SINGLE: "pcie-switch",
    N.NVML_TOPOLOGY_MULTIPLE: "pcie-switches",
    N.NVML_TOPOLOGY_HOSTBRIDGE: "pcie-host",
    N.NVML_TOPOLOGY_NODE: "numa-node",
    N.NVML_TOPOLOGY_SYSTEM: "system",
}


def host_resources() -> tuple[int, int]:
    """CPU cores usable by this process and physical memory in bytes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return cores, memory


class NvmlBackend:
    name = "nvml"

    def __init__(self) -> None:
        self.handles: dict[str, Any] = {}
        self.index_of: dict[str, int] = {}
        self.error_counts: dict[str, int] = {}
        self.lost: set[str] = set()
        """Devices whose last reading hit GPU_IS_LOST."""
        self._reported_lost: set[str] = set()
        self._event_set: Any = None
        self._event_lock = threading.Lock()
        """Held while a thread waits on the event set, so that :meth:`stop` never frees the set under it."""
        self._event_error = ""
        """The last event-wait failure, logged once; cleared by a wait that works."""
        self.event_wait_failing = False
        self._uuid_at: dict[int | None, str] = {}
        """Device handle (its address) -> uuid: an event names its device by handle, and a lost device cannot be
        asked for its uuid (XID 79, "fell off the bus", was dropped)."""
        self.missing: dict[int, str] = {}
        """Index -> why: devices NVML counts but that could not be read at start (left out of the inventory)."""
        self._absent: set[str] = set()
        """NVML functions this driver does not have (older than the wrapper): asked once, then left alone."""

    # -- life cycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            N.nvmlInit()
        except N.NVMLError_LibraryNotFound:
            raise NvmlUnavailable("NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver on this machine. "
                                  "Run a simulated node instead: aios agent --sim 2xH100-80GB,4xA100-40GB") from None
        except N.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not start: {exc}") from None
        count = self._call("nvmlDeviceGetCount", N.nvmlDeviceGetCount) or 0
        for i in range(count):
            errors: list[str] = []
            handle = self._call("nvmlDeviceGetHandleByIndex", N.nvmlDeviceGetHandleByIndex, i, errors=errors)
            uuid = None if handle is None else self._call("nvmlDeviceGetUUID", N.nvmlDeviceGetUUID, handle,
                                                          errors=errors)
            if uuid is None:  # it vanished from the node's inventory without a word (a GPU lost before the agent)
                self.missing[i] = "; ".join(errors) or "no handle or uuid"
                self.error_counts["device unreadable at start"] = self.error_counts.get(
                    "device unreadable at start", 0) + 1
                log.error("GPU left out of this node's inventory: NVML cannot read it",
                          extra={"index": i, "error": self.missing[i]})
                continue
            self.handles[uuid] = handle
            self.index_of[uuid] = i
            self._uuid_at[_address(handle)] = uuid
        self._register_events()

    def stop(self) -> None:
        with self._event_lock:  # a thread in nvmlEventSetWait returns within its timeout; then the set is freed
            if self._event_set is not None:
                self._call("nvmlEventSetFree", N.nvmlEventSetFree, self._event_set)
                self._event_set = None
        try:
            N.nvmlShutdown()
        except N.NVMLError:
            pass

    def _call(self, what: str, fn: Callable[..., T], *args: Any, uuid: str | None = None,
              errors: list[str] | None = None, newer: bool = False) -> T | None:
        """One NVML call that cannot kill the agent: NotSupported is quiet, a function this driver lacks is noted
        once, others are counted and noted."""
        if what in self._absent:
            return None
        try:
            return fn(*args)
        except N.NVMLError_NotSupported:
            return None
        except (N.NVMLError_FunctionNotFound, N.NVMLLibraryMismatchError):
            # an older driver than the wrapper (pynvml raises the second, not an NVMLError, for some functions: it
            # ended the agent's telemetry for good, without a word)
            self._absent.add(what)
            (log.info if newer else log.warning)(
                "this NVML driver lacks a function: " + ("an older one is used" if newer else "its reading stays empty"),
                extra={"call": what})
            return None
        except N.NVMLError_GpuIsLost:
            if uuid is not None:
                if uuid not in self._reported_lost:
                    log.error("GPU fell off the bus", extra={"uuid": uuid, "call": what})
                    self._reported_lost.add(uuid)
                self.lost.add(uuid)
            if errors is not None:
                errors.append(f"{what}: GPU is lost")
            return None
        except N.NVMLError as exc:
            self.error_counts[what] = self.error_counts.get(what, 0) + 1
            if errors is not None:
                errors.append(f"{what}: {exc}")
            log.warning("NVML call failed", extra={"call": what, "uuid": uuid, "error": str(exc)})
            return None

    def _first_of(self, calls: list[tuple[str, Callable[..., T]]], *args: Any, uuid: str | None = None,
                  errors: list[str] | None = None) -> T | None:
        """The newest of several versions of one NVML call that this driver has (older drivers lack the newer)."""
        for what, fn in calls:
            value = self._call(what, fn, *args, uuid=uuid, errors=errors, newer=what != calls[-1][0])
            if what not in self._absent:
                return value
        return None

    # -- inventory ---------------------------------------------------------------------------------------------------
    def driver_version(self) -> str:
        return self._call("nvmlSystemGetDriverVersion", N.nvmlSystemGetDriverVersion) or ""

    def devices(self) -> list[DeviceInfo]:
        out = []
        for uuid, h in self.handles.items():
            model = self._call("nvmlDeviceGetName", N.nvmlDeviceGetName, h, uuid=uuid) or "unknown"
            mem = self._call("nvmlDeviceGetMemoryInfo", N.nvmlDeviceGetMemoryInfo, h, uuid=uuid)
            pci = self._call("nvmlDeviceGetPciInfo", N.nvmlDeviceGetPciInfo, h, uuid=uuid)
            limit = self._call("nvmlDeviceGetEnforcedPowerLimit", N.nvmlDeviceGetEnforcedPowerLimit, h, uuid=uuid)
            mig_mode = self._call("nvmlDeviceGetMigMode", N.nvmlDeviceGetMigMode, h, uuid=uuid)
            mig_on = bool(mig_mode and mig_mode[0] == N.NVML_DEVICE_MIG_ENABLE)
            out.append(DeviceInfo(
                uuid=uuid, index=self.index_of[uuid], kind=device_kind(model), model=model,
                memory_bytes=int(mem.total) if mem else 0,
                pci_bus_id=pci.busId.decode() if pci and isinstance(pci.busId, bytes) else (pci.busId if pci else ""),
                power_limit_w=limit / 1000 if limit is not None else None,
                mig_enabled=mig_on, mig_instances=self._mig_instances(h, uuid) if mig_on else []))
        return out

    def _mig_instances(self, handle: Any, uuid: str) -> list[MigInstance]:
        instances = []
        for k in range(self._call("nvmlDeviceGetMaxMigDeviceCount", N.nvmlDeviceGetMaxMigDeviceCount, handle,
                                  uuid=uuid) or 0):
            try:
                mig = N.nvmlDeviceGetMigDeviceHandleByIndex(handle, k)
            except N.NVMLError_NotFound:
                continue  # slots without an instance are normal
            except N.NVMLError as exc:
                log.warning("MIG instance unreadable", extra={"uuid": uuid, "slot": k, "error": str(exc)})
                continue
            mig_uuid = self._call("nvmlDeviceGetUUID", N.nvmlDeviceGetUUID, mig, uuid=uuid)
            mem = self._call("nvmlDeviceGetMemoryInfo", N.nvmlDeviceGetMemoryInfo, mig, uuid=uuid)
            if mig_uuid:
                instances.append(MigInstance(uuid=mig_uuid, memory_bytes=int(mem.total) if mem else 0))
        return instances

    def links(self) -> list[Link]:
        """Pairwise topology: NVLink where P2P over NVLink is OK, else the closest common PCIe ancestor."""
        out = []
        uuids = list(self.handles)
        for i, a in enumerate(uuids):
            for b in uuids[i + 1:]:
                ha, hb = self.handles[a], self.handles[b]
                nvlink = self._call("nvmlDeviceGetP2PStatus", N.nvmlDeviceGetP2PStatus, ha, hb,
                                    N.NVML_P2P_CAPS_INDEX_NVLINK, uuid=a)
                if nvlink == N.NVML_P2P_STATUS_OK:
                    out.append(Link(a, b, "nvlink"))
                    continue
                level = self._call("nvmlDeviceGetTopologyCommonAncestor", N.nvmlDeviceGetTopologyCommonAncestor,
                                   ha, hb, uuid=a)
                out.append(Link(a, b, _LEVELS.get(level, "system") if level is not None else "unknown"))
        return out

    def hostname(self) -> str:
        return socket.gethostname()

    # -- telemetry ---------------------------------------------------------------------------------------------------
    def sample(self) -> list[DeviceSample]:
        return [self._sample(uuid, h) for uuid, h in self.handles.items()]

    def _sample(self, uuid: str, h: Any) -> DeviceSample:
        errors: list[str] = []
        self.lost.discard(uuid)  # a device that answers again is back on the bus
        call = self._call
        util = call("nvmlDeviceGetUtilizationRates", N.nvmlDeviceGetUtilizationRates, h, uuid=uuid, errors=errors)
        mem = call("nvmlDeviceGetMemoryInfo", N.nvmlDeviceGetMemoryInfo, h, uuid=uuid, errors=errors)
        temp = self._first_of(_TEMPERATURE, h, N.NVML_TEMPERATURE_GPU, uuid=uuid, errors=errors)
        power = call("nvmlDeviceGetPowerUsage", N.nvmlDeviceGetPowerUsage, h, uuid=uuid, errors=errors)
        limit = call("nvmlDeviceGetEnforcedPowerLimit", N.nvmlDeviceGetEnforcedPowerLimit, h, uuid=uuid,
                     errors=errors)
        sbe = call("nvmlDeviceGetTotalEccErrors", N.nvmlDeviceGetTotalEccErrors, h,
                   N.NVML_MEMORY_ERROR_TYPE_CORRECTED, N.NVML_VOLATILE_ECC, uuid=uuid, errors=errors)
        dbe = call("nvmlDeviceGetTotalEccErrors", N.nvmlDeviceGetTotalEccErrors, h,
                   N.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, N.NVML_VOLATILE_ECC, uuid=uuid, errors=errors)
        procs = self._first_of(_PROCESSES, h, uuid=uuid, errors=errors) or []
        pending, failed = self._repair_state(uuid, h, errors)
        sample = DeviceSample(
            uuid=uuid, index=self.index_of[uuid],
            utilization_gpu=util.gpu if util else None, utilization_memory=util.memory if util else None,
            memory_used_bytes=int(mem.used) if mem else None, memory_total_bytes=int(mem.total) if mem else None,
            temperature_c=temp, power_w=power / 1000 if power is not None else None,
            power_limit_w=limit / 1000 if limit is not None else None, ecc_sbe_total=sbe, ecc_dbe_total=dbe,
            processes=[(p.pid, p.usedGpuMemory or 0) for p in procs], lost=uuid in self.lost,
            repair_pending=pending, repair_failed=failed, errors=errors)
        if uuid not in self.lost:
            self._reported_lost.discard(uuid)
        return sample

    def _repair_state(self, uuid: str, h: Any, errors: list[str]) -> tuple[bool | None, bool]:
        """(repair pending at the next reset, row remapping failed): row remapping on Ampere and later, page
        retirement before; each answers NotSupported on the other generation (and both on GPUs without ECC)."""
        rows = self._call("nvmlDeviceGetRemappedRows", N.nvmlDeviceGetRemappedRows, h, uuid=uuid, errors=errors)
        if rows is not None:
            _, _, pending, failed = rows
            return bool(pending), bool(failed)
        retired = self._call("nvmlDeviceGetRetiredPagesPendingStatus", N.nvmlDeviceGetRetiredPagesPendingStatus, h,
                             uuid=uuid, errors=errors)
        return (None if retired is None else retired == N.NVML_FEATURE_ENABLED), False

    # -- health events -----------------------------------------------------------------------------------------------
    def _register_events(self) -> None:
        self._event_set = self._call("nvmlEventSetCreate", N.nvmlEventSetCreate)
        if self._event_set is None:
            return
        wanted = N.nvmlEventTypeXidCriticalError | N.nvmlEventTypeDoubleBitEccError | N.nvmlEventTypeSingleBitEccError
        for uuid, h in self.handles.items():
            supported = self._call("nvmlDeviceGetSupportedEventTypes", N.nvmlDeviceGetSupportedEventTypes, h,
                                   uuid=uuid)
            types = wanted & supported if supported is not None else wanted
            self._call("nvmlDeviceRegisterEvents", N.nvmlDeviceRegisterEvents, h, types, self._event_set, uuid=uuid)

    def wait_events(self, timeout_ms: int) -> list[HealthSignal]:
        """Block up to ``timeout_ms`` for an NVML event (run it in a thread). After a failed wait
        :attr:`event_wait_failing` is set: the caller should pause before waiting again (a wait that keeps failing,
        as on a GPU off the bus, returns at once: it spun a core)."""
        signals: list[HealthSignal] = []
        with self._event_lock:
            if self._event_set is None:
                return signals
            try:
                data = N.nvmlEventSetWait(self._event_set, timeout_ms)
            except N.NVMLError_Timeout:
                data = None
            except N.NVMLError as exc:
                self.error_counts["nvmlEventSetWait"] = self.error_counts.get("nvmlEventSetWait", 0) + 1
                self.event_wait_failing = True
                if str(exc) != self._event_error:  # once per kind of failure, not once per try
                    log.warning("NVML event wait failed", extra={"error": str(exc)})
                    self._event_error = str(exc)
                return signals
        self.event_wait_failing, self._event_error = False, ""
        if data is None:
            return signals
        uuid = self._uuid_at.get(_address(data.device))
        if uuid is None:
            return signals  # not one of the devices this agent registered
        if data.eventType & N.nvmlEventTypeXidCriticalError:
            signals.append(HealthSignal(uuid, "xid", int(data.eventData)))
        elif data.eventType & N.nvmlEventTypeDoubleBitEccError:
            signals.append(HealthSignal(uuid, "ecc-dbe"))
        elif data.eventType & N.nvmlEventTypeSingleBitEccError:
            signals.append(HealthSignal(uuid, "ecc-sbe"))
        return signals


def _address(handle: Any) -> int | None:
    """A device handle's identity: pynvml's handles are ctypes pointers, equal only by the address they hold."""
    return ctypes.cast(handle, ctypes.c_void_p).value


_TEMPERATURE: list[tuple[str, Callable[..., Any]]] = [
    ("nvmlDeviceGetTemperatureV", N.nvmlDeviceGetTemperatureV),  # the old call is deprecated (gone in CUDA 14)
    ("nvmlDeviceGetTemperature", N.nvmlDeviceGetTemperature)]
_PROCESSES: list[tuple[str, Callable[..., Any]]] = [
    ("nvmlDeviceGetComputeRunningProcesses", N.nvmlDeviceGetComputeRunningProcesses),  # v3: drivers from R510
    ("nvmlDeviceGetComputeRunningProcesses_v2", N.nvmlDeviceGetComputeRunningProcesses_v2)]
