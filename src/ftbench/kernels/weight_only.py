"""Weight-only decode GEMMs with 8-bit weights (kernels/cuda/weight_only.cu), and their quantiser.

Y[m, n] = X[m, k] @ (Wq[n, k] * scale[n])^T for m = 1..16: Wq int8 (symmetric) or fp8 E4M3,
one scale per output channel (fp32 or fp16), X and Y fp16 or bf16, fp32 accumulation. A decode
GEMM is a read of its weight, so 8-bit weights halve its time; the kernels are gemv.cu's tensor-
core GEMV with the weights turned into fp16/bf16 in registers and the scale applied to each
finished output (docs/kernels/weight_only.md).

The tuning space is `gemv`'s (`GemvConfig`, the mma kernel only: `weight_only_configs` lists the
candidates), and so are split-K's workspace and the launch path (PDL included). `quantize` makes
(Wq, scales) from an fp16/bf16 weight on the device, per output channel by absmax;
`quantize_reference` is the same arithmetic in NumPy, and `weight_only_reference` the float64
product of the dequantised operands. `dequantize` turns codes back into fp16/bf16 weights, for the
GEMMs of more rows than these kernels take.

Weight formats are ftbench's names, "int8" and "fp8". On the device int8 codes are int8 arrays;
CuPy has no float8 type, so E4M3 codes travel as their bits in uint8 arrays (an array CuPy reports
as float8_e4m3fn is read the same way). fp8 needs compute capability 8.9 or newer (the E4M3
conversion instructions); int8 runs on Ampere too.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import c_types, dtype_info, numpy_dtype, numpy_name
from ftbench.errors import InvalidInputError
from ftbench.kernels import nvrtc
from ftbench.kernels.cublas import check_linear_shapes
from ftbench.kernels.gemv import (
    C_TYPES,
    MAX_M,
    PLANNING_SM_COUNT,
    GemvConfig,
    filling_config,
    k_per_split,
    tuning_configs,
    workspace,
)
from ftbench.kernels.gemv import config_error as gemv_config_error
from ftbench.kernels.gemv import supports as gemv_supports
from ftbench.kernels.streams import scratch_slot

SOURCE_PATH = Path(__file__).parent / "cuda" / "weight_only.cu"
CODE_MAX = {"int8": 127.0, "fp8": 448.0}  # a row's absmax becomes this code
# The format of the codes in a device array, by its NumPy name.
CODE_ARRAYS = {"int8": "int8", "uint8": "fp8", "float8_e4m3fn": "fp8"}
SCALE_TYPES = c_types("fp32", "fp16")
K_MULTIPLE = 16  # each lane loads 16 weights (16 bytes) of a row at once
WEIGHT_BYTES = 1
FP8_COMPUTE_CAPABILITY = 89
QUANTIZE_THREADS = 256


def _formats_error(dtype: str, weights: str, scale_dtype: str) -> str | None:
    """Why these kernels have no instance for these formats, or None."""
    if dtype not in C_TYPES:
        return f"dtype must be one of {sorted(C_TYPES)}, not {dtype!r}"
    if weights not in CODE_MAX:
        return f"weights must be one of {sorted(CODE_MAX)}, not {weights!r}"
    if scale_dtype not in SCALE_TYPES:
        return f"scales must be one of {sorted(SCALE_TYPES)}, not {scale_dtype!r}"
    return None


def supports(m: int, n: int, k: int, dtype: str, weights: str, scale_dtype: str) -> str | None:
    """None if these kernels can compute Y[m, n] = X[m, k] @ (Wq[n, k] * scale[n])^T with X and
    Y in `dtype` ("float16", "bfloat16"), `weights` ("int8", "fp8") and scales in `scale_dtype`
    ("float32", "float16"), else why not."""
    return _formats_error(dtype, weights, scale_dtype) or _shape_error(m, n, k, dtype)


def _shape_error(m: int, n: int, k: int, dtype: str) -> str | None:
    """Why no weight-only kernel of activations `dtype` takes Y[m, n] = X[m, k] @ Wq[n, k]^T."""
    if not 1 <= m <= MAX_M:
        return f"m = {m}: the weight-only kernels take 1 to {MAX_M} rows of X"
    if k >= 1 and k % K_MULTIPLE:
        return (
            f"k = {k} must be a multiple of {K_MULTIPLE} (each thread loads {K_MULTIPLE} "
            "weights, 16 bytes, at once)"
        )
    return gemv_supports(m, n, k, dtype)


def config_error(config: GemvConfig, m: int, n: int, k: int) -> str | None:
    """Why `config` cannot run the weight-only Y[m, n] = X[m, k] @ Wq[n, k]^T, or None if it
    can: the mma kernel's rules of `gemv.config_error`."""
    if config.kernel != "mma":
        return f"the weight-only kernels are tensor-core (mma) kernels, not {config.kernel!r}"
    return gemv_config_error(config, m, n, k)


