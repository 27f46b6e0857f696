"""The sweep on 8-bit problems, on the GPU: operands whose codes and scales the reference reads as
a float64 NumPy product does, FP8 problems tuned over cuBLASLt against its heuristic's first
choice, weight-only problems over the project's kernels against their untuned config, every
candidate checked against the dequantised reference."""

import numpy as np
import pytest

from ftbench.autotune.sweep import SweepOptions, tune_problem
from ftbench.bench.timer import TimingPolicy
from ftbench.gemm.backends import get_backend
from ftbench.gemm.operands import (
    make_operands,
    reference,
    relative_error,
    to_e4m3,
    widen,
)
from ftbench.gemm.problem import linear_problem

pytestmark = pytest.mark.gpu
ml_dtypes = pytest.importorskip("ml_dtypes", reason="E4M3 host arrays need ml_dtypes")

QUICK = TimingPolicy(
    warmup_ms=1.0, sample_ms=0.2, min_samples=5, max_samples=30, target_rel_ci=0.05,
    budget_s=0.1, min_time_s=0.005,
)  # fmt: skip


def host(array, dtype):
    """A device operand as float64 on the host, read by ml_dtypes (not by `widen`)."""
    import cupy

    values = cupy.asnumpy(array)
    if dtype == "fp8":
        values = values.view(ml_dtypes.float8_e4m3fn)
    elif dtype == "bf16":
        values = values.view(np.uint16).view(ml_dtypes.bfloat16)
    return values.astype(np.float64)


def test_to_e4m3_rounds_to_the_nearest_code_and_saturates():
    import cupy

    values = cupy.concatenate(
        [
            cupy.random.standard_normal(100_000, dtype=cupy.float32) * 96,
            cupy.random.standard_normal(1_000, dtype=cupy.float32) * 1e-3,  # subnormals
            cupy.asarray([0.0, -0.0, 448.0, -448.0, 1e4, -1e4, 464.0], dtype=cupy.float32),
        ]
    )
    codes = to_e4m3(values)
    ours = host(codes, "fp8")
    clipped = np.clip(cupy.asnumpy(values).astype(np.float64), -448, 448)
    theirs = clipped.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    # Both are a nearest value of the saturated input: they differ only on ties.
    assert np.array_equal(np.abs(ours - clipped), np.abs(theirs - clipped))
    assert np.array_equal(widen(codes, "fp8").get().astype(np.float64), ours)


@pytest.mark.parametrize(
    "problem",
    [
        linear_problem(33, 48, 64, "fp8"),
        linear_problem(33, 48, 64, "fp8", scaling="outer", out_dtype="bf16"),
        linear_problem(5, 48, 64, "fp16", weights="int8"),
        linear_problem(5, 48, 64, "bf16", weights="fp8"),
    ],
    ids=lambda p: p.key(),
)
def test_reference_is_the_float64_product_of_codes_times_scales(problem):
    ((a, b, c, *scales),) = make_operands(problem)
    a64, b64 = host(a, problem.a_dtype), host(b, problem.b_dtype)
    host_scales = [s.get().astype(np.float64) for s in scales]
    if problem.scaling == "channel":
        b64 = b64 * host_scales[0][:, None]
    else:
        a64 = a64 * host_scales[0][:, None] if host_scales[0].size > 1 else a64 * host_scales[0]
        b64 = b64 * host_scales[1][:, None] if host_scales[1].size > 1 else b64 * host_scales[1]
    expected = a64 @ b64.T
    got = reference(problem, (a, b, c, *scales)).get().astype(np.float64)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-6
    assert 0.3 < float(np.std(expected)) < 3  # C ~ N(0, 1): the codes use the format's range
    assert relative_error(problem, (a, b, c, *scales)) == float("inf")  # C still NaN


def fp8_problems():
    from ftbench.gemm.backends import cublaslt as backend
    from ftbench.kernels import cublaslt

    problems = [linear_problem(16, 1024, 512, "fp8"), linear_problem(300, 1024, 512, "fp8")]
    if cublaslt.unavailable_reason() is None and (
        cublaslt.library_version() >= cublaslt.OUTER_SCALES_SINCE
    ):
        problems.append(linear_problem(64, 1024, 512, "fp8", scaling="outer"))
    assert backend  # the backend module imports without a GPU
    return problems


def test_fp8_problems_tune_over_cublaslt_against_its_heuristic():
    import cupy

    if int(cupy.cuda.Device().compute_capability) < 89:
        pytest.skip("FP8 tensor cores need compute capability 8.9")
    backend = get_backend("cublaslt")
    reason = backend.unavailable_reason()
    if reason:
        pytest.skip(reason)
    options = SweepOptions(backends=("cublaslt",), policy=QUICK)
    for problem in fp8_problems():
        outcome = tune_problem(problem, [backend], options)
        entry, records = outcome.entry, outcome.records
        assert entry.default.backend == "cublaslt" and entry.default.config["fast_accum"] is False
        statuses = {r["status"] for r in records}
        assert "wrong" not in statuses, [r for r in records if r["status"] == "wrong"][:3]
        assert entry.candidates_timed >= 8
        fast = [r for r in records if r["candidate"]["config"].get("fast_accum") and "rel_err" in r]
        assert fast, "fast accumulation is a tuning dimension"
        accurate = [r["rel_err"] for r in records if r["status"] == "ok"
                    and not r["candidate"]["config"]["fast_accum"]]  # fmt: skip
        assert max(accurate) < 2e-3
        assert entry.winner_time.median_ms <= entry.default_time.median_ms * 1.02


@pytest.mark.parametrize("weights", ["int8", "fp8"])
@pytest.mark.parametrize("m", [1, 16])
def test_weight_only_problems_tune_over_the_project_kernels(weights, m):
    import cupy

    if weights == "fp8" and int(cupy.cuda.Device().compute_capability) < 89:
        pytest.skip("fp8 weights need compute capability 8.9")
    problem = linear_problem(m, 4096, 4096, "fp16", weights=weights)
    backend = get_backend("ftbench")
    options = SweepOptions(backends=("ftbench",), policy=QUICK)
    outcome = tune_problem(problem, [backend], options)
    entry, records = outcome.entry, outcome.records
    assert entry.default.backend == "ftbench"
    assert {r["status"] for r in records} <= {"ok", "slow"}, records[:3]
    assert entry.candidates_timed >= 10
    assert max(r["rel_err"] for r in records if r["status"] == "ok") < 2e-3
