"""Prometheus gauges with the DCGM exporter's names and units (NVML gives mW and bytes; DCGM exports W and MiB)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from aios.common.events import DeviceInfo
from aios.device_agent.nvml import DeviceSample

LABELS = ["gpu", "UUID", "device", "modelName", "Hostname"]
MIB = 1024 * 1024


class DcgmMetrics:
    def __init__(self, registry: CollectorRegistry, hostname: str) -> None:
        self.hostname = hostname
        g = lambda name, doc: Gauge(name, doc, LABELS, registry=registry)  # noqa: E731
        self.util = g("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).")
        self.mem_util = g("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).")
        self.fb_used = g("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).")
        self.fb_free = g("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).")
        self.temp = g("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).")
        self.power = g("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).")
        self.power_limit = g("DCGM_FI_DEV_POWER_MGMT_LIMIT", "Power management limit (in W).")
        self.sbe = g("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.")
        self.dbe = g("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.")
        self.xid = g("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.")
        self.healthy = g("aios_device_healthy", "1 if the device is healthy, 0 if not.")
        self.nvml_errors = Counter("aios_nvml_errors", "NVML calls that failed, by function", ["call"],
                                   registry=registry)
        self._labels: dict[str, list[str]] = {}

    def describe(self, devices: list[DeviceInfo]) -> None:
        for d in devices:
            self._labels[d.uuid] = [str(d.index), d.uuid, f"nvidia{d.index}", d.model, self.hostname]
            self.healthy.labels(*self._labels[d.uuid]).set(1)

    def observe(self, s: DeviceSample) -> None:
        labels = self._labels.get(s.uuid)
        if labels is None:
            return
        pairs = [(self.util, s.utilization_gpu), (self.mem_util, s.utilization_memory), (self.temp, s.temperature_c),
                 (self.power, s.power_w), (self.power_limit, s.power_limit_w), (self.sbe, s.ecc_sbe_total),
                 (self.dbe, s.ecc_dbe_total)]
        if s.memory_used_bytes is not None and s.memory_total_bytes is not None:
            pairs += [(self.fb_used, s.memory_used_bytes / MIB),
                      (self.fb_free, (s.memory_total_bytes - s.memory_used_bytes) / MIB)]
        for gauge, value in pairs:
            if value is not None:
                gauge.labels(*labels).set(value)

    def set_health(self, uuid: str, healthy: bool, xid: int | None = None) -> None:
        labels = self._labels.get(uuid)
        if labels is not None:
            self.healthy.labels(*labels).set(1 if healthy else 0)
            if xid is not None:
                self.xid.labels(*labels).set(xid)
