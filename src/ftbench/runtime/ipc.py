"""Small all-reduces over CUDA IPC peer memory: the one-shot kernel, with NCCL for the rest.

At batch 1 the decoder's all-reduces are a few KB, and their latency, not bandwidth, sets what
tensor parallelism gains. `IpcCommunicator` wraps an `NcclCommunicator`: an fp16, bf16 or fp32
all-reduce of at most `max_one_shot_bytes` runs the one-shot kernel (kernels/allreduce.py: every
rank copies its input into its own workspace, waits for every peer at a flag barrier, and reads
and sums every rank's workspace over NVLink or PCIe); larger ones, other dtypes, the all-gather
and the barrier go to NCCL. Like NCCL's, its calls are enqueued on CuPy's current stream, never
synchronise and can be captured in a CUDA graph.

Setting up (every rank, collectively): each rank allocates its workspace with cudaMalloc (not
CuPy's pool: an IPC handle names a whole allocation) and zeroes it; the ranks all-gather, over
the NCCL group they already share (so every launcher works), a record of host name, GPU bus id
and IPC handle; each checks it can reach every peer's GPU (same host, visible, peer access) and
the ranks agree on the outcome: if any rank cannot, every rank raises `PeerAccessError` (keep
the NcclCommunicator alone then). Then each opens its peers' handles.

Failure: a block of the kernel that waits longer than `spin_timeout_s` for a peer records the
peer in its workspace's status word and leaves; later calls return at once. `synchronize` and
`barrier` read the status after the fact and raise `CollectiveTimeoutError`.

`local_group` makes the same ranks inside one process on one GPU, the workspaces plain
allocations: for tests and for timing the kernel without several GPUs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ftbench.errors import GpuError, InvalidInputError
from ftbench.kernels import allreduce
from ftbench.runtime.parallel import DEFAULT_TIMEOUT_S, CollectiveTimeoutError, all_gather_bytes

# The one-shot path for messages up to this size. On two NVLink-connected H200s
# (benchmarks/allreduce.py, benchmarks/results/parallel-20261124/) it beat NCCL at every size
# measured, 8 KiB to 1 MiB (5.2 against 6.7 us at 16 KiB); at more ranks each rank reads more
# peers' data, so the limit stays below the largest size measured.
DEFAULT_MAX_ONE_SHOT_BYTES = 256 * 1024
# Blocks of 512 threads per one-shot launch: enough loads in flight to pull a few hundred KB
# over NVLink, few enough to leave the GPU to the decoder's other work.
DEFAULT_BLOCKS = 32
ONE_SHOT, NCCL = "one-shot", "nccl"
ALLREDUCE_METHODS = (NCCL, ONE_SHOT)  # `ftbench run --allreduce`
HANDLE_BYTES = 64
HOST_BYTES = 64
BUS_ID_BYTES = 16
RECORD_BYTES = HANDLE_BYTES + HOST_BYTES + BUS_ID_BYTES


class PeerAccessError(GpuError):
    """The ranks' GPUs cannot read each other's memory: use NCCL alone."""


def choose_path(dtype: str, nbytes: int, pointer: int, max_one_shot_bytes: int) -> str:
    """ONE_SHOT if an array (dtype, bytes, device address) fits the one-shot kernel with this
    limit, else NCCL."""
    capacity = allreduce.capacity_bytes(max_one_shot_bytes)
    if nbytes > max_one_shot_bytes:
        return NCCL
    return NCCL if allreduce.one_shot_error(dtype, nbytes, pointer, capacity) else ONE_SHOT


@dataclass(frozen=True)
class PeerRecord:
    """What a rank tells the others at set-up: its host, its GPU's PCI bus id, its IPC handle."""

    host: str
    bus_id: str
    handle: bytes

    def encode(self) -> bytes:
        """RECORD_BYTES bytes (fixed fields, zero-padded)."""
        host, bus_id = self.host.encode()[:HOST_BYTES], self.bus_id.encode()
        if len(self.handle) != HANDLE_BYTES or len(bus_id) > BUS_ID_BYTES:
            raise InvalidInputError(f"malformed peer record {self!r}")
        return self.handle + host.ljust(HOST_BYTES, b"\0") + bus_id.ljust(BUS_ID_BYTES, b"\0")

    @classmethod
    def decode(cls, data: bytes) -> PeerRecord:
        if len(data) != RECORD_BYTES:
            raise InvalidInputError(f"a peer record has {RECORD_BYTES} bytes, got {len(data)}")
        host = data[HANDLE_BYTES : HANDLE_BYTES + HOST_BYTES].rstrip(b"\0").decode()
        bus_id = data[HANDLE_BYTES + HOST_BYTES :].rstrip(b"\0").decode()
        return cls(host, bus_id, bytes(data[:HANDLE_BYTES]))


