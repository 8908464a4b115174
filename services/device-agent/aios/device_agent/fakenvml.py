"""A fake ``libnvidia-ml`` for machines without a GPU, seen through the real ``pynvml`` wrapper.

pynvml resolves every C function with ``getattr(nvmlLib, name)`` (``pynvml._nvmlGetFunctionPointer``). Installing a
:class:`FakeNvml` as ``nvmlLib`` leaves all of pynvml's own code in the path: argument marshalling, the
``c_nvml*`` structs, return-code checks and the ``NVMLError_*`` subclasses are the real ones. The fake only plays the
C library: it receives ctypes arguments, writes results through the ``byref`` pointers and returns NVML return
codes. Devices come from a fixture (a DGX-like box, or a ``--sim`` spec); failures are injected per function; XID and
ECC events wait in a queue for ``nvmlEventSetWait``.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import pynvml as N

SUCCESS = N.NVML_SUCCESS
GIB = 1024**3


@dataclass
class FakeMig:
    uuid: str
    memory_bytes: int
    profile: str = "3g.40gb"


@dataclass
class FakeGpu:
    uuid: str
    name: str
    memory_total: int
    pci_bus_id: str
    socket: int = 0
    switch: int = 0
    power_limit_mw: int = 700_000
    memory_used: int = 0
    util_gpu: int = 0
    util_mem: int = 0
    temperature: int = 35
    power_mw: int = 70_000
    ecc_sbe: int = 0
    ecc_dbe: int = 0
    mig_capable: bool = True
    mig_enabled: bool = False
    mig: list[FakeMig] = field(default_factory=list)
    processes: dict[int, int] = field(default_factory=dict)
    lost: bool = False
    busy: float = 0.0
    """0..1, the load the simulation shows (sim mode raises it while a workload runs)."""
    row_remapping: bool = True
    """Ampere and later repair memory by remapping rows; older GPUs retire pages (each NVML call answers only on
    its own generation, NotSupported on the other)."""
    repair_pending: bool = False
    """An uncorrectable error's repair (a row remapped, a page retired) waits for the GPU's next reset."""
    repair_failed: bool = False
    """A row could not be remapped (no spare rows left): the GPU needs service."""


def _ref(arg: Any) -> Any:
    """The ctypes object behind a ``byref(...)`` argument."""
    return arg._obj


def _value(arg: Any) -> int:
    return arg.value if hasattr(arg, "value") else int(arg)


def _handle(arg: Any) -> int:
    return ctypes.cast(arg, ctypes.c_void_p).value or 0


def _write_handle(ref: Any, value: int) -> None:
    target = _ref(ref)
    ctypes.memmove(ctypes.addressof(target), ctypes.byref(ctypes.c_void_p(value)), ctypes.sizeof(ctypes.c_void_p))


_GPU_BASE, _MIG_BASE, _SET_BASE = 0x1000, 0x100000, 0x9000000


class FakeNvml:
    """The fake library. Install with :func:`install`; every public ``nvml*`` attribute is a C function."""

    def __init__(self, gpus: list[FakeGpu], *, nvlink: set[frozenset[int]] | None = None,
                 driver_version: str = "550.54.15", clock: Callable[[], float] = time.monotonic,
                 missing: frozenset[str] = frozenset()) -> None:
        self.gpus = gpus
        self.missing = missing
        """C functions this driver does not have, as an older driver than the wrapper lacks the newer versions."""
        self.nvlink = nvlink if nvlink is not None else set()
        self.driver_version = driver_version
        self.clock = clock
        self.calls: dict[str, int] = {}
        self._failures: dict[str, list[Any]] = {}
        self._events: deque[tuple[int, int, int]] = deque()
        self._registered: dict[int, dict[int, int]] = {}
        self._cond = threading.Condition()
        self._initialized = 0
        self._next_set = _SET_BASE

    # -- test and simulation controls ---------------------------------------------------------------------------
    def fail(self, function: str, code: int, times: int | None = None) -> None:
        """Make ``function`` return ``code`` (``times`` calls, or until :meth:`heal`)."""
        self._failures[function] = [code, times]

    def heal(self, function: str | None = None) -> None:
        if function is None:
            self._failures.clear()
        else:
            self._failures.pop(function, None)

    def xid(self, index: int, code: int) -> None:
        """Queue an XID critical-error event on GPU ``index``."""
        self._push(index, N.nvmlEventTypeXidCriticalError, code)

    def double_bit_ecc(self, index: int) -> None:
        """An uncorrectable memory error: counted, announced, and its repair pending until the GPU is reset."""
        self.gpus[index].ecc_dbe += 1
        self.gpus[index].repair_pending = True
        self._push(index, N.nvmlEventTypeDoubleBitEccError, 0)

    def reset(self, index: int) -> None:
        """What ``nvidia-smi -r`` (or a reboot) does to GPU ``index``: pending repairs take effect, volatile ECC
        counts start again from zero, and a device off the bus is back if a reset can bring it back."""
        gpu = self.gpus[index]
        gpu.repair_pending, gpu.ecc_sbe, gpu.ecc_dbe, gpu.lost = False, 0, 0, False

    def _push(self, index: int, event_type: int, data: int) -> None:
        with self._cond:
            self._events.append((index, event_type, data))
            self._cond.notify_all()

    def by_uuid(self, uuid: str) -> FakeGpu:
        return next(g for g in self.gpus if g.uuid == uuid)

    # -- dispatch -----------------------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Callable[..., int]:
        impl = getattr(type(self), f"_c_{name}", None)
        if impl is None or name in self.missing:
            raise AttributeError(name)  # pynvml turns this into NVMLError_FunctionNotFound

        def c_function(*args: Any) -> int:
            self.calls[name] = self.calls.get(name, 0) + 1
            failure = self._failures.get(name)
            if failure is not None:
                code, left = failure
                if left is not None:
                    failure[1] = left - 1
                    if failure[1] <= 0:
                        del self._failures[name]
                return code
            if name != "nvmlInitWithFlags" and not self._initialized:
                return N.NVML_ERROR_UNINITIALIZED
            return impl(self, *args)

        return c_function

    def _gpu(self, handle: Any) -> FakeGpu | None:
        value = _handle(handle)
        index = (value - _GPU_BASE) // 0x10
        if value < _GPU_BASE or value >= _MIG_BASE or not 0 <= index < len(self.gpus):
            return None
        return self.gpus[index]

    def _mig(self, handle: Any) -> tuple[FakeGpu, FakeMig] | None:
        value = _handle(handle) - _MIG_BASE
        if value < 0 or value >= _SET_BASE - _MIG_BASE:
            return None
        gpu, k = self.gpus[value // 0x100], value % 0x100
        return (gpu, gpu.mig[k]) if k < len(gpu.mig) else None

    def _live(self, handle: Any) -> FakeGpu | int:
        gpu = self._gpu(handle)
        if gpu is None:
            return N.NVML_ERROR_INVALID_ARGUMENT
        if gpu.lost:
            return N.NVML_ERROR_GPU_IS_LOST
        return gpu

    def _tick(self, gpu: FakeGpu) -> None:
        """Telemetry that moves like a real device: load raises utilisation, power and temperature."""
        t = self.clock()
        wobble = 0.5 + 0.5 * math.sin(t / 7.0 + self.gpus.index(gpu))
        gpu.util_gpu = min(100, int(gpu.busy * 92 + wobble * 6))
        gpu.util_mem = min(100, int(gpu.busy * 55 + wobble * 3))
        gpu.power_mw = int(60_000 + (gpu.power_limit_mw - 60_000) * (0.85 * gpu.busy + 0.02 * wobble))
        gpu.temperature = int(32 + 45 * gpu.busy + 3 * wobble)
        gpu.memory_used = min(gpu.memory_total, 512 * 1024**2 + sum(gpu.processes.values()))

    # -- the C functions ----------------------------------------------------------------------------------------------
    def _c_nvmlInitWithFlags(self, _flags: Any) -> int:
        self._initialized += 1
        return SUCCESS

    def _c_nvmlShutdown(self) -> int:
        self._initialized = max(0, self._initialized - 1)
        return SUCCESS

    def _c_nvmlSystemGetDriverVersion(self, buf: Any, _size: Any) -> int:
        buf.value = self.driver_version.encode()
        return SUCCESS

    def _c_nvmlDeviceGetCount_v2(self, count: Any) -> int:
        _ref(count).value = len(self.gpus)
        return SUCCESS

    def _c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, out: Any) -> int:
        i = _value(index)
        if not 0 <= i < len(self.gpus):
            return N.NVML_ERROR_INVALID_ARGUMENT
        _write_handle(out, _GPU_BASE + i * 0x10)
        return SUCCESS

    def _c_nvmlDeviceGetIndex(self, handle: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        _ref(out).value = self.gpus.index(gpu)
        return SUCCESS

    def _c_nvmlDeviceGetUUID(self, handle: Any, buf: Any, _size: Any) -> int:
        mig = self._mig(handle)
        if mig is not None:
            buf.value = mig[1].uuid.encode()
            return SUCCESS
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        buf.value = gpu.uuid.encode()
        return SUCCESS

    def _c_nvmlDeviceGetName(self, handle: Any, buf: Any, _size: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        buf.value = gpu.name.encode()
        return SUCCESS

    def _c_nvmlDeviceGetPciInfo_v3(self, handle: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        info = _ref(out)
        domain, bus, rest = gpu.pci_bus_id.split(":")
        device = rest.split(".")[0]
        info.busId = gpu.pci_bus_id.encode()
        info.busIdLegacy = gpu.pci_bus_id[4:].encode()
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(device, 16)
        info.pciDeviceId = 0x233010DE
        return SUCCESS

    def _c_nvmlDeviceGetMemoryInfo(self, handle: Any, out: Any) -> int:
        mig = self._mig(handle)
        if mig is not None:
            mem = _ref(out)
            mem.total, mem.used, mem.free = mig[1].memory_bytes, 0, mig[1].memory_bytes
            return SUCCESS
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        self._tick(gpu)
        mem = _ref(out)
        mem.total, mem.used, mem.free = gpu.memory_total, gpu.memory_used, gpu.memory_total - gpu.memory_used
        return SUCCESS

    def _c_nvmlDeviceGetUtilizationRates(self, handle: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        self._tick(gpu)
        util = _ref(out)
        util.gpu, util.memory = gpu.util_gpu, gpu.util_mem
        return SUCCESS

    def _c_nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        if _value(sensor) != N.NVML_TEMPERATURE_GPU:
            return N.NVML_ERROR_NOT_SUPPORTED
        _ref(out).value = gpu.temperature
        return SUCCESS

    def _c_nvmlDeviceGetTemperatureV(self, handle: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        reading = _ref(out)
        if reading.version != N.nvmlTemperature_v1:
            return N.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        if reading.sensorType != N.NVML_TEMPERATURE_GPU:
            return N.NVML_ERROR_NOT_SUPPORTED
        reading.temperature = gpu.temperature
        return SUCCESS

    def _c_nvmlDeviceGetPowerUsage(self, handle: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        _ref(out).value = gpu.power_mw
        return SUCCESS

    def _c_nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        _ref(out).value = gpu.power_limit_mw
        return SUCCESS

    def _c_nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: Any, _counter: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        uncorrected = _value(error_type) == N.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        _ref(out).value = gpu.ecc_dbe if uncorrected else gpu.ecc_sbe
        return SUCCESS

    def _c_nvmlDeviceGetRemappedRows(self, handle: Any, corr: Any, unc: Any, pending: Any, failure: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        if not gpu.row_remapping:
            return N.NVML_ERROR_NOT_SUPPORTED
        _ref(corr).value, _ref(unc).value = 0, gpu.ecc_dbe
        _ref(pending).value, _ref(failure).value = int(gpu.repair_pending), int(gpu.repair_failed)
        return SUCCESS

    def _c_nvmlDeviceGetRetiredPagesPendingStatus(self, handle: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        if gpu.row_remapping:
            return N.NVML_ERROR_NOT_SUPPORTED
        _ref(out).value = N.NVML_FEATURE_ENABLED if gpu.repair_pending else N.NVML_FEATURE_DISABLED
        return SUCCESS

    def _c_nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        if not gpu.mig_capable:
            return N.NVML_ERROR_NOT_SUPPORTED
        _ref(current).value = _ref(pending).value = int(gpu.mig_enabled)
        return SUCCESS

    def _c_nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        if not gpu.mig_capable:
            return N.NVML_ERROR_NOT_SUPPORTED
        _ref(out).value = 7
        return SUCCESS

    def _c_nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        k = _value(index)
        if not gpu.mig_enabled:
            return N.NVML_ERROR_INVALID_ARGUMENT
        if k >= len(gpu.mig):
            return N.NVML_ERROR_NOT_FOUND
        _write_handle(out, _MIG_BASE + self.gpus.index(gpu) * 0x100 + k)
        return SUCCESS

    def _c_nvmlDeviceGetTopologyCommonAncestor(self, h1: Any, h2: Any, out: Any) -> int:
        a, b = self._live(h1), self._live(h2)
        if isinstance(a, int):
            return a
        if isinstance(b, int):
            return b
        if a is b:
            level = N.NVML_TOPOLOGY_INTERNAL
        elif a.socket != b.socket:
            level = N.NVML_TOPOLOGY_SYSTEM
        elif a.switch == b.switch:
            level = N.NVML_TOPOLOGY_SINGLE
        else:
            level = N.NVML_TOPOLOGY_NODE
        _ref(out).value = level
        return SUCCESS

    def _c_nvmlDeviceGetP2PStatus(self, h1: Any, h2: Any, index: Any, out: Any) -> int:
        a, b = self._live(h1), self._live(h2)
        if isinstance(a, int):
            return a
        if isinstance(b, int):
            return b
        pair = frozenset({self.gpus.index(a), self.gpus.index(b)})
        if _value(index) == N.NVML_P2P_CAPS_INDEX_NVLINK:
            ok = pair in self.nvlink
        else:
            ok = a.socket == b.socket
        _ref(out).value = N.NVML_P2P_STATUS_OK if ok else N.NVML_P2P_STATUS_NOT_SUPPORTED
        return SUCCESS

    def _c_nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        procs = sorted(gpu.processes.items())
        n = _ref(count)
        if infos is None:
            if not procs:
                n.value = 0
                return SUCCESS
            n.value = len(procs)
            return N.NVML_ERROR_INSUFFICIENT_SIZE
        if n.value < len(procs):
            n.value = len(procs)
            return N.NVML_ERROR_INSUFFICIENT_SIZE
        for i, (pid, mem) in enumerate(procs):
            infos[i].pid, infos[i].usedGpuMemory = pid, mem
            infos[i].gpuInstanceId = infos[i].computeInstanceId = 0xFFFFFFFF
        n.value = len(procs)
        return SUCCESS

    _c_nvmlDeviceGetComputeRunningProcesses_v2 = _c_nvmlDeviceGetComputeRunningProcesses_v3  # the same struct

    def _c_nvmlDeviceGetSupportedEventTypes(self, handle: Any, out: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        _ref(out).value = (N.nvmlEventTypeXidCriticalError | N.nvmlEventTypeDoubleBitEccError
                           | N.nvmlEventTypeSingleBitEccError | N.nvmlEventTypePState)
        return SUCCESS

    def _c_nvmlEventSetCreate(self, out: Any) -> int:
        self._next_set += 1
        self._registered[self._next_set] = {}
        _write_handle(out, self._next_set)
        return SUCCESS

    def _c_nvmlDeviceRegisterEvents(self, handle: Any, types: Any, event_set: Any) -> int:
        gpu = self._live(handle)
        if isinstance(gpu, int):
            return gpu
        registered = self._registered.get(_handle(event_set))
        if registered is None:
            return N.NVML_ERROR_INVALID_ARGUMENT
        registered[self.gpus.index(gpu)] = _value(types)
        return SUCCESS

    def _c_nvmlEventSetWait_v2(self, event_set: Any, out: Any, timeout_ms: Any) -> int:
        registered = self._registered.get(_handle(event_set))
        if registered is None:
            return N.NVML_ERROR_INVALID_ARGUMENT
        deadline = time.monotonic() + _value(timeout_ms) / 1000
        with self._cond:
            while True:
                for item in list(self._events):
                    index, event_type, data = item
                    if registered.get(index, 0) & event_type:
                        self._events.remove(item)
                        event = _ref(out)
                        event.eventType, event.eventData = event_type, data
                        event.gpuInstanceId = event.computeInstanceId = 0xFFFFFFFF
                        ctypes.memmove(ctypes.addressof(event), ctypes.byref(ctypes.c_void_p(_GPU_BASE + index * 0x10)),
                                       ctypes.sizeof(ctypes.c_void_p))
                        return SUCCESS
                left = deadline - time.monotonic()
                if left <= 0:
                    return N.NVML_ERROR_TIMEOUT
                self._cond.wait(left)

    def _c_nvmlEventSetFree(self, event_set: Any) -> int:
        return SUCCESS if self._registered.pop(_handle(event_set), None) is not None else N.NVML_ERROR_INVALID_ARGUMENT


def install(fake: FakeNvml) -> None:
    """Make pynvml use ``fake`` as its C library (in this process)."""
    with N.libLoadLock:
        N.nvmlLib = fake
        N._nvmlGetFunctionPointer_cache.clear()


def uninstall() -> None:
    with N.libLoadLock:
        N.nvmlLib = None
        N._nvmlGetFunctionPointer_cache.clear()


# -- fixtures -----------------------------------------------------------------------------------------------------------

_MODELS = {  # name, power limit (mW), MIG, row remapping (Ampere and later) rather than page retirement
    "H100": ("NVIDIA H100 80GB HBM3", 700_000, True, True),
    "A100": ("NVIDIA A100-SXM4-{mem}GB", 400_000, True, True),
    "V100": ("Tesla V100-SXM2-{mem}GB", 300_000, False, False),
    "L4": ("NVIDIA L4", 72_000, False, True),
    "T4": ("Tesla T4", 70_000, False, False),
    "P100": ("Tesla P100-PCIE-16GB", 250_000, False, False),
    "K80": ("Tesla K80", 149_000, False, False),
}
_SPEC = re.compile(r"^(\d+)x([A-Za-z0-9]+)(?:-(\d+)GB)?$")


def _uuid(seed: str) -> str:
    h = hashlib.sha1(seed.encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


MAX_SIM_GB = 1024


def parse_sim_spec(spec: str) -> list[tuple[int, str, int]]:
    """``2xH100-80GB,4xA100-40GB`` -> [(2, 'H100', 80), (4, 'A100', 40)]; errors name the bad part."""
    groups = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _SPEC.fullmatch(part)
        if not m:
            raise ValueError(f"--sim: {part!r} is not '<count>x<MODEL>[-<GB>GB]' (e.g. 4xA100-40GB)")
        count, model, mem = int(m.group(1)), m.group(2).upper(), m.group(3)
        if model not in _MODELS:
            raise ValueError(f"--sim: unknown model {model!r} (known: {', '.join(sorted(_MODELS))})")
        if not 1 <= count <= 16:
            raise ValueError(f"--sim: {part!r}: between 1 and 16 devices per group")
        default_mem = {"H100": 80, "A100": 40, "V100": 16, "L4": 24, "T4": 16, "P100": 16, "K80": 12}[model]
        gib = int(mem) if mem else default_mem
        if not 1 <= gib <= MAX_SIM_GB:  # 0 GB was taken, and 99999999999999 GB overflowed to 13 billion
            raise ValueError(f"--sim: {part!r}: from 1 to {MAX_SIM_GB:,} GB per device")
        groups.append((count, model, gib))
    if not groups:
        raise ValueError("--sim: no devices given (e.g. --sim 2xH100-80GB,4xA100-40GB)")
    return groups


def sim_node(spec: str, node: str) -> FakeNvml:
    """A node from a ``--sim`` spec: each group is one NVLink domain on its own socket."""
    gpus: list[FakeGpu] = []
    nvlink: set[frozenset[int]] = set()
    for socket, (count, model, mem) in enumerate(parse_sim_spec(spec)):
        name, power, mig, remapping = _MODELS[model]
        first = len(gpus)
        for k in range(count):
            i = len(gpus)
            gpus.append(FakeGpu(uuid=_uuid(f"{node}/{i}"), name=name.format(mem=mem), memory_total=mem * GIB,
                                pci_bus_id=f"00000000:{0x18 + i * 0x10:02X}:00.0", socket=socket, switch=k // 2,
                                power_limit_mw=power, mig_capable=mig, row_remapping=remapping))
        nvlink |= {frozenset({a, b}) for a in range(first, len(gpus)) for b in range(a + 1, len(gpus))}
    return FakeNvml(gpus, nvlink=nvlink)


def dgx_h100(node: str = "dgx-01") -> FakeNvml:
    """A DGX H100-like box: 8 GPUs on two sockets, pairs behind PCIe switches, all-to-all NVLink (NVSwitch), and
    GPU 7 in MIG mode with two 3g.40gb instances."""
    fake = sim_node("8xH100-80GB", node)
    for i, gpu in enumerate(fake.gpus):
        gpu.socket, gpu.switch = i // 4, i // 2
    last = fake.gpus[7]
    last.mig_enabled = True
    last.mig = [FakeMig(_uuid(f"{node}/7/mig{k}").replace("GPU-", "MIG-"), 40 * GIB) for k in range(2)]
    return fake
