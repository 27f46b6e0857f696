"""A linear layer of fresh E4M3 operands for the FP8 GPU tests, its float64 reference, and the
error a result may have against it.

Tolerances (relative Frobenius error) are the sweep's (`gemm.operands.tolerance`): without
fast accumulation the sums are fp32 and the error is the output's rounding, the GEMM tolerance of
the output format (fp16 2e-3, bf16 1.6e-2); with it, `gemm.operands.FAST_ACCUM_TOLERANCE`
(why: there).
"""

import numpy as np
import pytest

from ftbench.dtypes import DTYPES
from ftbench.kernels.cublaslt import MatrixSpec

ml_dtypes = pytest.importorskip("ml_dtypes", reason="E4M3 host arrays need ml_dtypes")

BF16_NAN = 0x7FC0


class Linear:
    """Fresh E4M3 operands X[m, k] and W[n, k] on the device, and their exact product in
    float64 (what the scales multiply)."""

    def __init__(self, m, n, k):
        import cupy

        rng = np.random.default_rng()
        e4m3 = DTYPES["fp8"].numpy_name
        # Values within E4M3's range (max 448), rounded to it; the reference reads the rounded.
        x = (rng.standard_normal((m, k)) * 3).astype(getattr(ml_dtypes, e4m3))
        w = (rng.standard_normal((n, k)) * 3).astype(getattr(ml_dtypes, e4m3))
        self.m, self.n, self.k = m, n, k
        self.x, self.w = (cupy.asarray(v.view(np.uint8)) for v in (x, w))  # CuPy has no E4M3
        self.product = x.astype(np.float64) @ w.astype(np.float64).T

    def layouts(self):
        """cuBLASLt's A = W (k x n column-major, transposed), B = X (k x m), C = Y (n x m)."""
        m, n, k = self.m, self.n, self.k
        return MatrixSpec(k, n, k, n * k), MatrixSpec(k, m, k, m * k), MatrixSpec(n, m, n, m * n)

    def scales(self, scaling):
        """Fresh fp32 (a_scale, b_scale) on the host: one each, or one per row of X and of W."""
        rng = np.random.default_rng()
        lengths = (1, 1) if scaling == "tensor" else (self.m, self.n)
        a_scale, b_scale = (rng.uniform(0.5, 2.0, size).astype(np.float32) for size in lengths)
        return a_scale * np.float32(0.05), b_scale * np.float32(0.01)

    def reference(self, a_scale, b_scale):
        return a_scale.astype(np.float64)[:, None] * self.product * b_scale.astype(np.float64)


def output(linear, out):
    """Y[m, n] on the device, full of NaN (fp16, or bf16 as its 16-bit patterns)."""
    import cupy

    if out == "fp16":
        return cupy.full((linear.m, linear.n), cupy.nan, dtype=cupy.float16)
    return cupy.full((linear.m, linear.n), BF16_NAN, dtype=cupy.uint16)


def error_of(c, out, expected):
    """Relative Frobenius error of Y against `expected`; NaN where an output was not written."""
    import cupy

    host = cupy.asnumpy(c)
    got = (host if out == "fp16" else host.view(ml_dtypes.bfloat16)).astype(np.float64)
    if not np.isfinite(got).all():
        return float("nan")
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
