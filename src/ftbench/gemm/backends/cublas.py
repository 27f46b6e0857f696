"""The `cublas` backend: cublasGemmEx with every legacy `cublasGemmAlgo_t`, and `gemm`/`gemm_ex`,
the cuBLAS call of any `GemmProblem` and of a linear layer."""

from __future__ import annotations

import functools
from typing import Any

from ftbench.dtypes import array_dtype
from ftbench.gemm.backends.base import CandidateUnsupported, Runner, cupy_missing
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.problem import GemmProblem, linear_problem
from ftbench.kernels import cublas

DEFAULT_ALGO = -1
TENSOR_OP_DEFAULT_ALGO = 99
# CUBLAS_GEMM_DEFAULT, ALGO0..23, DEFAULT_TENSOR_OP, ALGO0_TENSOR_OP..ALGO15_TENSOR_OP.
ALGOS = (DEFAULT_ALGO, *range(24), TENSOR_OP_DEFAULT_ALGO, *range(100, 116))


def algo_name(algo: int) -> str:
    if algo == DEFAULT_ALGO:
        return "default"
    if algo == TENSOR_OP_DEFAULT_ALGO:
        return "tensor-op default"
    if algo >= 100:
        return f"tensor-op algo {algo - 100}"
    return f"algo {algo}"


class CublasBackend:
    name = "cublas"

    def unavailable_reason(self) -> str | None:
        return cupy_missing()

    def unsupported_reason(self, problem: GemmProblem) -> str | None:
        if problem.scaling == "channel":
            return "cublasGemmEx has no fp16/bf16 x 8-bit weight-only GEMM"
        if problem.scaling != "none":
            return "cublasGemmEx takes no FP8 operands (FP8 GEMMs are cuBLASLt's)"
        return None

    def candidates(self, problem: GemmProblem) -> list[Candidate]:
        if self.unsupported_reason(problem) is not None:
            return []
        return [Candidate(self.name, algo_name(algo), {"algo": algo}) for algo in ALGOS]

    def default(self, problem: GemmProblem) -> Candidate:
        return Candidate(self.name, algo_name(DEFAULT_ALGO), {"algo": DEFAULT_ALGO})

    def prepare(self, candidate: Candidate, problem: GemmProblem) -> Runner:
        reason = self.unsupported_reason(problem)
        if reason is not None:
            raise CandidateUnsupported(f"{problem.key()}: {reason}")
        algo = int(candidate.config["algo"])
        arguments = _arguments(problem)
        return lambda a, b, c: cublas.gemm(arguments, a, b, c, algo)


@functools.lru_cache(maxsize=4096)
def _arguments(problem: GemmProblem) -> tuple:
    return cublas.gemm_arguments(problem.cublas_call(), problem.a_dtype)


def gemm(problem: GemmProblem, a: Any, b: Any, c: Any, algo: int = DEFAULT_ALGO) -> None:
    """C = op(A) @ op(B) for `problem` (row-major terms) through cuBLAS on CuPy's current stream;
    operand shapes are the caller's contract (`gemm.operands.operand_shapes`)."""
    cublas.gemm(_arguments(problem), a, b, c, algo)


def gemm_ex(x: Any, w: Any, y: Any, algo: int = DEFAULT_ALGO) -> None:
    """Y = X @ W^T (a linear layer) through cuBLAS, after checking the operands."""
    m, n, k = cublas.check_linear_operands(x, w, y)
    gemm(linear_problem(m, n, k, array_dtype(x)), x, w, y, algo)


BACKEND = CublasBackend()
