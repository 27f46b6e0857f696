"""Turning NVML readings into measurement flags (no GPU needed)."""

from ftbench.bench.gpu_state import (
    ConditionMonitor,
    GpuReading,
    conditions_from_readings,
    normalise_bus_id,
    throttle_reason_names,
)


def reading(sm=1980, reasons=(), violations=None, processes=()):
    return GpuReading(
        sm_clock_mhz=sm,
        memory_clock_mhz=3201,
        power_w=400.0,
        temperature_c=50,
        throttle_reasons=tuple(reasons),
        violation_ns=violations or {},
        other_processes=tuple(processes),
    )


def test_reason_bits_are_named():
    assert throttle_reason_names(0x1 | 0x4 | 0x40) == [
        "gpu_idle",
        "sw_power_cap",
        "hw_thermal_slowdown",
    ]
    assert throttle_reason_names(None) == []


def test_bus_ids_from_nvml_and_cuda_compare_equal():
    assert normalise_bus_id("00000000:1A:00.0") == normalise_bus_id("0000:1a:00.0")


def test_clean_readings_raise_no_flags():
    conditions = conditions_from_readings(
        [reading(), reading(sm=1970), reading(reasons=["gpu_idle"])]
    )
    assert conditions.flags == ()
    assert (conditions.sm_clock_mhz_min, conditions.sm_clock_mhz_max) == (1970, 1980)


def test_thermal_slowdown_flags_throttled():
    conditions = conditions_from_readings([reading(), reading(reasons=["hw_thermal_slowdown"])])
    assert conditions.flags == ("throttled",)


def test_power_cap_seen_between_chunks_flags_power_capped():
    conditions = conditions_from_readings([reading(), reading(reasons=["sw_power_cap"]), reading()])
    assert conditions.flags == ("power-capped",)


def test_violation_counters_catch_throttling_that_polls_missed():
    readings = [reading(violations={"power": 10, "thermal": 5}),
                reading(violations={"power": 10, "thermal": 900})]  # fmt: skip
    conditions = conditions_from_readings(readings)
    assert conditions.throttled_ns == {"power": 0, "thermal": 895}
    assert conditions.flags == ("throttled",)


def test_other_process_flags_the_measurement():
    other = {"pid": 4242, "name": "python", "used_memory_mib": 1024}
    conditions = conditions_from_readings([reading(), reading(processes=[other])])
    assert conditions.flags == ("other-processes",)
    assert conditions.other_processes == (other,)


def test_monitor_without_a_gpu_records_why():
    monitor = ConditionMonitor(None)
    monitor.poll()
    conditions = monitor.conditions()
    assert conditions.flags == ()
    assert "not read" in conditions.note
