"""The backend interface: enumerate candidates, prepare one, run it.

A backend turns a `Candidate` into a `Runner`: a callable `runner(a, b, c)` that enqueues the GEMM
C = op(A) @ op(B) (row-major terms, see `GemmProblem`) on CuPy's current stream, allocates
nothing and never synchronises, so it can be timed inside a captured CUDA graph and replayed by
the runtime from the tuned cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ftbench.gemm.candidate import Candidate
from ftbench.gemm.problem import GemmProblem

Runner = Callable[[Any, Any, Any], None]


class CandidateUnsupported(Exception):
    """This candidate cannot run this problem (raised by `prepare`; the sweep records why)."""


class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """None when the backend can run here, else why not (missing package, no GPU, ...)."""

    def unsupported_reason(self, problem: GemmProblem) -> str | None:
        """None when the backend computes `problem` (its formats, scaling, layout, shape), else
        why not; answered from the problem alone, without a GPU."""

    def candidates(self, problem: GemmProblem) -> list[Candidate]:
        """Every configuration worth timing for `problem` (may query the GPU)."""

    def default(self, problem: GemmProblem) -> Candidate | None:
        """The configuration a user gets without tuning, if this backend defines one."""

    def prepare(self, candidate: Candidate, problem: GemmProblem) -> Runner:
        """Compile or load what `candidate` needs; raise CandidateUnsupported if it can't run."""


def cupy_missing() -> str | None:
    """Why CuPy cannot be used here, or None (backends that need only CuPy return this)."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed"
    return None
