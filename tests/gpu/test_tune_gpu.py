"""The cuBLAS backend and the sweep on a real GPU."""

import pytest

from ftbench.autotune.problem import GemmProblem

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    "problem",
    [
        GemmProblem(m=7, n=65, k=136),
        GemmProblem(m=1, n=4096, k=4096),
        GemmProblem(m=64, n=128, k=64, batch_count=12),  # attention scores: NT, batched
        GemmProblem(m=64, n=64, k=128, transb=False, batch_count=12),  # attention context: NN
    ],
    ids=lambda p: p.key(),
)
def test_cublas_gemm_matches_the_fp32_reference(problem):
    from ftbench.autotune.operands import make_operands, relative_error
    from ftbench.kernels.cublas import gemm

    ((a, b, c),) = make_operands(problem)
    gemm(problem, a, b, c)
    assert relative_error(problem, a, b, c) < 2e-3


def test_tune_problem_verifies_times_and_keeps_the_default_unless_beaten():
    from ftbench.autotune.backends import get_backend
    from ftbench.autotune.sweep import SweepOptions, tune_problem

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
    from ftbench.autotune.cache import CacheHeader, load_cache
    from ftbench.autotune.sweep import SweepOptions, run_sweep
    from ftbench.bench.environment import capture_environment
    from ftbench.reports.results import read_results

    problems = [GemmProblem(m=1, n=1024, k=1024), GemmProblem(m=8, n=1024, k=1024)]
    out = tmp_path / "tuned.json"
    report = run_sweep(problems, out, SweepOptions(backends=("cublas",)))
    assert report.tuned == 2
    running = CacheHeader.from_environment(capture_environment())
    cache = load_cache(out, running=running)
    assert all(cache.lookup(p) is not None for p in problems)
    records = read_results(report.results_path)["records"]
    assert len(records) == 2 * 42
