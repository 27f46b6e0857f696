"""Every CUDA source under kernels/cuda compiles with nvcc for Ampere and Hopper."""

import shutil
import subprocess
from pathlib import Path

import pytest

import ftbench.kernels

SOURCES = sorted((Path(ftbench.kernels.__file__).parent / "cuda").glob("*.cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_source_compiles(source, arch, tmp_path):
    done = subprocess.run(
        ["nvcc", "-c", "-std=c++17", f"-arch={arch}", "-o", str(tmp_path / "k.o"), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
