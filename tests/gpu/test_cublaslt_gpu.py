"""cuBLASLt backend on the GPU: every candidate is right on fresh random data, replays from its
stored record, and runs inside a captured CUDA graph."""

import json

import pytest

from ftbench.dtypes import DTYPES
from ftbench.gemm.backends.cublaslt import CublasLtBackend, heuristic
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.operands import make_operands, relative_error
from ftbench.gemm.problem import GemmProblem
from ftbench.kernels.cublaslt import AlgoConfig, decode_algo

pytestmark = pytest.mark.gpu

BF16 = {"a_dtype": "bf16", "b_dtype": "bf16", "c_dtype": "bf16"}
PROBLEMS = {
    "decode-1x4096x4096": GemmProblem(m=1, n=4096, k=4096),
    "decode-16x12288x4096": GemmProblem(m=16, n=12288, k=4096),
    "context-2048x4096x4096": GemmProblem(m=2048, n=4096, k=4096),
    "batched-NT-128x128x64x32": GemmProblem(m=128, n=128, k=64, batch_count=32),
    "odd-7x65x136": GemmProblem(m=7, n=65, k=136),
    "batched-NN-odd-33x200x136x3": GemmProblem(m=33, n=200, k=136, transb=False, batch_count=3),
    "TN-odd-7x65x136": GemmProblem(m=7, n=65, k=136, transa=True, transb=False),
    "bf16-decode-16x4096x4096": GemmProblem(m=16, n=4096, k=4096, **BF16),
    "bf16-context-128x4096x4096": GemmProblem(m=128, n=4096, k=4096, **BF16),
}
PROBLEM_IDS = list(PROBLEMS)


@pytest.fixture(scope="module")
def backend():
    backend = CublasLtBackend()
    reason = backend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return backend


@pytest.fixture(scope="module")
def candidates_of(backend):
    found = {}

    def candidates(problem):
        if problem not in found:
            found[problem] = backend.candidates(problem)
        return found[problem]

    return candidates


def error_of(problem, runner):
    """Relative error of one run on fresh random operands, the output poisoned with NaN."""
    import cupy

    a, b, c = make_operands(problem)[0]  # C starts as NaN
    cupy.cuda.get_current_stream().synchronize()
    runner(a, b, c)
    return relative_error(problem, (a, b, c))


@pytest.mark.parametrize("problem_id", PROBLEM_IDS)
def test_candidates_start_with_the_default_and_are_distinct(backend, candidates_of, problem_id):
    problem = PROBLEMS[problem_id]
    candidates = candidates_of(problem)
    assert candidates[0] == backend.default(problem)
    assert candidates[0].name.startswith("heuristic #0: ")
    assert len({c.key() for c in candidates}) == len(candidates)
    assert 1 < len(candidates) <= backend.max_candidates


@pytest.mark.parametrize("problem_id", PROBLEM_IDS)
def test_every_candidate_matches_the_reference(backend, candidates_of, problem_id):
    problem = PROBLEMS[problem_id]
    errors = {
        c.name: error_of(problem, backend.prepare(c, problem)) for c in candidates_of(problem)
    }
    tolerance = DTYPES[problem.c_dtype].gemm_tolerance
    wrong = {name: error for name, error in errors.items() if not error < tolerance}
    assert not wrong, f"{len(wrong)} of {len(errors)} candidates are wrong: {wrong}"


@pytest.mark.parametrize("problem_id", PROBLEM_IDS)
def test_heuristic_results_rebuild_from_their_config_byte_for_byte(backend, problem_id):
    problem = PROBLEMS[problem_id]
    results = heuristic(problem)
    assert results, "the heuristic found no algorithm"
    for config, raw in results:
        candidate = Candidate("cublaslt", "rebuilt", config.to_config())
        assert backend.prepare(candidate, problem).algo.tobytes() == raw, config.describe()


def test_small_m_enumeration_adds_split_k_and_other_algorithm_ids(candidates_of):
    configs = [
        AlgoConfig.from_config(c.config) for c in candidates_of(PROBLEMS["decode-1x4096x4096"])
    ]
    assert any(config.splitk_num > 1 for config in configs)
    assert len({config.id for config in configs}) > 1


@pytest.mark.parametrize("which", ["heuristic", "split-k"])
def test_a_stored_candidate_replays_the_same_algorithm_in_a_fresh_backend(
    backend, candidates_of, which
):
    problem = PROBLEMS["decode-16x12288x4096"]
    candidates = candidates_of(problem)
    if which == "heuristic":
        original = candidates[0]
    else:
        original = next(c for c in candidates if c.config["splitk_num"] > 1)
    stored = json.loads(json.dumps(original.to_dict()))
    replayed = Candidate.from_dict(stored)
    runner = CublasLtBackend().prepare(replayed, problem)
    assert runner.algo.tobytes() == backend.prepare(original, problem).algo.tobytes()
    assert decode_algo(runner.algo) == AlgoConfig.from_config(original.config)
    assert error_of(problem, runner) < DTYPES["fp16"].gemm_tolerance


@pytest.mark.parametrize("problem_id", ["decode-16x12288x4096", "batched-NT-128x128x64x32"])
def test_every_candidate_is_right_when_replayed_from_a_captured_graph(
    backend, candidates_of, problem_id
):
    import cupy

    problem = PROBLEMS[problem_id]
    stream = cupy.cuda.Stream(non_blocking=True)
    wrong = {}
    with stream:
        for candidate in candidates_of(problem):
            runner = backend.prepare(candidate, problem)
            a, b, c = make_operands(problem)[0]
            runner(a, b, c)  # warm-up outside the graph, as the timer does
            stream.synchronize()
            stream.begin_capture()
            try:
                runner(a, b, c)
            finally:
                graph = stream.end_capture()
            c.fill(cupy.nan)
            graph.launch(stream)
            stream.synchronize()
            error = relative_error(problem, (a, b, c))
            if not error < DTYPES["fp16"].gemm_tolerance:
                wrong[candidate.name] = error
    assert not wrong, f"wrong after graph replay: {wrong}"


@pytest.mark.parametrize("which", ["heuristic", "split-k"])
def test_time_launch_times_a_runner_as_a_cuda_graph(backend, candidates_of, which):
    from ftbench.bench.timer import TimingPolicy, time_launch

    problem = PROBLEMS["decode-1x4096x4096"]
    candidates = candidates_of(problem)
    candidate = candidates[0]
    if which == "split-k":
        candidate = next(c for c in candidates if c.config["splitk_num"] > 1)
    runner = backend.prepare(candidate, problem)
    a, b, c = make_operands(problem)[0]
    policy = TimingPolicy(
        warmup_ms=2.0, sample_ms=0.5, min_samples=5, max_samples=20, budget_s=0.5, min_time_s=0.0
    )
    timing = time_launch(lambda index: runner(a, b, c), name=candidate.name, policy=policy)
    assert timing.method == "graph", timing.capture_error
    assert timing.launches_per_sample > 1


def test_unknown_algorithm_id_is_unsupported(backend):
    from ftbench.gemm.backends.base import CandidateUnsupported

    problem = PROBLEMS["odd-7x65x136"]
    candidate = Candidate("cublaslt", "bogus", AlgoConfig(id=100_000).to_config())
    with pytest.raises(CandidateUnsupported):
        backend.prepare(candidate, problem)