def _shapes(m: int) -> list[tuple[str, int, int, int, int]]:
    """(kernel, rows, warps, unroll, row_bytes) tuples worth timing for m tokens.

    gemv's mma list, in bytes: a shape keeps the same bytes of weights in flight per thread with
    8-bit weights (twice the elements of K). Not timed yet; the shapes whose registers exceed
    the budget past m = 8 (ptxas spills, or 250+ registers, for m = 9..16) are offered for
    m <= 8 only, and tests/test_weight_only_sources.py checks that none spills.
    """
    every_m = [
        (16, 8, 1, 128),
        (16, 8, 2, 128),
        (16, 4, 2, 128),
        (32, 4, 2, 128),
        (32, 8, 2, 128),
        (16, 8, 1, 256),
        (16, 4, 1, 256),
        (16, 4, 2, 64),
    ]
    small_m = [
        (16, 16, 1, 128),
        (16, 8, 4, 128),
        (32, 16, 1, 128),
        (16, 8, 2, 256),
        (32, 4, 1, 256),
        (16, 8, 1, 512),
    ]
    shapes = every_m + small_m if m <= 8 else every_m
    return [("mma", rows, warps, unroll, row_bytes) for rows, warps, unroll, row_bytes in shapes]


def weight_only_configs(
    m: int, n: int, k: int, sm_count: int = PLANNING_SM_COUNT
) -> list[GemvConfig]:
    """The configs worth timing for the weight-only Y[m, n] = X[m, k] @ Wq[n, k]^T, all valid
    for the shape. `sm_count` (multiprocessors of the target GPU) sets how far K is split."""
    return tuning_configs(_shapes(m), m, n, k, sm_count, WEIGHT_BYTES)


def default_config(m: int, n: int, k: int, sm_count: int = PLANNING_SM_COUNT) -> GemvConfig:
    """The config an untuned weight-only GEMM runs: the first of `_shapes` with the split-K that
    fills the GPU (what tuning must beat)."""
    kernel, rows, warps, unroll, row_bytes = _shapes(m)[0]
    base = GemvConfig(kernel, rows, warps, unroll, row_bytes)
    reason = _shape_error(m, n, k, "float16") or config_error(base, m, n, k)
    if reason:
        raise InvalidInputError(f"weight-only GEMV for m={m}, n={n}, k={k}: {reason}")
    return filling_config(base, m, n, k, sm_count, WEIGHT_BYTES)


def hbm_bytes(m: int, n: int, k: int, dtype: str, scale_dtype: str) -> int:
    """The fewest bytes a launch moves through HBM: the 8-bit weights and the scales read once,
    X read and Y written, in `dtype` and `scale_dtype` (NumPy names). Split-K's partial sums
    (m * n fp32 per split) stay in L2 and are not counted; the fraction of HBM bandwidth a
    launch reaches is this over its time and the bandwidth."""
    activation, scale = numpy_dtype(dtype).itemsize, numpy_dtype(scale_dtype).itemsize
    return n * k * WEIGHT_BYTES + n * scale + (m * k + m * n) * activation


def kernel_name(config: GemvConfig, m: int, dtype: str, weights: str, scale_dtype: str) -> str:
    """The C++ name of the template instance that runs `config` (an NVRTC name expression)."""
    group = config.row_bytes // 64
    return (
        f"ftb_weight_only_mma<{C_TYPES[dtype]}, {dtype_info(weights).c_type}, "
        f"{SCALE_TYPES[scale_dtype]}, {m}, {config.rows}, {config.warps}, {group}, {config.unroll}>"
    )


