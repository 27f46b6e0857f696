"""The cuBLAS backend and the sweep on a real GPU."""

import pytest

from ftbench.gemm.problem import GemmProblem

pytestmark = pytest.mark.gpu
BF16 = {"a_dtype": "bf16", "b_dtype": "bf16", "c_dtype": "bf16"}


@pytest.mark.parametrize(
    "problem",
    [
        GemmProblem(m=7, n=65, k=136),
        GemmProblem(m=1, n=4096, k=4096),
        GemmProblem(m=64, n=128, k=64, batch_count=12),  # attention scores: NT, batched
        GemmProblem(m=64, n=64, k=128, transb=False, batch_count=12),  # attention context: NN
        GemmProblem(m=7, n=65, k=136, **BF16),
        GemmProblem(m=64, n=128, k=64, batch_count=12, **BF16),
    ],
    ids=lambda p: p.key(),
)
def test_cublas_gemm_matches_the_fp32_reference(problem):
    from ftbench.dtypes import DTYPES
    from ftbench.gemm.backends.cublas import gemm
    from ftbench.gemm.operands import make_operands, relative_error

    ((a, b, c),) = make_operands(problem)
    gemm(problem, a, b, c)
    assert relative_error(problem, (a, b, c)) < DTYPES[problem.c_dtype].gemm_tolerance


def test_bf16_operands_round_to_nearest_even_and_widen_exactly():
    import cupy
    import numpy as np

    from ftbench.dtypes import numpy_dtype
    from ftbench.gemm.operands import from_float32, nan_array, to_float32

    values = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 100
    values[:4] = [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, np.inf, -0.0]  # ties go to even
    rounded = from_float32(cupy.asarray(values), "bf16")
    assert str(rounded.dtype) == "bfloat16"
    expected = values.astype(numpy_dtype("bf16"))  # ml_dtypes rounds to nearest even
    assert np.array_equal(cupy.asnumpy(rounded).view(np.uint16), expected.view(np.uint16))
    assert np.array_equal(cupy.asnumpy(to_float32(rounded)), expected.astype(np.float32))
    assert bool(cupy.isnan(to_float32(nan_array((3, 5), "bf16"))).all())


def test_a_bf16_sweep_verifies_every_backend_against_the_reference():
    from ftbench.autotune.sweep import SweepOptions, tune_problem
    from ftbench.gemm.backends import get_backend
    from ftbench.gemm.backends.cutlass import prebuild

    names = ("cublas", "cublaslt", "ftbench", "cutlass")
    prebuild(elements=("bf16",))  # cached kernels load; missing ones are built
    problem = GemmProblem(m=16, n=4096, k=4096, **BF16)
    backends = [get_backend(name) for name in names]
    outcome = tune_problem(problem, backends, SweepOptions(backends=names))
    ok = {name: 0 for name in names}
    for record in outcome.records:
        assert record["status"] != "wrong", record
        ok[record["candidate"]["backend"]] += record["status"] == "ok"
    assert all(ok.values()), ok
    assert outcome.entry.winner is not None


def test_tune_problem_verifies_times_and_keeps_the_default_unless_beaten():
    from ftbench.autotune.sweep import SweepOptions, tune_problem
    from ftbench.gemm.backends import get_backend

    problem = GemmProblem(m=16, n=4096, k=4096)
    outcome = tune_problem(problem, [get_backend("cublas")], SweepOptions(backends=("cublas",)))
    entry = outcome.entry
    assert entry.default.config == {"algo": -1}
    assert len(outcome.records) == 42
    statuses = {"ok", "failed", "wrong", "unsupported", "slow"}
    assert {r["status"] for r in outcome.records} <= statuses
    for record in outcome.records:
        if record["status"] != "ok":
            assert record["reason"]
    if entry.winner != entry.default:
        assert entry.winner_time.ci_high_ms < entry.default_time.ci_low_ms
    assert entry.candidates_timed >= 2


def test_run_sweep_writes_a_cache_the_runtime_can_load(tmp_path):
    from ftbench.autotune.sweep import SweepOptions, run_sweep
    from ftbench.bench.environment import capture_environment
    from ftbench.bench.results import read_results
    from ftbench.gemm.cache import open_tuned_cache

    problems = [GemmProblem(m=1, n=1024, k=1024), GemmProblem(m=8, n=1024, k=1024)]
    out = tmp_path / "tuned.json"
    report = run_sweep(problems, out, SweepOptions(backends=("cublas",)))
    assert report.tuned == 2
    cache = open_tuned_cache(out, capture_environment()).cache
    assert all(cache.lookup(p) is not None for p in problems)
    records = read_results(report.results_path)["records"]
    assert len(records) == 2 * 42
