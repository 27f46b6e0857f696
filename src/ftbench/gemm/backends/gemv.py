"""The `ftbench` backend: the project's own decode GEMM kernels (kernels/gemv.py) for small m."""

from __future__ import annotations

from ftbench.dtypes import RUNTIME_DTYPES, dtype_info
from ftbench.errors import InvalidInputError
from ftbench.gemm.backends.base import CandidateUnsupported, Runner, cupy_missing
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.problem import GemmProblem


def _shape_error(problem: GemmProblem) -> str | None:
    """Why these kernels cannot run `problem`, or None."""
    from ftbench.kernels.gemv import supports

    if problem.layout != "NT" or problem.batch_count != 1:
        return "only single linear-layer GEMMs (layout NT, batch 1)"
    if (
        not problem.a_dtype == problem.b_dtype == problem.c_dtype
        or problem.a_dtype not in RUNTIME_DTYPES
    ):
        return "only fp16 or bf16 in and out"
    return supports(problem.m, problem.n, problem.k, dtype_info(problem.a_dtype).numpy_name)


class GemvBackend:
    name = "ftbench"

    def unavailable_reason(self) -> str | None:
        return cupy_missing()

    def unsupported_reason(self, problem: GemmProblem) -> str | None:
        return _shape_error(problem)

    def candidates(self, problem: GemmProblem) -> list[Candidate]:
        from ftbench.kernels.gemv import gemv_configs

        if _shape_error(problem) is not None:
            return []
        return [
            Candidate(self.name, config.name, config.to_dict())
            for config in gemv_configs(problem.m, problem.n, problem.k)
        ]

    def default(self, problem: GemmProblem) -> None:
        return None

    def prepare(self, candidate: Candidate, problem: GemmProblem) -> Runner:
        from ftbench.kernels.gemv import GemvConfig, config_error, gemv, prepare

        reason = _shape_error(problem)
        config = GemvConfig.from_dict(candidate.config)
        reason = reason or config_error(config, problem.m, problem.n, problem.k)
        if reason:
            raise CandidateUnsupported(reason)
        try:
            prepare([config], problem.m, dtype_info(problem.a_dtype).numpy_name)
        except InvalidInputError as exc:
            raise CandidateUnsupported(str(exc)) from exc
        return lambda a, b, c: gemv(a, b, c, config)


BACKEND = GemvBackend()
