"""Run-time compilation of the project's CUDA sources (kernels/cuda/*.cu) with NVRTC.

`load(source, names)` compiles, for the current device, the kernels `names` of one `.cu` file in
a single NVRTC run (CuPy `RawModule`; CuPy also keeps compiled binaries on disk, so a second
process does not compile again) and returns them as `cupy.RawKernel`-style functions. A name with
template arguments ("ftb_norm<__half, 4>") is a name expression. Loaded functions are kept per
(device, source, name), so later calls cost a dictionary lookup.

Compiling cannot happen inside CUDA-graph capture: load kernels before capturing.

`launch` starts a loaded kernel on CuPy's current stream. Inside CUDA-graph capture on compute
capability 9.0 or newer it uses programmatic dependent launch (PDL, through the driver's
cuLaunchKernelEx): the kernel's blocks start while the previous kernel drains, and wait for it
first thing (`ftb_pdl::begin` in cuda/ftb_pdl.cuh, which every kernel of kernels/cuda calls
before it touches memory another kernel wrote), so graphs of many small kernels lose less time
between them. FTBENCH_PDL=0 turns it off.

Sources may `#include "ftb_pdl.cuh"` (a header of kernels/cuda): it is inlined into the code
before NVRTC sees it, so CuPy's on-disk cache, keyed by the code, follows header changes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.errors import GpuError, InvalidInputError
from ftbench.files import default_cache_dir, write_bytes_atomic, write_text_atomic

CUDA_DIR = Path(__file__).parent / "cuda"
NVRTC_OPTIONS = ("--std=c++17",)

# Loaded functions per (device id, source path, arch-specific, name); their modules stay referenced.
_functions: dict[tuple[int, str, bool, str], Any] = {}
_modules: list[Any] = []


def load(
    source: str | Path, names: Iterable[str], *, arch_specific: bool = False
) -> dict[str, Any]:
    """The functions `names` of `source` (a path, or a file name in kernels/cuda/) on the
    current device, compiled in one NVRTC run if any is not loaded yet.

    arch_specific=True compiles for the device's architecture-specific target (sm_90a: wgmma,
    setmaxnreg), which CuPy's RawModule cannot ask for: NVRTC is called directly and the
    binary kept in ftbench's cache directory (`arch_specific_binary`).
    """
    import cupy

    path = Path(source) if Path(source).is_absolute() else CUDA_DIR / source
    device = cupy.cuda.Device().id
    names = list(dict.fromkeys(names))
    key = (device, str(path), arch_specific)
    missing = [name for name in names if (*key, name) not in _functions]
    if missing:
        _refuse_in_capture(path, missing)
        if arch_specific:
            _load_arch_specific(path, missing, device)
        else:
            _compile(path, missing, device)
    return {name: _functions[(*key, name)] for name in names}


def compile_seconds(
    source: str | Path, names: Iterable[str], *, arch_specific: bool = False
) -> float:
    """Load `names` (see `load`) and return the seconds it took (0 when all were loaded)."""
    start = time.perf_counter()
    load(source, names, arch_specific=arch_specific)
    return time.perf_counter() - start


def _refuse_in_capture(path: Path, names: list[str]) -> None:
    import cupy

    if cupy.cuda.get_current_stream().is_capturing():
        raise GpuError(
            f"{path.name}: kernels must be compiled before CUDA-graph capture (missing: "
            f"{', '.join(names)}); run the operation once, or prepare it, before capturing"
        )


def _compile(path: Path, names: list[str], device: int) -> None:
    import cupy

    templates = [name for name in names if "<" in name]
    try:
        module = cupy.RawModule(
            code=source_code(path), options=NVRTC_OPTIONS, name_expressions=templates or None
        )
        functions = {name: module.get_function(name) for name in names}
    except cupy.cuda.compiler.CompileException as exc:
        raise GpuError(f"NVRTC could not compile {path.name}: {exc}") from exc
    _modules.append(module)
    for name, function in functions.items():
        _functions[(device, str(path), False, name)] = function


def arch_specific_binary(code: str, name: str, capability: int) -> tuple[bytes, str]:
    """(cubin, lowered name) of kernel `name` of `code` compiled by NVRTC for sm_<capability>a,
    from the disk cache ($FTBENCH_CACHE_DIR/nvrtc, keyed by code, name, options and NVRTC
    version) or compiled and stored there. One kernel per binary, so that any set of kernels is
    compiled once on a machine."""
    from cupy._core.core import assemble_cupy_compiler_options
    from cupy_backends.cuda.libs import nvrtc as library

    options = [*NVRTC_OPTIONS, f"-arch=sm_{capability}a"]
    key = "\0".join([code, name, *options, str(library.getVersion())])
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    directory = default_cache_dir() / "nvrtc"
    binary, lowered_path = directory / f"{digest}.cubin", directory / f"{digest}.name"
    try:
        lowered = lowered_path.read_text()
        return binary.read_bytes(), lowered
    except OSError:
        pass
    program = library.createProgram(code, "ftbench.cu", [], [])
    try:
        library.addNameExpression(program, name)
        try:
            # CuPy's include paths (the CUDA headers: cuda_fp16.h and the like).
            library.compileProgram(program, list(assemble_cupy_compiler_options(tuple(options))))
        except library.NVRTCError as exc:
            log = library.getProgramLog(program)
            raise GpuError(f"NVRTC could not compile {name} for sm_{capability}a: {log}") from exc
        cubin, lowered = library.getCUBIN(program), library.getLoweredName(program, name)
    finally:
        library.destroyProgram(program)
    write_bytes_atomic(binary, cubin)
    write_text_atomic(lowered_path, lowered)  # written last: marks the binary complete
    return cubin, lowered


def _load_arch_specific(path: Path, names: list[str], device: int) -> None:
    import cupy

    code, capability = source_code(path), compute_capability(device)
    for name in names:
        cubin, lowered = arch_specific_binary(code, name, capability)
        module = cupy.cuda.function.Module()
        module.load(cubin)
        _modules.append(module)
        _functions[(device, str(path), True, name)] = module.get_function(lowered)


_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"[ \t]*$', re.MULTILINE)


def source_code(path: Path) -> str:
    """The text of `path` with the project's own headers (`#include "name"`) inlined."""
    return _INCLUDE.sub(lambda match: (path.parent / match.group(1)).read_text(), path.read_text())


