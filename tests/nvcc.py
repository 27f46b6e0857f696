"""Compile a CUDA file with nvcc for the CPU tests of kernel sources (no GPU needed)."""

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(
    NVCC is None, reason="nvcc is not on PATH (install the CUDA toolkit)"
)


def compile_object(source: Path, out_dir: Path, arch: str, *options: str) -> str:
    """Compile `source` for `arch` to an object in `out_dir`, assert success, return nvcc's
    stderr (ptxas's per-kernel report with "-Xptxas", "-v")."""
    done = subprocess.run(
        [NVCC, "-c", f"-arch={arch}", "-std=c++17", *options, str(source),
         "-o", str(out_dir / f"{source.stem}.o")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def assert_compiles_without_spills(
    source: Path, kernel_names: Callable[[str], list[str]], out_dir: Path, arch: str
) -> None:
    """Compile, for `arch` and with every warning an error, each template instance a launcher
    can ask for (`kernel_names(dtype)` of float16 and bfloat16) from `source`; none may spill."""
    names = sorted(set(kernel_names("float16") + kernel_names("bfloat16")))
    instances = out_dir / "instances.cu"
    # Taking a kernel's address instantiates it, without spelling out its signature.
    instances.write_text(
        f'#include "{source}"\nvoid* instances[] = {{\n'
        + "".join(f"    (void*)&{name},\n" for name in names)
        + "};\n"
    )
    report = compile_object(instances, out_dir, arch, "-Xptxas", "-v", "-Werror", "all-warnings")
    reports = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert len(reports) == len(names)
    assert all(spills == ("0", "0") for spills in reports), report
