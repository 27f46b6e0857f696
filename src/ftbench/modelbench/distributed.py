"""`ftbench run` over tp x pp ranks: which process does what, and one rank's measurement.

Started as one process on a machine of enough GPUs, `ftbench run --tp N --pp M` spawns one
process per rank (the same command line) and waits; under mpirun or srun each process is a rank
the launcher made. Every rank joins its stage's tensor group and the pipeline group, measures
its part of every point, and rank 0 hands the records on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ftbench.errors import InvalidInputError
from ftbench.gemm.cache import TunedChoice
from ftbench.modelbench.engine import Ranks, run_benchmark
from ftbench.modelbench.grid import RunConfig
from ftbench.runtime import launch
from ftbench.runtime.ipc import ONE_SHOT, IpcCommunicator
from ftbench.runtime.pipeline import Stage, rank_place, stage_plan


def launch_mode(run: RunConfig, info: launch.RankInfo) -> str:
    """What this process does for `run`: "single" (measure on this GPU), "spawn" (start one
    rank per local GPU and wait) or "rank" (be the rank a launcher started). Too few GPUs or
    ranks for tp x pp is an InvalidInputError."""
    ranks = run.tp * run.pp
    if info.launcher == "single":
        if ranks == 1:
            return "single"
        gpus = launch.visible_gpus()
        if ranks > gpus:
            raise InvalidInputError(
                f"--tp {run.tp} --pp {run.pp} needs {ranks} GPUs, one per rank; this machine "
                f"shows {gpus} (for more, launch ranks on several nodes with mpirun or srun)"
            )
        return "spawn"
    if info.world_size != ranks:
        raise InvalidInputError(
            f"--tp {run.tp} --pp {run.pp} needs {ranks} ranks; the {info.launcher} launcher "
            f"started {info.world_size}"
        )
    return "rank"


def run_as_rank(
    run: RunConfig,
    info: launch.RankInfo,
    world: Any,
    on_record: Callable[[dict[str, Any]], None],
    allreduce: str,
    tuned: TunedChoice,
) -> bool:
    """One rank of a tp x pp run: join the stage's groups, measure every point; on rank 0 hand
    each record (with the all-reduce method) to `on_record`. Any failure aborts every group, so
    that no peer waits at a collective for this rank. True on rank 0."""
    tensor, pipeline = launch.connect_groups(info, world, run.tp, run.pp, world.timeout_s)
    groups = [comm for comm in (tensor, pipeline) if comm is not None and comm is not world]
    one_shot = None
    try:
        if allreduce == ONE_SHOT and tensor is not None:
            one_shot = IpcCommunicator(tensor)
        index, tp_rank = rank_place(info.rank, run.tp, run.pp)
        stage = Stage(index, run.pp, stage_plan(run.spec, run.pp)[index], pipeline)
        ranks = Ranks(info.rank, world, one_shot or tensor, stage, tp_rank)

        def on_rank_record(record: dict[str, Any]) -> None:
            if info.rank == 0:
                on_record({**record, "allreduce": allreduce})

        run_benchmark(run, on_rank_record, ranks=ranks, tuned=tuned)
    except BaseException:
        for comm in (one_shot, *groups):
            if comm is not None:
                comm.abort()
        raise
    if one_shot is not None:
        one_shot.close_ipc()
    for comm in groups:
        comm.close()
    return info.rank == 0
