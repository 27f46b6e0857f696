"""cuBLAS through ctypes: `cublasGemmEx` and `cublasGemmStridedBatchedEx` with column-major
arguments, safe inside CUDA-graph capture, and the operand check of a linear layer.

`GemmProblem.cublas_call` (in `gemm.problem`) turns a row-major problem into these arguments;
`gemm.backends.cublas` is the backend that runs problems through them.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from ftbench.dtypes import dtype_info, numpy_name
from ftbench.errors import GpuError, InvalidInputError
from ftbench.kernels.streams import scratch_slot

# cublasComputeType_t and cublasOperation_t values from the CUDA headers (data types: `dtypes`).
CUBLAS_COMPUTE_32F = 68
CUBLAS_OP = {"N": 0, "T": 1}
CUBLAS_POINTER_MODE_HOST = 0
CUBLAS_GEMM_DEFAULT = -1
WORKSPACE_BYTES = 32 * 2**20

_ONE = np.array(1.0, dtype=np.float32)
_ZERO = np.array(0.0, dtype=np.float32)


def check_linear_shapes(x: Any, w: Any, y: Any) -> tuple[int, int, int]:
    """Check that Y = X @ W^T has row-major 2-D operands x[m, k], w[n, k], y[m, n]; return
    (m, n, k)."""
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
    return m, n, k


def check_linear_operands(x: Any, w: Any, y: Any) -> tuple[int, int, int]:
    """Check shapes, dtypes and layout of Y = X @ W^T (all fp16 or all bf16); return (m, n, k)."""
    m, n, k = check_linear_shapes(x, w, y)
    dtypes = {numpy_name(a) for a in (x, w, y)}
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
    longlong = ctypes.c_longlong
    signatures = {
        "cublasSetStream_v2": [handle, pointer],
        "cublasSetWorkspace_v2": [handle, pointer, ctypes.c_size_t],
        "cublasSetPointerMode_v2": [handle, integer],
        "cublasGemmEx": [handle, integer, integer, integer, integer, integer, pointer, pointer,
                         integer, integer, pointer, integer, integer, pointer, pointer, integer,
                         integer, integer, integer],
        "cublasGemmStridedBatchedEx": [handle, integer, integer, integer, integer, integer,
                                       pointer, pointer, integer, integer, longlong, pointer,
                                       integer, integer, longlong, pointer, pointer, integer,
                                       integer, longlong, integer, integer, integer],
    }  # fmt: skip
    for name, argtypes in signatures.items():
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    return library


@functools.cache
def _workspace(device_id: int, slot: int) -> Any:
    """A 32 MiB cuBLAS workspace per device and scratch slot (`streams.scratch_slot`), made once.

    cuBLAS falls back to its own workspace pool after every cublasSetStream; a workspace we own
    keeps its kernels the same inside and outside CUDA-graph capture.
    """
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)


def _check(status: int, call: str) -> None:
    if status != 0:
        raise GpuError(f"{call} failed with cuBLAS status {status}")


def gemm_arguments(call: Mapping[str, Any], dtype: str) -> tuple:
    """The constant part of a cublasGemm(StridedBatched)Ex call: cuBLAS's column-major
    arguments `call` (`GemmProblem.cublas_call`) with the operands' data type."""
    return (
        CUBLAS_OP[call["transa"]], CUBLAS_OP[call["transb"]], call["m"], call["n"], call["k"],
        dtype_info(dtype).cuda_data_type, call["lda"], call["ldb"], call["ldc"],
        call["batch_count"], call["stride_a"], call["stride_b"], call["stride_c"],
    )  # fmt: skip


def gemm(arguments: tuple, a: Any, b: Any, c: Any, algo: int = CUBLAS_GEMM_DEFAULT) -> None:
    """C = op(A) @ op(B) through cuBLAS with fp32 accumulation, `arguments` from `gemm_arguments`.

    Runs on CuPy's current stream; batched calls use cublasGemmStridedBatchedEx. `algo` is a
    cublasGemmAlgo_t value (-1 default, 0..23, 99 tensor-op default, 100..115). Safe inside
    CUDA-graph capture: it allocates nothing and never synchronises. Operand shapes are the
    caller's contract (`gemm.operands.operand_shapes`); `gemm.backends.cublas.gemm_ex` checks them.
    """
    import cupy

    # cuBLAS's first operand is our B (the weight) and its second our A: the strides follow it.
    (
        transa,
        transb,
        m,
        n,
        k,
        data_type,
        lda,
        ldb,
        ldc,
        batch,
        first_stride,
        second_stride,
        c_stride,
    ) = arguments
    library = _cublas()
    handle = cupy.cuda.device.get_cublas_handle()
    stream = cupy.cuda.get_current_stream().ptr
    workspace = _workspace(cupy.cuda.Device().id, scratch_slot())
    _check(library.cublasSetStream_v2(handle, stream), "setStream")
    _check(
        library.cublasSetWorkspace_v2(handle, workspace.data.ptr, workspace.nbytes), "setWorkspace"
    )
    _check(library.cublasSetPointerMode_v2(handle, CUBLAS_POINTER_MODE_HOST), "setPointerMode")
    if batch == 1:
        status = library.cublasGemmEx(
            handle, transa, transb, m, n, k, _ONE.ctypes.data, b.data.ptr, data_type, lda,
            a.data.ptr, data_type, ldb, _ZERO.ctypes.data, c.data.ptr, data_type, ldc,
            CUBLAS_COMPUTE_32F, algo,
        )  # fmt: skip
    else:
        status = library.cublasGemmStridedBatchedEx(
            handle, transa, transb, m, n, k, _ONE.ctypes.data, b.data.ptr, data_type, lda,
            first_stride, a.data.ptr, data_type, ldb, second_stride, _ZERO.ctypes.data, c.data.ptr,
            data_type, ldc, c_stride, batch, CUBLAS_COMPUTE_32F, algo,
        )  # fmt: skip
    _check(status, f"cuBLAS GEMM m={m} n={n} k={k} batch={batch} (column-major) algo={algo}")