# Driver-API launches (cuLaunchKernelEx), for launch attributes CuPy's launcher cannot pass.


class LaunchAttribute(ctypes.Structure):
    """CUlaunchAttribute: an id, padding to 8 bytes, a 64-byte value union."""

    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class LaunchConfig(ctypes.Structure):
    """CUlaunchConfig of the CUDA driver API."""

    _fields_ = [
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared_bytes", ctypes.c_uint),
        ("stream", ctypes.c_void_p),
        ("attributes", ctypes.POINTER(LaunchAttribute)),
        ("attribute_count", ctypes.c_uint),
    ]


CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4
CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
_SCALARS = {
    np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint32): ctypes.c_uint32,
    np.dtype(np.int64): ctypes.c_int64, np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
}  # fmt: skip


@functools.cache
def driver() -> ctypes.CDLL:
    """The CUDA driver library (libcuda), with cuLaunchKernelEx's signature set."""
    library = ctypes.CDLL("libcuda.so.1")
    library.cuLaunchKernelEx.argtypes = [
        ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_void_p,
    ]  # fmt: skip
    library.cuLaunchKernelEx.restype = ctypes.c_int
    return library


def _attribute(kind: int, values: Sequence[int]) -> LaunchAttribute:
    attribute = LaunchAttribute(id=kind)
    attribute.value[: len(values)] = list(values)
    return attribute


@functools.cache
def compute_capability(device_id: int) -> int:
    import cupy

    return int(cupy.cuda.Device(device_id).compute_capability)


