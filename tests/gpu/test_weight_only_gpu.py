"""The weight-only GEMV kernels and the quantiser against NumPy on fresh random inputs.

Weights are normal with a realistic spread (k^-0.5) and a few outlier output channels 30x
larger, quantised on the host by `quantize_reference`; the reference is the float64 product of
the dequantised operands, so a kernel may differ from it only by fp32 accumulation and the final
rounding to fp16/bf16. Every output is poisoned with NaN first, so an unwritten element fails as
surely as a wrong one.
"""

import numpy as np
import pytest
from host_types import host_dtype
from outputs import poison, relative_error

from ftbench.bench.timer import TimingPolicy, time_launch
from ftbench.dtypes import numpy_dtype
from ftbench.errors import InvalidInputError
from ftbench.kernels.gemv import GemvConfig
from ftbench.kernels.weight_only import (
    prepare,
    quantize,
    quantize_reference,
    weight_only_configs,
    weight_only_gemv,
    weight_only_reference,
)

pytestmark = pytest.mark.gpu

# Output rounding (fp16 2^-11, bf16 2^-8 at most per element) and fp32 accumulation only.
TOLERANCE = {"float16": 1e-3, "bfloat16": 8e-3}
SHAPES = [  # (m, n, k, activations, weights): GPT-J decode sizes and odd ones
    (1, 4112, 4112, "float16", "int8"),
    (1, 4096, 16384, "bfloat16", "fp8"),
    (3, 4099, 4112, "bfloat16", "int8"),
    (8, 12288, 4096, "float16", "fp8"),
    (16, 4096, 16400, "bfloat16", "int8"),
    (16, 65, 144, "float16", "fp8"),
    (16, 50400, 272, "bfloat16", "fp8"),
]
SPLIT = GemvConfig("mma", rows=16, warps=4, unroll=1, row_bytes=256, split_k=4)
UNSPLIT = GemvConfig("mma", rows=32, warps=4, unroll=2, row_bytes=128)


def host_weight(n, k, dtype, rng):
    """A random fp16/bf16 weight [n, k]: normal, k^-0.5 spread, every 97th channel 30x larger."""
    w = rng.standard_normal((n, k), dtype=np.float32) * k**-0.5
    w[::97] *= 30.0
    return w.astype(host_dtype(dtype))


def device_codes(codes):
    """Host codes (int8 or float8_e4m3fn) as the kernels take them: int8, or E4M3 bits as uint8."""
    import cupy

    return cupy.asarray(codes if codes.dtype == np.int8 else codes.view(np.uint8))


def operands(m, n, k, dtype, weights, scale_dtype="float32"):
    """Fresh x, wq, scales on the device, a NaN-poisoned y, and the float64 reference."""
    import cupy

    rng = np.random.default_rng()
    x = rng.standard_normal((m, k), dtype=np.float32).astype(host_dtype(dtype))
    codes, scales = quantize_reference(host_weight(n, k, dtype, rng), weights)
    scales = scales.astype(scale_dtype)
    reference = weight_only_reference(x, codes, scales)
    y = cupy.asarray(np.full((m, n), np.nan, dtype=host_dtype(dtype)))
    return cupy.asarray(x), device_codes(codes), cupy.asarray(scales), y, reference


@pytest.mark.parametrize(("m", "n", "k", "dtype", "weights"), SHAPES)
def test_every_config_matches_float64(m, n, k, dtype, weights):
    x, wq, scales, y, reference = operands(m, n, k, dtype, weights)
    configs = weight_only_configs(m, n, k)
    prepare(configs, m, dtype, weights, "float32")
    failures = []
    for config in configs:
        poison(y)
        weight_only_gemv(x, wq, scales, y, config)
        error = relative_error(y, reference)
        if not error < TOLERANCE[dtype]:
            failures.append(f"{config.name}: relative error {error:.3g}")
    assert not failures, f"{len(failures)} of {len(configs)} configs wrong: {failures}"


