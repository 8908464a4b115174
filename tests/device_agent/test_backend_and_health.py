"""The NVML backend on the fake library (success and failure paths), DCGM metrics, and the pure health rules."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import pynvml as N
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aios.device_agent import fakenvml
from aios.device_agent.health import APPLICATION_XIDS, HELD_REASON, HealthTracker, is_critical_xid
from aios.device_agent.metrics import DcgmMetrics
from aios.device_agent.nvml import DeviceSample, HealthSignal, NvmlBackend, NvmlUnavailable, device_kind


@pytest.fixture
def dgx() -> Iterator[tuple[fakenvml.FakeNvml, NvmlBackend]]:
    fake = fakenvml.dgx_h100()
    fakenvml.install(fake)
    backend = NvmlBackend()
    backend.start()
    yield fake, backend
    backend.stop()
    fakenvml.uninstall()


def test_no_driver_is_a_clear_error_that_offers_sim() -> None:
    fakenvml.uninstall()
    with pytest.raises(NvmlUnavailable, match="libnvidia-ml.so.1.*not found.*--sim"):
        NvmlBackend().start()


def test_inventory_of_a_dgx(dgx: tuple[fakenvml.FakeNvml, NvmlBackend]) -> None:
    fake, backend = dgx
    devices = backend.devices()
    assert [d.index for d in devices] == list(range(8))
    assert {d.kind for d in devices} == {"h100"} and devices[0].memory_bytes == 80 * 1024**3
    assert devices[0].power_limit_w == 700.0  # NVML milliwatts converted once, here
    assert [d.uuid for d in devices] == [g.uuid for g in fake.gpus]
    assert devices[7].mig_enabled and len(devices[7].mig_instances) == 2
    assert not devices[0].mig_enabled and devices[0].pci_bus_id == "00000000:18:00.0"
    links = backend.links()
    assert len(links) == 28 and {link.level for link in links} == {"nvlink"}


def test_pcie_levels_without_nvlink() -> None:
    fake = fakenvml.sim_node("2xV100-16GB,1xT4", "n")
    fake.nvlink = set()
    fakenvml.install(fake)
    backend = NvmlBackend()
    backend.start()
    levels = {(link.a[-4:], link.b[-4:]): link.level for link in backend.links()}
    u = [g.uuid[-4:] for g in fake.gpus]
    assert levels[(u[0], u[1])] == "pcie-switch" and levels[(u[0], u[2])] == "system"
    backend.stop()
    fakenvml.uninstall()


def test_samples_and_degraded_calls(dgx: tuple[fakenvml.FakeNvml, NvmlBackend]) -> None:
    fake, backend = dgx
    fake.gpus[1].busy = 1.0
    fake.gpus[1].processes[777] = 2 * 1024**3
    s = backend.sample()[1]
    assert s.utilization_gpu >= 90 and s.power_w is not None and s.power_w > 500 and s.processes == [(777, 2 * 1024**3)]
    assert s.memory_used_bytes >= 2 * 1024**3 and s.errors == []

    fake.fail("nvmlDeviceGetTemperatureV", N.NVML_ERROR_UNKNOWN)
    fake.fail("nvmlDeviceGetPowerUsage", N.NVML_ERROR_NOT_SUPPORTED)
    s = backend.sample()[0]
    assert s.temperature_c is None and s.power_w is None and s.utilization_gpu is not None
    assert s.errors == ["nvmlDeviceGetTemperatureV: Unknown Error"]  # NotSupported is normal, not an error
    assert backend.error_counts["nvmlDeviceGetTemperatureV"] == 8
    fake.heal()
    assert backend.sample()[0].temperature_c is not None


def test_lost_gpu_is_reported_then_recovers(dgx: tuple[fakenvml.FakeNvml, NvmlBackend]) -> None:
    fake, backend = dgx
    fake.gpus[6].lost = True
    s = backend.sample()[6]
    assert s.lost and s.utilization_gpu is None and "GPU is lost" in s.errors[0]
    assert not backend.sample()[5].lost
    fake.gpus[6].lost = False
    assert not backend.sample()[6].lost


def test_nvml_events(dgx: tuple[fakenvml.FakeNvml, NvmlBackend]) -> None:
    fake, backend = dgx
    assert backend.wait_events(20) == []
    fake.xid(2, 48)
    assert backend.wait_events(200) == [HealthSignal(fake.gpus[2].uuid, "xid", 48)]
    fake.double_bit_ecc(3)
    assert backend.wait_events(200) == [HealthSignal(fake.gpus[3].uuid, "ecc-dbe")]


def test_a_driver_older_than_the_wrapper_still_gives_readings(caplog: pytest.LogCaptureFixture) -> None:
    """Before R510 a driver has no nvmlDeviceGetComputeRunningProcesses_v3: pynvml raises NVMLLibraryMismatchError,
    which is not an NVMLError, and it ended the agent's telemetry for good. The older versions are used instead."""
    fake = fakenvml.FakeNvml(fakenvml.sim_node("2xV100-16GB", "n").gpus, missing=frozenset({
        "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetTemperatureV"}))
    fakenvml.install(fake)
    backend = NvmlBackend()
    backend.start()
    fake.gpus[1].processes[4242] = 1024**3
    for _ in range(3):
        samples = backend.sample()
    assert samples[1].processes == [(4242, 1024**3)] and samples[1].temperature_c is not None
    assert samples[1].errors == [] and backend.error_counts == {}

    fake.missing = frozenset({"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
                              "nvmlDeviceGetPowerUsage"})
    N._nvmlGetFunctionPointer_cache.clear()
    backend._absent.clear()
    with caplog.at_level("WARNING", logger="aios.device_agent.nvml"):
        for _ in range(3):
            samples = backend.sample()
    assert samples[0].processes == [] and samples[0].power_w is None and samples[0].utilization_gpu is not None
    lacking = [r for r in caplog.records if "lacks a function" in r.getMessage() and r.levelname == "WARNING"]
    assert sorted(r.call for r in lacking) == ["nvmlDeviceGetComputeRunningProcesses_v2",  # type: ignore[attr-defined]
                                               "nvmlDeviceGetPowerUsage"]  # once each, not every reading
    backend.stop()
    fakenvml.uninstall()