def quantize_kernel_name(dtype: str, weights: str) -> str:
    """The C++ name of the quantiser instance for `dtype` weights to `weights` codes."""
    return f"ftb_quantize_rows<{C_TYPES[dtype]}, {dtype_info(weights).c_type}>"


def capability_error(weights: str, compute_capability: int) -> str | None:
    """Why a GPU of `compute_capability` (major * 10 + minor) cannot run `weights`, or None."""
    if weights == "fp8" and compute_capability < FP8_COMPUTE_CAPABILITY:
        major, minor = divmod(compute_capability, 10)
        return (
            f"fp8 weights need compute capability 8.9 or newer (E4M3 conversions); this GPU is "
            f"{major}.{minor}: use int8 weights"
        )
    return None


def _current_device(weights: str, what: str) -> int:
    """The current device's id, refusing `weights` it cannot run."""
    import cupy

    device = cupy.cuda.Device().id
    reason = capability_error(weights, nvrtc.compute_capability(device))
    if reason:
        raise InvalidInputError(f"{what}: {reason}")
    return device


def prepare(configs: list[GemvConfig], m: int, dtype: str, weights: str, scale_dtype: str) -> float:
    """Compile what `configs` need for m rows of `dtype` with `weights` and `scale_dtype` on the
    current device, in one NVRTC run, and make the device's split-K workspace. Returns the
    compile seconds (0 if cached)."""
    reason = _formats_error(dtype, weights, scale_dtype)
    if reason:
        raise InvalidInputError(f"weight-only GEMV: {reason}")
    device = _current_device(weights, "weight-only GEMV")
    workspace(device, scratch_slot())
    names = [kernel_name(config, m, dtype, weights, scale_dtype) for config in configs]
    return nvrtc.compile_seconds(SOURCE_PATH, names)


@functools.lru_cache(maxsize=4096)
def _plan(
    config: GemvConfig, m: int, n: int, k: int, dtype: str, weights: str, scale_dtype: str
) -> tuple[str, tuple, tuple, int]:
    """(kernel name, grid, block, k per split) of one launch; refuses what cannot run."""
    reason = supports(m, n, k, dtype, weights, scale_dtype) or config_error(config, m, n, k)
    if reason:
        raise InvalidInputError(
            f"weight-only GEMV {config.name} for m={m}, n={n}, k={k} ({dtype}, {weights} "
            f"weights, {scale_dtype} scales): {reason}"
        )
    grid = (math.ceil(n / config.rows), config.split_k, 1)
    name = kernel_name(config, m, dtype, weights, scale_dtype)
    return name, grid, (config.threads, 1, 1), k_per_split(config, k)


def code_format(codes: Any, what: str) -> str:
    """ "int8" or "fp8": the format of a device array of 8-bit codes."""
    name = numpy_name(codes)
    if name not in CODE_ARRAYS:
        raise InvalidInputError(
            f"{what}: 8-bit weights are int8, or fp8 E4M3 bits in uint8 (or float8_e4m3fn), "
            f"not {name}"
        )
    return CODE_ARRAYS[name]


def _check_scales(scales: Any, n: int) -> str:
    """The NumPy name of `scales`, checked to be one contiguous value per output channel."""
    if scales.ndim != 1 or scales.shape[0] != n or not scales.flags.c_contiguous:
        raise InvalidInputError(
            f"weight-only GEMV: scales must be a contiguous vector of n = {n} values, got shape "
            f"{tuple(scales.shape)}"
        )
    return numpy_name(scales)


