"""The decode GEMV kernels against a float64 NumPy reference on fresh random inputs.

Every config `gemv_configs` offers for a shape is run on an output poisoned with NaN first, so an
unwritten element fails as surely as a wrong one.
"""

import numpy as np
import pytest
from host_types import host_dtype
from outputs import poison, relative_error

from ftbench.bench.timer import TimingPolicy, time_launch
from ftbench.errors import InvalidInputError
from ftbench.kernels.gemv import GemvConfig, gemv, gemv_configs, prepare

pytestmark = pytest.mark.gpu

TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2}
SHAPES = [  # (m, n, k): the GPT-J decode shapes' sizes and odd ones
    (1, 4096, 16384),
    (1, 50400, 4096),
    (2, 12288, 4096),
    (3, 65, 136),
    (4, 4096, 4096),
    (7, 1, 8),
    (8, 16384, 4096),
    (16, 4096, 4096),
    (16, 50400, 136),
]
SPLIT = GemvConfig("mma", rows=16, warps=4, unroll=1, row_bytes=256, split_k=4)


def operands(m, n, k, dtype):
    """Fresh random x, w on the device, a NaN-poisoned y, and the float64 reference x @ w.T."""
    import cupy

    rng = np.random.default_rng()
    element = host_dtype(dtype)
    x = rng.standard_normal((m, k), dtype=np.float32).astype(element)
    w = (rng.standard_normal((n, k), dtype=np.float32) * k**-0.5).astype(element)
    reference = x.astype(np.float64) @ w.astype(np.float64).T
    y = cupy.asarray(np.full((m, n), np.nan, dtype=element))
    return cupy.asarray(x), cupy.asarray(w), y, reference


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_every_config_matches_float64(m, n, k, dtype):
    x, w, y, reference = operands(m, n, k, dtype)
    configs = gemv_configs(m, n, k)
    prepare(configs, m, dtype)
    failures = []
    for config in configs:
        poison(y)
        gemv(x, w, y, config)
        error = relative_error(y, reference)
        if not error < TOLERANCE[dtype]:
            failures.append(f"{config.name}: relative error {error:.3g}")
    assert not failures, f"{len(failures)} of {len(configs)} configs wrong: {failures}"


def test_split_k_is_deterministic_and_reusable():
    """The last block adds partials in split order and resets its counter: repeats agree."""
    import cupy

    x, w, y, reference = operands(5, 4096, 4096, "float16")
    gemv(x, w, y, SPLIT)
    first = y.copy()
    for _ in range(3):
        poison(y)
        gemv(x, w, y, SPLIT)
        assert cupy.array_equal(y, first)
    assert relative_error(y, reference) < TOLERANCE["float16"]


def test_runs_on_the_current_non_default_stream():
    import cupy

    x, w, y, reference = operands(3, 12288, 4096, "float16")
    with cupy.cuda.Stream(non_blocking=True) as stream:
        poison(y)
        gemv(x, w, y, SPLIT)
        stream.synchronize()
    assert relative_error(y, reference) < TOLERANCE["float16"]


@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize(
    "config", [SPLIT, GemvConfig("fma", rows=2, warps=4, unroll=2, row_bytes=512)]
)
def test_launch_is_captured_in_a_cuda_graph(config, pdl):
    x, w, y, reference = operands(1, 4096, 4096, "float16")
    prepare([config], 1, "float16")
    policy = TimingPolicy(budget_s=1.0, target_rel_ci=0.02)
    timing = time_launch(lambda _: gemv(x, w, y, config, pdl=pdl), name=config.name, policy=policy)
    assert timing.method == "graph", timing.capture_error
    assert relative_error(y, reference) < TOLERANCE["float16"]


@pytest.mark.parametrize("config", [SPLIT, GemvConfig("mma", 32, 4, 2, row_bytes=128)])
def test_pdl_launch_reads_its_input_only_after_the_previous_kernel_wrote_it(config):
    """h = x @ w1^T (a long kernel), then y = h @ w2^T launched with pdl=True, many times."""
    import cupy

    x, w1, h, _ = operands(4, 16384, 4096, "float16")
    _, w2, y, _ = operands(4, 4096, 16384, "float16")
    first = GemvConfig("mma", 16, 4, 2, row_bytes=128)
    prepare([first], 4, "float16")
    prepare([config], 4, "float16")
    for _ in range(5):
        poison(h)
        poison(y)
        gemv(x, w1, h, first)
        gemv(h, w2, y, config, pdl=True)
        reference = cupy.asnumpy(h).astype(np.float64) @ cupy.asnumpy(w2).astype(np.float64).T
        assert relative_error(y, reference) < TOLERANCE["float16"]


def test_misaligned_weight_is_refused():
    import cupy

    w = cupy.zeros(4096 * 64 + 4, dtype=cupy.float16)[4:].reshape(64, 4096)  # 8 bytes in
    x = cupy.ones((1, 4096), dtype=cupy.float16)
    y = cupy.empty((1, 64), dtype=cupy.float16)
    with pytest.raises(InvalidInputError, match="16-byte"):
        gemv(x, w, y, GemvConfig("mma", rows=16, warps=4, unroll=2, row_bytes=64))
