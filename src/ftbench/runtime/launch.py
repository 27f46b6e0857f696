"""Ranks of a tensor-parallel run: who am I, how the NCCL id travels, and the local spawner.

One process per GPU. A process learns its rank from the environment its launcher set
(`discover`), first match wins:

| launcher | rank | world size | local rank |
| --- | --- | --- | --- |
| ftbench's spawner (`spawn`) | FTBENCH_RANK | FTBENCH_WORLD_SIZE | FTBENCH_LOCAL_RANK |
| OpenMPI `mpirun` | OMPI_COMM_WORLD_RANK | OMPI_COMM_WORLD_SIZE | OMPI_COMM_WORLD_LOCAL_RANK |
| MPICH / Hydra `mpiexec` | PMI_RANK | PMI_SIZE | MPI_LOCALRANKID |
| Slurm `srun` (inside a step) | SLURM_PROCID | SLURM_NTASKS | SLURM_LOCALID |
| none | 0 | 1 | 0 |

Slurm variables count only inside an `srun` step (SLURM_STEP_ID set): a batch script itself
also sees SLURM_NTASKS but is one process. The local rank picks the GPU.

Rank 0 creates the NCCL unique id (its bootstrap listens in that process) and the others receive
it: through `mpi4py` (a broadcast) under MPI, or through a file in the rendezvous directory
FTBENCH_RENDEZVOUS (the spawner makes a fresh one; under Slurm without MPI, point it at a
shared file system), named after the run (FTBENCH_RUN_ID, or the Slurm job and step). A run of
tp x pp ranks (`connect_groups`) also needs a communicator per pipeline stage (its tp ranks)
and one per tensor-parallel rank (its pp stages): rank 0 makes all their ids at once and they
travel the same way.

Failure: `run_rank` aborts the rank's communicator on any error (releasing the other ranks'
collectives, whose bounded waits then fail too) and, under MPI, calls MPI_Abort, which stops
every rank; the spawner stops every rank as soon as one exits with an error (or on Ctrl-C) and
says which rank failed. Under `srun`, use `--kill-on-bad-exit=1` for the same effect. A rank
that a launcher stops (SIGTERM) aborts its communicator and says so. Without a launcher to stop
it (ranks started by hand, or `srun` without that flag), a rank whose peer *on the same host*
died ends itself with a message within about `WATCH_INTERVAL_S + WATCH_GRACE_S` (`PeerWatch`,
a thread: the rank may be stuck in a kernel launch behind a collective that waits for the dead
peer, where no timeout reaches); a peer on another host that died or hangs is found at the
next host wait (`Decoder.wait`, the communicators' `synchronize` and `barrier`), which gives up
after the communicator's timeout (`ftbench run --timeout`) and raises.

`python -m ftbench.runtime.launch check` is a rank program that joins the group, checks an
all-reduce, an all-gather and a barrier against the exact answers and prints one JSON line;
`python -m ftbench.runtime.launch spawn N -- COMMAND...` runs COMMAND as N local ranks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.files import write_json_atomic
from ftbench.runtime.parallel import DEFAULT_TIMEOUT_S, CollectiveTimeoutError, all_gather_bytes

# (launcher, rank, world size, local rank) variables, in the order they are tried.
LAUNCHER_VARIABLES = (
    ("ftbench", "FTBENCH_RANK", "FTBENCH_WORLD_SIZE", "FTBENCH_LOCAL_RANK"),
    ("mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)
RENDEZVOUS_VARIABLE = "FTBENCH_RENDEZVOUS"
RUN_ID_VARIABLE = "FTBENCH_RUN_ID"
# After asking ranks to stop (SIGTERM), the spawner kills those still alive after this long.
STOP_GRACE_S = 5.0
SPAWN_POLL_S = 0.05
# A rank looks this often whether the other ranks on its host are alive (`PeerWatch`), and
# looks again this much later before it gives up on the group.
WATCH_INTERVAL_S = 0.5
WATCH_GRACE_S = 2.0
PEER_HOST_BYTES = 64

Result = TypeVar("Result")


class RankFailedError(FtbenchError):
    """A rank of a multi-process run failed; the others were stopped."""


class RankStoppedError(FtbenchError):
    """The launcher asked this rank to stop (SIGTERM), as launchers do when another rank fails."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise RankStoppedError(
        "stopped by its launcher (SIGTERM), which stops every rank once one has failed"
    )


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the run: global rank, world size, rank on its node, launcher."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _integer(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError(
            f"environment variable {name}={value!r} is not an integer"
        ) from None