@pytest.mark.parametrize("weights", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("config", [SPLIT, UNSPLIT], ids=["split_k", "one_split"])
def test_split_k_on_and_off_matches_float64(config, dtype, weights):
    x, wq, scales, y, reference = operands(5, 4099, 4112, dtype, weights)
    weight_only_gemv(x, wq, scales, y, config)
    assert relative_error(y, reference) < TOLERANCE[dtype]


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_fp16_scales_match_float64(weights):
    x, wq, scales, y, reference = operands(2, 4096, 4096, "float16", weights, "float16")
    weight_only_gemv(x, wq, scales, y, UNSPLIT)
    assert relative_error(y, reference) < TOLERANCE["float16"]


def test_split_k_is_deterministic_and_reusable():
    """The last block adds partials in split order and resets its counter: repeats agree."""
    import cupy

    x, wq, scales, y, reference = operands(9, 4096, 4096, "bfloat16", "int8")
    weight_only_gemv(x, wq, scales, y, SPLIT)
    first = y.copy()
    for _ in range(3):
        poison(y)
        weight_only_gemv(x, wq, scales, y, SPLIT)
        assert cupy.array_equal(y, first)
    assert relative_error(y, reference) < TOLERANCE["bfloat16"]


@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("config", [SPLIT, UNSPLIT], ids=["split_k", "one_split"])
def test_launch_is_captured_in_a_cuda_graph(config, pdl):
    x, wq, scales, y, reference = operands(1, 4096, 4096, "float16", "fp8")
    prepare([config], 1, "float16", "fp8", "float32")
    policy = TimingPolicy(budget_s=1.0, target_rel_ci=0.02)
    timing = time_launch(
        lambda _: weight_only_gemv(x, wq, scales, y, config, pdl=pdl),
        name=config.name,
        policy=policy,
    )
    assert timing.method == "graph", timing.capture_error
    assert relative_error(y, reference) < TOLERANCE["float16"]


def test_pdl_launch_reads_its_input_only_after_the_previous_kernel_wrote_it():
    """h = x @ w1^T (a long kernel), then y = h @ w2^T launched with pdl=True, many times."""
    import cupy

    x, w1, s1, h, _ = operands(4, 16384, 4096, "float16", "int8")
    _, w2, s2, y, _ = operands(4, 4096, 16384, "float16", "int8")
    prepare([UNSPLIT, SPLIT], 4, "float16", "int8", "float32")
    codes2 = cupy.asnumpy(w2)
    for _ in range(5):
        poison(h)
        poison(y)
        weight_only_gemv(x, w1, s1, h, UNSPLIT)
        weight_only_gemv(h, w2, s2, y, SPLIT, pdl=True)
        reference = weight_only_reference(cupy.asnumpy(h), codes2, cupy.asnumpy(s2))
        assert relative_error(y, reference) < TOLERANCE["float16"]


@pytest.mark.parametrize("weights", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_quantiser_matches_the_numpy_reference_exactly(dtype, weights):
    """Same fp32 division and round-to-nearest-even on both sides: the same codes and scales,
    outlier channels and a row of zeros included."""
    import cupy

    w = host_weight(257, 4112, dtype, np.random.default_rng())
    w[5] = 0
    codes, scales = quantize(cupy.asarray(w), weights)
    expected_codes, expected_scales = quantize_reference(w, weights)
    got_codes = cupy.asnumpy(codes)
    if weights == "fp8":
        got_codes = got_codes.view(numpy_dtype("fp8"))
    assert np.array_equal(cupy.asnumpy(scales), expected_scales)
    assert np.array_equal(got_codes.astype(np.float64), expected_codes.astype(np.float64))


def test_quantised_weights_run_end_to_end():
    """quantize on the device, then the GEMV: within the fp16 output rounding of the float64
    product of the dequantised weight."""
    import cupy

    w = host_weight(4096, 4096, "float16", np.random.default_rng())
    codes, scales = quantize(cupy.asarray(w), "int8")
    x = cupy.asarray(np.random.default_rng().standard_normal((3, 4096)).astype(np.float16))
    y = cupy.full((3, 4096), np.nan, dtype=cupy.float16)
    weight_only_gemv(x, codes, scales, y, UNSPLIT)
    host_codes, host_scales = cupy.asnumpy(codes), cupy.asnumpy(scales)
    reference = weight_only_reference(cupy.asnumpy(x), host_codes, host_scales)
    assert relative_error(y, reference) < TOLERANCE["float16"]


def test_misaligned_weight_is_refused():
    import cupy

    wq = cupy.zeros(4096 * 64 + 8, dtype=cupy.int8)[8:].reshape(64, 4096)  # 8 bytes in
    x = cupy.ones((1, 4096), dtype=cupy.float16)
    y = cupy.empty((1, 64), dtype=cupy.float16)
    scales = cupy.ones(64, dtype=cupy.float32)
    with pytest.raises(InvalidInputError, match="16-byte"):
        weight_only_gemv(x, wq, scales, y, UNSPLIT)
