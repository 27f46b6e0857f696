"""Per-kernel time of GPT-J 6B fp16 decode steps (batch 1 and 64) and a 1x2048 prefill.

Each operation of the step is timed on its own (`runtime.breakdown`), set against its floor
(bytes at the HBM read bandwidth or FLOPs at the GEMM peak, both measured in this run), and the
step is captured as one graph with an event after each operation, so the parts add up to the
whole (and the decode step is compared with the same step of a generation, graphed without
events). Random weights; GEMMs from --cache when given, else the cuBLAS default.

    python benchmarks/breakdown.py --out-dir benchmarks/results [--cache FILE]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ftbench.autotune.cache import CacheHeader, load_cache
from ftbench.bench.ceilings import gemm_peak, read_bandwidth
from ftbench.bench.environment import capture_environment
from ftbench.kernels.gemm import GemmDispatch
from ftbench.profiles.catalog import load_builtin
from ftbench.reports.results import write_results
from ftbench.runtime.breakdown import breakdown
from ftbench.runtime.generate import Generator
from ftbench.runtime.model import Decoder, length_bound
from ftbench.runtime.weights import random_weights


def table(title: str, parts, whole_ms: float, graph_step_ms: float | None) -> dict:
    floor = sum(part.floor_ms for part in parts)
    reference = (
        "" if graph_step_ms is None else f", the same step without events {graph_step_ms:.3f} ms"
    )
    print(f"\n{title}: {whole_ms:.3f} ms{reference}; floor {floor:.3f} ms ({floor / whole_ms:.0%})")
    print(f"{'operation':32} {'x':>3} {'ms/step':>8} {'share':>6} {'of floor':>8}")
    for part in parts:
        share = part.step_ms / whole_ms
        print(f"{part.name:32} {part.per_step:3d} {part.step_ms:8.3f} {share:6.1%}"
              f" {part.roofline_fraction:8.1%}")  # fmt: skip
    return {
        "case": title, "whole_ms": whole_ms, "graph_step_ms": graph_step_ms, "floor_ms": floor,
        "operations": [part.to_dict() for part in parts],
    }  # fmt: skip


def main() -> None:
    import cupy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cache", help="tuned-config cache")
    args = parser.parse_args()
    environment = capture_environment()
    bandwidth = read_bandwidth()["bytes_per_s"]
    peak = gemm_peak("fp16")["flops_per_s"]
    print(f"HBM read {bandwidth / 1e12:.2f} TB/s, GEMM peak {peak / 1e12:.0f} TFLOP/s")
    spec = load_builtin("gptj-6b")
    cache = None
    if args.cache:
        cache = load_cache(args.cache, running=CacheHeader.from_environment(environment))
    decoder = Decoder(
        spec, random_weights(spec, "fp16", xp=cupy), max_batch=64, max_seq_len=2048 + 64,
        max_tokens=64 * 128, gemm=GemmDispatch(cache),
    )  # fmt: skip
    generator = Generator(decoder)
    rng = np.random.default_rng(0)
    records = []
    for batch in (1, 64):
        prompts = list(rng.integers(0, spec.vocab_size, (batch, 128)))
        generator.generate(prompts, 64)
        step_ms = float(np.median(generator.generate(prompts, 64).step_ms))
        state = generator.state
        cupy.add(state.positions, 1, out=state.lengths)
        cupy.cuda.get_current_stream().synchronize()
        generator.stream.synchronize()
        step = replace(state.step, max_length=length_bound(128 + 64, decoder.max_seq_len))
        parts, whole = breakdown(decoder, step, bandwidth, peak)
        records.append(table(f"decode batch {batch} at length {128 + 64}", parts, whole, step_ms))
    step = generator.prefill_inputs([rng.integers(0, spec.vocab_size, 2048)])
    parts, whole = breakdown(decoder, step, bandwidth, peak)
    records.append(table("prefill 1x2048 (as one graph)", parts, whole, None))
    for record in records:
        record["hbm_read_bytes_per_s"], record["gemm_peak_flops"] = bandwidth, peak
        record["gemm_dispatch"] = decoder.gemm.stats.to_dict()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    write_results(args.out_dir / f"breakdown-{stamp}.json", "breakdown", records, environment)


if __name__ == "__main__":
    main()
