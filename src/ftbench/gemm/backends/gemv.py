"""The `ftbench` backend: the project's own decode GEMM kernels for small m.

fp16/bf16 problems run `kernels.gemv`; weight-only ("channel") problems, 8-bit weights with
fp16/bf16 activations, run `kernels.weight_only`, called `runner(a, b, c, b_scale)`. Both take
the same `GemvConfig` tuning space (the weight-only list is its mma kernels). No library has
weight-only GEMMs, so this backend also gives their default: `weight_only.default_config`.
"""

from __future__ import annotations

from ftbench.dtypes import RUNTIME_DTYPES, dtype_info
from ftbench.errors import InvalidInputError
from ftbench.gemm.backends.base import CandidateUnsupported, Runner, cupy_missing
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.problem import SCALE_DTYPE, GemmProblem

_SCALES = dtype_info(SCALE_DTYPE).numpy_name


def _shape_error(problem: GemmProblem) -> str | None:
    """Why these kernels cannot run `problem`, or None."""
    from ftbench.kernels import gemv, weight_only

    if problem.layout != "NT" or problem.batch_count != 1:
        return "only single linear-layer GEMMs (layout NT, batch 1)"
    activations = problem.a_dtype
    if problem.c_dtype != activations or activations not in RUNTIME_DTYPES:
        return "only fp16 or bf16 activations, and the output in their format"
    m, n, k, dtype = problem.m, problem.n, problem.k, dtype_info(activations).numpy_name
    if problem.scaling == "channel":
        return weight_only.supports(m, n, k, dtype, problem.b_dtype, _SCALES)
    if problem.scaling != "none" or problem.b_dtype != activations:
        return "fp16/bf16 GEMMs, or weight-only ones with per-channel scales"
    return gemv.supports(m, n, k, dtype)


def _configs(problem: GemmProblem) -> list:
    from ftbench.kernels import gemv, weight_only

    if problem.scaling == "channel":
        return weight_only.weight_only_configs(problem.m, problem.n, problem.k)
    return gemv.gemv_configs(problem.m, problem.n, problem.k)


class GemvBackend:
    name = "ftbench"

    def unavailable_reason(self) -> str | None:
        return cupy_missing()

    def unsupported_reason(self, problem: GemmProblem) -> str | None:
        return _shape_error(problem)

    def candidates(self, problem: GemmProblem) -> list[Candidate]:
        if _shape_error(problem) is not None:
            return []
        return [Candidate(self.name, c.name, c.to_dict()) for c in _configs(problem)]

    def default(self, problem: GemmProblem) -> Candidate | None:
        """Weight-only problems' untuned config; None for others (cuBLAS gives theirs)."""
        from ftbench.kernels.weight_only import default_config

        if problem.scaling != "channel" or _shape_error(problem) is not None:
            return None
        config = default_config(problem.m, problem.n, problem.k)
        return Candidate(self.name, config.name, config.to_dict())

    def prepare(self, candidate: Candidate, problem: GemmProblem) -> Runner:
        from ftbench.kernels import gemv, weight_only

        config = gemv.GemvConfig.from_dict(candidate.config)
        m, n, k = problem.m, problem.n, problem.k
        dtype = dtype_info(problem.a_dtype).numpy_name
        channel = problem.scaling == "channel"
        config_error = weight_only.config_error if channel else gemv.config_error
        reason = _shape_error(problem) or config_error(config, m, n, k)
        if reason:
            raise CandidateUnsupported(reason)
        try:
            if channel:
                weight_only.prepare([config], m, dtype, problem.b_dtype, _SCALES)
            else:
                gemv.prepare([config], m, dtype)
        except InvalidInputError as exc:  # e.g. fp8 weights on a GPU before compute 8.9
            raise CandidateUnsupported(str(exc)) from exc
        if channel:
            return lambda a, b, c, b_scale: weight_only.weight_only_gemv(a, b, b_scale, c, config)
        return lambda a, b, c: gemv.gemv(a, b, c, config)


BACKEND = GemvBackend()