def weight_only_gemv(
    x: Any, wq: Any, scales: Any, y: Any, config: GemvConfig, *, pdl: bool | None = None
) -> None:
    """Y = X @ (Wq * scales[:, None])^T on the current stream: x [m, k] and y [m, n] CuPy
    arrays of one dtype (fp16 or bf16), wq [n, k] 8-bit codes (int8, or E4M3 bits in uint8),
    scales [n] (fp32 or fp16).

    Needs k % 16 == 0 and x, wq 16-byte aligned. Allocates nothing and never synchronises once
    `prepare` (or an earlier call) has compiled the kernel, so it can be captured in a CUDA
    graph. pdl: as `gemv.gemv` (True needs compute capability 9.0 or newer).
    """
    m, n, k = check_linear_shapes(x, wq, y)
    dtype = numpy_name(x)
    if numpy_name(y) != dtype:
        raise InvalidInputError(
            f"weight-only GEMV: x and y must have one dtype, got {dtype} and {numpy_name(y)}"
        )
    weights = code_format(wq, "weight-only GEMV")
    scale_dtype = _check_scales(scales, n)
    name, grid, block, split_k_elements = _plan(config, m, n, k, dtype, weights, scale_dtype)
    if x.data.ptr % 16 or wq.data.ptr % 16:
        raise InvalidInputError("weight-only GEMV: x and wq must start on 16-byte boundaries")
    device = _current_device(weights, "weight-only GEMV")
    if pdl and nvrtc.compute_capability(device) < 90:
        raise InvalidInputError("weight-only GEMV: pdl=True needs compute capability 9.0 or newer")
    kernel = nvrtc.load(SOURCE_PATH, [name])[name].kernel
    partial, counters = workspace(device, scratch_slot())
    pointers = (x, wq, scales, y, partial, counters)
    arguments = [np.uint64(array.data.ptr) for array in pointers] + [
        np.int32(n),
        np.int32(k),
        np.int32(split_k_elements),
    ]
    nvrtc.launch(kernel, grid, block, arguments, pdl=pdl)


def _check_weight(w: Any, weights: str) -> tuple[int, int]:
    """(n, k) of an fp16/bf16 weight the quantiser can take, for `weights` codes."""
    if weights not in CODE_MAX:
        raise InvalidInputError(
            f"quantize: weights must be one of {sorted(CODE_MAX)}, not {weights!r}"
        )
    if w.ndim != 2 or not w.flags.c_contiguous:
        raise InvalidInputError(
            f"quantize: the weight must be a row-major 2-D [n, k] array, got shape {w.shape}"
        )
    if numpy_name(w) not in C_TYPES:
        raise InvalidInputError(
            f"quantize: the weight must be one of {sorted(C_TYPES)}, not {numpy_name(w)}"
        )
    n, k = w.shape
    if n < 1 or k < 1 or k % K_MULTIPLE:
        raise InvalidInputError(
            f"quantize: weight [{n}, {k}]: n and k must be positive, k a multiple of {K_MULTIPLE}"
        )
    return n, k


