"""Every CUDA source under kernels/cuda compiles with nvcc for Ampere and Hopper."""

from pathlib import Path

import pytest

import ftbench.kernels
from nvcc import compile_object, needs_nvcc

SOURCES = sorted((Path(ftbench.kernels.__file__).parent / "cuda").glob("*.cu"))


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_source_compiles(source, arch, tmp_path):
    compile_object(source, tmp_path, arch)


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_every_kernel_waits_for_the_previous_grid_first(source):
    """Inside graphs on Hopper kernels are launched with PDL (kernels/nvrtc.py `launch`): each
    __global__ function must call ftb_pdl::begin() (first thing), or wait for the previous
    grid and later allow the next one (as the GEMVs do, after prefetching weights into L2 and
    after their loads), and NVRTC sees the header inlined."""
    import re

    from ftbench.kernels.nvrtc import source_code

    # each kernel: from `__global__` to the closing brace at the start of a line
    kernels = re.findall(r"__global__.*?\n}\n", source.read_text(), re.DOTALL)
    assert all(body.count("__global__") == 1 for body in kernels)
    launched = [body for body in kernels if "ftb_read_probe" not in body]  # never with PDL

    def waits_then_allows(body):
        if "  ftb_pdl::begin();\n" in body:
            return True
        wait = body.find("ftb_pdl::wait_for_previous_grid();")
        return 0 <= wait < body.find("ftb_pdl::allow_next_grid();")

    assert launched and all(waits_then_allows(body) for body in launched)
    inlined = source_code(source)
    assert '#include "ftb_pdl.cuh"' not in inlined and "namespace ftb_pdl" in inlined


def test_launch_arguments_become_the_driver_types():
    import ctypes

    import numpy as np

    from ftbench.errors import InvalidInputError
    from ftbench.kernels.nvrtc import _argument

    assert isinstance(_argument(np.int32(-3)), ctypes.c_int32)
    assert _argument(np.uint64(2**63)).value == 2**63
    assert isinstance(_argument(np.float32(0.5)), ctypes.c_float)
    assert isinstance(_argument(np.float64(0.5)), ctypes.c_double)
    with pytest.raises(InvalidInputError, match="NumPy scalar"):
        _argument(3)  # a Python int has no C type of its own
