"""Operands of the GEMM kernels' GPU tests: fresh random inputs, a NaN-poisoned output and a
float64 reference, so an unwritten element fails as surely as a wrong one."""

import numpy as np
from host_types import host_dtype


def operands(m, n, k, dtype):
    """Fresh random x, w on the device, a NaN-poisoned y, and the float64 reference x @ w.T."""
    import cupy

    rng = np.random.default_rng()
    element = host_dtype(dtype)
    x = rng.standard_normal((m, k), dtype=np.float32).astype(element)
    w = (rng.standard_normal((n, k), dtype=np.float32) * k**-0.5).astype(element)
    reference = x.astype(np.float64) @ w.astype(np.float64).T
    y = cupy.asarray(np.full((m, n), np.nan, dtype=element))
    return cupy.asarray(x), cupy.asarray(w), y, reference


def poison(y):
    """Fill y with NaN by a plain copy on the current stream (works for any dtype)."""
    import cupy

    nan = cupy.asarray(np.full(y.shape, np.nan, dtype=np.float16)).view(np.uint16)
    if str(y.dtype) == "bfloat16":
        nan[...] = 0x7FC0  # a bfloat16 quiet NaN
    y.data.copy_from_device_async(nan.data, y.nbytes)


def relative_error(y, reference):
    import cupy

    got = cupy.asnumpy(y).astype(np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.linalg.norm(got - reference) / np.linalg.norm(reference))
