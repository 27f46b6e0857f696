"""The TMA / wgmma GEMM against a float64 reference on fresh random inputs (Hopper only)."""

import numpy as np
import pytest
from gemm_operands import operands, poison, relative_error

from ftbench.bench.timer import TimingPolicy, time_launch
from ftbench.errors import InvalidInputError
from ftbench.kernels.tma_gemm import TmaConfig, prepare, tma_configs, tma_gemm

pytestmark = pytest.mark.gpu

TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2}
SHAPES = [  # (m, n, k): model shapes, and edges: m, n, k off every tile, n % 4 != 0, K tails
    (1, 4096, 4096),
    (16, 4096, 4096),
    (128, 4096, 4096),
    (128, 4096, 16384),
    (77, 12288, 4096),
    (200, 1000, 520),
    (3, 65, 136),
    (129, 50257, 64),
]
ODD = [  # every tile shape at least once, splits that leave a short last block
    TmaConfig(64, 16, 4, 1, split_k=3),
    TmaConfig(128, 32, 3, 2, split_k=7),
    TmaConfig(256, 64, 2, 1, split_k=2),
    TmaConfig(128, 256, 2, 1, split_k=1, prefetch=0),
    TmaConfig(64, 128, 3, 4, split_k=5),
]


@pytest.fixture(autouse=True)
def hopper_only():
    import cupy

    if int(cupy.cuda.Device().compute_capability) != 90:
        pytest.skip("the TMA GEMM needs compute capability 9.0")


def check_all(m, n, k, dtype, configs):
    x, w, y, reference = operands(m, n, k, dtype)
    prepare(configs, dtype)
    failures = []
    for config in configs:
        poison(y)
        tma_gemm(x, w, y, config)
        error = relative_error(y, reference)
        if not error < TOLERANCE[dtype]:
            failures.append(f"{config.name}: relative error {error:.3g}")
    assert configs
    assert not failures, f"{len(failures)} of {len(configs)} configs wrong: {failures}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_every_offered_config_matches_float64(m, n, k, dtype):
    check_all(m, n, k, dtype, tma_configs(m, n, k))


@pytest.mark.parametrize(("m", "n", "k"), [(5, 300, 4104), (130, 4100, 1000), (256, 8, 8)])
def test_odd_configs_match_float64(m, n, k):
    from ftbench.kernels.tma_gemm import config_error

    configs = [c for c in ODD if config_error(c, m, n, k) is None]
    check_all(m, n, k, "float16", configs)


def test_split_k_is_deterministic():
    """The cluster's blocks add their partials in rank order: repeats agree bit for bit."""
    import cupy

    x, w, y, reference = operands(40, 4096, 4096, "float16")
    config = TmaConfig(128, 64, 3, 1, split_k=8)
    tma_gemm(x, w, y, config)
    first = y.copy()
    for _ in range(3):
        poison(y)
        tma_gemm(x, w, y, config)
        assert cupy.array_equal(y, first)
    assert relative_error(y, reference) < TOLERANCE["float16"]


@pytest.mark.parametrize("pdl", [False, True])
def test_launch_is_captured_in_a_cuda_graph(pdl):
    config = TmaConfig(128, 16, 5, 1, split_k=4)
    x, w, y, reference = operands(16, 4096, 4096, "float16")
    prepare([config], "float16")
    policy = TimingPolicy(budget_s=1.0, target_rel_ci=0.02)
    timing = time_launch(lambda _: tma_gemm(x, w, y, config, pdl=pdl), name="tma", policy=policy)
    assert timing.method == "graph", timing.capture_error
    assert relative_error(y, reference) < TOLERANCE["float16"]


def test_pdl_launch_reads_its_input_only_after_the_previous_kernel_wrote_it():
    """h = x @ w1^T, then y = h @ w2^T launched with pdl=True (h is its X), many times."""
    import cupy

    x, w1, h, _ = operands(64, 16384, 4096, "float16")
    _, w2, y, _ = operands(64, 4096, 16384, "float16")
    first, second = TmaConfig(128, 64, 3, 1, split_k=1), TmaConfig(128, 64, 3, 1, split_k=4)
    for _ in range(5):
        poison(h)
        poison(y)
        tma_gemm(x, w1, h, first)
        tma_gemm(h, w2, y, second, pdl=True)
        reference = cupy.asnumpy(h).astype(np.float64) @ cupy.asnumpy(w2).astype(np.float64).T
        assert relative_error(y, reference) < TOLERANCE["float16"]


def test_misaligned_operand_is_refused():
    import cupy

    w = cupy.zeros(4096 * 64 + 4, dtype=cupy.float16)[4:].reshape(64, 4096)  # 8 bytes in
    x = cupy.ones((1, 4096), dtype=cupy.float16)
    y = cupy.empty((1, 64), dtype=cupy.float16)
    with pytest.raises(InvalidInputError, match="16-byte"):
        tma_gemm(x, w, y, TmaConfig(64, 16, 4, 1))
