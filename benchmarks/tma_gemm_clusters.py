# ruff: noqa  (a one-off experiment script, removed in the next commit)
"""How many clusters of the TMA GEMM fit at once (cuOccupancyMaxActiveClusters)."""

import ctypes

from ftbench.kernels import nvrtc
from ftbench.kernels import tma_gemm as T

drv = nvrtc.driver()
drv.cuOccupancyMaxActiveClusters.argtypes = [
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_void_p,
    ctypes.POINTER(nvrtc.LaunchConfig),
]
for c in (
    [T.TmaConfig(64, 16, 9, 1, s) for s in (1, 2, 4, 8)]
    + [T.TmaConfig(128, 128, 6, 1, s) for s in (1, 2, 4, 8)]
    + [T.TmaConfig(128, 128, 3, 1, s) for s in (1, 2, 4, 8)]
):
    T.prepare([c], "float16")
    f = nvrtc.load(T.SOURCE_PATH, [T.kernel_name(c, "float16")], arch_specific=True)[
        T.kernel_name(c, "float16")
    ]
    cfg = nvrtc.LaunchConfig()
    cfg.grid[:] = [64, 1, c.split_k]
    cfg.block[:] = [c.threads, 1, 1]
    cfg.shared_bytes = c.shared_bytes
    attrs = (nvrtc.LaunchAttribute * 1)(
        nvrtc._attribute(nvrtc.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, [1, 1, c.split_k])
    )
    cfg.attributes = attrs
    cfg.attribute_count = 1
    n = ctypes.c_int(0)
    st = drv.cuOccupancyMaxActiveClusters(
        ctypes.byref(n), ctypes.c_void_p(nvrtc._handle(f)), ctypes.byref(cfg)
    )
    print(
        c.name,
        "smem",
        c.shared_bytes,
        "status",
        st,
        "max active clusters",
        n.value,
        "-> blocks",
        n.value * c.split_k,
        flush=True,
    )
