"""Device operands for a GEMM problem: random inputs, poisoned outputs, and the fp32 reference.

The operands of a problem are one tuple, `(A, B, C, *scales)`, in the order a backend's runner
takes them (`base.Runner`): an unscaled problem has no scales; "tensor" and "outer" FP8 problems
have A's scales then B's; a weight-only ("channel") problem has B's only (`scale_lengths`).

bf16 arrays are CuPy arrays of ml_dtypes' bfloat16 (CuPy stores them; it has no arithmetic for
them), made and read through their 16-bit patterns: rounding from fp32 to nearest even, and
widening back exactly (a bf16 is the top half of an fp32). CuPy has no float8 either: E4M3
operands are their bits in uint8 arrays, rounded to from fp32 and widened back through a table of
the 256 codes (ml_dtypes' float8_e4m3fn). int8 operands are int8 arrays.

8-bit operands are codes spread over most of their format's range (E4M3 up to 448, int8 up to
127) with fp32 scales that bring the product back to C ~ N(0, 1); the reference multiplies the
widened codes by the same scales, so it checks the kernel's arithmetic and its reading of the
scales, not the quantisation (which `kernels.weight_only.quantize` and its tests own).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ftbench.dtypes import DTYPES, numpy_dtype
from ftbench.errors import InvalidInputError
from ftbench.gemm.problem import UNSCALED_DTYPES, GemmProblem

_BF16_NAN = 0x7FC0
# Codes drawn as N(0, 1) times this: about 4.5 standard deviations reach E4M3's 448 and int8's
# 127 (clipped there), so every binade of the format is used.
_CODE_SPREAD = {"fp8": 96.0, "int8": 28.0}
_E4M3_FINITE = 127  # codes 0..126 are E4M3's non-negative finite values, ascending; 127 is NaN
# Hopper's FP8 tensor cores keep fast-accumulation partial sums in about 14 bits of mantissa and
# never promote them to fp32 (DeepSeek-V3 technical report, 3.3.2: near 2% maximum relative error
# at K = 4096). A wrong scale, operand order or layout gives 0.3 and more.
FAST_ACCUM_TOLERANCE = 2e-2

Operands = tuple[Any, ...]  # (A, B, C, *scales): see the module docstring


def operand_shapes(problem: GemmProblem) -> tuple[tuple[int, ...], ...]:
    """Row-major shapes of A, B and C (with a leading batch dimension when batched)."""
    a = (problem.k, problem.m) if problem.transa else (problem.m, problem.k)
    b = (problem.n, problem.k) if problem.transb else (problem.k, problem.n)
    c = (problem.m, problem.n)
    if problem.batch_count > 1:
        return tuple((problem.batch_count, *shape) for shape in (a, b, c))
    return a, b, c


def _check_dtype(dtype: str) -> None:
    if dtype not in UNSCALED_DTYPES:
        raise InvalidInputError(
            f"GEMMs in {dtype} cannot be run here (supported: {', '.join(UNSCALED_DTYPES)})"
        )


def _bf16() -> Any:
    return numpy_dtype("bf16")


def from_float32(array: Any, dtype: str) -> Any:
    """A CuPy fp32 array rounded to `dtype` ("fp16", "bf16" or "fp32")."""
    import cupy

    _check_dtype(dtype)
    if dtype != "bf16":
        return array.astype(getattr(cupy, DTYPES[dtype].numpy_name))
    bits = cupy.ascontiguousarray(array, dtype=cupy.float32).view(cupy.uint32)
    # Round to nearest even on the 16 bits dropped; NaN stays a (quiet) NaN.
    rounded = (bits + (cupy.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16
    nan = cupy.isnan(array)
    halves = cupy.where(nan, cupy.uint32(_BF16_NAN), rounded).astype(cupy.uint16)
    return halves.view(_bf16())


def to_float32(array: Any) -> Any:
    """A CuPy fp16, bf16 or fp32 array widened to fp32 (exactly)."""
    import cupy

    if str(array.dtype) != "bfloat16":
        return array.astype(cupy.float32)
    bits = cupy.ascontiguousarray(array).view(cupy.uint16).astype(cupy.uint32) << 16
    return bits.view(cupy.float32)


def poison(array: Any) -> None:
    """Fill a CuPy fp16, bf16 or fp32 array with NaN (an output no kernel has written yet)."""
    import cupy

    if str(array.dtype) == "bfloat16":
        array.view(cupy.uint16).fill(_BF16_NAN)
    else:
        array.fill(cupy.nan)


def nan_array(shape: tuple[int, ...], dtype: str) -> Any:
    """A CuPy array of `dtype` full of NaN."""
    import cupy

    _check_dtype(dtype)
    storage = cupy.uint16 if dtype == "bf16" else getattr(cupy, DTYPES[dtype].numpy_name)
    array = cupy.empty(shape, dtype=storage)
    array = array.view(_bf16()) if dtype == "bf16" else array
    poison(array)
    return array


def tolerance(c_dtype: str, fast_accum: bool = False) -> float:
    """The largest relative error a correct kernel may have on a GEMM writing C in `c_dtype`:
    C's rounding (its format's `gemm_tolerance`), or FAST_ACCUM_TOLERANCE for an FP8 kernel with
    fast accumulation (a cuBLASLt configuration's `fast_accum`)."""
    accurate = DTYPES[c_dtype].gemm_tolerance
    return max(accurate, FAST_ACCUM_TOLERANCE) if fast_accum else accurate


@functools.cache
def _e4m3_table() -> np.ndarray:
    """The fp32 value of each of the 256 E4M3 codes (NaN for 0x7F and 0xFF)."""
    return np.arange(256, dtype=np.uint8).view(numpy_dtype("fp8")).astype(np.float32)


def to_e4m3(values: Any) -> Any:
    """E4M3 codes (uint8) of a CuPy fp32 array: the nearest finite value (a tie to the smaller
    magnitude), saturating at +-448."""
    import cupy

    table = cupy.asarray(_e4m3_table()[:_E4M3_FINITE])
    magnitude = cupy.abs(values)
    upper = cupy.clip(cupy.searchsorted(table, magnitude), 1, _E4M3_FINITE - 1)
    lower = upper - 1
    index = cupy.where(magnitude - table[lower] <= table[upper] - magnitude, lower, upper)
    sign = (cupy.signbit(values).astype(cupy.uint8)) << 7
    return index.astype(cupy.uint8) | sign


def widen(array: Any, dtype: str) -> Any:
    """A CuPy array of a problem's `dtype` widened to fp32, exactly (E4M3 codes through their
    table, int8 by conversion, fp16/bf16/fp32 by `to_float32`)."""
    import cupy

    if dtype == "fp8":
        return cupy.asarray(_e4m3_table())[array.view(cupy.uint8)]
    if dtype == "int8":
        return array.astype(cupy.float32)
    return to_float32(array)


def _codes(shape: tuple[int, ...], dtype: str) -> Any:
    """Fresh 8-bit codes of `shape`: N(0, 1) times the format's spread, rounded to it."""
    import cupy

    values = cupy.random.standard_normal(shape, dtype=cupy.float32) * _CODE_SPREAD[dtype]
    if dtype == "fp8":
        return to_e4m3(values)
    return cupy.clip(cupy.rint(values), -127, 127).astype(cupy.int8)


def _scales(length: int, base: float) -> Any:
    """`length` fp32 scales, each `base` times a fresh factor in [0.5, 2) (a wrong pairing of
    scale and row shows)."""
    import cupy

    if length == 1:
        return cupy.full(1, base, dtype=cupy.float32)
    return (cupy.random.uniform(0.5, 2.0, length) * base).astype(cupy.float32)


def _operand(shape: tuple[int, ...], dtype: str, std: float) -> Any:
    """Fresh N(0, std^2) values rounded to an unscaled `dtype`."""
    import cupy

    return from_float32(cupy.random.standard_normal(shape, dtype=cupy.float32) * std, dtype)


def make_operands(problem: GemmProblem, sets: int = 1) -> list[Operands]:
    """`sets` independent operand tuples (see the module docstring), C full of NaN. Unscaled:
    A ~ N(0, 1), B ~ N(0, 1/k) so C ~ N(0, 1). Scaled: 8-bit codes whose scales give A and B
    those spreads (A's scale 1 for weight-only problems, whose A is fp16/bf16 N(0, 1))."""
    a_shape, b_shape, c_shape = operand_shapes(problem)
    a_length, b_length = problem.scale_lengths()
    b_std = problem.k**-0.5
    triples = []
    for _ in range(sets):
        c = nan_array(c_shape, problem.c_dtype)
        if problem.scaling == "none":
            a = _operand(a_shape, problem.a_dtype, 1.0)
            triples.append((a, _operand(b_shape, problem.b_dtype, b_std), c))
            continue
        if a_length:
            a = _codes(a_shape, problem.a_dtype)
            a_scales: tuple[Any, ...] = (_scales(a_length, 1 / _CODE_SPREAD[problem.a_dtype]),)
        else:
            a, a_scales = _operand(a_shape, problem.a_dtype, 1.0), ()
        b = _codes(b_shape, problem.b_dtype)
        b_scale = _scales(b_length, b_std / _CODE_SPREAD[problem.b_dtype])
        triples.append((a, b, c, *a_scales, b_scale))
    return triples


def scale_of(problem: GemmProblem, operands: Operands) -> tuple[Any | None, Any | None]:
    """(A's scales, B's scales) of an operand tuple, None for an operand read unscaled."""
    a_length, _ = problem.scale_lengths()
    scales = operands[3:]
    if problem.scaling == "none":
        return None, None
    return (scales[0], scales[1]) if a_length else (None, scales[0])


def dequantized(problem: GemmProblem, operands: Operands) -> tuple[Any, Any]:
    """fp32 A and B as stored, each element times its scale: A's scales run along its rows of
    op(A) (m), B's along the columns of op(B) (n); a "tensor" scale multiplies every element."""
    a, b = operands[0], operands[1]
    a32, b32 = widen(a, problem.a_dtype), widen(b, problem.b_dtype)
    a_scale, b_scale = scale_of(problem, operands)
    if a_scale is not None:
        # op(A) row i is A's row i, or A's column i when A is stored [k, m].
        a32 = a32 * (a_scale[None, :] if problem.transa else a_scale[:, None])
    if b_scale is not None:
        # op(B) column j is B's row j when B is stored [n, k], else its column j.
        b32 = b32 * (b_scale[:, None] if problem.transb else b_scale[None, :])
    return a32, b32


def reference(problem: GemmProblem, operands: Operands) -> Any:
    """C in fp32 from the dequantised fp32 A and B (CuPy's fp32 GEMM: no TF32 unless
    CUPY_TF32=1)."""
    import cupy

    a32, b32 = dequantized(problem, operands)
    if problem.transa:
        a32 = a32.swapaxes(-1, -2)
    if problem.transb:
        b32 = b32.swapaxes(-1, -2)
    return cupy.matmul(a32, b32)


def relative_error(problem: GemmProblem, operands: Operands, expected: Any | None = None) -> float:
    """||C - ref|| / ||ref||; infinite if any element of C was not written (still NaN).

    Pass `expected` (from `reference`) to check many candidates against one reference.
    """
    import cupy

    if expected is None:
        expected = reference(problem, operands)
    got = to_float32(operands[2])
    if not bool(cupy.isfinite(got).all()):
        return float("inf")
    return float(cupy.linalg.norm(got - expected) / cupy.linalg.norm(expected))
