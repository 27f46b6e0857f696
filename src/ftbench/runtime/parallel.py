"""Collectives and point-to-point transfers between ranks, over NCCL.

A rank's decoder (`runtime.rank`) calls a communicator at the Megatron points: `all_reduce` after
attention-out and after FFN-down (once per layer for GPT-J's parallel block) and `all_gather`
of the vocabulary-split LM head's logits, so that sampling sees the whole vocabulary. Pipeline
stages (`runtime.pipeline`) pass activations and sampled tokens with `send` and `recv`. Gathering
the logits is the simple correct choice: greedy sampling alone could be combined from per-rank
maxima, but top-k and top-p need the whole distribution, and the gathered logits are only
batch x vocabulary values (100 KB per sequence for GPT-J in fp16).

`Communicator` is that interface. `NcclCommunicator` implements it: one rank of an NCCL group
(`cupy.cuda.nccl`), one process per GPU. The collectives are enqueued on CuPy's
current stream and never synchronise, so they can be captured in a CUDA graph. Host waits
(`synchronize`, `barrier`) are bounded by a timeout: when it passes, the communicator is aborted
(which also releases kernels stuck in a collective) and `CollectiveTimeoutError` says which rank
waited for what. `validation.emulated_group` implements it again with ranks as threads on one
GPU, to check the sharded numerics without several GPUs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from ftbench.errors import FtbenchError, GpuError, InvalidInputError

# Host waits on collectives give up after this long (override per communicator).
DEFAULT_TIMEOUT_S = 300.0
# How often a bounded host wait polls the stream and NCCL's asynchronous error state.
POLL_INTERVAL_S = 0.001


class CollectiveTimeoutError(FtbenchError):
    """A rank waited longer than its timeout for a collective (another rank died or hangs)."""


class Communicator(Protocol):
    """One rank's view of a tensor-parallel group (see the module docstring)."""

    rank: int
    world_size: int

    def all_reduce(self, array: Any) -> None:
        """Sum `array` over the ranks, in place, on the current stream."""

    def all_gather(self, send: Any, recv: Any) -> None:
        """recv[r] = rank r's `send` for every rank r (recv: [world_size, *send.shape])."""

    def send(self, array: Any, peer: int) -> None:
        """Send `array` to rank `peer` of this group (which `recv`s it), on the current stream."""

    def recv(self, array: Any, peer: int) -> None:
        """Receive into `array` what rank `peer` of this group `send`s, on the current stream."""

    def barrier(self) -> None:
        """Return once every rank has reached the barrier and its queued work has finished."""

    def synchronize(self, what: str = "queued work") -> None:
        """Wait for the current stream's work, which may wait for other ranks (bounded where
        the ranks are processes: a dead peer raises `CollectiveTimeoutError`)."""


def check_contiguous(op: str, name: str, array: Any) -> None:
    """Refuse an array a collective or transfer cannot take (not C-contiguous)."""
    if not array.flags.c_contiguous:
        raise InvalidInputError(f"{op}: {name} must be C-contiguous")


def check_gather(send: Any, recv: Any, world_size: int) -> None:
    """Refuse all_gather buffers that do not fit: recv must be [world_size, *send.shape]."""
    check_contiguous("all_gather", "send", send)
    check_contiguous("all_gather", "recv", recv)
    if recv.shape != (world_size, *send.shape) or recv.dtype != send.dtype:
        raise InvalidInputError(
            f"all_gather: recv must be {send.dtype} {[world_size, *send.shape]}, got "
            f"{recv.dtype} {list(recv.shape)}"
        )


def all_gather_bytes(comm: Any, data: bytes, what: str) -> list[bytes]:
    """Every rank's `data`, by rank, through `comm.all_gather` (collective; `data` has the same
    length on every rank, a multiple of 4 bytes). Waits for it with `comm.synchronize`."""
    import cupy
    import numpy as np

    send = cupy.asarray(np.frombuffer(data, np.int32))
    recv = cupy.empty((comm.world_size, send.size), cupy.int32)
    comm.all_gather(send, recv)
    comm.synchronize(what)
    return [row.tobytes() for row in cupy.asnumpy(recv)]


