"""The GEMV kernels' source and tuning space, without a GPU.

gemv.cu must build with nvcc for Ampere and Hopper, every template instance the tuner can pick
without spilling to local memory; the configs `gemv_configs` lists must all be runnable for their
shape; and the launcher must refuse what the kernels cannot do before touching a GPU.
"""

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.kernels.gemv import (
    C_TYPES,
    SOURCE_PATH,
    GemvConfig,
    config_error,
    gemv,
    gemv_configs,
    kernel_name,
    supports,
)
from ftbench.kernels.nvrtc import LaunchAttribute as _LaunchAttribute
from ftbench.kernels.nvrtc import LaunchConfig as _LaunchConfig
from nvcc import compile_object, needs_nvcc

GPTJ_SHAPES = [(4096, 4096), (12288, 4096), (16384, 4096), (4096, 16384), (50400, 4096)]
ODD_SHAPES = [(1, 8), (65, 136), (4096, 4104)]
C_COMPILER = shutil.which("cc") or shutil.which("gcc")
CUDA_INCLUDE = next(
    (
        include
        for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda")
        if root and (include := Path(root) / "include").joinpath("cuda.h").exists()
    ),
    None,
)


def instances(tokens, dtype):
    """The distinct kernel names `gemv_configs` can ask for, over all shapes tested here."""
    return sorted(
        {
            kernel_name(config, m, dtype)
            for m in tokens
            for n, k in GPTJ_SHAPES + ODD_SHAPES
            for config in gemv_configs(m, n, k)
        }
    )


def explicit_instantiations(names):
    lines = [f'#include "{SOURCE_PATH}"']
    for name in names:
        element = re.search(r"<(\w+),", name).group(1)
        lines.append(
            f"template __global__ void {name}(const {element}*, const {element}*, {element}*, "
            "float*, unsigned*, int, int, int);"
        )
    return "\n".join(lines) + "\n"


@needs_nvcc
@pytest.mark.parametrize(
    ("arch", "tokens", "dtype"),
    [("sm_90", (1, 16), "float16"), ("sm_90", (3,), "bfloat16"), ("sm_80", (2, 9), "bfloat16")],
)
def test_every_instance_compiles_without_spills(tmp_path, arch, tokens, dtype):
    names = instances(tokens, dtype)
    source = tmp_path / "instances.cu"
    source.write_text(explicit_instantiations(names))
    report = compile_object(source, tmp_path, arch, "-Xptxas", "-v")
    reports = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores", report)
    assert len(reports) == len(names) + 1  # and the read probe
    assert all(frame == "0" and spills == "0" for frame, spills in reports), report


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 16])
@pytest.mark.parametrize(("n", "k"), GPTJ_SHAPES + ODD_SHAPES)
def test_listed_configs_are_valid_distinct_and_not_too_many(m, n, k):
    configs = gemv_configs(m, n, k)
    assert 1 <= len(configs) <= 60
    assert len({config.name for config in configs}) == len(configs)
    assert all(config_error(config, m, n, k) is None for config in configs)


def test_fma_kernel_is_offered_only_for_small_m():
    assert any(config.kernel == "fma" for config in gemv_configs(4, 4096, 4096))
    assert all(config.kernel == "mma" for config in gemv_configs(5, 4096, 4096))


def test_small_weights_are_split_along_k_to_fill_the_gpu():
    assert max(config.split_k for config in gemv_configs(1, 4096, 16384)) > 1
    assert min(config.split_k for config in gemv_configs(1, 50400, 4096)) == 1


def test_config_round_trips_through_a_dict():
    config = GemvConfig("mma", rows=32, warps=8, unroll=2, row_bytes=128, split_k=3)
    assert GemvConfig.from_dict(config.to_dict()) == config
    assert config.name == "mma_r32_w8_u2_b128_s3"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kernel": "mma", "rows": 16, "warps": 4, "unroll": 2, "split_k": 1}, "exactly the keys"),
        (dict(kernel="wmma", rows=16, warps=4, unroll=2, row_bytes=64, split_k=1), "kernel"),
        (dict(kernel="mma", rows=8, warps=4, unroll=2, row_bytes=64, split_k=1), "rows"),
        (dict(kernel="mma", rows=64, warps=4, unroll=2, row_bytes=256, split_k=1), "W loads"),
        (dict(kernel="fma", rows=2, warps=4, unroll=2, row_bytes=128, split_k=1), "row_bytes"),
        (dict(kernel="fma", rows=2, warps=3, unroll=2, row_bytes=512, split_k=1), "warps"),
        (dict(kernel="fma", rows=2, warps=4, unroll=2, row_bytes=512, split_k="2"), "integers"),
    ],
)
def test_malformed_config_dicts_are_refused(data, message):
    with pytest.raises(InvalidInputError, match=message):
        GemvConfig.from_dict(data)


