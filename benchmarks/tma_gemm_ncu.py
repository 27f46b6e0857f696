# ruff: noqa  (a one-off experiment script, removed in the next commit)
"""One launch of each kernel variant, for ncu (cold L2 by ncu's cache control)."""

import cupy

from ftbench.kernels import gemv as G
from ftbench.kernels import tma_gemm as T


def ops(m, n, k):
    x = (cupy.random.standard_normal((m, k), dtype=cupy.float32)).astype(cupy.float16)
    w = (cupy.random.standard_normal((n, k), dtype=cupy.float32) * k**-0.5).astype(cupy.float16)
    y = cupy.empty((m, n), dtype=cupy.float16)
    return x, w, y


cases = [
    ("gemv", 16, 4096, 4096, G.GemvConfig("mma", 16, 8, 2, 128)),
    ("gemv", 1, 4096, 4096, G.GemvConfig("fma", 2, 8, 2, 512)),
    ("tma", 16, 4096, 4096, T.TmaConfig(64, 16, 9, 1, 2, 0)),
    ("tma", 16, 4096, 4096, T.TmaConfig(64, 16, 9, 1, 4, 0)),
    ("tma", 16, 4096, 4096, T.TmaConfig(128, 16, 10, 1, 4, 0)),
    ("tma", 128, 4096, 4096, T.TmaConfig(64, 128, 8, 1, 2, 0)),
    ("tma", 128, 4096, 4096, T.TmaConfig(128, 128, 6, 1, 4, 0)),
    ("tma", 128, 12288, 4096, T.TmaConfig(128, 128, 6, 1, 1, 0)),
]
for kind, m, n, k, c in cases:
    x, w, y = ops(m, n, k)
    if kind == "gemv":
        G.prepare([c], m, "float16")
        run = lambda: G.gemv(x, w, y, c, pdl=False)
    else:
        T.prepare([c], "float16")
        run = lambda: T.tma_gemm(x, w, y, c, pdl=False)
    run()
    cupy.cuda.Device().synchronize()
    ref = x.astype(cupy.float32) @ w.astype(cupy.float32).T
    err = float(cupy.abs(y.astype(cupy.float32) - ref).max())
    print(kind, m, n, k, c.name, "maxabs", err, flush=True)
    run()
    cupy.cuda.Device().synchronize()
