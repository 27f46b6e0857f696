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
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.errors import GpuError, InvalidInputError

CUDA_DIR = Path(__file__).parent / "cuda"
NVRTC_OPTIONS = ("--std=c++17",)

# Loaded functions per (device id, source path, name); their modules stay referenced.
_functions: dict[tuple[int, str, str], Any] = {}
_modules: list[Any] = []


def load(source: str | Path, names: Iterable[str]) -> dict[str, Any]:
    """The functions `names` of `source` (a path, or a file name in kernels/cuda/) on the
    current device, compiled in one NVRTC run if any is not loaded yet."""
    import cupy

    path = Path(source) if Path(source).is_absolute() else CUDA_DIR / source
    device = cupy.cuda.Device().id
    names = list(dict.fromkeys(names))
    missing = [name for name in names if (device, str(path), name) not in _functions]
    if missing:
        _compile(path, missing, device)
    return {name: _functions[(device, str(path), name)] for name in names}


def compile_seconds(source: str | Path, names: Iterable[str]) -> float:
    """Load `names` (see `load`) and return the seconds it took (0 when all were loaded)."""
    start = time.perf_counter()
    load(source, names)
    return time.perf_counter() - start


def _compile(path: Path, names: list[str], device: int) -> None:
    import cupy

    if cupy.cuda.get_current_stream().is_capturing():
        raise GpuError(
            f"{path.name}: kernels must be compiled before CUDA-graph capture (missing: "
            f"{', '.join(names)}); run the operation once, or prepare it, before capturing"
        )
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
        _functions[(device, str(path), name)] = function


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


CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6
_SCALARS = {
    np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint32): ctypes.c_uint32,
    np.dtype(np.int64): ctypes.c_int64, np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
}  # fmt: skip


@functools.cache
def _driver() -> ctypes.CDLL:
    library = ctypes.CDLL("libcuda.so.1")
    library.cuLaunchKernelEx.argtypes = [
        ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_void_p,
    ]  # fmt: skip
    library.cuLaunchKernelEx.restype = ctypes.c_int
    return library


@functools.cache
def _programmatic_attribute() -> LaunchAttribute:
    attribute = LaunchAttribute(id=CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
    attribute.value[0] = 1
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
    pointer = getattr(getattr(value, "data", None), "ptr", None)
    if pointer is not None:  # a CuPy array
        return ctypes.c_void_p(pointer)
    raise InvalidInputError(f"kernel argument of type {type(value).__name__}: pass an array or a "
                            "NumPy scalar")  # fmt: skip


def _dims(values: Sequence[int]) -> list[int]:
    return [int(v) for v in values] + [1] * (3 - len(values))


def launch(
    function: Any, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], *,
    shared_mem: int = 0, pdl: bool | None = None,
) -> None:  # fmt: skip
    """Launch `function` (from `load`) on CuPy's current stream; args: CuPy arrays or NumPy
    scalars. pdl: None = `pdl_by_default()`; True needs compute capability 9.0
    or newer."""
    import cupy

    if pdl is None:
        pdl = pdl_by_default()
    if not pdl:
        function(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)
        return
    if compute_capability(cupy.cuda.Device().id) < 90:
        raise InvalidInputError("programmatic dependent launch needs compute capability 9.0+")
    config = LaunchConfig()
    config.grid[:], config.block[:] = _dims(grid), _dims(block)
    config.shared_bytes = shared_mem
    config.stream = cupy.cuda.get_current_stream().ptr
    config.attributes = ctypes.pointer(_programmatic_attribute())
    config.attribute_count = 1
    arguments = [_argument(value) for value in args]
    parameters = (ctypes.c_void_p * len(arguments))(
        *[ctypes.cast(ctypes.pointer(argument), ctypes.c_void_p) for argument in arguments]
    )
    handle = getattr(function, "kernel", function).ptr  # a RawKernel's CUfunction
    status = _driver().cuLaunchKernelEx(ctypes.byref(config), handle, parameters, None)
    if status != 0:
        raise GpuError(f"cuLaunchKernelEx failed with CUresult {status} ({grid=}, {block=})")
