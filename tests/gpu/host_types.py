"""Host (NumPy) dtypes of the GPU tests' device arrays, bfloat16 included, and host values
rounded to them or copied to the device."""

import numpy as np
import pytest


def host_dtype(dtype):
    """The NumPy dtype for `dtype`; bfloat16 needs ml_dtypes and CuPy arrays that can hold it
    (the test is skipped where either is missing)."""
    if dtype != "bfloat16":
        return np.dtype(dtype)
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 host arrays need ml_dtypes")
    import cupy

    try:
        probe = cupy.asarray(np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16))
        assert str(probe.dtype) == "bfloat16"
        assert cupy.asnumpy(probe).astype(np.float64).tolist() == [1.5, -2.0]
    except Exception as exc:
        pytest.skip(f"CuPy {cupy.__version__} cannot hold bfloat16 arrays: {exc!r}")
    return np.dtype(ml_dtypes.bfloat16)


def rounded(values, dtype):
    """`values` rounded to `dtype`, as float64 (what the device array will hold exactly)."""
    return np.asarray(values).astype(host_dtype(dtype)).astype(np.float64)


def device(values, dtype):
    import cupy

    return cupy.asarray(np.asarray(values).astype(host_dtype(dtype)))
