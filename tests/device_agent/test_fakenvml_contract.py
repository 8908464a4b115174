"""Contract: the real pynvml wrapper, run over the fake library, behaves as it does over libnvidia-ml.

These tests call pynvml's public functions only (the ones the NVML backend uses), so a fake that drifts from the C
API (argument order, structs, return codes) fails here, not silently in the agent.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path
from typing import Iterator

import pynvml as N
import pytest

from aios.device_agent import fakenvml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dgx() -> Iterator[fakenvml.FakeNvml]:
    fake = fakenvml.dgx_h100()
    fakenvml.install(fake)
    N.nvmlInit()
    yield fake
    N.nvmlShutdown()
    fakenvml.uninstall()


def test_wrapper_version_is_the_pinned_one() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("nvidia-ml-py"))
    assert pin.split("==")[1].split()[0] == importlib.metadata.version("nvidia-ml-py")


def test_without_a_driver_init_raises_library_not_found() -> None:
    fakenvml.uninstall()
    with pytest.raises(N.NVMLError_LibraryNotFound):
        N.nvmlInit()


def test_inventory_calls(dgx: fakenvml.FakeNvml) -> None:
    assert N.nvmlDeviceGetCount() == 8
    assert N.nvmlSystemGetDriverVersion() == "550.54.15"
    uuids = set()
    for i in range(8):
        h = N.nvmlDeviceGetHandleByIndex(i)
        assert N.nvmlDeviceGetIndex(h) == i
        uuid = N.nvmlDeviceGetUUID(h)
        assert re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
        uuids.add(uuid)
        assert N.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
        mem = N.nvmlDeviceGetMemoryInfo(h)
        assert mem.total == 80 * 1024**3 and mem.used + mem.free == mem.total
        pci = N.nvmlDeviceGetPciInfo(h)
        assert pci.busId == dgx.gpus[i].pci_bus_id and pci.bus == int(dgx.gpus[i].pci_bus_id.split(":")[1], 16)
        assert N.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000  # milliwatts, as NVML reports
    assert len(uuids) == 8
    with pytest.raises(N.NVMLError_InvalidArgument):
        N.nvmlDeviceGetHandleByIndex(8)


def test_topology_and_p2p(dgx: fakenvml.FakeNvml) -> None:
    h = [N.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
    assert N.nvmlDeviceGetTopologyCommonAncestor(h[0], h[1]) == N.NVML_TOPOLOGY_SINGLE
    assert N.nvmlDeviceGetTopologyCommonAncestor(h[0], h[2]) == N.NVML_TOPOLOGY_NODE
    assert N.nvmlDeviceGetTopologyCommonAncestor(h[0], h[5]) == N.NVML_TOPOLOGY_SYSTEM
    assert N.nvmlDeviceGetP2PStatus(h[0], h[7], N.NVML_P2P_CAPS_INDEX_NVLINK) == N.NVML_P2P_STATUS_OK


def test_mig(dgx: fakenvml.FakeNvml) -> None:
    h7, h0 = N.nvmlDeviceGetHandleByIndex(7), N.nvmlDeviceGetHandleByIndex(0)
    assert N.nvmlDeviceGetMigMode(h7) == [N.NVML_DEVICE_MIG_ENABLE, N.NVML_DEVICE_MIG_ENABLE]
    assert N.nvmlDeviceGetMigMode(h0) == [0, 0]
    assert N.nvmlDeviceGetMaxMigDeviceCount(h7) == 7
    mig = N.nvmlDeviceGetMigDeviceHandleByIndex(h7, 1)
    assert N.nvmlDeviceGetUUID(mig).startswith("MIG-")
    assert N.nvmlDeviceGetMemoryInfo(mig).total == 40 * 1024**3
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetMigDeviceHandleByIndex(h7, 2)


def test_telemetry_and_processes(dgx: fakenvml.FakeNvml) -> None:
    h = N.nvmlDeviceGetHandleByIndex(3)
    assert N.nvmlDeviceGetComputeRunningProcesses(h) == []
    dgx.gpus[3].processes.update({4242: 3 * 1024**3, 4343: 1024**3})
    dgx.gpus[3].busy = 1.0
    procs = N.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(4242, 3 * 1024**3), (4343, 1024**3)]
    util = N.nvmlDeviceGetUtilizationRates(h)
    assert util.gpu >= 90 and 0 <= util.memory <= 100
    assert N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU) > 60
    assert N.nvmlDeviceGetPowerUsage(h) > 500_000
    assert N.nvmlDeviceGetTotalEccErrors(h, N.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, N.NVML_VOLATILE_ECC) == 0


def test_events(dgx: fakenvml.FakeNvml) -> None:
    es = N.nvmlEventSetCreate()
    for i in range(8):
        N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(i), N.nvmlEventTypeXidCriticalError
                                   | N.nvmlEventTypeDoubleBitEccError, es)
    with pytest.raises(N.NVMLError_Timeout):
        N.nvmlEventSetWait(es, 20)
    dgx.xid(5, 79)
    data = N.nvmlEventSetWait(es, 100)
    assert data.eventType == N.nvmlEventTypeXidCriticalError and data.eventData == 79
    assert N.nvmlDeviceGetUUID(data.device) == dgx.gpus[5].uuid
    dgx.double_bit_ecc(2)
    assert N.nvmlEventSetWait(es, 100).eventType == N.nvmlEventTypeDoubleBitEccError
    N.nvmlEventSetFree(es)


@pytest.mark.parametrize("code, error", [
    (N.NVML_ERROR_NOT_SUPPORTED, N.NVMLError_NotSupported),
    (N.NVML_ERROR_GPU_IS_LOST, N.NVMLError_GpuIsLost),
    (N.NVML_ERROR_NO_PERMISSION, N.NVMLError_NoPermission),
    (N.NVML_ERROR_UNKNOWN, N.NVMLError_Unknown),
])
def test_injected_failures_surface_as_the_real_error_classes(dgx: fakenvml.FakeNvml, code: int,
                                                             error: type[Exception]) -> None:
    h = N.nvmlDeviceGetHandleByIndex(0)
    dgx.fail("nvmlDeviceGetPowerUsage", code, times=1)
    with pytest.raises(error):
        N.nvmlDeviceGetPowerUsage(h)
    assert N.nvmlDeviceGetPowerUsage(h) > 0  # one failure, then healthy again


def test_lost_gpu_and_missing_functions(dgx: fakenvml.FakeNvml) -> None:
    dgx.gpus[4].lost = True
    with pytest.raises(N.NVMLError_GpuIsLost):
        N.nvmlDeviceGetUtilizationRates(N.nvmlDeviceGetHandleByIndex(4))
    with pytest.raises(N.NVMLError_FunctionNotFound):
        N.nvmlDeviceGetFanSpeed(N.nvmlDeviceGetHandleByIndex(0))


def test_sim_spec_parsing() -> None:
    assert fakenvml.parse_sim_spec("2xH100-80GB, 4xa100") == [(2, "H100", 80), (4, "A100", 40)]
    for bad, message in [("2xH900", "unknown model 'H900'"), ("two-h100", "is not '<count>x<MODEL>"),
                         ("", "no devices given"), ("20xH100", "between 1 and 16")]:
        with pytest.raises(ValueError, match=message):
            fakenvml.parse_sim_spec(bad)
