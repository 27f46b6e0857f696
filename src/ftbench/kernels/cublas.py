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

from ftbench.errors import InvalidInputError

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
def _workspace(device_id: int) -> tuple[Any, Any]:
    """(cublasSetWorkspace_v2, a 32 MiB buffer) for one device, made once.

    cuBLAS falls back to its own workspace pool after every cublasSetStream; a workspace we own
    keeps its kernels the same inside and outside CUDA-graph capture.
    """
    import cupy

    major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    set_workspace = ctypes.CDLL(f"libcublas.so.{major}").cublasSetWorkspace_v2
    set_workspace.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    set_workspace.restype = ctypes.c_int
    return set_workspace, cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)


def gemm_ex(x: Any, w: Any, y: Any, algo: int = CUBLAS_GEMM_DEFAULT) -> None:
    """Y = X @ W^T through cublasGemmEx on CuPy's current stream, fp32 accumulation.

    `algo` is a cublasGemmAlgo_t value (-1 default, 0..23, 99 tensor-op default, 100..115).
    Safe inside CUDA-graph capture: it allocates nothing and never synchronises.
    """
    import cupy
    from cupy_backends.cuda.libs import cublas

    m, n, k = check_linear_operands(x, w, y)
    data_type = CUDA_DATA_TYPES[_dtype_name(x)]
    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    set_workspace, workspace = _workspace(cupy.cuda.Device().id)
    status = set_workspace(handle, workspace.data.ptr, workspace.nbytes)
    if status != 0:
        raise RuntimeError(f"cublasSetWorkspace failed with status {status}")
    cublas.setPointerMode(handle, CUBLAS_POINTER_MODE_HOST)
    cublas.gemmEx(
        handle,
        CUBLAS_OP_T,
        CUBLAS_OP_N,
        n,
        m,
        k,
        _ONE.ctypes.data,
        w.data.ptr,
        data_type,
        k,
        x.data.ptr,
        data_type,
        k,
        _ZERO.ctypes.data,
        y.data.ptr,
        data_type,
        n,
        CUBLAS_COMPUTE_32F,
        algo,
    )
