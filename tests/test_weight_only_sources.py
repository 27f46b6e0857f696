"""The weight-only GEMV kernels' source, tuning space, launcher checks and quantiser reference,
without a GPU.

weight_only.cu must build with nvcc for Ampere (int8 weights) and Hopper (int8 and fp8), every
template instance the tuner can pick without spilling to local memory, and refuse fp8 weights for
Ampere at compile time; the configs `weight_only_configs` lists must all be runnable for their
shape; the launcher must refuse what the kernels cannot do before touching a GPU; and
`quantize_reference` must be per-output-channel absmax quantisation, exactly.
"""

import subprocess

import numpy as np
import pytest

from ftbench.dtypes import numpy_dtype
from ftbench.errors import InvalidInputError
from ftbench.kernels.gemv import GemvConfig
from ftbench.kernels.weight_only import (
    SOURCE_PATH,
    capability_error,
    config_error,
    hbm_bytes,
    kernel_name,
    quantize_kernel_name,
    quantize_reference,
    supports,
    weight_only_configs,
    weight_only_gemv,
)
from nvcc import NVCC, assert_compiles_without_spills, needs_nvcc

GPTJ_SHAPES = [(4096, 4096), (12288, 4096), (16384, 4096), (4096, 16384), (50400, 4096)]
ODD_SHAPES = [(1, 16), (65, 144), (4099, 4112)]
CONFIG = GemvConfig("mma", rows=16, warps=4, unroll=2, row_bytes=128)


def instances(tokens, weight_formats, scale_dtype):
    """For each activation dtype: the kernel names `weight_only_configs` can ask for over the
    shapes tested here, and the quantiser's."""

    def names(dtype):
        gemvs = {
            kernel_name(config, m, dtype, weights, scale_dtype)
            for m in tokens
            for weights in weight_formats
            for n, k in GPTJ_SHAPES + ODD_SHAPES
            for config in weight_only_configs(m, n, k)
        }
        quantisers = {quantize_kernel_name(dtype, weights) for weights in weight_formats}
        return sorted(gemvs | quantisers)

    return names


@needs_nvcc
@pytest.mark.parametrize(
    ("arch", "tokens", "weight_formats", "scale_dtype"),
    [
        ("sm_90", (8, 16), ("int8", "fp8"), "float32"),
        ("sm_90", (1,), ("fp8",), "float16"),
        ("sm_80", (1, 9), ("int8",), "float16"),
    ],
)
def test_every_instance_compiles_without_spills(
    tmp_path, arch, tokens, weight_formats, scale_dtype
):
    names = instances(tokens, weight_formats, scale_dtype)
    assert_compiles_without_spills(SOURCE_PATH, names, tmp_path, arch)


