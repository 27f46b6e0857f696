"""What a communicator's calls add to a decode step when there is no peer: one GPU, TP=1.

For GPT-J 6B and LLaMA-2 13B (random fp16 weights, the tuned caches of `--caches`), batch-1
decode (128-token prompt, 128 steps, CUDA graphs) with no communicator, with NCCL of one rank
and with the one-shot IPC kernel of one rank (`runtime.ipc.IpcCommunicator`), then again with
none: the decoder calls the communicator at every all-reduce point (29 a step for GPT-J, 81 for
LLaMA-2 13B), so the step's growth over "none" is those calls' own cost inside the graph,
waiting for no one.

    python benchmarks/one_rank_comm.py --caches DIR --out FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODELS = ("gptj-6b", "llama2-13b")
REQUESTS = 4  # the first is a warm-up


def main() -> None:
    import cupy

    from ftbench.autotune.cache import load_cache
    from ftbench.kernels.gemm import GemmDispatch
    from ftbench.profiles.catalog import load_builtin
    from ftbench.runtime.generate import Generator
    from ftbench.runtime.ipc import IpcCommunicator
    from ftbench.runtime.launch import RankInfo, connect
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
        weights = random_weights(spec, "fp16", seed=0, xp=cupy)
        prompt = [np.random.default_rng(0).integers(0, spec.vocab_size, 128)]
        nccl = connect(RankInfo(0, 1, 0, "single"), timeout_s=60.0)
        one_shot = IpcCommunicator(nccl)
        for name, comm in (("none", None), ("nccl", nccl), ("one-shot", one_shot),
                           ("none again", None)):  # fmt: skip
            decoder = Decoder(spec, weights, max_batch=1, max_seq_len=256, gemm=gemm, comm=comm)
            generator = Generator(decoder)
            steps = [generator.generate(prompt, 128).step_ms for _ in range(REQUESTS)]
            results[f"{model} {name}"] = float(np.median(np.concatenate(steps[1:])))
            print(model, name, results[f"{model} {name}"], flush=True)
            del decoder, generator
        one_shot.close()
        del weights
        cupy.get_default_memory_pool().free_all_blocks()
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
