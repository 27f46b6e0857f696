"""Tune acceptance benchmark: GPT-J 6B fp16 GEMMs, ftbench's choice against its peers.

In one run, with one method (`bench.timer.time_launch`, cold L2, graph-batched):
- ceilings: HBM read bandwidth (a read-only kernel over 4 GiB) and the fp16 dense GEMM peak
  (the best cuBLAS/cuBLASLt candidate on 8192x8192x8192);
- the sweep (`ftbench.autotune.sweep.run_sweep`) over the problems of GPT-J 6B, TP 1: decode
  batches 1..256 and context 1x128, 1x2048, 8x512, timed warm (CUTLASS kernels already built;
  the cold time adds their build);
- peers on the same operands: the cuBLAS default (from the sweep), `torch` linear
  (`torch.matmul(x, w.t(), out=y)`, the kernel `F.linear` runs), torch after TunableOp tuning,
  and the best of the cuBLASLt heuristic's top 8 (from the sweep's records).

    python benchmarks/tune.py --out-dir DIR [--backends ...] [--quick]

Writes DIR/tune-cache.json, DIR/tune-cache.results.json, DIR/tune-peers-<time>.json and
DIR/acceptance/tune.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ftbench.autotune.operands import make_operands
from ftbench.autotune.plan import tuning_problems
from ftbench.autotune.problem import GemmProblem
from ftbench.autotune.sweep import TUNING_POLICY, SweepOptions, run_sweep, tune_problem
from ftbench.bench.environment import capture_environment
from ftbench.bench.timer import cold_input_sets, device_facts, time_launch
from ftbench.files import write_json_atomic
from ftbench.profiles.catalog import load_profile
from ftbench.profiles.spec import Workload
from ftbench.reports.results import write_results

DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTEXTS = ((1, 128), (1, 2048), (8, 512))
PEAK_PROBLEM = GemmProblem(m=8192, n=8192, k=8192)
READ_BYTES = 4 * 2**30
PEER_POLICY = TUNING_POLICY
LT_HEURISTIC_PREFIXES = tuple(f"heuristic #{rank}:" for rank in range(8))


def gptj_problems(quick: bool) -> dict[str, list[GemmProblem]]:
    """Problems per phase (the LM head of a context phase counts as decode: m = batch)."""
    spec = load_profile("gptj-6b")
    batches = (1, 8, 64) if quick else DECODE_BATCHES
    decode = tuning_problems(spec, Workload(batch_sizes=batches, input_lens=(128,)))
    phases: dict[str, dict[str, GemmProblem]] = {"generation": {}, "context": {}}
    for item in decode:
        if "generation" in item.phases:
            phases["generation"][item.problem.key()] = item.problem
    for batch, length in CONTEXTS[:1] if quick else CONTEXTS:
        workload = Workload(batch_sizes=(batch,), input_lens=(length,), output_lens=(1,))
        for item in tuning_problems(spec, workload):
            if item.problem.m == batch * length:
                phases["context"][item.problem.key()] = item.problem
    return {phase: list(problems.values()) for phase, problems in phases.items()}


def read_bandwidth() -> dict:
    """Bytes per second of a read-only pass over 4 GiB (ftbench's read probe kernel)."""
    import cupy

    from ftbench.kernels.probes import read_probe

    data = cupy.random.standard_normal(READ_BYTES // 2, dtype=cupy.float32).astype(cupy.float16)
    timing = time_launch(lambda _: read_probe(data), name="read 4 GiB", cache="cold")
    return {"bytes_per_s": READ_BYTES / (timing.median_ms / 1e3), "timing": timing.to_dict()}


def gemm_peak() -> dict:
    """FLOP/s of the best cuBLAS/cuBLASLt candidate on 8192^3 (hot L2 is irrelevant there)."""
    from ftbench.autotune.sweep import available_backends

    backends, _ = available_backends(("cublas", "cublaslt"))
    options = SweepOptions(backends=("cublas", "cublaslt"), cache="hot")
    outcome = tune_problem(PEAK_PROBLEM, backends, options)
    best = outcome.entry.winner_time.median_ms
    return {
        "flops_per_s": PEAK_PROBLEM.flops() / (best / 1e3),
        "winner": outcome.entry.winner.to_dict(),
        "median_ms": best,
    }


def torch_peers(problem: GemmProblem) -> dict:
    """torch's linear kernel, before and after TunableOp, timed like every candidate."""
    import cupy
    import torch

    sets = cold_input_sets(problem.bytes(), device_facts(cupy)[0])
    operands = [
        tuple(torch.from_dlpack(array) for array in triple)
        for triple in make_operands(problem, sets)
    ]

    def launch(i):
        x, w, y = operands[i]
        stream = torch.cuda.ExternalStream(cupy.cuda.get_current_stream().ptr)
        with torch.cuda.stream(stream):
            torch.matmul(x, w.t(), out=y)

    def timed(name):
        timing = time_launch(
            launch, name=name, cache="cold", input_sets=sets, set_bytes=problem.bytes(),
            policy=PEER_POLICY,
        )  # fmt: skip
        return timing.median_ms, timing.method, timing.capture_error

    plain = timed(f"torch {problem.key()}")
    tunable = torch.cuda.tunable
    tunable.enable(True)
    tunable.tuning_enable(True)
    launch(0)
    torch.cuda.synchronize()
    tunable.tuning_enable(False)
    tuned = timed(f"torch+tunableop {problem.key()}")
    tunable.enable(False)
    return {"torch": plain, "tunableop": tuned}


def lt_heuristic_top8(records: list[dict], key: str) -> float | None:
    """Fastest of the cuBLASLt heuristic's first eight results in the sweep's records."""
    times = [
        r["timing"]["median_ms"]
        for r in records
        if r["problem_key"] == key
        and r["candidate"]["backend"] == "cublaslt"
        and r["candidate"]["name"].startswith(LT_HEURISTIC_PREFIXES)
        and r["status"] == "ok"
    ]
    return min(times) if times else None


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and math.isfinite(v)]
    return float(np.exp(np.mean(np.log(values)))) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--backends", default="cublas,cublaslt,cutlass,ftbench")
    parser.add_argument("--quick", action="store_true", help="fewer batches, one context")
    parser.add_argument("--device-kind", default=os.environ.get("FTBENCH_DEVICE_KIND", ""))
    parser.add_argument("--cold-build-s", type=float, default=None,
                        help="CUTLASS build time measured before (for the cold total)")  # fmt: skip
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    environment = capture_environment()

    bandwidth = read_bandwidth()
    peak = gemm_peak()
    print(f"HBM read {bandwidth['bytes_per_s'] / 1e12:.3f} TB/s, "
          f"GEMM peak {peak['flops_per_s'] / 1e12:.0f} TFLOP/s")  # fmt: skip

    phases = gptj_problems(args.quick)
    problems = [p for group in phases.values() for p in group]
    cache_path = out_dir / "tune-cache.json"
    cache_path.unlink(missing_ok=True)
    options = SweepOptions(backends=tuple(args.backends.split(",")))
    started = time.monotonic()
    report = run_sweep(problems, cache_path, options)
    sweep_s = time.monotonic() - started
    from ftbench.reports.results import read_results

    records = read_results(report.results_path)["records"]

    rows = []
    for phase, group in phases.items():
        for problem in group:
            entry = report.cache.entries[problem.key()]
            peers = torch_peers(problem)
            floor_s = max(problem.flops() / peak["flops_per_s"],
                          problem.bytes() / bandwidth["bytes_per_s"])  # fmt: skip
            chosen_ms = entry.winner_time.median_ms
            rows.append({
                "phase": phase,
                "problem": problem.key(),
                "m": problem.m, "n": problem.n, "k": problem.k,
                "chosen": entry.winner.to_dict(),
                "chosen_ms": chosen_ms,
                "chosen_ci_ms": [entry.winner_time.ci_low_ms, entry.winner_time.ci_high_ms],
                "default_ms": entry.default_time.median_ms,
                "default_ci_ms": [entry.default_time.ci_low_ms, entry.default_time.ci_high_ms],
                "slower_than_default": entry.winner_time.ci_low_ms > entry.default_time.ci_high_ms,
                "torch_ms": peers["torch"][0],
                "torch_method": peers["torch"][1],
                "tunableop_ms": peers["tunableop"][0],
                "lt_top8_ms": lt_heuristic_top8(records, problem.key()),
                "hbm_fraction": problem.bytes() / bandwidth["bytes_per_s"] / (chosen_ms / 1e3),
                "roofline_fraction": floor_s / (chosen_ms / 1e3),
                "bound": "memory" if floor_s == problem.bytes() / bandwidth["bytes_per_s"]
                else "compute",
            })  # fmt: skip
            print(f"{phase:10s} {problem.key():48s} default {rows[-1]['default_ms'] * 1e3:8.1f} "
                  f"chosen {chosen_ms * 1e3:8.1f} us ({entry.winner.backend}) "
                  f"torch {rows[-1]['torch_ms'] * 1e3:8.1f} roofline "
                  f"{rows[-1]['roofline_fraction']:.0%} {rows[-1]['bound']}")  # fmt: skip

    def speedups(phase, peer):
        return geomean([r[peer] / r["chosen_ms"] for r in rows
                        if r["phase"] == phase and r[peer]])  # fmt: skip

    gpu = environment.gpus[0].name
    summary = {
        "device": f"{args.device_kind} ({gpu})" if args.device_kind else gpu,
        "commit": environment.git_commit,
        "problems": len(rows),
        "slower_than_default_count": sum(r["slower_than_default"] for r in rows),
        **{
            f"geomean_vs_{peer}": {phase: speedups(phase, f"{peer}_ms") for phase in phases}
            for peer in ("default", "torch", "tunableop")
        },  # fmt: skip
        "geomean_vs_lt_heuristic_top8": {phase: speedups(phase, "lt_top8_ms") for phase in phases},
        "min_decode_m16_hbm_fraction": min(
            r["hbm_fraction"] for r in rows if r["phase"] == "generation" and r["m"] <= 16
        ),
        "min_context_roofline_fraction": min(
            r["roofline_fraction"] for r in rows if r["phase"] == "context"
        ),
        "sweep_minutes_warm": sweep_s / 60,
        "sweep_minutes_cold": None
        if args.cold_build_s is None
        else (sweep_s + args.cold_build_s) / 60,
        "hbm_read_tb_per_s": bandwidth["bytes_per_s"] / 1e12,
        "gemm_peak_tflops": peak["flops_per_s"] / 1e12,
        "unavailable_backends": report.unavailable_backends,
        "utc_time": environment.utc_time,
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    ceilings = {"ceilings": {"read": bandwidth, "peak": peak}}
    write_results(
        out_dir / f"tune-peers-{stamp}.json", "tune-peers", [ceilings, *rows], environment
    )
    write_json_atomic(out_dir / "acceptance" / "tune.json", summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
