"""cublasGemmEx linear layer against a float64 reference on fresh random inputs."""

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    ("m", "n", "k"), [(1, 4096, 4096), (7, 65, 129), (33, 1000, 4097), (128, 12288, 4096)]
)
@pytest.mark.parametrize("algo", [-1, 99])
def test_gemm_ex_matches_float64(m, n, k, algo):
    import cupy

    from ftbench.gemm.backends.cublas import gemm_ex

    rng = np.random.default_rng()
    x = rng.standard_normal((m, k)).astype(np.float16)
    w = (rng.standard_normal((n, k)) * k**-0.5).astype(np.float16)
    y = cupy.full((m, n), cupy.nan, dtype=cupy.float16)
    gemm_ex(cupy.asarray(x), cupy.asarray(w), y, algo=algo)
    reference = x.astype(np.float64) @ w.astype(np.float64).T
    got = cupy.asnumpy(y).astype(np.float64)
    assert np.isfinite(got).all(), "some outputs were never written"
    assert np.linalg.norm(got - reference) / np.linalg.norm(reference) < 2e-3
