"""The `cutlass` backend: curated CUTLASS kernels, built ahead of time, called through ctypes.

The kernels are data (`kernels.cutlass_build.KernelSpec`); each is compiled by nvcc into its own
shared library in a disk cache. Compiling takes about a minute per kernel, so it never happens
inside a sweep: `prebuild()` builds the current GPU's kernel set first (the CLI calls it before
sweeping), and `candidates()` offers only kernels already built. A library built on one machine
runs on another of the same GPU architecture, without nvcc or nvidia-cutlass there.

Only the linear-layer problem is covered: A, B and C all fp16 or all bf16 (each element has its
own kernels), fp32 accumulation, layout "NT", one batch. CUTLASS defines no default kernel, so
`default()` is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftbench.errors import GpuError, NoGpuError
from ftbench.gemm.backends.base import CandidateUnsupported, Runner
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.problem import GemmProblem
from ftbench.kernels import cutlass_build
from ftbench.kernels.cutlass_build import BuildResult, KernelSpec


def supports(problem: GemmProblem) -> bool:
    """Whether the curated kernels compute `problem` (fp16 or bf16 NT linear layer, one batch)."""
    return (
        problem.layout == "NT"
        and problem.batch_count == 1
        and problem.a_dtype == problem.b_dtype == problem.c_dtype
        and problem.a_dtype in cutlass_build.ELEMENTS
        and problem.compute_dtype == "fp32"
    )


def gpu_build_arch() -> int | None:
    """The kernel set (90 or 80) of the current GPU, or None when there is none for it."""
    try:
        import cupy

        capability = int(cupy.cuda.Device().compute_capability)
    except Exception as exc:
        raise NoGpuError(f"no usable CUDA GPU through CuPy: {exc}") from exc
    return cutlass_build.build_arch(capability)


def _build_blocker() -> str | None:
    """Why kernels cannot be built here, or None."""
    if cutlass_build.cutlass_version() is None:
        return "nvidia-cutlass is not installed (pip install nvidia-cutlass)"
    if cutlass_build.find_nvcc() is None:
        return "nvcc was not found (the CUDA toolkit is needed to build kernels)"
    return None


def _candidate(spec: KernelSpec) -> Candidate:
    return Candidate("cutlass", spec.name, spec.config())


def prebuild(
    arch: int | None = None,
    jobs: int | None = None,
    progress: Any | None = None,
    elements: Sequence[str] = ("fp16",),
    root: Path | None = None,
) -> dict[str, BuildResult]:
    """Build (or find in the cache) the curated kernels of `arch` (default the current GPU's)
    for `elements` (the dtypes of the problems to tune), into `root` (default
    `cutlass_build.cache_root()`, where `candidates()` looks).

    Call before a sweep, outside any timing; `progress` is a rich Progress. Kernels that fail to
    compile are left out of `candidates()` and named in the result with their nvcc log.
    """
    arch = arch or gpu_build_arch()
    if arch is None:
        return {}
    names = [spec.name for spec in cutlass_build.kernels_for(arch, elements)]
    return cutlass_build.build_kernels(names, arch, jobs, root=root, progress=progress)


class CutlassBackend:
    name = "cutlass"

    def unavailable_reason(self) -> str | None:
        try:
            arch = gpu_build_arch()
        except NoGpuError as exc:
            return str(exc)
        if arch is None:
            return "no CUTLASS kernel set for this GPU (kernels exist for sm80-89 and sm90)"
        if any(cutlass_build.built_library(s) for s in cutlass_build.kernels_for(arch)):
            return None
        blocker = _build_blocker()
        if blocker is not None:
            return f"no CUTLASS kernels are built for sm{arch} and {blocker}"
        return None

    def unsupported_reason(self, problem: GemmProblem) -> str | None:
        if supports(problem):
            return None
        return "CUTLASS kernels compute fp16 or bf16 NT single-batch GEMMs, fp32 accumulation"

    def candidates(self, problem: GemmProblem) -> list[Candidate]:
        arch = gpu_build_arch()
        if not supports(problem) or arch is None:
            return []
        specs = cutlass_build.kernels_for(arch, (problem.a_dtype,))
        return [_candidate(spec) for spec in specs if cutlass_build.built_library(spec)]

    def default(self, problem: GemmProblem) -> None:
        return None

    def prepare(self, candidate: Candidate, problem: GemmProblem) -> Runner:
        spec = KernelSpec.from_config(candidate.config)
        reason = self.unsupported_reason(problem)
        if reason is not None:
            raise CandidateUnsupported(f"{reason}, not {problem.key()}")
        if spec.element != problem.a_dtype:
            raise CandidateUnsupported(
                f"{spec.name} computes {spec.element}, not {problem.a_dtype}"
            )
        path = cutlass_build.built_library(spec)
        if path is None:
            raise CandidateUnsupported(f"{spec.name} is not built; run the CUTLASS prebuild first")
        return CutlassRunner(path, problem, spec.name)


class CutlassRunner:
    """Enqueues one kernel library on one problem; owns the workspace allocated for it once."""

    def __init__(self, path: Path, problem: GemmProblem, name: str):
        import cupy

        self.library = cutlass_build.load_library(path)
        self.problem, self.name = problem, name
        m, n, k = problem.m, problem.n, problem.k
        if not self.library.can_implement(m, n, k):
            raise CandidateUnsupported(f"{name} cannot run m={m} n={n} k={k} (alignment or GPU)")
        self.workspace_bytes = self.library.workspace_bytes(m, n, k)
        self.workspace = cupy.empty(max(self.workspace_bytes, 1), dtype=cupy.uint8)
        self._arguments = (m, n, k)
        self._current_stream = cupy.cuda.get_current_stream

    def __call__(self, a: Any, b: Any, c: Any) -> None:
        status = self.library.run(
            *self._arguments, a.data.ptr, b.data.ptr, c.data.ptr, self.workspace.data.ptr,
            self.workspace_bytes, self._current_stream().ptr,
        )  # fmt: skip
        if status != 0:
            raise GpuError(
                f"CUTLASS {self.name} on {self.problem.key()}: {self.library.status_string(status)}"
            )


BACKEND = CutlassBackend()
