"""Run-time compilation of the project's CUDA sources (kernels/cuda/*.cu) with NVRTC.

`load(source, names)` compiles, for the current device, the kernels `names` of one `.cu` file in
a single NVRTC run (CuPy `RawModule`; CuPy also keeps compiled binaries on disk, so a second
process does not compile again) and returns them as `cupy.RawKernel`-style functions. A name with
template arguments ("ftb_norm<__half, 4>") is a name expression. Loaded functions are kept per
(device, source, name), so later calls cost a dictionary lookup.

Compiling cannot happen inside CUDA-graph capture: load kernels before capturing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftbench.errors import GpuError

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
            code=path.read_text(), options=NVRTC_OPTIONS, name_expressions=templates or None
        )
        functions = {name: module.get_function(name) for name in names}
    except cupy.cuda.compiler.CompileException as exc:
        raise GpuError(f"NVRTC could not compile {path.name}: {exc}") from exc
    _modules.append(module)
    for name, function in functions.items():
        _functions[(device, str(path), name)] = function
