"""The branch stream: one extra CUDA stream per device for work that runs beside the main one.

The decoder runs the MLP of a parallel block (GPT-J) on the branch stream while attention runs
on the caller's stream, so the small attention kernels overlap the MLP's weight reads. GEMM
libraries keep scratch memory (cuBLAS and cuBLASLt workspaces, the split-K partials of the
project's GEMV): two GEMMs running at once must not share it, so scratch is kept per
`scratch_slot()` — one set for the branch stream, one for every other stream of the device.
Other streams still take turns with each other, as with any library's single workspace.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def branch_stream(device_id: int) -> Any:
    """The device's branch stream (non-blocking), made once."""
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.cuda.Stream(non_blocking=True)


def scratch_slot() -> int:
    """1 on the current device's branch stream, 0 on any other stream."""
    import cupy

    device = cupy.cuda.Device().id
    current = cupy.cuda.get_current_stream().ptr
    return int(branch_stream.cache_info().currsize > 0 and current == branch_stream(device).ptr)
