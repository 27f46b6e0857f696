"""The read-bandwidth probe reads every byte exactly once, at a plausible speed."""

import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("nbytes", [16, 16 * 1000 + 16 * 7, 2**30])
def test_read_probe_reads_every_word_once(nbytes):
    import cupy

    from ftbench.kernels import probes

    data = cupy.random.randint(0, 2**31, nbytes // 4, dtype=cupy.int64).astype(cupy.uint32)
    _, sink, _ = probes._kernel(cupy.cuda.Device().id)
    before = int(cupy.bitwise_xor.reduce(sink))
    probes.read_probe(data)
    after = int(cupy.bitwise_xor.reduce(sink))
    assert before ^ after == int(cupy.bitwise_xor.reduce(data))


def test_read_probe_is_near_the_copy_bandwidth():
    import cupy

    from ftbench.bench.timer import time_launch
    from ftbench.kernels.probes import read_probe

    nbytes = 2**31
    data = cupy.random.randint(0, 255, nbytes, dtype=cupy.uint8)
    dst = cupy.empty_like(data)
    read = time_launch(lambda _: read_probe(data), name="read", cache="cold")
    copy = time_launch(
        lambda _: dst.data.copy_from_device_async(data.data, nbytes), name="copy", cache="cold"
    )
    read_bw, copy_bw = nbytes / read.median_ms, 2 * nbytes / copy.median_ms
    assert read_bw > 0.9 * copy_bw