@pytest.mark.parametrize(
    ("m", "n", "k", "dtype", "message"),
    [
        (1, 4096, 4100, "float16", "multiple of 8"),
        (17, 4096, 4096, "float16", "1 to 16"),
        (0, 4096, 4096, "float16", "1 to 16"),
        (1, 4096, 4096, "float32", "dtype"),
    ],
)
def test_unsupported_problems_say_why(m, n, k, dtype, message):
    assert message in supports(m, n, k, dtype)


def test_supported_problems_have_no_reason():
    assert supports(1, 50400, 4096, "bfloat16") is None
    assert supports(16, 1, 8, "float16") is None


@pytest.mark.parametrize(
    ("config", "m", "n", "k", "message"),
    [
        (GemvConfig("fma", 2, 4, 2, 512), 5, 4096, 4096, "m <= 4"),
        (GemvConfig("mma", 16, 4, 2, 64, split_k=3), 1, 4096, 128, "pieces"),
        (GemvConfig("mma", 64, 16, 1, 64), 16, 4096, 4096, "shared memory"),
        (GemvConfig("mma", 16, 4, 2, 64, split_k=32), 16, 50400, 4096, "workspace"),
    ],
)
def test_configs_that_cannot_run_a_shape_say_why(config, m, n, k, message):
    assert message in config_error(config, m, n, k)


def test_kernel_name_is_the_template_instance():
    mma = GemvConfig("mma", rows=32, warps=8, unroll=2, row_bytes=256)
    assert kernel_name(mma, 7, "bfloat16") == "ftb_gemv_mma<__nv_bfloat16, 7, 32, 8, 4, 2>"
    fma = GemvConfig("fma", rows=2, warps=4, unroll=4, row_bytes=512)
    assert kernel_name(fma, 3, "float16") == "ftb_gemv_fma<__half, 3, 2, 4, 4>"
    assert set(C_TYPES) == {"float16", "bfloat16"}


@pytest.mark.parametrize(
    ("shapes", "config", "message"),
    [
        (((1, 12), (64, 12), (1, 64)), GemvConfig("mma", 16, 4, 2, 64), "multiple of 8"),
        (((5, 64), (64, 64), (5, 64)), GemvConfig("fma", 2, 4, 2, 512), "m <= 4"),
        (((1, 64), (64, 64), (64, 1)), GemvConfig("mma", 16, 4, 2, 64), "expected x"),
    ],
)
def test_launcher_refuses_bad_problems_before_using_the_gpu(shapes, config, message):
    x, w, y = (np.zeros(shape, np.float16) for shape in shapes)
    with pytest.raises(InvalidInputError, match=message):
        gemv(x, w, y, config)


@pytest.mark.skipif(
    C_COMPILER is None or CUDA_INCLUDE is None,
    reason="needs a C compiler and the CUDA toolkit's cuda.h",
)
def test_launch_structs_match_the_driver_abi(tmp_path):
    """The ctypes mirrors of CUlaunchConfig and CUlaunchAttribute have cuda.h's layout."""
    program = tmp_path / "layout.c"
    program.write_text(
        "#include <cuda.h>\n#include <stdio.h>\n#include <stddef.h>\n"
        'int main(void) { printf("%zu %zu %zu %zu %zu %zu", sizeof(CUlaunchConfig), '
        "offsetof(CUlaunchConfig, hStream), offsetof(CUlaunchConfig, attrs), "
        "offsetof(CUlaunchConfig, numAttrs), sizeof(CUlaunchAttribute), "
        "offsetof(CUlaunchAttribute, value)); return 0; }\n"
    )
    binary = tmp_path / "layout"
    subprocess.run([C_COMPILER, f"-I{CUDA_INCLUDE}", str(program), "-o", str(binary)], check=True)
    expected = [int(v) for v in subprocess.run([str(binary)], capture_output=True, text=True,
                                               check=True).stdout.split()]  # fmt: skip
    assert [
        ctypes.sizeof(_LaunchConfig), _LaunchConfig.stream.offset,
        _LaunchConfig.attributes.offset, _LaunchConfig.attribute_count.offset,
        ctypes.sizeof(_LaunchAttribute), _LaunchAttribute.value.offset,
    ] == expected  # fmt: skip
