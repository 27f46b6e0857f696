"""CUTLASS GEMM kernels: the curated set as data, code generation, the nvcc build, loading.

Every kernel is a `KernelSpec` (tile, cluster, stages, schedule, ...). `emit_source` turns one
into a .cu file: the kernel type is emitted by nvidia-cutlass's `cutlass_library` (the generator
behind CUTLASS's own profiler) and wrapped by `kernels/cutlass/gemm_sm{80,90}.cu.in` in a C entry
point called through ctypes:

    int    ftb_can_implement(int m, int n, int k);     // 1 when the kernel can run the problem
    size_t ftb_workspace(int m, int n, int k);         // device workspace bytes it needs
    int    ftb_run(int m, int n, int k, const void* A, const void* B, void* C,
                   void* workspace, size_t workspace_bytes, cudaStream_t stream);
    const char* ftb_status_string(int status);         // cutlass::Status as text

All compute the linear layer C[m, n] = A[m, k] @ B[n, k]^T (row-major, fp16 or bf16 in and out as
the kernel's `element` says, fp32 accumulation):
in CUTLASS terms A is RowMajor and B is ColumnMajor (both K-major, CUTLASS's "TN"), C RowMajor.
A spec with `swap_operands` computes C^T = B @ A^T instead (C ColumnMajor), so that a small m
sits on the tile's narrow N side: wgmma tiles are at least 64 rows tall, far more than m = 1..16.

Libraries are cached on disk, one per kernel:

    <cache root>/cutlass/sm<arch>-<key>/<kernel>.cu    emitted source
                                        <kernel>.so    stripped shared library
                                        <kernel>.json  build record (nvcc, CUTLASS, seconds)
                                        <kernel>.log   nvcc output of a failed build

The cache root is $FTBENCH_CACHE_DIR, else $XDG_CACHE_HOME/ftbench, else ~/.cache/ftbench. The key
hashes `nvcc --version`, the nvcc flags and the entry template, so a new toolchain builds anew.
Loading needs neither nvcc nor nvidia-cutlass: libraries built on one machine run on another
with the same GPU architecture (where this nvcc's folder is missing, the newest sm<arch>-* is used).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import string
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ftbench.dtypes import dtype_info
from ftbench.errors import InvalidInputError
from ftbench.files import default_cache_dir, write_json_atomic

_LOGGER = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "cutlass"
TEMPLATES = {90: "gemm_sm90.cu.in", 80: "gemm_sm80.cu.in"}
NVCC_FLAGS = (
    "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-DNDEBUG", "-Xcompiler", "-fPIC", "-shared",
    "-Xlinker", "-s",
)  # fmt: skip
# wgmma and setmaxnreg need the arch-specific sm_90a target; the -gencode form builds only it.
ARCH_FLAGS = {
    90: ("-gencode=arch=compute_90a,code=sm_90a",),
    80: ("-gencode=arch=compute_80,code=sm_80",),
}
COMPILE_TIMEOUT_S = 1800
# SASS built for sm_80 runs on every 8.x GPU; sm_90a runs on 9.0 only.
BUILD_ARCH_BY_CAPABILITY = {90: 90, 80: 80, 86: 80, 87: 80, 89: 80}
# Element types of A, B and C a KernelSpec may name (ftbench's dtype names).
ELEMENTS = ("fp16", "bf16")
# Per arch: the schedules and the tile schedulers a KernelSpec may name.
_SCHEDULES = {
    90: (("pingpong", "cooperative"), ("persistent", "stream_k")),
    80: (("multistage",), ("data_parallel",)),
}


@dataclass(frozen=True)
class KernelSpec:
    """One CUTLASS GEMM kernel for the NT linear layer, as data.

    `schedule` is "pingpong" or "cooperative" (SM90 TMA warp-specialized kernels) or
    "multistage" (SM80 cp.async); `tile_scheduler` is "persistent" or "stream_k" on SM90 and
    "data_parallel" (one CTA per output tile) on SM80. `stages` 0 lets CUTLASS fill shared memory.
    `warps` is the SM80 warp arrangement (CUTLASS's warp_count); SM90 kernels use (4, 1, 1).
    `element` is the dtype of A, B and C: "fp16" or "bf16".
    """

    arch: int
    tile: tuple[int, int, int]
    schedule: str
    tile_scheduler: str
    cluster: tuple[int, int, int] = (1, 1, 1)
    stages: int = 0
    warps: tuple[int, int, int] = (4, 1, 1)
    swap_operands: bool = False
    alignment: int = 8
    element: str = "fp16"

    def __post_init__(self) -> None:
        if self.element not in ELEMENTS:
            raise InvalidInputError(
                f"CUTLASS kernels take elements {ELEMENTS}, not {self.element!r}"
            )
        schedules, tile_schedulers = _SCHEDULES.get(self.arch, ((), ()))
        if self.schedule not in schedules or self.tile_scheduler not in tile_schedulers:
            raise InvalidInputError(
                f"sm{self.arch} CUTLASS kernels take schedules {sorted(schedules)} and tile "
                f"schedulers {sorted(tile_schedulers)}, not {self.schedule!r} / "
                f"{self.tile_scheduler!r}"
            )
        if self.swap_operands and self.arch < 90:
            raise InvalidInputError(
                "SM80 kernels cannot swap operands: CUTLASS 2.x epilogues write row-major tiles"
            )

    @property
    def name(self) -> str:
        """Short unique name, e.g. "sm90_swap_128x16x128_c1x1_cooperative_streamk"; kernels of
        other elements than fp16 name it after the arch ("sm90_bf16_swap_...")."""
        tile = "x".join(map(str, self.tile))
        prefix = f"sm{self.arch}_" + ("" if self.element == "fp16" else f"{self.element}_")
        swap = "swap_" if self.swap_operands else ""
        if self.arch < 90:
            warps = "x".join(map(str, self.warps[:2]))
            return f"{prefix}{swap}{tile}_s{self.stages}_w{warps}"
        stages = f"_s{self.stages}" if self.stages else ""
        stream_k = "_streamk" if self.tile_scheduler == "stream_k" else ""
        cluster = f"c{self.cluster[0]}x{self.cluster[1]}"
        return f"{prefix}{swap}{tile}_{cluster}{stages}_{self.schedule}{stream_k}"

    def config(self) -> dict[str, Any]:
        """JSON-ready description (the `Candidate.config` of this kernel)."""
        return {
            "kernel": self.name,
            "arch": self.arch,
            "tile": list(self.tile),
            "cluster": list(self.cluster),
            "stages": self.stages,
            "warps": list(self.warps),
            "schedule": self.schedule,
            "tile_scheduler": self.tile_scheduler,
            "swap_operands": self.swap_operands,
            "alignment": self.alignment,
            "element": self.element,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KernelSpec:
        """Inverse of `config`; a record whose name does not match its fields is an error.

        A record without "element" (written before bf16 kernels existed) is an fp16 kernel.
        """
        try:
            spec = cls(
                arch=int(config["arch"]),
                tile=tuple(config["tile"]),
                cluster=tuple(config["cluster"]),
                stages=int(config["stages"]),
                warps=tuple(config["warps"]),
                schedule=config["schedule"],
                tile_scheduler=config["tile_scheduler"],
                swap_operands=bool(config["swap_operands"]),
                alignment=int(config["alignment"]),
                element=str(config.get("element", "fp16")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed CUTLASS kernel record {config!r}") from exc
        if spec.name != config.get("kernel"):
            raise InvalidInputError(
                f"CUTLASS kernel record names {config.get('kernel')!r} but describes {spec.name!r}"
            )
        return spec


def _sm90(tile, schedule, tile_scheduler="persistent", cluster=(1, 1, 1), swap=False):
    return KernelSpec(90, tile, schedule, tile_scheduler, cluster=cluster, swap_operands=swap)


def _in_every_element(specs: tuple[KernelSpec, ...]) -> tuple[KernelSpec, ...]:
    """`specs` (fp16) followed by the same kernels for each other element."""
    return specs + tuple(replace(s, element=e) for e in ELEMENTS if e != "fp16" for s in specs)


# Hopper. Small m (decode, m <= 64): operands swapped so m lies on the tile's N side (16..64
# wide), with narrow ping-pong tiles for many CTAs and stream-K cooperative tiles that split K
# when the output has fewer tiles than the GPU has SMs (1x4096 out of 128x16 tiles: 32 tiles).
# Large m (prefill): the classic cooperative 128x128 / 128x256 / 256x128 tiles with 2-CTA
# clusters (TMA multicast halves L2 reads of the shared operand), ping-pong 64x128 / 128x128.
SM90_KERNELS = _in_every_element(
    (
        _sm90((64, 16, 128), "pingpong", swap=True),
        _sm90((64, 32, 128), "pingpong", swap=True),
        _sm90((64, 64, 128), "pingpong", swap=True),
        _sm90((128, 16, 128), "cooperative", swap=True),
        _sm90((128, 16, 128), "cooperative", "stream_k", swap=True),
        _sm90((128, 32, 128), "cooperative", "stream_k", swap=True),
        _sm90((128, 64, 64), "cooperative", "stream_k", swap=True),
        _sm90((64, 128, 64), "pingpong"),
        _sm90((128, 128, 64), "pingpong", cluster=(1, 2, 1)),
        _sm90((128, 128, 64), "cooperative"),
        _sm90((128, 128, 64), "cooperative", cluster=(2, 1, 1)),
        _sm90((128, 128, 64), "cooperative", "stream_k"),
        _sm90((128, 256, 64), "cooperative"),
        _sm90((128, 256, 64), "cooperative", cluster=(2, 1, 1)),
        _sm90((128, 256, 64), "cooperative", "stream_k"),
        _sm90((256, 128, 64), "cooperative", cluster=(1, 2, 1)),
    )
)


def _sm80(tile, stages, warps):
    return KernelSpec(80, tile, "multistage", "data_parallel", stages=stages, warps=warps)


# Ampere (also runs on sm_86 / sm_89): tiles and stage counts from CUTLASS's own SM80 16816
# generator list, from 64x64 for small m to 256x128 for prefill. Tiles run over m: CUTLASS 2.x
# epilogues write row-major only, so the swapped form of the SM90 set does not exist here.
SM80_KERNELS = _in_every_element(
    (
        _sm80((64, 64, 64), 5, (2, 2, 1)),
        _sm80((64, 128, 64), 3, (2, 2, 1)),
        _sm80((128, 64, 64), 3, (2, 2, 1)),
        _sm80((128, 128, 32), 5, (2, 2, 1)),
        _sm80((128, 128, 64), 4, (2, 2, 1)),
        _sm80((128, 256, 64), 3, (2, 4, 1)),
        _sm80((256, 128, 64), 3, (4, 2, 1)),
    )
)

KERNELS = {90: SM90_KERNELS, 80: SM80_KERNELS}


def build_arch(compute_capability: int) -> int | None:
    """The kernel set (90 or 80) for a GPU of this compute capability, or None."""
    return BUILD_ARCH_BY_CAPABILITY.get(compute_capability)


def kernels_for(arch: int, elements: Sequence[str] = ELEMENTS) -> tuple[KernelSpec, ...]:
    """The curated kernels of build arch 90 or 80 for the given elements (default all)."""
    if arch not in KERNELS:
        raise InvalidInputError(f"no CUTLASS kernel set for sm{arch}; choose 90 or 80")
    unknown = [element for element in elements if element not in ELEMENTS]
    if unknown:
        raise InvalidInputError(f"no CUTLASS kernels of {unknown}; choose {' or '.join(ELEMENTS)}")
    return tuple(spec for spec in KERNELS[arch] if spec.element in elements)


def spec_by_name(name: str) -> KernelSpec:
    """The curated kernel called `name`."""
    for specs in KERNELS.values():
        for spec in specs:
            if spec.name == name:
                return spec
    raise InvalidInputError(f"unknown CUTLASS kernel {name!r}")


# ---------------------------------------------------------------------------------------------
# Code generation (needs nvidia-cutlass)


def cutlass_version() -> str | None:
    """The installed nvidia-cutlass version, or None."""
    try:
        return importlib.metadata.version("nvidia-cutlass")
    except importlib.metadata.PackageNotFoundError:
        return None


def cutlass_include_dirs() -> list[Path]:
    """CUTLASS's C++ headers as shipped inside the nvidia-cutlass wheel."""
    found = importlib.util.find_spec("cutlass_library")
    if found is None or not found.submodule_search_locations:
        raise InvalidInputError("nvidia-cutlass is not installed (pip install nvidia-cutlass)")
    source = Path(next(iter(found.submodule_search_locations))) / "source"
    return [source / "include", source / "tools" / "util" / "include"]


def cutlass_operation(spec: KernelSpec) -> Any:
    """The `cutlass_library` GemmOperation that `spec` describes."""
    from cutlass_library import library

    return _sm90_operation(spec, library) if spec.arch >= 90 else _sm80_operation(spec, library)


def _sm90_operation(spec: KernelSpec, lib: Any) -> Any:
    from cutlass_library.gemm_operation import GemmOperation

    element, f32 = getattr(lib.DataType, dtype_info(spec.element).code), lib.DataType.f32
    output_layout = lib.LayoutType.ColumnMajor if spec.swap_operands else lib.LayoutType.RowMajor
    a = lib.TensorDescription(element, lib.LayoutType.RowMajor, spec.alignment)
    b = lib.TensorDescription(element, lib.LayoutType.ColumnMajor, spec.alignment)
    # C is void: beta is always 0, so the epilogue never reads a source tensor.
    c = lib.TensorDescription(lib.DataType.void, output_layout, spec.alignment)
    d = lib.TensorDescription(element, output_layout, spec.alignment)
    math = lib.MathInstruction(
        [64, spec.tile[1], 16], element, element, f32, lib.OpcodeClass.TensorOp,
        lib.MathOperation.multiply_add,
    )  # fmt: skip
    tile = lib.TileDescription(
        list(spec.tile), spec.stages, list(spec.warps), math, 90, 90, list(spec.cluster)
    )
    kernel_schedule, epilogue_schedule = {
        "pingpong": (
            lib.KernelScheduleType.TmaWarpSpecializedPingpong,
            lib.EpilogueScheduleType.TmaWarpSpecialized,
        ),
        "cooperative": (
            lib.KernelScheduleType.TmaWarpSpecializedCooperative,
            lib.EpilogueScheduleType.TmaWarpSpecializedCooperative,
        ),
    }[spec.schedule]
    tile_scheduler = {
        "persistent": lib.TileSchedulerType.Default,
        "stream_k": lib.TileSchedulerType.StreamK,
    }[spec.tile_scheduler]
    return GemmOperation(
        lib.GemmKind.Universal3x, 90, tile, a, b, c, f32, D=d, kernel_schedule=kernel_schedule,
        epilogue_schedule=epilogue_schedule, tile_scheduler=tile_scheduler,
    )  # fmt: skip


def _sm80_operation(spec: KernelSpec, lib: Any) -> Any:
    # CUTLASS 2.x library operations have a column-major output, so this one is C^T[n, m] =
    # B[n, k] @ A[m, k]^T (B RowMajor, A ColumnMajor in that product). The emitter transposes it
    # back into a row-major kernel whose tiles run over (m, n); GemmUniversalAdapter swaps the
    # arguments to match, and the entry template passes them in the transposed problem's terms.
    from cutlass_library.gemm_operation import GemmOperation

    element, f32 = getattr(lib.DataType, dtype_info(spec.element).code), lib.DataType.f32
    math = lib.MathInstruction(
        [16, 8, 16], element, element, f32, lib.OpcodeClass.TensorOp, lib.MathOperation.multiply_add
    )
    tile = lib.TileDescription(list(spec.tile), spec.stages, list(spec.warps), math, 80, 1024)
    b_first = lib.TensorDescription(element, lib.LayoutType.RowMajor, spec.alignment)
    a_second = lib.TensorDescription(element, lib.LayoutType.ColumnMajor, spec.alignment)
    c_transposed = lib.TensorDescription(element, lib.LayoutType.ColumnMajor, spec.alignment)
    return GemmOperation(lib.GemmKind.Universal, 80, tile, b_first, a_second, c_transposed, f32)


def emit_source(spec: KernelSpec) -> str:
    """The complete .cu file of one kernel: the emitted CUTLASS type inside the entry template."""
    from cutlass_library.gemm_operation import (
        EmitGemmUniversal3xInstance,
        EmitGemmUniversalInstance,
    )

    operation = cutlass_operation(spec)
    emitter = EmitGemmUniversal3xInstance() if spec.arch >= 90 else EmitGemmUniversalInstance()
    template = string.Template((TEMPLATE_DIR / TEMPLATES[spec.arch]).read_text())
    return template.substitute(
        kernel=spec.name,
        cutlass_version=cutlass_version(),
        instance=emitter.emit(operation),
        operation_name=operation.procedural_name(),
        swap_operands="true" if spec.swap_operands else "false",
        cc_major=spec.arch // 10,
    )


# ---------------------------------------------------------------------------------------------
# Build


@dataclass(frozen=True)
class BuildResult:
    """One kernel's build: its library, or the error that stopped it (see its .log)."""

    kernel: str
    library: Path | None
    error: str | None = None
    compile_s: float = 0.0  # for a cached kernel, the time recorded when it was built
    cached: bool = False


def cache_root() -> Path:
    """Where built CUTLASS libraries live (see the module docstring)."""
    return default_cache_dir() / "cutlass"


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME or /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


@functools.cache
def nvcc_version(nvcc: str) -> str:
    """The output of `nvcc --version`."""
    return subprocess.run(
        [nvcc, "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def nvcc_flags(arch: int) -> list[str]:
    """Every nvcc flag of a kernel build for `arch`, include paths excepted."""
    return [*NVCC_FLAGS, *ARCH_FLAGS[arch]]


def toolchain_key(arch: int, nvcc: str) -> str:
    """Hash of the nvcc version, the flags and the entry template: the cache folder's suffix."""
    digest = hashlib.sha256()
    for part in (nvcc_version(nvcc), " ".join(nvcc_flags(arch)), TEMPLATES[arch]):
        digest.update(part.encode())
    digest.update((TEMPLATE_DIR / TEMPLATES[arch]).read_bytes())
    return digest.hexdigest()[:12]


def kernel_dir(arch: int, root: Path | None = None) -> Path | None:
    """The cache folder to load `arch` kernels from: this nvcc's, else the newest one built.

    Any build of the right architecture runs, so a machine with another nvcc, or none, uses what
    was built elsewhere until `build_kernels` fills this nvcc's own folder.
    """
    root = root or cache_root()
    nvcc = find_nvcc()
    if nvcc is not None:
        current = root / f"sm{arch}-{toolchain_key(arch, nvcc)}"
        if current.is_dir():
            return current
    built = sorted(root.glob(f"sm{arch}-*"), key=lambda path: path.stat().st_mtime)
    return built[-1] if built else None


def built_library(spec: KernelSpec, root: Path | None = None) -> Path | None:
    """The cached library of `spec`, if it was built (its build record is written last)."""
    directory = kernel_dir(spec.arch, root)
    if directory is None:
        return None
    library = directory / f"{spec.name}.so"
    return library if (directory / f"{spec.name}.json").is_file() else None


def _current_record(record_path: Path) -> dict[str, Any] | None:
    """A kernel's build record if it was made with the installed nvidia-cutlass (or, where
    nvidia-cutlass is not installed and nothing could be rebuilt, with any version), else None."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    installed = cutlass_version()
    return record if installed is None or record.get("cutlass") == installed else None


def _first_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["nvcc failed without output"])[0][:300]


def _compile(spec: KernelSpec, directory: Path, nvcc: str) -> tuple[list[str], str, str | None]:
    """Emit and compile one kernel to a private file: (command, nvcc output, failure or None)."""
    source = directory / f"{spec.name}.cu"
    partial = directory / f".{spec.name}.{os.getpid()}.so"
    command: list[str] = []
    try:
        source.write_text(emit_source(spec))
        includes = [f"-I{path}" for path in cutlass_include_dirs()]
        command = [nvcc, *nvcc_flags(spec.arch), *includes, "-o", str(partial), str(source)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        return command, str(exc.stderr or ""), f"nvcc ran past {COMPILE_TIMEOUT_S} s"
    except Exception as exc:  # emitting or starting nvcc failed: skip this kernel, keep going
        return command, repr(exc), f"{type(exc).__name__}: {exc}"
    output = done.stdout + done.stderr
    return command, output, None if done.returncode == 0 else _first_error(output)


def _build_one(spec: KernelSpec, directory: Path, nvcc: str) -> BuildResult:
    """Build one kernel unless cached; a failure is logged and returned, never raised."""
    library = directory / f"{spec.name}.so"
    record_path = directory / f"{spec.name}.json"
    log_path = directory / f"{spec.name}.log"
    record = _current_record(record_path)
    if library.is_file() and record is not None:
        return BuildResult(spec.name, library, compile_s=record["compile_s"], cached=True)
    start = time.perf_counter()
    command, output, failure = _compile(spec, directory, nvcc)
    compile_s = time.perf_counter() - start
    if failure is not None:
        record_path.unlink(missing_ok=True)
        log_path.write_text(" ".join(command) + "\n\n" + output)
        _LOGGER.warning("CUTLASS %s did not build: %s (see %s)", spec.name, failure, log_path)
        error = f"{failure} (log: {log_path})"
        return BuildResult(spec.name, None, error=error, compile_s=compile_s)
    os.replace(directory / f".{spec.name}.{os.getpid()}.so", library)
    log_path.unlink(missing_ok=True)
    record = {
        "kernel": spec.name,
        "config": spec.config(),
        "nvcc": nvcc_version(nvcc).strip().splitlines()[-1],
        "cutlass": cutlass_version(),
        "compile_s": round(compile_s, 2),
        "library_bytes": library.stat().st_size,
        "command": command,
    }
    write_json_atomic(record_path, record)
    return BuildResult(spec.name, library, compile_s=compile_s)


def build_kernels(
    names: Sequence[str],
    arch: int,
    jobs: int | None = None,
    *,
    root: Path | None = None,
    progress: Any | None = None,
) -> dict[str, BuildResult]:
    """Build the named kernels of `arch` into the cache, `jobs` nvcc processes at a time.

    Cached kernels are reused. A kernel that fails to compile is skipped and logged (nvcc's
    output stays in <kernel>.log beside it); the others still build. `progress` is a rich
    Progress to report on; `root` is the CUTLASS cache folder (default `cache_root()`). Needs nvcc
    and nvidia-cutlass (InvalidInputError names the missing one).
    """
    specs = [spec_by_name(name) for name in names]
    if any(spec.arch != arch for spec in specs):
        raise InvalidInputError(f"build_kernels(arch={arch}) was given kernels of another arch")
    nvcc = find_nvcc()
    if nvcc is None:
        raise InvalidInputError("nvcc was not found (put the CUDA toolkit's bin on PATH)")
    directory = (root or cache_root()) / f"sm{arch}-{toolchain_key(arch, nvcc)}"
    directory.mkdir(parents=True, exist_ok=True)
    if any(not (directory / f"{spec.name}.so").is_file() for spec in specs):
        cutlass_include_dirs()  # something must be compiled: the headers must be there
    task = None
    if progress is not None:
        task = progress.add_task(f"CUTLASS sm{arch} kernels", total=len(specs))
    results: dict[str, BuildResult] = {}
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = [pool.submit(_build_one, spec, directory, nvcc) for spec in specs]
        for future in futures:
            result = future.result()
            results[result.kernel] = result
            if progress is not None:
                progress.advance(task)
    return results


# ---------------------------------------------------------------------------------------------
# Load


class KernelLibrary:
    """One built kernel, loaded with ctypes."""

    def __init__(self, path: Path):
        library = ctypes.CDLL(str(path))
        integer, size, pointer = ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p
        library.ftb_can_implement.argtypes = [integer, integer, integer]
        library.ftb_can_implement.restype = integer
        library.ftb_workspace.argtypes = [integer, integer, integer]
        library.ftb_workspace.restype = size
        library.ftb_run.argtypes = [integer] * 3 + [pointer] * 4 + [size, pointer]
        library.ftb_run.restype = integer
        library.ftb_status_string.argtypes = [integer]
        library.ftb_status_string.restype = ctypes.c_char_p
        self.path = path
        self.run = library.ftb_run
        self._library = library

    def can_implement(self, m: int, n: int, k: int) -> bool:
        """Whether the kernel can compute an m x n x k problem on the current device."""
        return bool(self._library.ftb_can_implement(m, n, k))

    def workspace_bytes(self, m: int, n: int, k: int) -> int:
        """Device workspace the problem needs."""
        return int(self._library.ftb_workspace(m, n, k))

    def status_string(self, status: int) -> str:
        """CUTLASS's text for a status returned by `run`."""
        return self._library.ftb_status_string(status).decode()


@functools.cache
def load_library(path: Path) -> KernelLibrary:
    """The library at `path`, loaded once per process."""
    return KernelLibrary(path)
