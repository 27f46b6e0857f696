"""The read probe reads every word exactly once; the ceilings are plausible."""

import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("nbytes", [16, 16 * 1000 + 16 * 7, 2**28 + 16 * 3])
def test_read_probe_reads_every_word_once(nbytes):
    import cupy
    import numpy as np

    from ftbench.kernels.gemv import read_probe

    data = cupy.random.randint(0, 2**31 - 1, nbytes // 4, dtype=cupy.int32).view(cupy.uint32)
    blocks = 264
    sink = cupy.zeros(256 * blocks, dtype=cupy.uint32)
    read_probe(data, sink, blocks)
    xor = np.bitwise_xor.reduce  # CuPy has no bitwise_xor.reduce
    assert xor(cupy.asnumpy(sink)) == xor(cupy.asnumpy(data))


def test_read_bandwidth_is_at_least_the_copy_bandwidth():
    from ftbench.modelbench.ceilings import copy_bandwidth, read_bandwidth

    read = read_bandwidth(2**31)["bytes_per_s"]
    copy = copy_bandwidth(2**31)["bytes_per_s"]
    assert read > 0.95 * copy


def test_a_read_smaller_than_a_few_l2s_rotates_cold_copies_and_is_slower():
    from ftbench.modelbench.ceilings import read_bandwidth

    small = read_bandwidth(2**25)
    large = read_bandwidth(2**31)
    assert small["timing"]["l2"] == "cold-rotate" and small["timing"]["input_sets"] >= 2
    assert large["timing"]["l2"] == "cold-flush"
    assert 0 < small["bytes_per_s"] < 1.02 * large["bytes_per_s"]


def test_the_hbm_ceiling_is_the_faster_of_the_probe_and_the_fastest_gemv():
    """No kernel of a run reads faster than its ceiling: the fastest GEMV is one of the reads."""
    from ftbench.modelbench.ceilings import gemv_read_bandwidth, measure_ceilings, read_bandwidth

    probe = read_bandwidth()["bytes_per_s"]
    fastest = gemv_read_bandwidth()
    assert 0.5 * probe < fastest["bytes_per_s"] < 1.3 * probe
    ceilings = measure_ceilings("fp16")
    assert ceilings.hbm_read_bytes_per_s >= 0.97 * max(probe, fastest["bytes_per_s"])
    assert ceilings.hbm_read_by == "read probe" or ceilings.hbm_read_by.startswith("gemv ")