def discover(env: Mapping[str, str] | None = None) -> RankInfo:
    """This process's rank from its launcher's environment (see the module docstring)."""
    env = os.environ if env is None else env
    for launcher, rank_name, size_name, local_name in LAUNCHER_VARIABLES:
        if rank_name not in env:
            continue
        if launcher == "slurm" and "SLURM_STEP_ID" not in env:
            continue
        if size_name not in env:
            raise InvalidInputError(f"{rank_name} is set but {size_name} is not")
        rank, size = _integer(env, rank_name), _integer(env, size_name)
        local = _integer(env, local_name) if local_name in env else rank
        if size < 1 or not 0 <= rank < size or local < 0:
            raise InvalidInputError(
                f"{launcher} environment gives rank {rank} of {size} (local rank {local}); "
                f"a rank must be in 0..world size - 1"
            )
        return RankInfo(rank, size, local, launcher)
    return RankInfo(0, 1, 0, "single")


def run_id(env: Mapping[str, str] | None = None) -> str:
    """A name shared by the ranks of one run and no other (for the rendezvous file)."""
    env = os.environ if env is None else env
    if RUN_ID_VARIABLE in env:
        return env[RUN_ID_VARIABLE]
    if "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', 'batch')}"
    raise InvalidInputError(
        f"no run id: set {RUN_ID_VARIABLE} to the same fresh value on every rank"
    )


