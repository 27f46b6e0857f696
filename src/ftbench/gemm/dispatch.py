"""The runtime's one GEMM dispatch: every linear layer goes through `GemmDispatch.linear`.

A linear layer computes out[m, n] = x[m, k] @ weight[n, k]^T (the `GemmProblem` "NT" layout).
The first call for a shape resolves it against the tuned-config cache written by `ftbench tune`:
a hit runs the tuned backend with its stored configuration, a miss runs the library default
(cublasGemmEx, CUBLAS_GEMM_DEFAULT). Each distinct problem is resolved once and its runner kept,
so later calls cost a dictionary lookup and can be captured in a CUDA graph. Misses are counted
per distinct problem and listed, so `ftbench run` can say how much of a model ran untuned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftbench.dtypes import array_dtype
from ftbench.errors import GpuError
from ftbench.gemm.backends import default_candidate, get_backend
from ftbench.gemm.backends.base import Runner
from ftbench.gemm.cache import TunedCache
from ftbench.gemm.problem import GemmProblem, linear_problem
from ftbench.kernels.cublas import check_linear_operands


@dataclass
class DispatchStats:
    """Distinct problems resolved from the cache (hits) or run untuned (misses)."""

    hits: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    backends: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": len(self.hits),
            "misses": len(self.misses),
            "missed_problems": list(self.misses),
            "backends": dict(self.backends),
        }


class GemmDispatch:
    """Runs linear layers with the tuned backend for their shape, or the default on a miss."""

    def __init__(self, cache: TunedCache | None = None) -> None:
        self.cache = cache
        self.stats = DispatchStats()
        # Runners by (m, n, k, dtype): a call after the first builds no GemmProblem.
        self._runners: dict[tuple[int, int, int, str], Runner] = {}

    def linear(self, x: Any, weight: Any, out: Any) -> None:
        """out = x @ weight^T on CuPy's current stream (x [m, k], weight [n, k], out [m, n])."""
        m, n, k = check_linear_operands(x, weight, out)
        shape = (m, n, k, array_dtype(x))
        runner = self._runners.get(shape)
        if runner is None:
            runner = self._runners[shape] = self._resolve(linear_problem(*shape))
        runner(x, weight, out)

    def _resolve(self, problem: GemmProblem) -> Runner:
        entry = self.cache.lookup(problem) if self.cache is not None else None
        key = problem.key()
        if entry is None:
            self.stats.misses.append(key)
            backend, candidate = default_candidate(problem)
        else:
            self.stats.hits.append(key)
            candidate = entry.winner
            backend = get_backend(candidate.backend)
        try:
            runner = backend.prepare(candidate, problem)
        except Exception as exc:
            raise GpuError(
                f"tuned GEMM {candidate.backend}:{candidate.name} for {key} cannot run here "
                f"({exc}); re-tune or prune the cache"
            ) from exc
        self.stats.backends[candidate.backend] = self.stats.backends.get(candidate.backend, 0) + 1
        return runner