def peer_access_problem(
    records: Sequence[PeerRecord], rank: int, can_access: Callable[[str], bool | None]
) -> str | None:
    """Why rank `rank` cannot read every peer's workspace, or None if it can.

    `can_access(bus_id)`: whether this rank's GPU can access the GPU with that bus id (True for
    its own), None if this process cannot see that GPU.
    """
    mine = records[rank]
    for peer, record in enumerate(records):
        if peer == rank:
            continue
        if record.host != mine.host:
            return (
                f"rank {peer} runs on host {record.host!r} and rank {rank} on {mine.host!r}: "
                "CUDA IPC works only between GPUs of one host"
            )
        if record.bus_id == mine.bus_id:
            continue
        access = can_access(record.bus_id)
        if access is None:
            return (
                f"rank {rank} cannot see rank {peer}'s GPU {record.bus_id} (CUDA_VISIBLE_DEVICES "
                "hides it); CUDA IPC needs every rank's GPU visible to every rank"
            )
        if not access:
            return (
                f"rank {rank}'s GPU {mine.bus_id} cannot access rank {peer}'s GPU "
                f"{record.bus_id} (cudaDeviceCanAccessPeer says no: no NVLink or PCIe P2P)"
            )
    return None


class OneShotRank:
    """One rank's side of the one-shot kernel: its workspace and every rank's, by pointer.

    `workspaces[p]` is rank p's workspace (of `allreduce.workspace_bytes(capacity)` bytes,
    zeroed before the first call of any rank) in this process's address space. `keep` holds
    whatever owns that memory.
    """

    def __init__(
        self,
        rank: int,
        workspaces: Sequence[int],
        max_bytes: int,
        blocks: int = DEFAULT_BLOCKS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        keep: Any = None,
    ) -> None:
        import cupy

        world_size = len(workspaces)
        if not 0 <= rank < world_size:
            raise InvalidInputError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if not 1 <= blocks <= allreduce.MAX_BLOCKS:
            raise InvalidInputError(f"blocks must be in 1..{allreduce.MAX_BLOCKS}, got {blocks}")
        self.rank, self.world_size = rank, world_size
        self.max_bytes = max_bytes
        self.capacity = allreduce.capacity_bytes(max_bytes)
        self.blocks, self.timeout_s = blocks, timeout_s
        self.workspace = workspaces[rank]
        self.table = cupy.asarray(list(workspaces), dtype=cupy.uint64)
        self.keep = keep
        allreduce.prepare(world_size)

    def all_reduce(self, array: Any) -> None:
        """Sum `array` over the ranks in place with the one-shot kernel, on the current stream."""
        allreduce.one_shot_all_reduce(
            array, self.table, self.rank, self.capacity, self.blocks, self.timeout_s
        )

    def failed_peer(self) -> int | None:
        """The rank a block of this rank gave up waiting for, or None (read after the fact)."""
        status = allreduce.read_status(self.workspace)
        return status - 1 if status else None

    def check(self) -> None:
        """Raise CollectiveTimeoutError if a call of this rank gave up waiting for a peer."""
        peer = self.failed_peer()
        if peer is not None:
            raise CollectiveTimeoutError(
                f"rank {self.rank} of {self.world_size}: a one-shot all-reduce waited "
                f"{self.timeout_s:g} s for rank {peer}, which never arrived; the group is "
                "broken (abort it)"
            )