def test_a_gpu_unreadable_at_start_is_named_not_silently_dropped(caplog: pytest.LogCaptureFixture) -> None:
    fake = fakenvml.dgx_h100()
    fake.gpus[3].lost = True
    fakenvml.install(fake)
    backend = NvmlBackend()
    with caplog.at_level("ERROR", logger="aios.device_agent.nvml"):
        backend.start()
    assert len(backend.devices()) == 7 and list(backend.missing) == [3] and "GPU is lost" in backend.missing[3]
    assert backend.error_counts == {"device unreadable at start": 1}  # the agent's NVML error counter shows it
    assert any(r.getMessage().startswith("GPU left out") and r.index == 3  # type: ignore[attr-defined]
               for r in caplog.records)
    backend.stop()
    fakenvml.uninstall()


def test_an_xid_from_a_gpu_that_fell_off_the_bus_is_kept(dgx: tuple[fakenvml.FakeNvml, NvmlBackend]) -> None:
    """The event names its device by handle; asking a lost device for its uuid fails, and XID 79 was dropped."""
    fake, backend = dgx
    fake.gpus[2].lost = True
    fake.xid(2, 79)
    assert backend.wait_events(500) == [HealthSignal(fake.gpus[2].uuid, "xid", 79)]


def test_a_failing_event_wait_is_flagged_and_logged_once(dgx: tuple[fakenvml.FakeNvml, NvmlBackend],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    fake, backend = dgx
    fake.fail("nvmlEventSetWait_v2", N.NVML_ERROR_GPU_IS_LOST)
    with caplog.at_level("WARNING", logger="aios.device_agent.nvml"):
        for _ in range(50):
            assert backend.wait_events(1000) == [] and backend.event_wait_failing  # the caller pauses on it
    assert backend.error_counts["nvmlEventSetWait"] == 50
    assert [r.getMessage() for r in caplog.records] == ["NVML event wait failed"]
    fake.heal()
    fake.xid(1, 48)
    assert backend.wait_events(500) == [HealthSignal(fake.gpus[1].uuid, "xid", 48)]
    assert not backend.event_wait_failing


def test_stopping_waits_for_a_thread_inside_the_event_wait(dgx: tuple[fakenvml.FakeNvml, NvmlBackend]) -> None:
    """Freeing the event set (and shutting NVML down) under a thread blocked on it is a use after free in the real
    library; the waiter returns within its timeout, then the set is freed."""
    fake, backend = dgx
    order: list[str] = []
    waiting = threading.Event()
    wait, free = fakenvml.FakeNvml._c_nvmlEventSetWait_v2, fakenvml.FakeNvml._c_nvmlEventSetFree

    def traced_wait(self: fakenvml.FakeNvml, *args: Any) -> int:
        waiting.set()
        code = wait(self, *args)
        order.append("wait returned")
        return code

    def traced_free(self: fakenvml.FakeNvml, *args: Any) -> int:
        order.append("set freed")
        return free(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fakenvml.FakeNvml, "_c_nvmlEventSetWait_v2", traced_wait)
        mp.setattr(fakenvml.FakeNvml, "_c_nvmlEventSetFree", traced_free)
        waiter = threading.Thread(target=backend.wait_events, args=(300,))
        waiter.start()
        assert waiting.wait(5)
        backend.stop()
        waiter.join(5)
    assert order == ["wait returned", "set freed"]
    assert backend.wait_events(10) == []  # a wait after the stop finds no set, and does not touch NVML


def test_event_set_failure_degrades() -> None:
    fake = fakenvml.dgx_h100()
    fake.fail("nvmlEventSetCreate", N.NVML_ERROR_NOT_SUPPORTED)
    fakenvml.install(fake)
    backend = NvmlBackend()
    backend.start()
    assert backend.wait_events(10) == [] and len(backend.devices()) == 8
    backend.stop()
    fakenvml.uninstall()


@pytest.mark.parametrize("model, kind", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100-SXM4-40GB", "a100"),
                                         ("Tesla V100-SXM2-16GB", "v100"), ("NVIDIA GeForce RTX 4090", "rtx4090"),
                                         ("Mystery Accelerator 9", "mystery-accelerator-9")])
