"""Runtime acceptance: correctness against HF transformers, then GPT-J 6B first speed numbers.

1. For GPT-J (partial rotary), GPT-2 and LLaMA (GQA), fp16 and bf16: small random HF models
   saved as safetensors, loaded by ftbench, compared with HF in float64 (`validation.hf_check`):
   largest relative logit error over a ragged prefill and 32 teacher-forced decode steps, and
   greedy token agreement over 32 generated tokens.
2. GPT-J 6B fp16 with random weights, 128 tokens in and 128 out at batch 1 and 64: time to
   first token and decode step times (CUDA events on the generator's stream, one warm-up
   generation first), against the step's floor: weights plus KV cache read once at the HBM
   read bandwidth measured in the same run. Untuned (library default GEMMs) and, with --cache,
   through a tuned-config cache.

    python benchmarks/runtime_acceptance.py --out-dir benchmarks/results [--cache FILE]

Writes DIR/runtime-<time>.json (all numbers, environment) and DIR/acceptance/runtime.json.
"""

from __future__ import annotations

import tempfile

import numpy as np

from _harness import parser, result_path, write, write_summary
from ftbench.bench.environment import capture_environment
from ftbench.bench.stats import summarize
from ftbench.gemm.cache import open_tuned_cache
from ftbench.gemm.dispatch import GemmDispatch
from ftbench.modelbench.ceilings import read_bandwidth
from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.generate import Generator
from ftbench.runtime.model import Decoder
from ftbench.runtime.random_weights import random_weights
from ftbench.validation.hf_check import CASES, DTYPES, compare_with_hf

INPUT_LEN = 128
OUTPUT_LEN = 128
BATCHES = (1, 64)
REPEATS = 3


def correctness_cases() -> list[dict]:
    cases = []
    for case in CASES:
        for dtype in DTYPES:
            with tempfile.TemporaryDirectory() as directory:
                result = compare_with_hf(case, dtype, directory).to_dict()
            print(result, flush=True)
            cases.append(result)
    return cases


def gptj_speed(cache_path: str | None, environment, hbm_bytes_per_s: float) -> list[dict]:
    import cupy

    spec = load_builtin("gptj-6b")
    weights = random_weights(spec, "fp16", seed=0, xp=cupy)
    records = []
    for label, path in [("untuned", None)] + ([("tuned", cache_path)] if cache_path else []):
        gemm = GemmDispatch(open_tuned_cache(path, environment).cache if path else None)
        decoder = Decoder(
            spec, weights, max_batch=max(BATCHES), max_seq_len=INPUT_LEN + OUTPUT_LEN,
            max_tokens=max(BATCHES) * INPUT_LEN, gemm=gemm,
        )  # fmt: skip
        generator = Generator(decoder)
        rng = np.random.default_rng(0)
        for batch in BATCHES:
            prompts = list(rng.integers(0, spec.vocab_size, (batch, INPUT_LEN)))
            generator.generate(prompts, OUTPUT_LEN)  # warm-up: compile, resolve, capture
            runs = [generator.generate(prompts, OUTPUT_LEN) for _ in range(REPEATS)]
            steps = np.concatenate([run.step_ms for run in runs])
            step = summarize(steps)
            kv_bytes = (
                decoder.kv_cache[:, :, :batch].nbytes
                * (INPUT_LEN + OUTPUT_LEN / 2)
                / (INPUT_LEN + OUTPUT_LEN)
            )
            floor_ms = (decoder.footprint.weights + kv_bytes) / hbm_bytes_per_s * 1e3
            record = {
                "model": "gptj-6b", "dtype": "fp16", "gemm": label, "batch": batch,
                "input_len": INPUT_LEN, "output_len": OUTPUT_LEN,
                "ttft_ms": [run.ttft_ms for run in runs],
                "decode_step_median_ms": step.median,
                "decode_step_ci_ms": [step.ci_low, step.ci_high],
                "decode_step_samples_ms": steps.tolist(),
                "tokens_per_s": batch * OUTPUT_LEN / np.mean(
                    [(run.ttft_ms + run.step_ms.sum()) / 1e3 for run in runs]
                ),
                "floor_decode_step_ms": floor_ms,
                "fraction_of_floor": floor_ms / step.median,
                "gemm_dispatch": gemm.stats.to_dict(),
                "footprint": decoder.footprint.to_dict(),
            }  # fmt: skip
            print({k: v for k, v in record.items() if "samples" not in k}, flush=True)
            records.append(record)
        del decoder, generator
        cupy.get_default_memory_pool().free_all_blocks()
    return records


def main() -> None:
    arguments = parser(__doc__, summary=True)
    arguments.add_argument("--cache", help="a tuned-config cache for the tuned GPT-J run")
    arguments.add_argument("--skip-hf", action="store_true", help="skip the HF comparison")
    args = arguments.parse_args()
    environment = capture_environment()
    cases = [] if args.skip_hf else correctness_cases()
    hbm = read_bandwidth()["bytes_per_s"]
    print(f"HBM read {hbm / 1e12:.2f} TB/s", flush=True)
    speed = gptj_speed(args.cache, environment, hbm)
    records = [{"kind": "hf-comparison", **case} for case in cases]
    records += [{"kind": "gptj-speed", "hbm_read_bytes_per_s": hbm, **row} for row in speed]
    path = write(result_path(args.out_dir, "runtime"), "runtime-acceptance", records, environment)
    summary = {
        "cases": [
            {
                key: case[key]
                for key in (
                    "model",
                    "dtype",
                    "max_rel_logit_err",
                    "greedy_token_agreement",
                    "teacher_forced_agreement",
                    "greedy_divergence_margin",
                )  # fmt: skip
            }
            for case in cases
        ],
        "gptj_6b_fp16": [
            {
                key: row[key]
                for key in (
                    "gemm",
                    "batch",
                    "ttft_ms",
                    "decode_step_median_ms",
                    "floor_decode_step_ms",
                    "fraction_of_floor",
                    "tokens_per_s",
                )
            }
            for row in speed
        ],  # fmt: skip
        "hbm_read_tb_per_s": hbm / 1e12,
        "utc_time": environment.utc_time,
        "source": str(path),
    }
    if cases:
        device = environment.device_label(args.device_kind)
        write_summary(args.out_dir, "runtime", summary, device, environment.git_commit)


if __name__ == "__main__":
    main()