def quantize(w: Any, weights: str, out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """Per-output-channel absmax quantisation of w [n, k] (CuPy, fp16 or bf16, k % 16 == 0) on
    the current stream, in one launch: (codes [n, k], scales [n] fp32) with
    w ~ codes * scales[:, None], for `weights` "int8" (int8 codes) or "fp8" (E4M3 bits, uint8).
    Rows of activations quantise the same way, one scale per token. `out`: the (codes, scales)
    arrays to write (then nothing is allocated and the call can be captured in a CUDA graph).

    scale = absmax / 127 (int8) or / 448 (fp8) in fp32; code = w / scale in fp32, rounded to
    nearest even (int8 clamped to +-127, fp8 saturating at +-448); a row of zeros gets scale 0
    and codes 0. `quantize_reference` is the same arithmetic in NumPy, bit for bit.
    """
    import cupy

    n, k = _check_weight(w, weights)
    if w.data.ptr % 16:
        raise InvalidInputError("quantize: the weight must start on a 16-byte boundary")
    _current_device(weights, "quantize")
    code_dtype = cupy.int8 if weights == "int8" else cupy.uint8
    if out is None:
        out = cupy.empty((n, k), dtype=code_dtype), cupy.empty(n, dtype=cupy.float32)
    codes, scales = out
    if (
        tuple(codes.shape) != (n, k) or codes.dtype != code_dtype or not codes.flags.c_contiguous
        or tuple(scales.shape) != (n,) or scales.dtype != cupy.float32
    ):  # fmt: skip
        raise InvalidInputError(
            f"quantize: out must be contiguous {numpy_name(code_dtype)} codes [{n}, {k}] and "
            f"float32 scales [{n}], got {codes.dtype} {tuple(codes.shape)} and {scales.dtype} "
            f"{tuple(scales.shape)}"
        )
    name = quantize_kernel_name(numpy_name(w), weights)
    kernel = nvrtc.load(SOURCE_PATH, [name])[name]
    arguments = [np.uint64(array.data.ptr) for array in (w, codes, scales)] + [np.int32(k)]
    nvrtc.launch(kernel, (n, 1, 1), (QUANTIZE_THREADS, 1, 1), arguments)
    return codes, scales


def dequantize_kernel_name(dtype: str, weights: str) -> str:
    """The C++ name of the dequantiser instance from `weights` codes to `dtype` values."""
    return f"ftb_dequantize_rows<{C_TYPES[dtype]}, {dtype_info(weights).c_type}>"


def dequantize(codes: Any, scales: Any, out: Any) -> None:
    """out[n, k] = codes[n, k] * scales[n] on the current stream, rounded once from the fp32
    product: codes int8 (or E4M3 bits in uint8), scales [n] fp32, out fp16 or bf16, k % 16 == 0,
    codes and out 16-byte aligned. What a GEMM of more rows than `weight_only_gemv` takes
    multiplies by. Allocates nothing and never synchronises (graph-capturable once compiled)."""
    weights = code_format(codes, "dequantize")
    if codes.ndim != 2 or not codes.flags.c_contiguous or tuple(out.shape) != tuple(codes.shape):
        raise InvalidInputError(
            f"dequantize: codes must be a row-major [n, k] array and out the same shape, got "
            f"{tuple(codes.shape)} and {tuple(out.shape)}"
        )
    n, k = codes.shape
    if k % K_MULTIPLE or not out.flags.c_contiguous or codes.data.ptr % 16 or out.data.ptr % 16:
        raise InvalidInputError(
            f"dequantize: k = {k} must be a multiple of {K_MULTIPLE}, and codes and out "
            "contiguous and 16-byte aligned"
        )
    if numpy_name(scales) != "float32" or _check_scales(scales, n) != "float32":
        raise InvalidInputError(f"dequantize: scales must be float32, not {numpy_name(scales)}")
    dtype = numpy_name(out)
    if dtype not in C_TYPES:
        raise InvalidInputError(f"dequantize: out must be one of {sorted(C_TYPES)}, not {dtype}")
    _current_device(weights, "dequantize")
    name = dequantize_kernel_name(dtype, weights)
    kernel = nvrtc.load(SOURCE_PATH, [name])[name]
    vectors = n * k // K_MULTIPLE
    arguments = [np.uint64(array.data.ptr) for array in (codes, scales, out)]
    arguments += [np.int32(k), np.int64(vectors)]
    grid = (math.ceil(vectors / QUANTIZE_THREADS), 1, 1)
    nvrtc.launch(kernel, grid, (QUANTIZE_THREADS, 1, 1), arguments)


def quantize_reference(w: np.ndarray, weights: str) -> tuple[np.ndarray, np.ndarray]:
    """`quantize` in NumPy: (codes, fp32 scales) of a host weight w [n, k] (fp16 or bf16), codes
    int8 or float8_e4m3fn (ml_dtypes). The same fp32 operations as the kernel, so the same bits."""
    _check_weight(w, weights)
    values = w.astype(np.float32)
    absmax = np.abs(values).max(axis=1)
    scales = absmax / np.float32(CODE_MAX[weights])
    nonzero = absmax > 0
    divisor = np.where(nonzero, scales, np.float32(1))[:, None]
    ratios = np.where(nonzero[:, None], values / divisor, np.float32(0))
    if weights == "int8":
        return np.clip(np.rint(ratios), -127, 127).astype(np.int8), scales
    limit = np.float32(CODE_MAX["fp8"])
    return np.clip(ratios, -limit, limit).astype(numpy_dtype("fp8")), scales


def weight_only_reference(x: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """X @ (codes * scales[:, None])^T in float64 from host arrays: x [m, k] (any float type),
    codes [n, k] (int8 or float8_e4m3fn), scales [n]."""
    weight = codes.astype(np.float64) * scales.astype(np.float64)[:, None]
    return x.astype(np.float64) @ weight.T
