"""The one-shot all-reduce kernel over peer memory (kernels/cuda/allreduce.cu) and its launcher.

Every rank owns a workspace (`workspace_bytes(capacity)`: arrival flags, epoch counters, a status
word and two data buffers) and holds a table of every rank's workspace pointer in its own address
space (`runtime.ipc` opens the peers' through CUDA IPC, or, to emulate ranks on one GPU, passes
ordinary allocations). `one_shot_all_reduce` sums an fp16, bf16 or fp32 array over the ranks in
place on CuPy's current stream: it allocates nothing, never synchronises and keeps no host state per
call, so it can be captured in a CUDA graph and replayed. Every call of one workspace must use the
same `blocks` (the kernel's safety argument rests on it, see allreduce.cu).

`one_shot_error` says why an array cannot take the one-shot path (dtype, size, alignment); the
communicator then uses NCCL. `read_status` reads a workspace's status word after the fact: 0, or
1 + the rank one of its blocks gave up waiting for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import c_types
from ftbench.errors import InvalidInputError
from ftbench.kernels import nvrtc

SOURCE_PATH = Path(__file__).parent / "cuda" / "allreduce.cu"
C_TYPES = c_types("fp16", "bf16", "fp32")
# The workspace layout and limits; allreduce.cu has the same numbers (a CPU test compares them).
MAX_RANKS = 8
MAX_BLOCKS = 64
THREADS = 512
ARRIVALS_OFFSET = 0
EPOCHS_OFFSET = 2048
STATUS_OFFSET = 2304
SIGNAL_BYTES = 4096
VECTOR_BYTES = 16
_MEMCPY_DEVICE_TO_HOST = 2


def capacity_bytes(max_bytes: int) -> int:
    """The data buffer size for messages of up to `max_bytes`: a multiple of 16 bytes."""
    if max_bytes < 1:
        raise InvalidInputError(f"the one-shot message limit must be positive, got {max_bytes}")
    return VECTOR_BYTES * -(-max_bytes // VECTOR_BYTES)


def workspace_bytes(capacity: int) -> int:
    """Bytes of one rank's workspace: the signal area and two data buffers of `capacity`."""
    return SIGNAL_BYTES + 2 * capacity


def kernel_name(dtype: str, world_size: int) -> str:
    """The template instance for `dtype` and `world_size` ranks (an NVRTC name expression)."""
    return f"ftb_allreduce_one_shot<{C_TYPES[dtype]}, {world_size}>"


def prepare(world_size: int) -> None:
    """Compile the fp16, bf16 and fp32 kernels for `world_size` ranks on the current device, in one
    NVRTC run (before CUDA-graph capture)."""
    _check_world(world_size)
    nvrtc.load(SOURCE_PATH, [kernel_name(dtype, world_size) for dtype in C_TYPES])


def one_shot_error(dtype: str, nbytes: int, pointer: int, capacity: int) -> str | None:
    """Why an array (dtype, size in bytes, device address) cannot take the one-shot kernel with
    data buffers of `capacity` bytes, or None if it can."""
    if dtype not in C_TYPES:
        return f"the one-shot kernel sums {sorted(C_TYPES)}, not {dtype}"
    if nbytes == 0:
        return "the array is empty"
    if nbytes > capacity:
        return f"{nbytes} bytes exceed the one-shot limit of {capacity}"
    if pointer % VECTOR_BYTES:
        return f"the array is not {VECTOR_BYTES}-byte aligned"
    return None


def _check_world(world_size: int) -> None:
    if not 1 <= world_size <= MAX_RANKS:
        raise InvalidInputError(
            f"the one-shot kernel takes 1 to {MAX_RANKS} ranks, not {world_size}"
        )


def one_shot_all_reduce(
    array: Any,
    workspaces: Any,
    rank: int,
    capacity: int,
    blocks: int,
    timeout_s: float,
) -> None:
    """Sum `array` (C-contiguous fp16, bf16 or fp32, 16-byte aligned, at most `capacity` bytes) over
    the ranks, in place, on the current stream. `workspaces`: a uint64 device array of every
    rank's workspace pointer (its length is the world size). A block waiting longer than
    `timeout_s` for a peer sets the status word and leaves (see `read_status`)."""
    world_size = int(workspaces.size)
    _check_world(world_size)
    if str(workspaces.dtype) != "uint64":
        raise InvalidInputError(f"workspaces must be uint64 pointers, got {workspaces.dtype}")
    if not 0 <= rank < world_size:
        raise InvalidInputError(f"rank must be in 0..{world_size - 1}, got {rank}")
    if not 1 <= blocks <= MAX_BLOCKS:
        raise InvalidInputError(f"blocks must be in 1..{MAX_BLOCKS}, got {blocks}")
    if capacity % VECTOR_BYTES:
        raise InvalidInputError(f"capacity must be a multiple of {VECTOR_BYTES}, got {capacity}")
    if not array.flags.c_contiguous:
        raise InvalidInputError("one-shot all-reduce: the array must be C-contiguous")
    error = one_shot_error(str(array.dtype), array.nbytes, array.data.ptr, capacity)
    if error:
        raise InvalidInputError(f"one-shot all-reduce: {error}")
    if timeout_s <= 0:
        raise InvalidInputError(f"timeout_s must be positive, got {timeout_s}")
    name = kernel_name(str(array.dtype), world_size)
    pointer = np.uint64(array.data.ptr)
    arguments = (
        pointer, pointer, np.uint64(workspaces.data.ptr), np.int32(rank), np.int64(array.size),
        np.uint64(capacity), np.uint64(int(timeout_s * 1e9)),
    )  # fmt: skip
    nvrtc.launch(nvrtc.load(SOURCE_PATH, [name])[name], (blocks,), (THREADS,), arguments)


def read_status(workspace: int) -> int:
    """The status word of the workspace at device address `workspace`: 0 while every call went
    through, else 1 + the rank a block gave up waiting for. Synchronous; call it once the
    stream that ran the kernels is done."""
    import cupy

    status = np.zeros(1, np.uint32)
    cupy.cuda.runtime.memcpy(
        status.ctypes.data, workspace + STATUS_OFFSET, 4, _MEMCPY_DEVICE_TO_HOST
    )
    return int(status[0])