@needs_nvcc
def test_fp8_weights_do_not_compile_for_ampere(tmp_path):
    source = tmp_path / "fp8.cu"
    name = kernel_name(CONFIG, 1, "float16", "fp8", "float32")
    source.write_text(f'#include "{SOURCE_PATH}"\nvoid* instance = (void*)&{name};\n')
    done = subprocess.run(
        [NVCC, "-c", "-arch=sm_80", "-std=c++17", str(source), "-o", str(tmp_path / "fp8.o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "fp8: sm_89+" in done.stderr


@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 16])
@pytest.mark.parametrize(("n", "k"), GPTJ_SHAPES + ODD_SHAPES)
def test_listed_configs_are_valid_distinct_and_not_too_many(m, n, k):
    configs = weight_only_configs(m, n, k)
    assert 1 <= len(configs) <= 60
    assert len({config.name for config in configs}) == len(configs)
    assert all(config_error(config, m, n, k) is None for config in configs)


def test_small_weights_are_split_along_k_to_fill_the_gpu():
    assert max(config.split_k for config in weight_only_configs(1, 4096, 16384)) > 1
    assert min(config.split_k for config in weight_only_configs(1, 50400, 4096)) == 1


def test_the_heaviest_tiles_are_offered_only_up_to_m_8():
    """Past m = 8 the second n8 tile of X doubles its registers: these shapes would spill."""
    heavy = GemvConfig("mma", rows=16, warps=16, unroll=1, row_bytes=128)
    assert heavy in weight_only_configs(8, 4096, 4096)
    assert heavy not in weight_only_configs(9, 4096, 4096)


def test_only_the_tensor_core_kernel_runs_8_bit_weights():
    fma = GemvConfig("fma", rows=2, warps=4, unroll=2, row_bytes=512)
    assert "mma" in config_error(fma, 1, 4096, 4096)
    assert config_error(CONFIG, 1, 4096, 4096) is None


@pytest.mark.parametrize(
    ("m", "k", "dtype", "weights", "scale_dtype", "message"),
    [
        (1, 4104, "float16", "int8", "float32", "multiple of 16"),
        (17, 4096, "float16", "int8", "float32", "1 to 16"),
        (0, 4096, "bfloat16", "fp8", "float32", "1 to 16"),
        (1, 4096, "float32", "int8", "float32", "dtype"),
        (1, 4096, "float16", "int4", "float32", "weights"),
        (1, 4096, "float16", "int8", "bfloat16", "scales"),
    ],
)
def test_unsupported_problems_say_why(m, k, dtype, weights, scale_dtype, message):
    assert message in supports(m, 4096, k, dtype, weights, scale_dtype)


def test_supported_problems_have_no_reason():
    assert supports(16, 50400, 4096, "bfloat16", "fp8", "float32") is None
    assert supports(1, 1, 16, "float16", "int8", "float16") is None


def test_fp8_weights_need_compute_capability_8_9_and_int8_runs_on_ampere():
    assert "8.9" in capability_error("fp8", 80)
    assert capability_error("fp8", 89) is None
    assert capability_error("fp8", 90) is None
    assert capability_error("int8", 80) is None


def test_kernel_names_are_the_template_instances():
    config = GemvConfig("mma", rows=32, warps=8, unroll=2, row_bytes=256, split_k=3)
    assert (
        kernel_name(config, 7, "bfloat16", "fp8", "float16")
        == "ftb_weight_only_mma<__nv_bfloat16, __nv_fp8_e4m3, __half, 7, 32, 8, 4, 2>"
    )
    assert (
        kernel_name(CONFIG, 1, "float16", "int8", "float32")
        == "ftb_weight_only_mma<__half, int8_t, float, 1, 16, 4, 2, 2>"
    )
    assert quantize_kernel_name("float16", "int8") == "ftb_quantize_rows<__half, int8_t>"


def test_hbm_bytes_count_8_bit_weights_scales_x_and_y():
    # weights n * k, fp32 scales 4 n, fp16 x 2 m k and y 2 m n
    assert hbm_bytes(2, 4096, 16384, "float16", "float32") == (
        4096 * 16384 + 4 * 4096 + 2 * 2 * 16384 + 2 * 2 * 4096
    )
    assert hbm_bytes(1, 10, 16, "bfloat16", "float16") == 160 + 20 + 32 + 20


def host(shape, dtype, rng=None):
    rng = rng or np.random.default_rng(0)
    return rng.standard_normal(shape, dtype=np.float32).astype(numpy_dtype(dtype))


@pytest.mark.parametrize(
    ("arrays", "config", "message"),
    [
        (((1, 64), (8, 64), "float16", (8,), (1, 8)), CONFIG, "8-bit weights"),
        (((1, 64), (8, 64), "int8", (7,), (1, 8)), CONFIG, "n = 8 values"),
        (((1, 72), (8, 72), "int8", (8,), (1, 8)), CONFIG, "multiple of 16"),
        (((1, 64), (8, 64), "int8", (8,), (8, 1)), CONFIG, "expected x"),
        (((17, 64), (8, 64), "uint8", (8,), (17, 8)), CONFIG, "1 to 16"),
        (((1, 64), (8, 64), "int8", (8,), (1, 8)), GemvConfig("fma", 2, 4, 2, 512), "mma"),
    ],
)
def test_launcher_refuses_bad_problems_before_using_the_gpu(arrays, config, message):
    x_shape, w_shape, w_dtype, scale_shape, y_shape = arrays
    x, y = np.zeros(x_shape, np.float16), np.zeros(y_shape, np.float16)
    wq, scales = np.zeros(w_shape, w_dtype), np.ones(scale_shape, np.float32)
    with pytest.raises(InvalidInputError, match=message):
        weight_only_gemv(x, wq, scales, y, config)


def test_launcher_refuses_x_and_y_of_different_dtypes():
    x, y = np.zeros((1, 64), np.float16), np.zeros((1, 8), numpy_dtype("bf16"))
    wq, scales = np.zeros((8, 64), np.int8), np.ones(8, np.float32)
    with pytest.raises(InvalidInputError, match="one dtype"):
        weight_only_gemv(x, wq, scales, y, CONFIG)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_int8_scales_are_the_row_absmax_over_127_and_codes_the_rounded_ratio(dtype):
    w = host((64, 256), dtype)
    codes, scales = quantize_reference(w, "int8")
    values = w.astype(np.float64)
    absmax = np.abs(values).max(axis=1)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert np.array_equal(scales, (absmax.astype(np.float32) / np.float32(127)))
    # each code is w / scale to the nearest integer, so within half a step of the weight
    error = np.abs(values - codes * scales[:, None].astype(np.float64))
    assert np.all(error <= scales[:, None] * (0.5 + 1e-5))
    assert np.array_equal(np.abs(codes).max(axis=1), np.full(64, 127))


def test_fp8_codes_are_the_nearest_e4m3_values_of_the_ratio_and_absmax_is_448():
    w = host((32, 512), "bf16")
    codes, scales = quantize_reference(w, "fp8")
    assert codes.dtype == numpy_dtype("fp8")
    ratios = (w.astype(np.float32) / scales[:, None]).astype(np.float64)  # as the kernel
    grid = np.arange(256, dtype=np.uint8).view(numpy_dtype("fp8")).astype(np.float64)
    grid = grid[np.isfinite(grid)]
    nearest = np.abs(ratios[..., None] - grid).min(axis=-1)
    assert np.array_equal(np.abs(ratios - codes.astype(np.float64)), nearest)
    assert np.array_equal(np.abs(codes.astype(np.float64)).max(axis=1), np.full(32, 448.0))


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_a_row_of_zeros_gets_scale_0_and_codes_0(weights):
    w = host((3, 32), "fp16")
    w[1] = 0
    codes, scales = quantize_reference(w, weights)
    assert scales[1] == 0 and np.all(codes[1].astype(np.float64) == 0)
    assert np.all(scales[[0, 2]] > 0)


@pytest.mark.parametrize(
    ("shape", "weights", "message"),
    [((4, 24), "int8", "multiple of 16"), ((4, 32), "int4", "weights"), ((32,), "fp8", "2-D")],
)
def test_quantiser_refuses_what_it_cannot_take(shape, weights, message):
    with pytest.raises(InvalidInputError, match=message):
        quantize_reference(np.zeros(shape, np.float16), weights)
