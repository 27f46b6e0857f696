"""The one dtype table (`ftbench.dtypes`): every spelling of a format from one row."""

import numpy as np
import pytest

from ftbench.dtypes import DTYPES, array_dtype, c_types, dtype_info, numpy_dtype
from ftbench.errors import InvalidInputError
from ftbench.gemm.problem import GemmProblem


def test_numpy_dtype_reads_ftbench_names_and_numpy_dtypes():
    assert numpy_dtype("fp16") == np.float16 and numpy_dtype(np.float64) == np.float64
    with pytest.raises(InvalidInputError, match="unknown dtype"):
        numpy_dtype("fp7")


def test_bf16_arrays_use_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert numpy_dtype("bf16") == np.dtype(ml_dtypes.bfloat16)
    assert array_dtype(np.zeros(2, ml_dtypes.bfloat16)) == "bf16"


def test_every_row_names_its_numpy_dtype_and_size():
    for name, row in DTYPES.items():
        if name not in ("bf16", "fp8"):
            assert numpy_dtype(name).itemsize == row.bytes
            assert array_dtype(np.zeros(1, row.numpy_name)) == name


def test_cuda_data_types_are_the_headers_values():
    # library_types.h: CUDA_R_16F = 2, CUDA_R_16BF = 14, CUDA_R_32F = 0, CUDA_R_64F = 1,
    # CUDA_R_8F_E4M3 = 28, CUDA_R_8I = 3.
    assert {name: row.cuda_data_type for name, row in DTYPES.items()} == {
        "fp16": 2, "bf16": 14, "fp32": 0, "fp64": 1, "fp8": 28, "int8": 3,
    }  # fmt: skip


def test_fp8_arrays_use_ml_dtypes_e4m3():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert numpy_dtype("fp8") == np.dtype(ml_dtypes.float8_e4m3fn)
    assert array_dtype(np.zeros(2, ml_dtypes.float8_e4m3fn)) == "fp8"
    assert float(np.array(448.0, np.float32).astype(ml_dtypes.float8_e4m3fn)) == 448.0  # E4M3 max


def test_kernel_template_types_come_from_the_table():
    assert c_types("fp16", "bf16") == {"float16": "__half", "bfloat16": "__nv_bfloat16"}


def test_problem_keys_use_the_table_codes():
    problem = GemmProblem(1, 8, 4, a_dtype="bf16", b_dtype="bf16", c_dtype="bf16")
    assert problem.key().startswith("gemm:bf16bf16bf16:f32:NT:")


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(InvalidInputError, match="fp16, bf16, fp32, fp64, fp8, int8"):
        dtype_info("int4")


def test_an_array_of_a_foreign_type_is_refused():
    with pytest.raises(InvalidInputError, match="int32"):
        array_dtype(np.zeros(1, np.int32))
