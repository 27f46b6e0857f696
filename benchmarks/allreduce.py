"""All-reduce latency per message size: NCCL against the one-shot kernel over CUDA IPC.

One process per GPU, any launcher (`runtime.launch`): every rank joins NCCL, sets up the one-shot
path (`runtime.ipc.IpcCommunicator`), checks both all-reduces on exact values, then times an
in-place fp16 all-reduce of each size both ways with `bench.timer.time_fixed` (the same counts
on every rank, batched in a CUDA graph). Rank 0 writes the results.

    python -m ftbench.runtime.launch spawn 2 -- python benchmarks/allreduce.py
    mpirun -n 8 python benchmarks/allreduce.py
    python benchmarks/allreduce.py --emulate 2     # one GPU: N one-shot ranks on N streams

With --emulate N, the one-shot kernel runs as N ranks on one GPU (`ipc.local_group`, each rank on
its own stream, all in one graph node set per call), timed with `bench.timer.time_launch`, next to
NCCL with one rank. Those numbers say what the kernel costs, not what NVLink does.

Writes DIR/allreduce-<time>.json.
"""

from __future__ import annotations

from _harness import parser, result_path, write
from ftbench.bench.environment import capture_environment
from ftbench.bench.timer import TimingPolicy, time_fixed, time_launch

SIZES_BYTES = [2**k for k in range(13, 21)]  # 8 KiB .. 1 MiB
DTYPE = "float16"
LAUNCHES_PER_SAMPLE = 50
SAMPLES = 40
POLICY = TimingPolicy(warmup_ms=20.0, min_time_s=0.05, budget_s=1.0)
EMULATED_BLOCKS = 16


def record(timing, method, world_size, emulated, size_bytes):
    return {
        "kind": "allreduce",
        "method": method,
        "world_size": world_size,
        "emulated": emulated,
        "dtype": DTYPE,
        "bytes": size_bytes,
        "median_us": 1e3 * timing.median_ms,
        "min_us": 1e3 * timing.min_ms,
        "ci_low_us": 1e3 * timing.ci_low_ms,
        "ci_high_us": 1e3 * timing.ci_high_ms,
        "timing": timing.to_dict(),
    }


def check_exact(cupy, comm, reduce, size_bytes):
    """One all-reduce of rank + 1 everywhere must give world (world + 1) / 2 exactly."""
    values = cupy.full(size_bytes // 2, comm.rank + 1, cupy.float16)
    reduce(values)
    comm.synchronize("the check")
    expected = comm.world_size * (comm.world_size + 1) / 2
    if not bool((values == expected).all()):
        raise SystemExit(f"rank {comm.rank}: wrong all-reduce result at {size_bytes} bytes")


def run_ranks(sizes):
    import cupy

    from ftbench.runtime.ipc import connect_one_shot
    from ftbench.runtime.launch import discover

    info = discover()
    comm = connect_one_shot(info, timeout_s=60.0, max_one_shot_bytes=max(sizes))
    records = []
    methods = {"nccl": comm.nccl.all_reduce, "one-shot": comm.one_shot.all_reduce}
    for size_bytes in sizes:
        for method, reduce in methods.items():
            check_exact(cupy, comm, reduce, size_bytes)
            values = cupy.zeros(size_bytes // 2, cupy.float16)
            comm.barrier()
            timing = time_fixed(
                lambda _, reduce=reduce, values=values: reduce(values),
                name=f"{method}-{size_bytes}", launches_per_sample=LAUNCHES_PER_SAMPLE,
                samples=SAMPLES,
            )  # fmt: skip
            comm.barrier()
            records.append(record(timing, method, info.world_size, False, size_bytes))
            if info.rank == 0:
                print(
                    f"{method:9s} {size_bytes:8d} B  {1e3 * timing.median_ms:8.2f} us", flush=True
                )
    comm.close()
    return info.rank, records


def run_emulated(world_size, sizes):
    import cupy

    from ftbench.runtime.ipc import local_group
    from ftbench.runtime.launch import RankInfo, connect

    records = []
    nccl = connect(RankInfo(0, 1, 0, "single"), timeout_s=60.0)
    ranks = local_group(world_size, max(sizes), EMULATED_BLOCKS, timeout_s=10.0)
    streams = [cupy.cuda.Stream(non_blocking=True) for _ in ranks]
    fork = cupy.cuda.Event(disable_timing=True)
    joins = [cupy.cuda.Event(disable_timing=True) for _ in ranks]
    for size_bytes in sizes:
        arrays = [cupy.zeros(size_bytes // 2, cupy.float16) for _ in ranks]
        cupy.cuda.Device().synchronize()

        def one_shot(_, arrays=arrays):
            origin = cupy.cuda.get_current_stream()
            fork.record(origin)
            for rank, stream, array, join in zip(ranks, streams, arrays, joins, strict=True):
                stream.wait_event(fork)
                with stream:
                    rank.all_reduce(array)
                join.record(stream)
                origin.wait_event(join)

        timing = time_launch(one_shot, name=f"one-shot-x{world_size}-{size_bytes}", policy=POLICY)
        records.append(record(timing, "one-shot", world_size, True, size_bytes))
        for rank in ranks:
            rank.check()
        timing = time_launch(
            lambda _, values=arrays[0]: nccl.all_reduce(values), name=f"nccl-x1-{size_bytes}",
            policy=POLICY,
        )  # fmt: skip
        records.append(record(timing, "nccl", 1, False, size_bytes))
        print(
            f"{size_bytes:8d} B  one-shot x{world_size} emulated "
            f"{records[-2]['median_us']:8.2f} us  nccl x1 {records[-1]['median_us']:8.2f} us",
            flush=True,
        )
    nccl.close()
    return 0, records


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument(
        "--emulate",
        type=int,
        default=0,
        metavar="N",
        help="N one-shot ranks on this one GPU (and NCCL with one rank)",
    )
    arguments.add_argument("--sizes", type=int, nargs="+", default=SIZES_BYTES,
                           help="message sizes in bytes (even)")  # fmt: skip
    args = arguments.parse_args()
    if any(size < 2 or size % 2 for size in args.sizes):
        arguments.error("sizes must be even numbers of bytes (fp16 elements)")
    environment = capture_environment()
    if args.emulate:
        rank, records = run_emulated(args.emulate, args.sizes)
    else:
        rank, records = run_ranks(args.sizes)
    if rank == 0:
        path = write(result_path(args.out_dir, "allreduce"), "allreduce", records, environment)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
