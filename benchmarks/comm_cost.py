"""What tensor parallelism's communication costs inside a batch-1 decode step, on one GPU.

For GPT-J 6B and LLaMA-2 13B (random fp16 weights, the tuned caches `tuned-<model>.json` in
`--caches`), the median decode step (128-token prompt, 128 steps, CUDA graphs, the first of
`REQUESTS` requests a warm-up) of:

- `--measure free`: rank 0's shard at tp=1 and tp=2, the tp=2 one with a communicator whose
  all-reduce does nothing and whose all-gather copies only its own slice. The logits are wrong,
  the time is what a TP=2 step costs apart from communication: TP=2's measured step minus this
  is what its all-reduces cost in the real step (`benchmarks/parallel.py`), and TP=1's step
  over this bounds TP=2's speed-up.
- `--measure one-rank`: TP=1 with no communicator, with NCCL of one rank, with the one-shot IPC
  kernel of one rank (`runtime.ipc.IpcCommunicator`), then none again. The decoder calls the
  communicator at every all-reduce point (29 a step for GPT-J, 81 for LLaMA-2 13B), so the
  step's growth over "none" is those calls' own cost inside the graph, waiting for no one.

    python benchmarks/comm_cost.py --measure free --caches DIR [--out-dir benchmarks/results]

Writes DIR/comm-cost-<measure>-<time>.json (kind "comm-cost"): per model and variant (tp1, tp2;
or none, nccl, one-shot, none again) the median decode step in ms.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from _harness import parser, result_path, write

MODELS = ("gptj-6b", "llama2-13b")
REQUESTS = 4  # the first is a warm-up


class FreeCommunicator:
    """A communicator of `world_size` ranks whose calls move nothing (timing only)."""

    def __init__(self, world_size: int) -> None:
        self.rank, self.world_size = 0, world_size

    def all_reduce(self, array) -> None:
        pass

    def all_gather(self, send, recv) -> None:
        recv[0] = send

    def synchronize(self, what: str = "") -> None:
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def step_ms(spec, weights, gemm, comm, tp: int = 1) -> float:
    """The median batch-1 decode step (ms) of a decoder of `weights` with `comm`."""
    from ftbench.runtime.generate import Generator
    from ftbench.runtime.rank import make_decoder

    decoder = make_decoder(spec, weights, max_batch=1, max_seq_len=256, gemm=gemm, tp=tp, comm=comm)
    generator = Generator(decoder)
    prompt = [np.random.default_rng(0).integers(0, spec.vocab_size, 128)]
    steps = [generator.generate(prompt, 128).step_ms for _ in range(REQUESTS)]
    return float(np.median(np.concatenate(steps[1:])))


def free(spec, gemm) -> Iterator[tuple[str, float]]:
    import cupy

    from ftbench.runtime.random_weights import random_weights

    for tp in (1, 2):
        weights = random_weights(spec, "fp16", seed=0, tp=tp, xp=cupy)
        yield f"tp{tp}", step_ms(spec, weights, gemm, FreeCommunicator(tp) if tp > 1 else None, tp)
        del weights
        cupy.get_default_memory_pool().free_all_blocks()


def one_rank(spec, gemm) -> Iterator[tuple[str, float]]:
    import cupy

    from ftbench.runtime.ipc import IpcCommunicator
    from ftbench.runtime.launch import RankInfo, connect
    from ftbench.runtime.random_weights import random_weights

    weights = random_weights(spec, "fp16", seed=0, xp=cupy)
    nccl = connect(RankInfo(0, 1, 0, "single"), timeout_s=60.0)
    one_shot = IpcCommunicator(nccl)
    for name, comm in (("none", None), ("nccl", nccl), ("one-shot", one_shot),
                       ("none again", None)):  # fmt: skip
        yield name, step_ms(spec, weights, gemm, comm)
    one_shot.close()
    del weights
    cupy.get_default_memory_pool().free_all_blocks()


def main() -> None:
    from ftbench.bench.environment import capture_environment
    from ftbench.gemm.cache import load_cache
    from ftbench.gemm.dispatch import GemmDispatch
    from ftbench.profiles.catalog import load_builtin

    arguments = parser(__doc__)
    arguments.add_argument("--measure", choices=("free", "one-rank"), required=True)
    arguments.add_argument("--caches", type=Path, required=True, help="holds tuned-<model>.json")
    args = arguments.parse_args()
    environment = capture_environment()
    measure = {"free": free, "one-rank": one_rank}[args.measure]
    path = result_path(args.out_dir, f"comm-cost-{args.measure}")
    records = []
    for model in MODELS:
        spec = load_builtin(model)
        gemm = GemmDispatch(load_cache(args.caches / f"tuned-{model}.json"))
        for variant, ms in measure(spec, gemm):
            records.append({"model": model, "variant": variant, "decode_step_ms": ms})
            print(model, variant, ms, flush=True)
            write(path, "comm-cost", records, environment)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
