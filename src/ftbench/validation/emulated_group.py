"""Tensor- and pipeline-parallel ranks emulated in one process on one GPU, for checks.

`EmulatedGroup`: `world_size` ranks in one process on one GPU, one thread per rank, every rank
on the group's one stream; a communicator may span a subset of them (one pipeline stage's
tensor-parallel ranks, or one tensor-parallel rank's pipeline stages). Its communicators
implement `runtime.parallel.Communicator`, so the decoder runs on them unchanged. The ranks take
turns on the host (one holds the group's turn lock until it reaches a collective or a transfer),
so CuPy's host-side state (pinned staging buffers, caches) is never used by two ranks at once.
Each collective waits until every rank has enqueued its part, then its first rank enqueues the
sum (or the concatenation) into every rank's buffer. It checks the sharded numerics on one GPU;
it is not a way to run fast (no CUDA graphs). A `send` waits until its peer's `recv` has
enqueued the copy, so the sender cannot overwrite the buffer before the copy runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ftbench.errors import InvalidInputError
from ftbench.runtime.parallel import (
    DEFAULT_TIMEOUT_S,
    CollectiveTimeoutError,
    check_contiguous,
    check_gather,
)

Result = TypeVar("Result")


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
        check_contiguous("all_reduce", "array", array)

        def total(parts: list[Any]) -> None:
            import cupy

            summed = parts[0].astype(cupy.float32)
            for part in parts[1:]:
                summed += part
            for part in parts:
                part[...] = summed

        self.group.exchange(self.subgroup, self.global_rank, array, total)

    def all_gather(self, send: Any, recv: Any) -> None:
        check_gather(send, recv, self.world_size)

        def gather(parts: list[Any]) -> None:
            for _, part_recv in parts:
                for source, (part_send, _) in enumerate(parts):
                    part_recv[source] = part_send

        self.group.exchange(self.subgroup, self.global_rank, (send, recv), gather)

    def send(self, array: Any, peer: int) -> None:
        check_contiguous("send", "array", array)
        self.group.send(self.global_rank, self._member(peer), array)

    def recv(self, array: Any, peer: int) -> None:
        check_contiguous("recv", "array", array)
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