def pdl_by_default() -> bool:
    """Whether `launch` uses PDL now: capturing a graph on compute capability 9.0 or newer,
    unless FTBENCH_PDL=0."""
    import cupy

    if os.environ.get("FTBENCH_PDL", "1") == "0":
        return False
    stream = cupy.cuda.get_current_stream()
    return stream.is_capturing() and compute_capability(cupy.cuda.Device().id) >= 90


def _argument(value: Any) -> Any:
    if isinstance(value, np.generic):
        return _SCALARS[value.dtype](value.item())
    if isinstance(value, ctypes.Structure):  # passed by value, e.g. a CUtensorMap
        return value
    pointer = getattr(getattr(value, "data", None), "ptr", None)
    if pointer is not None:  # a CuPy array
        return ctypes.c_void_p(pointer)
    raise InvalidInputError(f"kernel argument of type {type(value).__name__}: pass an array, a "
                            "NumPy scalar or a ctypes structure")  # fmt: skip


def _dims(values: Sequence[int]) -> list[int]:
    return [int(v) for v in values] + [1] * (3 - len(values))


def _handle(function: Any) -> int:
    """The CUfunction of a loaded function (a RawKernel's, or a Module function's)."""
    return getattr(function, "kernel", function).ptr


_shared_allowed: set[tuple[int, int]] = set()


def set_max_dynamic_shared(function: Any, nbytes: int) -> None:
    """Let `function` (from `load`) launch with `nbytes` of dynamic shared memory (above 48 KiB
    a kernel needs this once per function)."""
    key = (_handle(function), nbytes)
    if key in _shared_allowed:
        return
    status = driver().cuFuncSetAttribute(
        ctypes.c_void_p(key[0]),
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        ctypes.c_int(nbytes),
    )
    if status != 0:
        raise GpuError(
            f"cuFuncSetAttribute(max dynamic shared = {nbytes}) failed: CUresult {status}"
        )
    _shared_allowed.add(key)


def launch(
    function: Any, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], *,
    shared_mem: int = 0, pdl: bool | None = None, cluster: Sequence[int] | None = None,
) -> None:  # fmt: skip
    """Launch `function` (from `load`) on CuPy's current stream; args: CuPy arrays, NumPy
    scalars or ctypes structures (passed by value). pdl: None = `pdl_by_default()`; True needs
    compute capability 9.0 or newer. cluster: thread-block cluster dimensions (9.0 or newer)."""
    import cupy

    if pdl is None:
        pdl = pdl_by_default()
    cluster = _dims(cluster) if cluster is not None and math.prod(cluster) > 1 else None
    by_value = any(isinstance(value, ctypes.Structure) for value in args)
    if not (pdl or cluster or by_value):
        function(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)
        return
    if (pdl or cluster) and compute_capability(cupy.cuda.Device().id) < 90:
        raise InvalidInputError(
            "programmatic dependent launch and clusters need compute capability 9.0+"
        )
    attributes = []
    if pdl:
        attributes.append(_attribute(CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, [1]))
    if cluster:
        attributes.append(_attribute(CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, cluster))
    config = LaunchConfig()
    config.grid[:], config.block[:] = _dims(grid), _dims(block)
    config.shared_bytes = shared_mem
    config.stream = cupy.cuda.get_current_stream().ptr
    config.attributes = (LaunchAttribute * len(attributes))(*attributes) if attributes else None
    config.attribute_count = len(attributes)
    arguments = [_argument(value) for value in args]
    parameters = (ctypes.c_void_p * len(arguments))(
        *[ctypes.cast(ctypes.pointer(argument), ctypes.c_void_p) for argument in arguments]
    )
    status = driver().cuLaunchKernelEx(ctypes.byref(config), _handle(function), parameters, None)
    if status != 0:
        raise GpuError(f"cuLaunchKernelEx failed with CUresult {status} ({grid=}, {block=})")
