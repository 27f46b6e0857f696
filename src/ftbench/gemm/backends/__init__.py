"""GEMM backends behind one interface (see `base.Backend`), looked up by name."""

from __future__ import annotations

import importlib

from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.gemm.backends.base import Backend
from ftbench.gemm.candidate import BACKEND_NAMES, Candidate
from ftbench.gemm.problem import GemmProblem

_MODULES = {
    "cublas": "ftbench.gemm.backends.cublas",
    "cublaslt": "ftbench.gemm.backends.cublaslt",
    "cutlass": "ftbench.gemm.backends.cutlass",
    "ftbench": "ftbench.gemm.backends.gemv",
}


def get_backend(name: str) -> Backend:
    """The backend called `name` (its module is imported on first use)."""
    if name not in _MODULES:
        raise InvalidInputError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")
    return importlib.import_module(_MODULES[name]).BACKEND


# Whose untuned choice a problem of each scaling runs without a tuned cache, and tuning must beat:
# cuBLAS's default algorithm for fp16/bf16, cuBLASLt's heuristic first choice for FP8 x FP8
# (cublasGemmEx takes no FP8), the project's weight-only kernels for 8-bit weights (no library
# has them).
DEFAULT_BACKENDS = {
    "none": "cublas",
    "tensor": "cublaslt",
    "outer": "cublaslt",
    "channel": "ftbench",
}


def default_candidate(problem: GemmProblem) -> tuple[Backend, Candidate]:
    """(backend, candidate) of `problem`'s default (`DEFAULT_BACKENDS`)."""
    backend = get_backend(DEFAULT_BACKENDS[problem.scaling])
    reason = backend.unsupported_reason(problem)
    candidate = None if reason else backend.default(problem)
    if candidate is None:
        raise FtbenchError(
            f"{problem.key()}: its default, {backend.name}'s, cannot run it "
            f"({reason or 'the library offers no algorithm'})"
        )
    return backend, candidate


__all__ = ["DEFAULT_BACKENDS", "Backend", "default_candidate", "get_backend"]
