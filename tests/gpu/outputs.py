"""Output checks of the GEMV GPU tests: NaN poisoning (so an unwritten element fails as surely as
a wrong one) and the relative error against a float64 reference."""

import numpy as np


def poison(y):
    """Fill y with NaN by a plain copy on the current stream (works for any dtype)."""
    import cupy

    nan = cupy.asarray(np.full(y.shape, np.nan, dtype=np.float16)).view(np.uint16)
    if str(y.dtype) == "bfloat16":
        nan[...] = 0x7FC0  # a bfloat16 quiet NaN
    y.data.copy_from_device_async(nan.data, y.nbytes)


def relative_error(y, reference):
    """||y - reference|| / ||reference|| (Frobenius); infinite if y holds a NaN or an inf."""
    import cupy

    got = cupy.asnumpy(y).astype(np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.linalg.norm(got - reference) / np.linalg.norm(reference))
