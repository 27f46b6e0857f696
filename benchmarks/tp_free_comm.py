"""A tensor-parallel rank's decode step with its communicator made free: the step's compute part.

One GPU. For each model, rank 0's shard at tp=1 and tp=2 runs batch-1 decode (128-token prompt,
128 steps, CUDA graphs, a tuned cache) with a communicator whose all-reduce does nothing and
whose all-gather copies only its own slice: the logits are wrong, the time is what a TP=2 step
costs apart from communication. TP=2's measured step minus this is what its all-reduces cost in
the real step (`benchmarks/parallel.py`); TP=1's step over this bounds TP=2's speed-up.

    python benchmarks/tp_free_comm.py --caches DIR --out FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

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


def main() -> None:
    import cupy

    from ftbench.autotune.cache import load_cache
    from ftbench.kernels.gemm import GemmDispatch
    from ftbench.profiles.catalog import load_builtin
    from ftbench.runtime.generate import Generator
    from ftbench.runtime.model import Decoder
    from ftbench.runtime.weights import random_weights

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caches", type=Path, required=True, help="holds tuned-<model>.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    for model in MODELS:
        spec = load_builtin(model)
        gemm = GemmDispatch(load_cache(args.caches / f"tuned-{model}.json"))
        prompt = [np.random.default_rng(0).integers(0, spec.vocab_size, 128)]
        for tp in (1, 2):
            weights = random_weights(spec, "fp16", seed=0, tp=tp, xp=cupy)
            comm = FreeCommunicator(tp) if tp > 1 else None
            decoder = Decoder(spec, weights, max_batch=1, max_seq_len=256, gemm=gemm, tp=tp,
                              comm=comm)  # fmt: skip
            generator = Generator(decoder)
            steps = [generator.generate(prompt, 128).step_ms for _ in range(REQUESTS)]
            median = float(np.median(np.concatenate(steps[1:])))
            results[f"{model} tp{tp}"] = {"step_ms": median, "gemm": gemm.stats.to_dict()}
            print(model, tp, median, flush=True)
            del decoder, generator, weights
            cupy.get_default_memory_pool().free_all_blocks()
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
