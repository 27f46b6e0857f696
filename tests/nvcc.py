"""Compile a CUDA file with nvcc for the CPU tests of kernel sources (no GPU needed)."""

import shutil
import subprocess
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
