"""Hardware ceiling probes: kernels whose speed is the memory system's, not ours."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ftbench.errors import InvalidInputError

SOURCE = Path(__file__).parent / "cuda" / "read_probe.cu"
THREADS = 512
BLOCKS_PER_SM = 4


@functools.cache
def _kernel(device_id: int) -> tuple[Any, Any, int]:
    """(kernel, sink buffer, blocks) for one device; compiled once by NVRTC."""
    import cupy

    with cupy.cuda.Device(device_id) as device:
        module = cupy.RawModule(code=SOURCE.read_text(), options=("--std=c++17",))
        blocks = BLOCKS_PER_SM * device.attributes["MultiProcessorCount"]
        return module.get_function("read_probe"), cupy.zeros(blocks, dtype=cupy.uint32), blocks


def read_probe(data: Any) -> None:
    """Read every byte of the contiguous device array `data` once (16-byte loads).

    Time it with `bench.timer.time_launch(cache="cold")`: bytes / time is the read bandwidth.
    """
    import cupy

    if not data.flags.c_contiguous or data.nbytes % 16 or data.data.ptr % 16:
        raise InvalidInputError("read_probe needs a contiguous, 16-byte aligned multiple of 16 B")
    kernel, sink, blocks = _kernel(cupy.cuda.Device().id)
    kernel((blocks,), (THREADS,), (data, cupy.uint64(data.nbytes // 16), sink))
