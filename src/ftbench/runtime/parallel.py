"""Collectives and point-to-point transfers between ranks, over NCCL or emulated.

A rank's decoder (`runtime.rank`) calls a communicator at the Megatron points: `all_reduce` after
attention-out and after FFN-down (once per layer for GPT-J's parallel block) and `all_gather`
of the vocabulary-split LM head's logits, so that sampling sees the whole vocabulary. Pipeline
stages (`runtime.pipeline`) pass activations and sampled tokens with `send` and `recv`. Gathering
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
  on the group's one stream; a communicator may span a subset of them (one pipeline stage's
  tensor-parallel ranks, or one tensor-parallel rank's pipeline stages). The ranks take turns
  on the host (one holds the group's turn lock until it reaches a collective or a transfer),
  so CuPy's host-side state (pinned staging buffers, caches) is never used by two ranks at
  once. Each collective waits until every rank has enqueued its part, then its first rank
  enqueues the sum (or the concatenation) into every rank's buffer. It checks
  the sharded numerics on one GPU; it is not a way to run fast (no CUDA graphs). A `send`
  waits until its peer's `recv` has enqueued the copy, so the sender cannot overwrite the
  buffer before the copy runs.
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

    def send(self, array: Any, peer: int) -> None:
        """Send `array` to rank `peer` of this group (which `recv`s it), on the current stream."""

    def recv(self, array: Any, peer: int) -> None:
        """Receive into `array` what rank `peer` of this group `send`s, on the current stream."""

    def barrier(self) -> None:
        """Return once every rank has reached the barrier and its queued work has finished."""

    def synchronize(self, what: str = "queued work") -> None:
        """Wait for the current stream's work, which may wait for other ranks (bounded where
        the ranks are processes: a dead peer raises `CollectiveTimeoutError`)."""


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


class EmulatedGroup:
    """`world_size` ranks in one process on one GPU (see the module docstring).

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
        self._turn = threading.Lock()
        self._subgroups: dict[tuple[int, ...], _Subgroup] = {}
        self._mail = threading.Condition()
        self._mailboxes: dict[tuple[int, int], list[tuple[Any, threading.Event]]] = {}
        self._failed = False

    def communicator(self, rank: int, members: Sequence[int] | None = None) -> EmulatedCommunicator:
        """The communicator of the ranks `members` (global ranks, default all) as rank `rank`
        sees it (use it from that rank's thread in `run`); its ranks are positions in
        `members`. Create every communicator before `run`."""
        members = tuple(range(self.world_size) if members is None else members)
        if sorted(set(members)) != sorted(members) or not all(
            0 <= member < self.world_size for member in members
        ):
            raise InvalidInputError(
                f"members must be distinct ranks in 0..{self.world_size - 1}, got {members}"
            )
        if rank not in members:
            raise InvalidInputError(f"rank {rank} is not one of the members {members}")
        if members not in self._subgroups:
            self._subgroups[members] = _Subgroup(members, self.timeout_s)
        return EmulatedCommunicator(self, self._subgroups[members], rank)

    def run(self, fn: Callable[[int], Result]) -> list[Result]:
        """fn(rank) for every rank at once, one thread each; the results in rank order."""
        results: list[Any] = [None] * self.world_size
        errors: list[BaseException | None] = [None] * self.world_size
        self._failed = False

        def body(rank: int) -> None:
            try:
                with self._turn, self.stream:
                    results[rank] = fn(rank)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
                errors[rank] = exc
                self._fail()

        threads = [threading.Thread(target=body, args=(rank,)) for rank in range(self.world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.stream.synchronize()
        for subgroup in self._subgroups.values():
            subgroup.barrier.reset()
        self._mailboxes.clear()
        first = [e for e in errors if e is not None and not isinstance(e, CollectiveTimeoutError)]
        first = first or [e for e in errors if e is not None]
        if first:
            raise first[0]
        return results

    def _fail(self) -> None:
        """A rank failed: release every rank waiting in a collective or a transfer."""
        self._failed = True
        for subgroup in self._subgroups.values():
            subgroup.barrier.abort()
        with self._mail:
            self._mail.notify_all()

    def exchange(
        self, subgroup: _Subgroup, rank: int, part: Any, combine: Callable[[list[Any]], None]
    ) -> None:
        """Every rank of `subgroup` hands in `part`; once all have, its first rank enqueues
        combine(parts) on the group's stream; every rank returns after that, so its later work
        is queued after it. The calling rank gives up its turn while it waits."""
        subgroup.parts[subgroup.members.index(rank)] = part
        self._turn.release()
        try:
            subgroup.wait(rank)
            if rank == subgroup.members[0]:
                with self._turn, self.stream:
                    combine(list(subgroup.parts))
            subgroup.wait(rank)
        finally:
            self._turn.acquire()

    def send(self, source: int, destination: int, array: Any) -> None:
        """Hand `array` to `destination`'s matching `receive`; return once it has enqueued the
        copy (the caller may then overwrite `array`). Gives up its turn while it waits."""
        copied = threading.Event()
        self._turn.release()
        try:
            with self._mail:
                self._mailboxes.setdefault((source, destination), []).append((array, copied))
                self._mail.notify_all()
                self._mail.wait_for(lambda: copied.is_set() or self._failed, self.timeout_s)
            if not copied.is_set():
                raise self._timeout(source, f"rank {destination} to receive")
        finally:
            self._turn.acquire()

    def receive(self, source: int, destination: int, array: Any) -> None:
        """Wait for `source`'s matching `send` and enqueue the copy into `array` (in the
        order sent). Gives up its turn while it waits."""
        key = (source, destination)
        self._turn.release()
        try:
            with self._mail:
                waiting = lambda: self._mailboxes.get(key) or self._failed  # noqa: E731
                self._mail.wait_for(waiting, self.timeout_s)
                if not self._mailboxes.get(key):
                    raise self._timeout(destination, f"rank {source} to send")
                sent, copied = self._mailboxes[key].pop(0)
        finally:
            self._turn.acquire()
        try:
            if sent.shape != array.shape or sent.dtype != array.dtype:
                raise InvalidInputError(
                    f"recv: rank {source} sent {sent.dtype} {list(sent.shape)}, rank "
                    f"{destination} expects {array.dtype} {list(array.shape)}"
                )
            with self.stream:
                array[...] = sent
        finally:
            with self._mail:
                copied.set()
                self._mail.notify_all()

    def _timeout(self, rank: int, what: str) -> CollectiveTimeoutError:
        return CollectiveTimeoutError(
            f"emulated rank {rank} of {self.world_size} waited for {what}; it did not within "
            f"{self.timeout_s:g} s or a rank failed"
        )


class _Subgroup:
    """The ranks of one emulated communicator: their barrier and the parts they hand in."""

    def __init__(self, members: tuple[int, ...], timeout_s: float) -> None:
        self.members = members
        self.timeout_s = timeout_s
        self.barrier = threading.Barrier(len(members), timeout=timeout_s)
        self.parts: list[Any] = [None] * len(members)

    def wait(self, rank: int) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise CollectiveTimeoutError(
                f"emulated rank {rank}: the other ranks of {list(self.members)} did not reach "
                f"the collective within {self.timeout_s:g} s or one of them failed"
            ) from None


class EmulatedCommunicator:
    """One rank of an `EmulatedGroup` communicator: sums, gathers and transfers through the
    group's stream. `rank` and peers are positions in the communicator's members."""

    def __init__(self, group: EmulatedGroup, subgroup: _Subgroup, global_rank: int) -> None:
        self.group, self.subgroup, self.global_rank = group, subgroup, global_rank
        self.rank, self.world_size = subgroup.members.index(global_rank), len(subgroup.members)

    def all_reduce(self, array: Any) -> None:
        _check_contiguous("all_reduce", "array", array)

        def total(parts: list[Any]) -> None:
            import cupy

            summed = parts[0].astype(cupy.float32)
            for part in parts[1:]:
                summed += part
            for part in parts:
                part[...] = summed

        self.group.exchange(self.subgroup, self.global_rank, array, total)

    def all_gather(self, send: Any, recv: Any) -> None:
        _check_gather(send, recv, self.world_size)

        def gather(parts: list[Any]) -> None:
            for _, part_recv in parts:
                for source, (part_send, _) in enumerate(parts):
                    part_recv[source] = part_send

        self.group.exchange(self.subgroup, self.global_rank, (send, recv), gather)

    def send(self, array: Any, peer: int) -> None:
        _check_contiguous("send", "array", array)
        self.group.send(self.global_rank, self._member(peer), array)

    def recv(self, array: Any, peer: int) -> None:
        _check_contiguous("recv", "array", array)
        self.group.receive(self._member(peer), self.global_rank, array)

    def _member(self, peer: int) -> int:
        if not 0 <= peer < self.world_size or peer == self.rank:
            raise InvalidInputError(
                f"peer must be another rank in 0..{self.world_size - 1}, got {peer}"
            )
        return self.subgroup.members[peer]

    def barrier(self) -> None:
        self.group.exchange(self.subgroup, self.global_rank, None, lambda parts: None)
        self.group.stream.synchronize()

    def synchronize(self, what: str = "queued work") -> None:
        """Wait for the group's stream: a rank's peers run in this process, none can die alone."""
        self.group.stream.synchronize()
