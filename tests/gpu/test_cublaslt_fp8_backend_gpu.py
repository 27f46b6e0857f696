"""The cublaslt backend's FP8 search on the GPU: candidates for both fast-accumulation settings,
each with its heuristic's top 8 first, every one right against the float64 reference of the E4M3
operands times their scales (tolerances: `fp8_linear`), and replayed from its stored record.

FP8 problems (a_dtype = b_dtype = "fp8", `scaling` "tensor" or "outer") come with the FP8
problems of `gemm.problem`; the problems are made inside the tests.
"""

import functools
import json

import pytest
from fp8_linear import Linear, error_of, output

from ftbench.gemm.backends.cublaslt import CublasLtBackend, config_of, heuristic
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.operands import tolerance
from ftbench.kernels import cublaslt

pytestmark = pytest.mark.gpu

SHAPE = (16, 4096, 4096 + 16)
HEURISTIC_TOP = 8


def fp8_problem(scaling):
    from ftbench.gemm.problem import GemmProblem

    m, n, k = SHAPE
    return GemmProblem(m=m, n=n, k=k, a_dtype="fp8", b_dtype="fp8", c_dtype="fp16", scaling=scaling)


@pytest.fixture(scope="module")
def backend():
    backend = CublasLtBackend()
    reason = backend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if cublaslt.library_version() < cublaslt.OUTER_SCALES_SINCE:
        pytest.skip("outer-vector scales need cuBLASLt 12.9")
    return backend


@pytest.fixture(scope="module")
def candidates_of(backend):
    """The backend's candidates for the FP8 problem of a scaling, found once."""
    return functools.cache(lambda scaling: backend.candidates(fp8_problem(scaling)))


@pytest.mark.parametrize("scaling", ["tensor", "outer"])
def test_fp8_candidates_hold_each_fast_accumulation_setting_with_its_heuristic_top_8_first(
    backend, candidates_of, scaling
):
    problem, candidates = fp8_problem(scaling), candidates_of(scaling)
    assert candidates[0] == backend.default(problem)
    assert candidates[0].config["fast_accum"] is False
    assert len({c.key() for c in candidates}) == len(candidates) <= backend.max_candidates
    for fast_accum in (False, True):
        ranked = [config for config, _ in heuristic(problem, backend.heuristic_count, fast_accum)]
        top = list(dict.fromkeys(ranked))[:HEURISTIC_TOP]
        assert top, f"the heuristic found no FP8 algorithm with fast_accum={fast_accum}"
        mine = [config_of(c.config, fp8=True) for c in candidates]
        assert [config for config, fast in mine if fast == fast_accum][: len(top)] == top


@pytest.mark.parametrize("scaling", ["tensor", "outer"])
def test_every_fp8_candidate_matches_the_dequantised_reference(backend, candidates_of, scaling):
    import cupy

    problem, linear = fp8_problem(scaling), Linear(*SHAPE)
    a_scale, b_scale = linear.scales(scaling)
    expected = linear.reference(a_scale, b_scale)
    scales = cupy.asarray(a_scale), cupy.asarray(b_scale)
    wrong = {}
    for candidate in candidates_of(scaling):
        c = output(linear, "fp16")
        backend.prepare(candidate, problem)(linear.x, linear.w, c, *scales)
        error = error_of(c, "fp16", expected)
        if not error < tolerance("fp16", candidate.config["fast_accum"]):
            wrong[candidate.name] = error
    assert not wrong, f"{len(wrong)} of {len(candidates_of(scaling))} candidates are wrong: {wrong}"


def test_a_stored_fast_accumulation_candidate_replays_in_a_fresh_backend(backend, candidates_of):
    problem = fp8_problem("outer")
    original = next(c for c in candidates_of("outer") if c.config["fast_accum"])
    replayed = Candidate.from_dict(json.loads(json.dumps(original.to_dict())))
    runner = CublasLtBackend().prepare(replayed, problem)
    assert runner.algo.tobytes() == backend.prepare(original, problem).algo.tobytes()