def exchange_via_file(
    info: RankInfo,
    make: Callable[[], Any],
    directory: str | Path,
    name: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """Rank 0 writes make() to directory/name (atomically); the others wait for it and read it."""
    path = Path(directory) / f"{name}.json"
    if info.rank == 0:
        value = make()
        write_json_atomic(path, {"value": value})
        return value
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise CollectiveTimeoutError(
                f"rank {info.rank} waited {timeout_s:g} s for rank 0's {path}; rank 0 has "
                "failed, or the ranks do not share that directory"
            )
        time.sleep(SPAWN_POLL_S)
    return json.loads(path.read_text())["value"]


def _mpi_world() -> Any:
    from mpi4py import MPI

    return MPI.COMM_WORLD


def share_from_rank0(
    info: RankInfo,
    make: Callable[[], Any],
    env: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    name: str = "nccl-id",
) -> Any:
    """make() evaluated on rank 0 and handed to every rank: via MPI under mpirun, else via the
    rendezvous directory (also for one rank, so a launcher's path is the same at any size)."""
    env = os.environ if env is None else env
    if info.launcher == "single":
        return make()
    if info.launcher == "mpi":
        try:
            world = _mpi_world()
        except ImportError:
            raise InvalidInputError(
                "launched by MPI but mpi4py is not installed (pip install mpi4py)"
            ) from None
        return world.bcast(make() if info.rank == 0 else None, root=0)
    if RENDEZVOUS_VARIABLE not in env:
        raise InvalidInputError(
            f"{info.launcher} launch of {info.world_size} ranks needs {RENDEZVOUS_VARIABLE}: a "
            "directory every rank can read (or run under mpirun, with mpi4py)"
        )
    return exchange_via_file(
        info, make, env[RENDEZVOUS_VARIABLE], f"{name}-{run_id(env)}", timeout_s
    )


def visible_gpus() -> int:
    """How many GPUs this process can use (0 without CuPy or a driver)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: none visible
        return 0


def connect_groups(
    info: RankInfo, world: Any, tp: int, pp: int, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[Any, Any]:
    """This rank's (tensor, pipeline) communicators in a run of tp x pp ranks
    (`runtime.pipeline`: global rank = stage * tp + tensor-parallel rank); `world` itself
    where a group spans every rank, None where it would have one rank. Close them (when they
    are not `world`) after the run."""
    from ftbench.runtime.parallel import NcclCommunicator
    from ftbench.runtime.pipeline import rank_place

    if tp * pp != info.world_size:
        raise InvalidInputError(
            f"tp={tp} x pp={pp} needs {tp * pp} ranks; the launcher started {info.world_size}"
        )
    if tp == 1 or pp == 1:
        return (world if tp > 1 else None), (world if pp > 1 else None)

    def make() -> dict[str, list[list[int]]]:
        new = NcclCommunicator.new_unique_id
        return {"tensor": [new() for _ in range(pp)], "pipeline": [new() for _ in range(tp)]}

    ids = share_from_rank0(info, make, timeout_s=timeout_s, name="nccl-groups")
    stage, tp_rank = rank_place(info.rank, tp, pp)
    tensor = NcclCommunicator(tp, tp_rank, ids["tensor"][stage], timeout_s)
    pipeline = NcclCommunicator(pp, stage, ids["pipeline"][tp_rank], timeout_s)
    return tensor, pipeline


def connect(info: RankInfo | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """Select this rank's GPU and join the NCCL group; the `NcclCommunicator`."""
    import cupy

    from ftbench.runtime.parallel import NcclCommunicator

    info = info or discover()
    devices = cupy.cuda.runtime.getDeviceCount()
    if info.local_rank >= devices:
        raise InvalidInputError(
            f"rank {info.rank} has local rank {info.local_rank} but this node shows {devices} "
            "GPU(s); start at most one rank per GPU"
        )
    cupy.cuda.Device(info.local_rank).use()
    unique_id = share_from_rank0(info, NcclCommunicator.new_unique_id, timeout_s=timeout_s)
    return NcclCommunicator(info.world_size, info.rank, unique_id, timeout_s)


@dataclass(frozen=True)
class Peer:
    """Where a rank's process runs: its host and process id."""

    host: str
    pid: int


def neighbours(peers: Sequence[Peer], rank: int, alive: Callable[[int], bool]) -> list[int]:
    """The other ranks whose process `rank` can see: on its host, and `alive(pid)` now (ranks
    on other hosts, or in another process namespace of this host, cannot be watched)."""
    host = peers[rank].host
    return [
        peer
        for peer, where in enumerate(peers)
        if peer != rank and where.host == host and alive(where.pid)
    ]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def gather_peers(comm: Any) -> list[Peer]:
    """Every rank's `Peer`, by rank, exchanged over `comm` (collective)."""
    host = socket.gethostname().encode()[:PEER_HOST_BYTES].ljust(PEER_HOST_BYTES, b"\0")
    mine = os.getpid().to_bytes(4, "little") + host
    return [
        Peer(part[4:].rstrip(b"\0").decode(errors="replace"), int.from_bytes(part[:4], "little"))
        for part in all_gather_bytes(comm, mine, "the exchange of process ids")
    ]


class PeerWatch:
    """A thread that ends this process (exit code 1, with a message) soon after a rank it can
    see (`neighbours`, at construction) has died: this rank may be stuck where no timeout
    reaches (a kernel launch waiting for a GPU that waits, in a collective, for the dead
    rank). A rank seen gone is looked at again after `grace_s`, so one that exits normally at
    the end while this rank finishes its last barrier does not count once `stop` was called."""

    def __init__(
        self, peers: Sequence[Peer], rank: int, interval_s: float = WATCH_INTERVAL_S,
        grace_s: float = WATCH_GRACE_S, alive: Callable[[int], bool] = _process_alive,
        on_dead: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.peers, self.rank = list(peers), rank
        self.interval_s, self.grace_s, self.alive = interval_s, grace_s, alive
        self.on_dead = on_dead or _exit_now
        self.watched = neighbours(peers, rank, alive)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ftbench-peer-watch", daemon=True)

    def start(self) -> PeerWatch:
        if self.watched:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def dead(self) -> list[int]:
        """The watched ranks whose process has gone."""
        return [peer for peer in self.watched if not self.alive(self.peers[peer].pid)]

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.dead():
                continue
            if self._stop.wait(self.grace_s):
                return
            dead = self.dead()
            if dead:
                names = ", ".join(f"rank {p} (pid {self.peers[p].pid})" for p in dead)
                self.on_dead(
                    f"ftbench: rank {self.rank} of {len(self.peers)} stopped: {names} on this "
                    "host exited while the run went on; the group cannot finish"
                )
                return


def _exit_now(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


def run_rank(fn: Callable[[RankInfo, Any], Result], timeout_s: float = DEFAULT_TIMEOUT_S) -> Result:
    """Join the group, run fn(info, communicator), end with a barrier. On an error, or when
    the launcher stops the rank (SIGTERM: `RankStoppedError`), the communicator is aborted
    (and, under MPI, every rank stopped) before it propagates. Call it from the main thread."""
    info = discover()
    # A launcher stops the other ranks with SIGTERM when one fails: leave through the handler
    # below (abort the communicator, say why) rather than silently.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    comm = connect(info, timeout_s)
    watch = None
    try:
        watch = PeerWatch(gather_peers(comm), info.rank).start()
        result = fn(info, comm)
        comm.barrier()
        watch.stop()
    except BaseException as exc:
        if watch is not None:
            watch.stop()
        comm.abort()
        how = "stopped" if isinstance(exc, RankStoppedError) else "failed"
        print(f"ftbench: rank {info.rank} of {info.world_size} {how}: {exc}", file=sys.stderr)
        if info.launcher == "mpi" and info.world_size > 1:
            sys.stderr.flush()
            _mpi_world().Abort(1)
        raise
    comm.close()
    return result


def spawn(world_size: int, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Run `command` as `world_size` local ranks (one per GPU) and wait for all of them.

    If one exits with an error, or on Ctrl-C, the others are stopped (SIGTERM, then SIGKILL
    after `STOP_GRACE_S`) and `RankFailedError` names the rank that failed.
    """
    if world_size < 1:
        raise InvalidInputError(f"world size must be at least 1, got {world_size}")
    base = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="ftbench-rendezvous-") as rendezvous:
        shared = {RENDEZVOUS_VARIABLE: rendezvous, RUN_ID_VARIABLE: uuid.uuid4().hex}
        processes = [
            subprocess.Popen(
                list(command),
                env={
                    **base,
                    **shared,
                    "FTBENCH_RANK": str(rank),
                    "FTBENCH_WORLD_SIZE": str(world_size),
                    "FTBENCH_LOCAL_RANK": str(rank),
                },
            )  # fmt: skip
            for rank in range(world_size)
        ]
        try:
            _wait_all(processes)
        except BaseException:
            _stop(processes)
            raise


def _wait_all(processes: list[subprocess.Popen]) -> None:
    while True:
        codes = [process.poll() for process in processes]
        failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            rank, code = failed[0]
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            live = sum(code is None for code in codes)
            raise RankFailedError(
                f"rank {rank} of {len(processes)} failed ({how}); stopped the {live} "
                "rank(s) still running"
            )
        if all(code == 0 for code in codes):
            return
        time.sleep(SPAWN_POLL_S)


def _stop(processes: list[subprocess.Popen]) -> None:
    live = [process for process in processes if process.poll() is None]
    for process in live:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in live:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _check(info: RankInfo, comm: Any) -> dict[str, Any]:
    """Collectives against their exact answers: all-reduce of rank + 1, all-gather of ranks."""
    import cupy

    size = info.world_size
    values = cupy.full(1000, info.rank + 1, cupy.float32)
    comm.all_reduce(values)
    gathered = cupy.empty((size, 3), cupy.int32)
    comm.all_gather(cupy.full(3, info.rank, cupy.int32), gathered)
    comm.synchronize("the check's collectives")
    expected_sum = size * (size + 1) / 2
    ok = bool((values == expected_sum).all()) and bool(
        (gathered == cupy.arange(size, dtype=cupy.int32)[:, None]).all()
    )
    if not ok:
        raise FtbenchError(f"rank {info.rank}: NCCL all-reduce or all-gather gave wrong values")
    return {**info.to_dict(), "device": cupy.cuda.Device().id, "collectives_ok": ok}


def main(argv: Sequence[str] | None = None) -> int:
    """`check` (a rank program) or `spawn N -- COMMAND...` (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["check"]:
            print(json.dumps(run_rank(_check)), flush=True)
            return 0
        if args[:1] == ["spawn"] and len(args) >= 4 and args[2] == "--":
            spawn(int(args[1]), args[3:])
            return 0
    except FtbenchError as exc:
        print(f"ftbench: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m ftbench.runtime.launch check | spawn N -- COMMAND...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
