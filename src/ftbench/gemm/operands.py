"""Device operands for a GEMM problem: random inputs, poisoned outputs, and the fp32 reference.

bf16 arrays are CuPy arrays of ml_dtypes' bfloat16 (CuPy stores them; it has no arithmetic for
them), made and read through their 16-bit patterns: rounding from fp32 to nearest even, and
widening back exactly (a bf16 is the top half of an fp32).
"""

from __future__ import annotations

from typing import Any

from ftbench.dtypes import DTYPES, numpy_dtype
from ftbench.errors import InvalidInputError
from ftbench.gemm.problem import UNSCALED_DTYPES, GemmProblem

_BF16_NAN = 0x7FC0


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


def make_operands(problem: GemmProblem, sets: int = 1) -> list[tuple[Any, Any, Any]]:
    """`sets` independent (A, B, C): A ~ N(0, 1), B ~ N(0, 1/k) so C ~ N(0, 1); C is NaN."""
    import cupy

    a_shape, b_shape, c_shape = operand_shapes(problem)
    triples = []
    for _ in range(sets):
        a = cupy.random.standard_normal(a_shape, dtype=cupy.float32)
        b = cupy.random.standard_normal(b_shape, dtype=cupy.float32) * problem.k**-0.5
        triples.append(
            (
                from_float32(a, problem.a_dtype),
                from_float32(b, problem.b_dtype),
                nan_array(c_shape, problem.c_dtype),
            )
        )
    return triples


def reference(problem: GemmProblem, a: Any, b: Any) -> Any:
    """C in fp32 from fp32 copies of A and B (CuPy's fp32 GEMM: no TF32 unless CUPY_TF32=1)."""
    import cupy

    a32 = to_float32(a)
    b32 = to_float32(b)
    if problem.transa:
        a32 = a32.swapaxes(-1, -2)
    if problem.transb:
        b32 = b32.swapaxes(-1, -2)
    return cupy.matmul(a32, b32)


def relative_error(
    problem: GemmProblem, a: Any, b: Any, c: Any, expected: Any | None = None
) -> float:
    """||C - ref|| / ||ref||; infinite if any element of C was not written (still NaN).

    Pass `expected` (from `reference`) to check many candidates against one reference.
    """
    import cupy

    if expected is None:
        expected = reference(problem, a, b)
    got = to_float32(c)
    if not bool(cupy.isfinite(got).all()):
        return float("inf")
    return float(cupy.linalg.norm(got - expected) / cupy.linalg.norm(expected))
