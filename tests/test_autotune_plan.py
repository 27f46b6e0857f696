"""What `ftbench tune --dry-run` counts: candidates per backend, and why a backend has none."""

import re

import pytest

from ftbench.autotune.plan import candidate_counts
from ftbench.gemm.backends import get_backend
from ftbench.gemm.backends.base import CandidateUnsupported
from ftbench.gemm.backends.cublas import ALGOS
from ftbench.gemm.backends.cublaslt import candidate_for
from ftbench.gemm.problem import GemmProblem, linear_problem
from ftbench.kernels.cublaslt import AlgoConfig

BACKENDS = ["cublas", "cublaslt", "cutlass", "ftbench"]
FP8 = linear_problem(16, 4096, 4096, "fp8")
INT8_WEIGHTS = linear_problem(16, 4096, 4096, "fp16", weights="int8")


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        (
            FP8,
            {
                "cublas": "cublasGemmEx takes no FP8 operands (FP8 GEMMs are cuBLASLt's)",
                "cublaslt": None,  # cuBLASLt runs FP8: n/a only where its library is missing
                "cutlass": "CUTLASS kernels compute fp16 or bf16 NT single-batch GEMMs, fp32 "
                "accumulation",
                "ftbench": "only fp16 or bf16 activations, and the output in their format",
            },
        ),
        (
            INT8_WEIGHTS,
            {
                "cublas": "cublasGemmEx has no fp16/bf16 x 8-bit weight-only GEMM",
                "cublaslt": "cuBLASLt has no fp16/bf16 x 8-bit weight-only GEMM",
                "cutlass": "CUTLASS kernels compute fp16 or bf16 NT single-batch GEMMs, fp32 "
                "accumulation",
                "ftbench": None,  # the project's weight-only kernels
            },
        ),
    ],
    ids=["fp8", "int8-weights"],
)
def test_backends_without_8_bit_kernels_count_na_and_say_why(problem, expected):
    from ftbench.gemm.backends import get_backend

    missing = get_backend("cublaslt").unavailable_reason()
    if expected["cublaslt"] is None and missing is None:
        pytest.skip("cuBLASLt is loadable here: it counts FP8 candidates")
    expected = {**expected, "cublaslt": expected["cublaslt"] or missing}
    reasons = {}
    counts = candidate_counts(problem, BACKENDS, reasons)
    assert counts == {name: None for name, reason in expected.items() if reason} | {
        name: counts[name] for name, reason in expected.items() if not reason
    }
    assert reasons == {name: reason for name, reason in expected.items() if reason}


def test_weight_only_problems_count_the_project_kernels_and_have_their_default():
    from ftbench.kernels.weight_only import default_config, weight_only_configs

    reasons = {}
    configs = weight_only_configs(16, 4096, 4096)
    assert candidate_counts(INT8_WEIGHTS, ["ftbench"], reasons) == {"ftbench": len(configs)}
    default = get_backend("ftbench").default(INT8_WEIGHTS)
    assert default.config == default_config(16, 4096, 4096).to_dict()
    assert default.config in [config.to_dict() for config in configs]
    assert get_backend("ftbench").default(GemmProblem(16, 4096, 4096)) is None


def test_an_unscaled_problem_counts_every_cublas_algorithm():
    reasons = {}
    assert candidate_counts(GemmProblem(16, 4096, 4096), ["cublas"], reasons) == {
        "cublas": len(ALGOS)
    }
    assert reasons == {}


def test_a_backends_distinct_reasons_are_each_given_once():
    wide = GemmProblem(2048, 4096, 4096)  # more rows than the decode kernels take
    reasons = {}
    for problem in (FP8, wide, FP8, wide):
        candidate_counts(problem, ["ftbench"], reasons)
    backend = get_backend("ftbench")
    assert reasons == {
        "ftbench": f"{backend.unsupported_reason(FP8)}; {backend.unsupported_reason(wide)}"
    }


@pytest.mark.parametrize(
    ("candidate", "problem"),
    [
        (get_backend("cublas").default(GemmProblem(16, 4096, 4096)), FP8),
        (candidate_for(AlgoConfig(id=66, tile_id=18, stages_id=21)), INT8_WEIGHTS),
    ],
    ids=["cublas-fp8", "cublaslt-int8-weights"],
)
def test_preparing_an_8_bit_problem_a_backend_cannot_run_is_unsupported(candidate, problem):
    with pytest.raises(CandidateUnsupported, match=re.escape(problem.key())):
        get_backend(candidate.backend).prepare(candidate, problem)
