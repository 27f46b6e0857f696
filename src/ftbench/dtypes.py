"""The one dtype table: every name, size, CUDA enum and library spelling of a number format.

ftbench names formats "fp16", "bf16", "fp32", "fp64", and the 8-bit "fp8" (E4M3, the format
Hopper's FP8 tensor cores read and FP8 checkpoints store) and "int8" (the workload's and the tuned
cache's names). Each row says how the others spell it: NumPy/CuPy and torch ("float16",
"bfloat16", "float8_e4m3fn"), CUDA C ("__half"), cudaDataType_t (CUDA_R_16F = 2), the short code
of problem keys and CUTLASS (`DataType.f16`), and the relative error a GEMM with that output format
may have against an fp32 reference. Modules look a format up here instead of keeping their own
dictionaries; what a kernel *supports* is the kernel's business and stays with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftbench.errors import InvalidInputError


@dataclass(frozen=True)
class DType:
    """One number format and its spelling in every library ftbench talks to."""

    name: str  # ftbench's name: "fp16"
    bytes: int
    cuda_data_type: int  # cudaDataType_t (library_types.h)
    c_type: str  # CUDA C type of kernel templates
    code: str  # short code of GEMM problem keys, and CUTLASS's DataType member
    numpy_name: str  # NumPy / CuPy dtype name (bf16 and fp8: ml_dtypes' types)
    torch_name: str  # attribute of the torch module
    # Largest relative (Frobenius) error of a GEMM with this output format against the
    # fp32-accumulated reference: a few units of its rounding (fp16 2^-11, bf16 2^-8, E4M3 2^-4;
    # int8: one quantisation step of a full-range tensor, 1/127).
    gemm_tolerance: float


DTYPES: dict[str, DType] = {
    row.name: row
    for row in (
        DType("fp16", 2, 2, "__half", "f16", "float16", "float16", 2e-3),
        DType("bf16", 2, 14, "__nv_bfloat16", "bf16", "bfloat16", "bfloat16", 1.6e-2),
        DType("fp32", 4, 0, "float", "f32", "float32", "float32", 1e-5),
        DType("fp64", 8, 1, "double", "f64", "float64", "float64", 1e-12),
        DType("fp8", 1, 28, "__nv_fp8_e4m3", "e4m3", "float8_e4m3fn", "float8_e4m3fn", 1.25e-1),
        DType("int8", 1, 3, "int8_t", "s8", "int8", "int8", 7.9e-3),
    )
}
# The formats the GPU runtime computes in (and that `ftbench tune` / `ftbench run` accept).
RUNTIME_DTYPES = ("fp16", "bf16")
# The 8-bit formats: weights (and, for fp8, activations) stored in them are read with a scale.
EIGHT_BIT_DTYPES = ("fp8", "int8")
# NumPy names that only ml_dtypes provides.
ML_DTYPES_NAMES = ("bfloat16", "float8_e4m3fn")
# ftbench's name of each NumPy name: {"float16": "fp16", ...}
DTYPE_OF_NUMPY = {row.numpy_name: row.name for row in DTYPES.values()}


def dtype_info(name: str) -> DType:
    """The row of ftbench's format `name`; an unknown name is an InvalidInputError."""
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}"
        ) from None


def numpy_name(array_or_dtype: Any) -> str:
    """The NumPy name of an array's (or a dtype's) element type: "float16", "bfloat16", ...

    CuPy reports ml_dtypes' bfloat16 as a 2-byte void ("|V2") and float8_e4m3fn as a 1-byte one
    ("|V1"), read here as those.
    """
    name = str(getattr(array_or_dtype, "dtype", array_or_dtype))
    return {"|V2": "bfloat16", "|V1": "float8_e4m3fn"}.get(name, name)


def array_dtype(array_or_dtype: Any) -> str:
    """ftbench's name of a NumPy/CuPy array's (or dtype's) format: float16 -> "fp16"."""
    name = numpy_name(array_or_dtype)
    if name not in DTYPE_OF_NUMPY:
        raise InvalidInputError(
            f"arrays of {name} are not one of ftbench's formats ({', '.join(DTYPES)})"
        )
    return DTYPE_OF_NUMPY[name]


def numpy_dtype(dtype: Any) -> Any:
    """A NumPy dtype from ftbench's names ("fp16", "bf16", "fp8", ...) or any NumPy dtype.

    NumPy has no bfloat16 or float8 of its own: "bf16" and "fp8" need the ml_dtypes package.
    """
    import numpy as np

    name = DTYPES[dtype].numpy_name if isinstance(dtype, str) and dtype in DTYPES else dtype
    if name in ML_DTYPES_NAMES:
        try:
            import ml_dtypes
        except ImportError:
            raise InvalidInputError(
                f"{name} NumPy arrays need the ml_dtypes package (pip install ml_dtypes)"
            ) from None
        return np.dtype(getattr(ml_dtypes, name))
    try:
        return np.dtype(name)
    except TypeError:
        raise InvalidInputError(
            f"unknown dtype {dtype!r}; use {', '.join(DTYPES)} or a NumPy dtype"
        ) from None


def torch_dtype(name: str) -> Any:
    """The torch dtype of ftbench's format `name` (imports torch)."""
    import torch

    return getattr(torch, dtype_info(name).torch_name)


def c_types(*names: str) -> dict[str, str]:
    """{NumPy name: CUDA C type} of ftbench's formats `names`: a kernel's template types."""
    return {dtype_info(name).numpy_name: dtype_info(name).c_type for name in names}
