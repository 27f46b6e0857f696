"""cuBLAS `cublasGemmEx` for the runtime's linear layers: Y[m, n] = X[m, k] @ W[n, k]^T.

Activations are row-major [tokens, features] and weights are stored [out_features,
in_features], as in torch's `F.linear`. In cuBLAS's column-major terms that is
C(n x m) = op(A) * op(B) with A = W transposed ("T") and B = X not transposed ("N").
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

from ftbench.errors import GpuError, InvalidInputError

# cudaDataType_t and cublasComputeType_t values from the CUDA headers.
CUDA_DATA_TYPES = {"float16": 2, "bfloat16": 14, "float32": 0}
CUBLAS_COMPUTE_32F = 68
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_POINTER_MODE_HOST = 0
CUBLAS_GEMM_DEFAULT = -1
WORKSPACE_BYTES = 32 * 2**20

_ONE = np.array(1.0, dtype=np.float32)
_ZERO = np.array(0.0, dtype=np.float32)


def _dtype_name(array: Any) -> str:
    name = str(array.dtype)
    return "bfloat16" if name in ("bfloat16", "|V2") else name


def check_linear_operands(x: Any, w: Any, y: Any) -> tuple[int, int, int]:
    """Check shapes, dtypes and layout of Y = X @ W^T; return (m, n, k)."""
    for label, array in (("x", x), ("w", w), ("y", y)):
        if array.ndim != 2:
            raise InvalidInputError(f"linear GEMM: {label} must be 2-D, got shape {array.shape}")
        if not array.flags.c_contiguous:
            raise InvalidInputError(f"linear GEMM: {label} must be C-contiguous (row-major)")
    m, k = x.shape
    n, k_w = w.shape
    if k_w != k or y.shape != (m, n):
        raise InvalidInputError(
            f"linear GEMM: expected x[m, k], w[n, k], y[m, n]; got x{tuple(x.shape)}, "
            f"w{tuple(w.shape)}, y{tuple(y.shape)}"
        )
    dtypes = {_dtype_name(a) for a in (x, w, y)}
    if len(dtypes) != 1 or not dtypes <= {"float16", "bfloat16"}:
        raise InvalidInputError(
            f"linear GEMM: x, w and y must all be float16 or all bfloat16, got {sorted(dtypes)}"
        )
    return m, n, k


@functools.cache
def _cublas() -> ctypes.CDLL:
    """libcublas through ctypes, with the signatures ftbench calls.

    CuPy's own cuBLAS wrappers refuse to run while a stream is being captured, so the calls
    that must work inside CUDA graphs go straight to the library CuPy already loaded.
    """
    import cupy

    major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    library = ctypes.CDLL(f"libcublas.so.{major}")
    handle, pointer, integer = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int
    signatures = {
        "cublasSetStream_v2": [handle, pointer],
        "cublasSetWorkspace_v2": [handle, pointer, ctypes.c_size_t],
        "cublasSetPointerMode_v2": [handle, integer],
        "cublasGemmEx": [handle, integer, integer, integer, integer, integer, pointer, pointer,
                         integer, integer, pointer, integer, integer, pointer, pointer, integer,
                         integer, integer, integer],
    }  # fmt: skip
    for name, argtypes in signatures.items():
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    return library


@functools.cache
def _workspace(device_id: int) -> Any:
    """A 32 MiB cuBLAS workspace per device, made once.

    cuBLAS falls back to its own workspace pool after every cublasSetStream; a workspace we own
    keeps its kernels the same inside and outside CUDA-graph capture.
    """
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)


def _check(status: int, call: str) -> None:
    if status != 0:
        raise GpuError(f"{call} failed with cuBLAS status {status}")


def gemm_ex(x: Any, w: Any, y: Any, algo: int = CUBLAS_GEMM_DEFAULT) -> None:
    """Y = X @ W^T through cublasGemmEx on CuPy's current stream, fp32 accumulation.

    `algo` is a cublasGemmAlgo_t value (-1 default, 0..23, 99 tensor-op default, 100..115).
    Safe inside CUDA-graph capture: it allocates nothing and never synchronises.
    """
    import cupy

    m, n, k = check_linear_operands(x, w, y)
    data_type = CUDA_DATA_TYPES[_dtype_name(x)]
    library = _cublas()
    handle = cupy.cuda.device.get_cublas_handle()
    workspace = _workspace(cupy.cuda.Device().id)
    _check(library.cublasSetStream_v2(handle, cupy.cuda.get_current_stream().ptr), "setStream")
    _check(
        library.cublasSetWorkspace_v2(handle, workspace.data.ptr, workspace.nbytes), "setWorkspace"
    )
    _check(library.cublasSetPointerMode_v2(handle, CUBLAS_POINTER_MODE_HOST), "setPointerMode")
    status = library.cublasGemmEx(
        handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k,
        _ONE.ctypes.data, w.data.ptr, data_type, k, x.data.ptr, data_type, k,
        _ZERO.ctypes.data, y.data.ptr, data_type, n, CUBLAS_COMPUTE_32F, algo,
    )  # fmt: skip
    _check(status, f"cublasGemmEx(m={m}, n={n}, k={k}, algo={algo})")
