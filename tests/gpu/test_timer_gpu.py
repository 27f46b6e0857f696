"""The timing core on a real GPU: batching, L2 modes, fallbacks and sanity of the numbers."""

import pytest

from ftbench.bench.timer import TimingPolicy, cold_input_sets, device_facts, time_launch

pytestmark = pytest.mark.gpu

QUICK = TimingPolicy(budget_s=2.0, target_rel_ci=0.01)


def copier(cupy, nbytes, sets=1):
    pairs = [
        (cupy.random.randint(0, 255, nbytes, dtype=cupy.uint8), cupy.empty(nbytes, cupy.uint8))
        for _ in range(sets)
    ]

    def launch(i):
        src, dst = pairs[i]
        cupy.cuda.runtime.memcpyAsync(
            dst.data.ptr, src.data.ptr, nbytes, cupy.cuda.runtime.memcpyDeviceToDevice,
            cupy.cuda.get_current_stream().ptr,
        )  # fmt: skip

    return launch


def test_short_launches_are_batched_in_a_graph():
    import cupy

    timing = time_launch(copier(cupy, 2**20), name="copy 1 MiB", policy=QUICK)
    assert timing.method == "graph"
    assert timing.launches_per_sample > 10
    assert timing.l2 == "hot"
    assert 0 < timing.min_ms <= timing.median_ms
    assert timing.ci_low_ms <= timing.median_ms <= timing.ci_high_ms
    assert timing.median_ms < 0.05  # a 1 MiB copy takes microseconds, not launch overhead


def test_long_launches_are_timed_one_per_sample():
    import cupy

    policy = TimingPolicy(budget_s=2.0, sample_ms=0.5)
    timing = time_launch(copier(cupy, 2**30), name="copy 1 GiB", policy=policy)
    assert timing.launches_per_sample == 1
    assert timing.method == "stream"
    assert timing.converged


def test_copy_time_scales_with_bytes():
    import cupy

    small = time_launch(copier(cupy, 2**29), name="512 MiB", l2="cold", policy=QUICK)
    large = time_launch(copier(cupy, 2**31), name="2 GiB", l2="cold", policy=QUICK)
    assert large.median_ms / small.median_ms == pytest.approx(4.0, rel=0.1)


def test_cold_rotation_is_slower_than_hot_for_data_that_fits_l2():
    import cupy

    l2_bytes, _ = device_facts(cupy)
    nbytes = l2_bytes // 8  # source + destination fit in L2 comfortably
    sets = cold_input_sets(2 * nbytes, l2_bytes)
    hot = time_launch(copier(cupy, nbytes, sets), name="hot", l2="hot", policy=QUICK)
    cold = time_launch(
        copier(cupy, nbytes, sets),
        name="cold",
        l2="cold",
        input_sets=sets,
        set_bytes=2 * nbytes,
        policy=QUICK,
    )
    assert cold.l2 == "cold-rotate"
    assert cold.launches_per_sample % sets == 0
    assert hot.median_ms < 0.85 * cold.median_ms


def test_cold_without_enough_sets_flushes_l2_before_each_launch():
    import cupy

    timing = time_launch(copier(cupy, 2**20), name="flush", l2="cold", policy=QUICK)
    assert timing.l2 == "cold-flush"
    assert timing.launches_per_sample == 1


def test_uncapturable_launch_falls_back_to_the_stream_and_says_so():
    import cupy

    x = cupy.random.random(1024)

    def launch(_):
        float(x.sum())  # a host read: illegal inside graph capture

    timing = time_launch(launch, name="sync", policy=TimingPolicy(budget_s=1.0, sample_ms=0.5))
    assert timing.method == "stream"
    assert "launch-gaps-included" in timing.flags
    assert timing.capture_error


def test_cublas_gemm_is_captured_in_a_graph():
    import cupy

    from ftbench.gemm.backends.cublas import gemm_ex

    x = cupy.random.random((16, 4096)).astype(cupy.float16)
    w = cupy.random.random((4096, 4096)).astype(cupy.float16)
    y = cupy.empty((16, 4096), cupy.float16)
    timing = time_launch(lambda _: gemm_ex(x, w, y), name="gemm", policy=QUICK)
    assert timing.method == "graph", timing.capture_error


def test_timing_records_conditions_and_serialises():
    import json

    import cupy

    timing = time_launch(copier(cupy, 2**24), name="copy 16 MiB", policy=QUICK)
    data = json.loads(json.dumps(timing.to_dict()))
    assert data["conditions"]["sm_clock_mhz_max"] is not None or data["conditions"]["note"]
    assert len(data["samples_ms"]) >= QUICK.min_samples


def test_batch_size_follows_device_time_not_host_overhead():
    import time

    import cupy

    copy = copier(cupy, 2**20)

    def slow_host_launch(i):
        time.sleep(0.0002)  # a launch path far slower on the host than its kernel on the device
        copy(i)

    timing = time_launch(slow_host_launch, name="slow host", policy=QUICK)
    assert timing.method == "graph"
    assert timing.launches_per_sample * timing.median_ms > 0.5 * QUICK.sample_ms