def local_group(
    world_size: int,
    max_bytes: int,
    blocks: int = DEFAULT_BLOCKS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[OneShotRank]:
    """`world_size` one-shot ranks on the current GPU, workspaces plain (zeroed) allocations.

    Launch each rank's calls on its own stream so that they run at once: a rank's kernel waits
    for the others'. world_size * blocks blocks must fit on the GPU together.
    """
    import cupy

    size = allreduce.workspace_bytes(allreduce.capacity_bytes(max_bytes))
    memory = [cupy.zeros(size, cupy.uint8) for _ in range(world_size)]
    cupy.cuda.Device().synchronize()
    pointers = [buffer.data.ptr for buffer in memory]
    return [
        OneShotRank(rank, pointers, max_bytes, blocks, timeout_s, keep=memory[rank])
        for rank in range(world_size)
    ]


def _bus_id(device: int) -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device)
    return f"{props['pciDomainID']:04x}:{props['pciBusID']:02x}:{props['pciDeviceID']:02x}.0"


def _can_access(bus_id: str) -> bool | None:
    """Whether the current GPU can access the GPU with `bus_id`; None if it is not visible."""
    import cupy

    runtime = cupy.cuda.runtime
    device = cupy.cuda.Device().id
    for other in range(runtime.getDeviceCount()):
        if _bus_id(other) == bus_id:
            return other == device or bool(runtime.deviceCanAccessPeer(device, other))
    return None