def test_device_kinds(model: str, kind: str) -> None:
    assert device_kind(model) == kind


def test_health_rules() -> None:
    h = HealthTracker(quiet_s=60)
    for xid in sorted(APPLICATION_XIDS):
        assert not is_critical_xid(xid) and h.on_signal(HealthSignal("g0", "xid", xid), 0) == []
    [t] = h.on_signal(HealthSignal("g0", "xid", 79), 10)
    assert not t.healthy and t.xid == 79 and "79" in t.reason
    assert h.on_signal(HealthSignal("g0", "xid", 79), 11) == []  # no duplicate transition
    clean = DeviceSample("g0", 0, ecc_dbe_total=0)
    assert h.on_sample(clean, 30) == []  # still within the quiet period after the last error
    [back] = h.on_sample(clean, 72)
    assert back.healthy

    [lost] = h.on_sample(DeviceSample("g1", 1, lost=True), 100)
    assert not lost.healthy and "fell off the bus" in lost.reason
    [found] = h.on_sample(DeviceSample("g1", 1), 101)
    assert found.healthy  # a lost device that answers again is back at once

    assert h.on_sample(DeviceSample("g2", 2, ecc_dbe_total=0), 0) == []
    [dbe] = h.on_sample(DeviceSample("g2", 2, ecc_dbe_total=1), 1)
    assert not dbe.healthy and "double-bit" in dbe.reason
    assert h.on_signal(HealthSignal("g3", "ecc-sbe"), 0) == []  # corrected errors are not a health problem