class NcclCommunicator:
    """One rank of an NCCL group on the current GPU.

    All ranks call the constructor with the same `unique_id` (from `new_unique_id()` on rank 0,
    passed to the others by the launcher, see `runtime.launch`); it returns once every rank
    has joined.
    """

    def __init__(
        self,
        world_size: int,
        rank: int,
        unique_id: Sequence[int],
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        import cupy
        from cupy.cuda import nccl

        if not 0 <= rank < world_size:
            raise InvalidInputError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.rank, self.world_size = rank, world_size
        self.timeout_s = timeout_s
        self._nccl = nccl
        self._types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32}
        if hasattr(nccl, "NCCL_BFLOAT16"):
            self._types["bfloat16"] = nccl.NCCL_BFLOAT16
        self._types["int32"] = nccl.NCCL_INT32
        try:
            self._comm = nccl.NcclCommunicator(world_size, bytes(unique_id), rank)
        except nccl.NcclError as exc:
            raise GpuError(f"NCCL rank {rank} of {world_size} could not join: {exc}") from exc
        self._flag = cupy.zeros(1, cupy.int32)
        self.aborted = False

    @staticmethod
    def new_unique_id() -> list[int]:
        """A fresh NCCL id as 128 byte values (JSON- and MPI-friendly). Create it on rank 0:
        its bootstrap listens in that process."""
        from cupy.cuda import nccl

        return [value & 0xFF for value in nccl.get_unique_id()]

    def _type(self, op: str, array: Any) -> int:
        check_contiguous(op, "array", array)
        dtype = str(array.dtype)
        if dtype not in self._types:
            raise InvalidInputError(f"{op}: NCCL reduces {sorted(self._types)}, not {dtype}")
        return self._types[dtype]

    def all_reduce(self, array: Any) -> None:
        import cupy

        dtype = self._type("all_reduce", array)
        stream = cupy.cuda.get_current_stream().ptr
        ptr = array.data.ptr
        self._comm.allReduce(ptr, ptr, array.size, dtype, self._nccl.NCCL_SUM, stream)

    def all_gather(self, send: Any, recv: Any) -> None:
        import cupy

        check_gather(send, recv, self.world_size)
        dtype = self._type("all_gather", send)
        stream = cupy.cuda.get_current_stream().ptr
        self._comm.allGather(send.data.ptr, recv.data.ptr, send.size, dtype, stream)

    def send(self, array: Any, peer: int) -> None:
        import cupy

        dtype = self._type("send", array)
        stream = cupy.cuda.get_current_stream().ptr
        self._comm.send(array.data.ptr, array.size, dtype, peer, stream)

    def recv(self, array: Any, peer: int) -> None:
        import cupy

        dtype = self._type("recv", array)
        stream = cupy.cuda.get_current_stream().ptr
        self._comm.recv(array.data.ptr, array.size, dtype, peer, stream)

    def synchronize(self, what: str = "queued work") -> None:
        """Wait for the current stream, at most `timeout_s`; on timeout (or an asynchronous NCCL
        error) abort the communicator and raise."""
        import cupy

        event = cupy.cuda.get_current_stream().record()
        deadline = time.monotonic() + self.timeout_s
        while not event.done:
            error = self._async_error()
            if error:
                self.abort()
                raise GpuError(f"NCCL rank {self.rank}: {error} while waiting for {what}")
            if time.monotonic() > deadline:
                self.abort()
                raise CollectiveTimeoutError(
                    f"rank {self.rank} of {self.world_size} waited {self.timeout_s:g} s for "
                    f"{what}; another rank has failed or hangs (communicator aborted)"
                )
            time.sleep(POLL_INTERVAL_S)

    def barrier(self) -> None:
        self.all_reduce(self._flag)
        self.synchronize("a barrier")

    def _async_error(self) -> str:
        try:
            self._comm.check_async_error()
        except self._nccl.NcclError as exc:
            return str(exc)
        return ""

    def abort(self) -> None:
        """Tear the communicator down at once, releasing kernels stuck in a collective."""
        if not self.aborted:
            self.aborted = True
            self._comm.abort()

    def close(self) -> None:
        """Free the communicator after a clean run (every rank calls it), once the CUDA graphs
        that captured its send/recv are gone: NCCL waits for them (seen on one H200 with NCCL
        2.28: closing with such a graph alive hung)."""
        if not self.aborted:
            self.aborted = True
            self._comm.destroy()
