"""The GPU's state through NVML: static facts, clocks, power, throttle reasons, other processes.

Every reading is best effort: a value NVML does not support on this GPU (common in VMs) is None,
never an exception. `ConditionMonitor` watches a measurement and turns what it saw into flags,
so a number taken while throttled or beside another process is never silently mixed in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# NVML clock-event ("throttle") reason bits, from nvml.h.
THROTTLE_REASON_NAMES = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that lower clocks below what the workload asked for, and the flag each raises.
THROTTLE_FLAGS = {
    "sw_power_cap": "power-capped",
    "hw_slowdown": "throttled",
    "sw_thermal_slowdown": "throttled",
    "hw_thermal_slowdown": "throttled",
    "hw_power_brake_slowdown": "throttled",
}
# NVML perf-policy ids for nvmlDeviceGetViolationStatus: cumulative throttled time in ns.
VIOLATION_POLICIES = {"power": 0, "thermal": 1}


def try_read(read: Callable[[], T]) -> T | None:
    """Run one NVML read; unsupported or failing reads give None."""
    try:
        return read()
    except Exception:  # NVMLError subclasses, or ctypes errors on odd drivers
        return None


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml():
    """Initialise NVML and return the pynvml module; raises RuntimeError with the reason."""
    try:
        import pynvml
    except ImportError as exc:
        raise RuntimeError("nvidia-ml-py (pynvml) is not installed") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise RuntimeError(f"NVML could not start: {exc}") from exc
    return pynvml


def throttle_reason_names(mask: int | None) -> list[str]:
    """Names of the NVML clock-event reason bits set in `mask`."""
    if mask is None:
        return []
    return [name for bit, name in THROTTLE_REASON_NAMES.items() if mask & bit]


def normalise_bus_id(bus_id: str) -> str:
    """'00000000:1A:00.0' and '0000:1a:00.0' name the same GPU."""
    domain, _, rest = bus_id.strip().lower().partition(":")
    return f"{int(domain, 16):04x}:{rest}"


def handle_for_bus_id(pynvml, bus_id: str):
    """The NVML handle of the GPU at a PCI bus id (CUDA and NVML may number GPUs differently)."""
    wanted = normalise_bus_id(bus_id)
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        if normalise_bus_id(as_text(pynvml.nvmlDeviceGetPciInfo(handle).busId)) == wanted:
            return handle
    raise RuntimeError(f"NVML sees no GPU at PCI bus id {bus_id}")


def other_processes(pynvml, handle) -> list[dict[str, Any]]:
    """Compute and graphics processes on the GPU other than this one."""
    seen: dict[int, dict[str, Any]] = {}
    for read in (
        pynvml.nvmlDeviceGetComputeRunningProcesses,
        pynvml.nvmlDeviceGetGraphicsRunningProcesses,
    ):
        for proc in try_read(lambda read=read: read(handle)) or []:
            if proc.pid == os.getpid() or proc.pid in seen:
                continue
            used = getattr(proc, "usedGpuMemory", None)
            seen[proc.pid] = {
                "pid": proc.pid,
                "name": try_read(
                    lambda pid=proc.pid: Path(f"/proc/{pid}/comm").read_text().strip()
                ),
                "used_memory_mib": None if used is None else used // 2**20,
            }
    return list(seen.values())


@dataclass(frozen=True)
class GpuReading:
    """One moment's dynamic state of a GPU."""

    sm_clock_mhz: int | None
    memory_clock_mhz: int | None
    power_w: float | None
    temperature_c: int | None
    throttle_reasons: tuple[str, ...]
    violation_ns: dict[str, int] = field(default_factory=dict)
    other_processes: tuple[dict[str, Any], ...] = ()


def read_gpu(pynvml, handle) -> GpuReading:
    """Read clocks, power, temperature, throttle reasons, violation counters and processes."""
    reasons = try_read(lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
    if reasons is None:
        reasons = try_read(lambda: pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
    power_mw = try_read(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
    violations = {}
    for name, policy in VIOLATION_POLICIES.items():
        status = try_read(lambda policy=policy: pynvml.nvmlDeviceGetViolationStatus(handle, policy))
        if status is not None:
            violations[name] = int(status.violationTime)
    return GpuReading(
        sm_clock_mhz=try_read(lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        memory_clock_mhz=try_read(
            lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        ),
        power_w=None if power_mw is None else power_mw / 1000.0,
        temperature_c=try_read(
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        ),
        throttle_reasons=tuple(throttle_reason_names(reasons)),
        violation_ns=violations,
        other_processes=tuple(other_processes(pynvml, handle)),
    )


@dataclass(frozen=True)
class Conditions:
    """What the GPU did during a measurement, and the flags that follow from it."""

    sm_clock_mhz_min: int | None
    sm_clock_mhz_max: int | None
    memory_clock_mhz: int | None
    power_w_max: float | None
    temperature_c_max: int | None
    throttle_reasons_seen: tuple[str, ...]
    throttled_ns: dict[str, int]
    other_processes: tuple[dict[str, Any], ...]
    flags: tuple[str, ...]
    note: str = ""


def conditions_from_readings(readings: list[GpuReading]) -> Conditions:
    """Fold the readings taken before, during and after a measurement into `Conditions`."""

    def values(attribute: str) -> list:
        return [v for r in readings if (v := getattr(r, attribute)) is not None]

    reasons = sorted({name for r in readings for name in r.throttle_reasons})
    throttled_ns = {}
    for name in VIOLATION_POLICIES:
        counts = [r.violation_ns[name] for r in readings if name in r.violation_ns]
        if len(counts) >= 2:
            throttled_ns[name] = counts[-1] - counts[0]
    processes = {p["pid"]: p for r in readings for p in r.other_processes}

    flags = {THROTTLE_FLAGS[name] for name in reasons if name in THROTTLE_FLAGS}
    if throttled_ns.get("power", 0) > 0:
        flags.add("power-capped")
    if throttled_ns.get("thermal", 0) > 0:
        flags.add("throttled")
    if processes:
        flags.add("other-processes")
    sm_clocks, memory_clocks = values("sm_clock_mhz"), values("memory_clock_mhz")
    powers, temperatures = values("power_w"), values("temperature_c")
    return Conditions(
        sm_clock_mhz_min=min(sm_clocks, default=None),
        sm_clock_mhz_max=max(sm_clocks, default=None),
        memory_clock_mhz=min(memory_clocks, default=None),
        power_w_max=max(powers, default=None),
        temperature_c_max=max(temperatures, default=None),
        throttle_reasons_seen=tuple(reasons),
        throttled_ns=throttled_ns,
        other_processes=tuple(processes.values()),
        flags=tuple(sorted(flags)),
    )


class ConditionMonitor:
    """Reads the GPU's state at the start, at each `poll()` and at the end of a measurement."""

    def __init__(self, pci_bus_id: str | None):
        self._readings: list[GpuReading] = []
        self._note = ""
        self._pynvml = self._handle = None
        if pci_bus_id is None:
            self._note = "no PCI bus id: GPU conditions not read"
            return
        try:
            self._pynvml = nvml()
            self._handle = handle_for_bus_id(self._pynvml, pci_bus_id)
        except RuntimeError as exc:
            self._note = f"GPU conditions not read: {exc}"

    def poll(self) -> None:
        """Take one reading (cheap: a few NVML calls)."""
        if self._handle is not None:
            self._readings.append(read_gpu(self._pynvml, self._handle))

    def conditions(self) -> Conditions:
        """Everything seen so far, folded into flags."""
        return replace(conditions_from_readings(self._readings), note=self._note)
