"""The `cublas` backend: cublasGemmEx with every legacy `cublasGemmAlgo_t`."""

from __future__ import annotations

from ftbench.autotune.backends.base import Runner, cupy_missing
from ftbench.autotune.candidate import Candidate
from ftbench.autotune.problem import GemmProblem

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

    def candidates(self, problem: GemmProblem) -> list[Candidate]:
        return [Candidate(self.name, algo_name(algo), {"algo": algo}) for algo in ALGOS]

    def default(self, problem: GemmProblem) -> Candidate:
        return Candidate(self.name, algo_name(DEFAULT_ALGO), {"algo": DEFAULT_ALGO})

    def prepare(self, candidate: Candidate, problem: GemmProblem) -> Runner:
        from ftbench.kernels.cublas import gemm

        algo = int(candidate.config["algo"])
        return lambda a, b, c: gemm(problem, a, b, c, algo)


BACKEND = CublasBackend()
