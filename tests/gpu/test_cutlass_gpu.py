"""Every built CUTLASS kernel against the fp32 reference on a real GPU, and its runner's contract.

Kernels come from the cache (FTBENCH_CACHE_DIR); build them first with
`ftbench build-cutlass --arch 90 --out DIR`. A kernel not built is skipped.
"""

from dataclasses import replace

import pytest

from ftbench.dtypes import DTYPES
from ftbench.gemm.backends.base import CandidateUnsupported
from ftbench.gemm.backends.cutlass import BACKEND, gpu_build_arch
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.operands import make_operands, relative_error
from ftbench.gemm.problem import GemmProblem
from ftbench.kernels import cutlass_build

pytestmark = pytest.mark.gpu

ALL_SPECS = cutlass_build.SM90_KERNELS + cutlass_build.SM80_KERNELS
PROBLEMS = [
    GemmProblem(m=1, n=4096, k=4096),
    GemmProblem(m=16, n=4096, k=4096),
    GemmProblem(m=128, n=4096, k=4096),
    GemmProblem(m=2048, n=4096, k=4096),
    GemmProblem(m=7, n=72, k=136),
]


def in_element(problem, spec):
    """`problem` with A, B and C in `spec`'s element type."""
    return replace(problem, a_dtype=spec.element, b_dtype=spec.element, c_dtype=spec.element)


def built_candidate(spec):
    """The candidate of `spec`, or a skip when the GPU cannot run it or it is not built."""
    if gpu_build_arch() != spec.arch:
        pytest.skip(f"{spec.name} is for sm{spec.arch}")
    if cutlass_build.built_library(spec) is None:
        pytest.skip(f"{spec.name} is not built (ftbench build-cutlass)")
    return Candidate("cutlass", spec.name, spec.config())


def test_some_kernels_are_built_for_this_gpu():
    assert BACKEND.unavailable_reason() is None
    assert BACKEND.candidates(PROBLEMS[0]), "no CUTLASS kernel is built for this GPU"


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: f"{p.m}x{p.n}x{p.k}")
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_kernel_matches_the_fp32_reference(spec, problem):
    import cupy

    problem = in_element(problem, spec)
    runner = BACKEND.prepare(built_candidate(spec), problem)
    ((a, b, c),) = make_operands(problem)  # C starts as NaN: unwritten outputs fail
    cupy.cuda.get_current_stream().synchronize()
    runner(a, b, c)
    assert relative_error(problem, (a, b, c)) < DTYPES[spec.element].gemm_tolerance


@pytest.mark.parametrize("spec", ALL_SPECS[:1] + cutlass_build.kernels_for(90, ("bf16",))[:1])
def test_a_kernel_of_another_element_is_unsupported(spec):
    other = "bf16" if spec.element == "fp16" else "fp16"
    problem = GemmProblem(m=16, n=4096, k=4096, a_dtype=other, b_dtype=other, c_dtype=other)
    with pytest.raises(CandidateUnsupported, match=f"computes {spec.element}"):
        BACKEND.prepare(built_candidate(spec), problem)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_misaligned_k_is_unsupported_not_a_crash(spec):
    # Rows of 129 fp16 values are not 16-byte aligned: no align-8 kernel can load them.
    with pytest.raises(CandidateUnsupported, match="cannot run"):
        BACKEND.prepare(built_candidate(spec), in_element(GemmProblem(m=7, n=72, k=129), spec))


def test_runner_allocates_nothing_per_call():
    import cupy

    problem = PROBLEMS[1]
    runner = BACKEND.prepare(BACKEND.candidates(problem)[0], problem)
    ((a, b, c),) = make_operands(problem)
    pool = cupy.get_default_memory_pool()
    runner(a, b, c)
    before = pool.used_bytes()
    for _ in range(10):
        runner(a, b, c)
    assert pool.used_bytes() == before


def test_runner_is_captured_in_a_cuda_graph():
    from ftbench.bench.timer import TimingPolicy, time_launch

    problem = PROBLEMS[0]
    stream_k = [c for c in BACKEND.candidates(problem) if c.config["tile_scheduler"] == "stream_k"]
    candidate = (stream_k or BACKEND.candidates(problem))[0]
    runner = BACKEND.prepare(candidate, problem)
    ((a, b, c),) = make_operands(problem)
    timing = time_launch(
        lambda i: runner(a, b, c), name=candidate.name, policy=TimingPolicy(budget_s=1.0)
    )
    assert timing.method == "graph", timing.capture_error
    assert relative_error(problem, (a, b, c)) < 2e-3