def test_a_device_with_a_memory_repair_pending_waits_for_its_reset() -> None:
    """After an uncorrectable memory error NVIDIA's remedy is a GPU reset: the repair (a remapped row, a retired
    page) takes effect only then. The device came back after a quiet minute whatever NVML said, and the next job
    ran on the memory that had failed."""
    h = HealthTracker(quiet_s=60)
    assert not h.on_signal(HealthSignal("g0", "ecc-dbe"), 0)[0].healthy
    assert h.on_sample(DeviceSample("g0", 0, repair_pending=True), 600) == []  # quiet, but not reset
    [back] = h.on_sample(DeviceSample("g0", 0, repair_pending=False), 601)
    assert back.healthy and "reset" in back.reason
    # a GPU that cannot say (no ECC, or an NVML without either call) keeps the quiet-period rule
    h.on_signal(HealthSignal("g1", "xid", 48), 0)
    assert h.on_sample(DeviceSample("g1", 1), 61)[0].healthy
    # no spare rows left to remap: out of service until someone services it
    [failed] = h.on_sample(DeviceSample("g2", 2, repair_pending=False, repair_failed=True), 0)
    assert not failed.healthy and "row remapping failed" in failed.reason
    assert h.on_sample(DeviceSample("g2", 2, repair_pending=False, repair_failed=True), 3600) == []
    assert "g2" in h.unhealthy


def test_a_device_held_by_a_worker_that_would_not_die_is_out_of_service_until_it_exits() -> None:
    """A worker stuck in the kernel outlives its SIGKILL and keeps its device: every worker placed there next was
    refused, five times, and its job failed as a crash loop. Held, the device is unhealthy (the scheduler places
    nothing there) until the process exits; quiet samples do not bring it back before."""
    h = HealthTracker(quiet_s=60)
    held = f"{HELD_REASON} (pid 7, w0 of job j1)"
    [t] = h.hold("g0", held, 0)
    assert not t.healthy and t.reason == held
    assert h.on_sample(DeviceSample("g0", 0, processes=[(7, 1 << 30)]), 3600) == []  # quiet for an hour: still held
    assert h.on_sample(DeviceSample("g0", 0), 7200) == []  # no process listed: this agent's own hold waits for the exit
    [back] = h.release("g0")
    assert back.healthy and "g0" not in h.unhealthy and h.release("g0") == []

    # a fault of its own while held keeps it out after the exit, under that fault's rule
    h.hold("g1", held, 0)
    h.on_signal(HealthSignal("g1", "ecc-dbe"), 5)
    [t] = h.release("g1")
    assert not t.healthy and t.reason == "double-bit ECC error" and "g1" in h.unhealthy
    assert h.on_sample(DeviceSample("g1", 1), 100)[0].healthy
    # one already unhealthy keeps its fault, and the log's reason names the hold too (found by review: a fresh
    # agent then carried the XID alone, and put the GPU back after a quiet minute, the stuck process still on it)
    h.on_signal(HealthSignal("g2", "xid", 79), 0)
    [both] = h.hold("g2", held, 1)
    assert not both.healthy and both.reason == f"critical XID 79; {held}"
    assert h.on_sample(DeviceSample("g2", 2), 120) == []  # held: not back on quiet samples
    fresh = HealthTracker(quiet_s=60)
    fresh.carry("g2", both.reason, 100)
    assert fresh.on_sample(DeviceSample("g2", 2, processes=[(7, 1 << 30)]), 200) == []
    [fault] = fresh.on_sample(DeviceSample("g2", 2), 201)  # the process gone: the XID's own rule is left
    assert not fault.healthy and fault.reason == "critical XID 79"
    assert fresh.on_sample(DeviceSample("g2", 2), 202)[0].healthy  # its quiet minute counted from the carry (100)
    [fault] = h.release("g2")
    assert not fault.healthy and fault.reason == "critical XID 79" and h.on_sample(DeviceSample("g2", 2), 121)[0].healthy
    # a fault while held: the log's reason names both
    h.hold("g4", held, 0)
    [t] = h.on_signal(HealthSignal("g4", "xid", 48), 5)
    assert t.reason == f"critical XID 48; {held}"

    # a fresh agent finds the hold in the log: it is freed once NVML lists no process on the device (and not while
    # the list cannot be read)
    h.carry("g3", held, 0)
    assert h.on_sample(DeviceSample("g3", 3, processes=[(7, 1 << 30)]), 1) == []
    assert h.on_sample(DeviceSample("g3", 3, errors=["nvmlDeviceGetComputeRunningProcesses: Unknown Error"]), 2) == []
    [free] = h.on_sample(DeviceSample("g3", 3), 3)
    assert free.healthy and "g3" not in h.unhealthy


