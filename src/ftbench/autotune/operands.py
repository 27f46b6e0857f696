"""Device operands for a GEMM problem: random inputs, poisoned outputs, and the fp32 reference."""

from __future__ import annotations

from typing import Any

from ftbench.autotune.problem import GemmProblem
from ftbench.errors import InvalidInputError

CUPY_DTYPES = {"fp16": "float16", "fp32": "float32"}
# Largest relative (Frobenius) error against the fp32-accumulated reference, by output dtype:
# a few units of the output format's rounding (fp16: 2^-11 ~ 4.9e-4).
TOLERANCE = {"fp16": 2e-3, "fp32": 1e-5}


def operand_shapes(problem: GemmProblem) -> tuple[tuple[int, ...], ...]:
    """Row-major shapes of A, B and C (with a leading batch dimension when batched)."""
    a = (problem.k, problem.m) if problem.transa else (problem.m, problem.k)
    b = (problem.n, problem.k) if problem.transb else (problem.k, problem.n)
    c = (problem.m, problem.n)
    if problem.batch_count > 1:
        return tuple((problem.batch_count, *shape) for shape in (a, b, c))
    return a, b, c


def _cupy_dtype(cupy, dtype: str):
    if dtype not in CUPY_DTYPES:
        raise InvalidInputError(f"GEMMs in {dtype} cannot be run here yet (supported: fp16)")
    return getattr(cupy, CUPY_DTYPES[dtype])


def make_operands(problem: GemmProblem, sets: int = 1) -> list[tuple[Any, Any, Any]]:
    """`sets` independent (A, B, C): A ~ N(0, 1), B ~ N(0, 1/k) so C ~ N(0, 1); C is NaN."""
    import cupy

    a_shape, b_shape, c_shape = operand_shapes(problem)
    triples = []
    for _ in range(sets):
        a = cupy.random.standard_normal(a_shape, dtype=cupy.float32)
        b = cupy.random.standard_normal(b_shape, dtype=cupy.float32) * problem.k**-0.5
        c = cupy.full(c_shape, cupy.nan, dtype=_cupy_dtype(cupy, problem.c_dtype))
        triples.append(
            (
                a.astype(_cupy_dtype(cupy, problem.a_dtype)),
                b.astype(_cupy_dtype(cupy, problem.b_dtype)),
                c,
            )
        )
    return triples


def reference(problem: GemmProblem, a: Any, b: Any) -> Any:
    """C in fp32 from fp32 copies of A and B (CuPy's fp32 GEMM: no TF32 unless CUPY_TF32=1)."""
    import cupy

    a32 = a.astype(cupy.float32)
    b32 = b.astype(cupy.float32)
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
    got = c.astype(cupy.float32)
    if not bool(cupy.isfinite(got).all()):
        return float("inf")
    return float(cupy.linalg.norm(got - expected) / cupy.linalg.norm(expected))