class IpcCommunicator:
    """A `Communicator`: one-shot all-reduces over IPC for small messages, NCCL for the rest.

    Every rank of `nccl`'s group calls the constructor (it is collective, see the module
    docstring). Raises `PeerAccessError` on every rank if any rank cannot reach its peers.
    """

    def __init__(
        self,
        nccl: Any,
        max_one_shot_bytes: int = DEFAULT_MAX_ONE_SHOT_BYTES,
        blocks: int = DEFAULT_BLOCKS,
        spin_timeout_s: float | None = None,
    ) -> None:
        import cupy

        if nccl.world_size > allreduce.MAX_RANKS:
            raise PeerAccessError(
                f"the one-shot all-reduce takes at most {allreduce.MAX_RANKS} ranks, not "
                f"{nccl.world_size}"
            )
        self.nccl = nccl
        self.rank, self.world_size = nccl.rank, nccl.world_size
        self.timeout_s = nccl.timeout_s
        self.max_one_shot_bytes = max_one_shot_bytes
        runtime = cupy.cuda.runtime
        size = allreduce.workspace_bytes(allreduce.capacity_bytes(max_one_shot_bytes))
        self._own = runtime.malloc(size)
        self._opened: list[int] = []
        try:
            runtime.memset(self._own, 0, size)
            runtime.deviceSynchronize()
            mine = PeerRecord(
                socket.gethostname(), _bus_id(cupy.cuda.Device().id),
                bytes(runtime.ipcGetMemHandle(self._own)),
            )  # fmt: skip
            records = self._gather(mine)
            problem = peer_access_problem(records, self.rank, _can_access)
            if not self._everyone_ok(problem is None):
                raise PeerAccessError(
                    f"rank {self.rank}: {problem or 'another rank cannot reach its peers'}; "
                    "use the NCCL communicator alone"
                )
            pointers, error = self._open(records)
            if not self._everyone_ok(error is None):
                raise PeerAccessError(
                    f"rank {self.rank}: {error or 'another rank could not open an IPC handle'}"
                    "; use the NCCL communicator alone"
                )
            self.one_shot = OneShotRank(
                self.rank, pointers, max_one_shot_bytes, blocks,
                spin_timeout_s if spin_timeout_s is not None else nccl.timeout_s,
            )  # fmt: skip
        except BaseException:
            self._release()
            raise

    def _gather(self, mine: PeerRecord) -> list[PeerRecord]:
        parts = all_gather_bytes(self.nccl, mine.encode(), "the exchange of IPC handles")
        return [PeerRecord.decode(part) for part in parts]

    def _everyone_ok(self, ok: bool) -> bool:
        """True if `ok` on every rank (an all-reduce of the failures)."""
        import cupy

        failures = cupy.full(1, 0 if ok else 1, cupy.int32)
        self.nccl.all_reduce(failures)
        self.nccl.synchronize("the ranks' agreement on peer access")
        return int(failures.get()[0]) == 0

    def _open(self, records: list[PeerRecord]) -> tuple[list[int], str | None]:
        import cupy

        pointers = []
        for peer, record in enumerate(records):
            if peer == self.rank:
                pointers.append(self._own)
                continue
            try:
                pointers.append(cupy.cuda.runtime.ipcOpenMemHandle(record.handle))
            except cupy.cuda.runtime.CUDARuntimeError as exc:
                return [], f"could not open rank {peer}'s IPC handle: {exc}"
            self._opened.append(pointers[-1])
        return pointers, None

    def path(self, array: Any) -> str:
        """ONE_SHOT or NCCL: which all-reduce `array` takes."""
        return choose_path(str(array.dtype), array.nbytes, array.data.ptr, self.max_one_shot_bytes)

    def all_reduce(self, array: Any) -> None:
        """Sum `array` over the ranks, in place, on the current stream."""
        if array.flags.c_contiguous and self.path(array) == ONE_SHOT:
            self.one_shot.all_reduce(array)
        else:
            self.nccl.all_reduce(array)

    def all_gather(self, send: Any, recv: Any) -> None:
        self.nccl.all_gather(send, recv)

    def synchronize(self, what: str = "queued work") -> None:
        """Wait for the current stream (bounded, see NcclCommunicator.synchronize), then raise
        if a one-shot call gave up waiting for a peer."""
        self.nccl.synchronize(what)
        self.one_shot.check()

    def barrier(self) -> None:
        self.nccl.barrier()
        self.one_shot.check()

    @property
    def aborted(self) -> bool:
        return self.nccl.aborted

    def abort(self) -> None:
        """Tear down at once (see NcclCommunicator.abort) and release the IPC memory."""
        self.nccl.abort()
        self._release()

    def close_ipc(self) -> None:
        """Release the IPC memory after a clean run (every rank; no graph that holds the
        one-shot kernel may be alive), keeping the NCCL communicator (its owner closes it)."""
        self.nccl.barrier()
        self._close_peers()
        self.nccl.barrier()  # no rank frees its workspace while a peer still has it open
        self._release()

    def close(self) -> None:
        """Release the IPC memory and the NCCL communicator after a clean run (every rank)."""
        self.close_ipc()
        self.nccl.close()

    def _close_peers(self) -> None:
        import cupy

        while self._opened:
            cupy.cuda.runtime.ipcCloseMemHandle(self._opened.pop())

    def _release(self) -> None:
        import cupy

        self._close_peers()
        if self._own:
            cupy.cuda.runtime.free(self._own)
            self._own = 0


def connect_one_shot(
    info: Any = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_one_shot_bytes: int = DEFAULT_MAX_ONE_SHOT_BYTES,
    blocks: int = DEFAULT_BLOCKS,
) -> IpcCommunicator:
    """`launch.connect` (select this rank's GPU, join NCCL), then set up the one-shot path."""
    from ftbench.runtime.launch import connect

    nccl = connect(info, timeout_s)
    try:
        return IpcCommunicator(nccl, max_one_shot_bytes, blocks)
    except BaseException:
        nccl.abort()
        raise