@pytest.mark.parametrize("spec, reads", [("1xH100-80GB", "nvmlDeviceGetRemappedRows"),
                                         ("1xV100-16GB", "nvmlDeviceGetRetiredPagesPendingStatus")])
def test_a_pending_memory_repair_is_read_from_either_generation_of_gpu(spec: str, reads: str) -> None:
    """Ampere and later report row remapping, older GPUs page retirement; each call is NotSupported on the other
    generation, which is not an error of the reading."""
    fake = fakenvml.sim_node(spec, "n")
    fakenvml.install(fake)
    backend = NvmlBackend()
    try:
        backend.start()
        [s] = backend.sample()
        assert s.repair_pending is False and not s.repair_failed and s.errors == []
        fake.double_bit_ecc(0)
        [s] = backend.sample()
        assert s.repair_pending is True and s.ecc_dbe_total == 1 and fake.calls[reads] == 2
        fake.reset(0)
        [s] = backend.sample()
        assert s.repair_pending is False and s.ecc_dbe_total == 0
        fake.fail(reads, N.NVML_ERROR_NOT_SUPPORTED)  # no ECC memory, or a driver without it: not reported
        assert backend.sample()[0].repair_pending is None
    finally:
        backend.stop()
        fakenvml.uninstall()


def test_dcgm_metrics_names_and_units() -> None:
    fake = fakenvml.sim_node("1xA100-40GB", "n")
    fakenvml.install(fake)
    backend = NvmlBackend()
    backend.start()
    registry = CollectorRegistry()
    m = DcgmMetrics(registry, "host-1")
    m.describe(backend.devices())
    fake.gpus[0].processes[1] = 1024**3
    m.observe(backend.sample()[0])
    m.set_health(fake.gpus[0].uuid, False, xid=79)
    uuid = fake.gpus[0].uuid
    labels = {"gpu": "0", "UUID": uuid, "device": "nvidia0", "modelName": "NVIDIA A100-SXM4-40GB", "Hostname": "host-1"}
    values = {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
              for fam in text_string_to_metric_families(generate_latest(registry).decode()) for smp in fam.samples}
    key = tuple(sorted(labels.items()))
    assert values[("DCGM_FI_DEV_FB_USED", key)] == 1536.0  # 1 GiB process + 512 MiB context, in MiB
    assert values[("DCGM_FI_DEV_POWER_MGMT_LIMIT", key)] == 400.0  # watts, not milliwatts
    assert values[("DCGM_FI_DEV_XID_ERRORS", key)] == 79.0 and values[("aios_device_healthy", key)] == 0.0
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
                 "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_FB_FREE"):
        assert (name, key) in values
    backend.stop()
    fakenvml.uninstall()
