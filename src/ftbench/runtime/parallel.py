"""Tensor-parallel collectives: what the decoder needs from the other ranks, over NCCL or emulated.

The decoder (`runtime.model`) calls a communicator at the Megatron points: `all_reduce` after
attention-out and after FFN-down (once per layer for GPT-J's parallel block) and `all_gather`
of the vocabulary-split LM head's logits, so that sampling sees the whole vocabulary. Gathering
the logits is the simple correct choice: greedy sampling alone could be combined from per-rank
maxima, but top-k and top-p need the whole distribution, and the gathered logits are only
batch x vocabulary values (100 KB per sequence for GPT-J in fp16).

Two implementations of one interface (`Communicator`):

- `NcclCommunicator`: one rank of an NCCL group (`cupy.cuda.nccl`), one process per GPU. The
  collectives are enqueued on CuPy's current stream and never synchronise, so they can be
  captured in a CUDA graph. Host waits (`synchronize`, `barrier`) are bounded by a timeout:
  when it passes, the communicator is aborted (which also releases kernels stuck in a
  collective) and `CollectiveTimeoutError` says which rank waited for what.
- `EmulatedGroup`: `world_size` ranks in one process on one GPU, one thread per rank, every rank
  on the group's one stream. The ranks take turns on the host (one holds the group's turn lock
  until it reaches a collective), so CuPy's host-side state (pinned staging buffers, caches) is
  never used by two ranks at once. Each collective waits until every rank has enqueued its
  part, then rank 0 enqueues the sum (or the concatenation) into every rank's buffer. It checks
  the sharded numerics on one GPU; it is not a way to run fast (no CUDA graphs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from ftbench.errors import FtbenchError, GpuError, InvalidInputError

# Host waits on collectives give up after this long (override per communicator).
DEFAULT_TIMEOUT_S = 300.0
# How often a bounded host wait polls the stream and NCCL's asynchronous error state.
POLL_INTERVAL_S = 0.001

Result = TypeVar("Result")


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

    def barrier(self) -> None:
        """Return once every rank has reached the barrier and its queued work has finished."""


def _check_contiguous(op: str, name: str, array: Any) -> None:
    if not array.flags.c_contiguous:
        raise InvalidInputError(f"{op}: {name} must be C-contiguous")


def _check_gather(send: Any, recv: Any, world_size: int) -> None:
    _check_contiguous("all_gather", "send", send)
    _check_contiguous("all_gather", "recv", recv)
    if recv.shape != (world_size, *send.shape) or recv.dtype != send.dtype:
        raise InvalidInputError(
            f"all_gather: recv must be {send.dtype} {[world_size, *send.shape]}, got "
            f"{recv.dtype} {list(recv.shape)}"
        )


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
        _check_contiguous(op, "array", array)
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

        _check_gather(send, recv, self.world_size)
        dtype = self._type("all_gather", send)
        stream = cupy.cuda.get_current_stream().ptr
        self._comm.allGather(send.data.ptr, recv.data.ptr, send.size, dtype, stream)

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
        """Free the communicator after a clean run (every rank calls it)."""
        if not self.aborted:
            self.aborted = True
            self._comm.destroy()


class EmulatedGroup:
    """`world_size` tensor-parallel ranks in one process on one GPU (see the module docstring).

    `run(fn)` calls fn(rank) for every rank, each in its own thread with the group's stream
    current, and returns their results in rank order; a rank's error stops the others.
    """

    def __init__(self, world_size: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        import cupy

        if world_size < 1:
            raise InvalidInputError(f"world_size must be at least 1, got {world_size}")
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._barrier = threading.Barrier(world_size, timeout=self.timeout_s)
        self._turn = threading.Lock()
        self._parts: list[Any] = [None] * world_size

    def communicator(self, rank: int) -> EmulatedCommunicator:
        """Rank `rank`'s communicator (use it from that rank's thread in `run`)."""
        if not 0 <= rank < self.world_size:
            raise InvalidInputError(f"rank must be in 0..{self.world_size - 1}, got {rank}")
        return EmulatedCommunicator(self, rank)

    def run(self, fn: Callable[[int], Result]) -> list[Result]:
        """fn(rank) for every rank at once, one thread each; the results in rank order."""
        results: list[Any] = [None] * self.world_size
        errors: list[BaseException | None] = [None] * self.world_size

        def body(rank: int) -> None:
            try:
                with self._turn, self.stream:
                    results[rank] = fn(rank)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
                errors[rank] = exc
                self._barrier.abort()

        threads = [threading.Thread(target=body, args=(rank,)) for rank in range(self.world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.stream.synchronize()
        self._barrier.reset()
        first = [e for e in errors if e is not None and not isinstance(e, CollectiveTimeoutError)]
        first = first or [e for e in errors if e is not None]
        if first:
            raise first[0]
        return results

    def exchange(self, rank: int, part: Any, combine: Callable[[list[Any]], None]) -> None:
        """Every rank hands in `part`; once all have, rank 0 enqueues combine(parts) on the
        group's stream; every rank returns after that, so its later work is queued after it.
        The calling rank gives up its turn while it waits."""
        self._parts[rank] = part
        self._turn.release()
        try:
            self._wait(rank)
            if rank == 0:
                with self._turn, self.stream:
                    combine(list(self._parts))
            self._wait(rank)
        finally:
            self._turn.acquire()

    def _wait(self, rank: int) -> None:
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise CollectiveTimeoutError(
                f"emulated rank {rank} of {self.world_size}: the other ranks did not reach the "
                f"collective within {self.timeout_s:g} s or one of them failed"
            ) from None


class EmulatedCommunicator:
    """One rank of an `EmulatedGroup`: sums and gathers through the group's stream."""

    def __init__(self, group: EmulatedGroup, rank: int) -> None:
        self.group, self.rank, self.world_size = group, rank, group.world_size

    def all_reduce(self, array: Any) -> None:
        _check_contiguous("all_reduce", "array", array)

        def total(parts: list[Any]) -> None:
            import cupy

            summed = parts[0].astype(cupy.float32)
            for part in parts[1:]:
                summed += part
            for part in parts:
                part[...] = summed

        self.group.exchange(self.rank, array, total)

    def all_gather(self, send: Any, recv: Any) -> None:
        _check_gather(send, recv, self.world_size)

        def gather(parts: list[Any]) -> None:
            for _, part_recv in parts:
                for source, (part_send, _) in enumerate(parts):
                    part_recv[source] = part_send

        self.group.exchange(self.rank, (send, recv), gather)

    def barrier(self) -> None:
        self.group.exchange(self.rank, None, lambda parts: None)
        self.group.stream.synchronize()
