"""Tune acceptance benchmark: GPT-J 6B fp16 GEMMs, ftbench's choice against its peers.

In one run, with one method (`bench.timer.time_launch`, cold L2, graph-batched):
- ceilings: HBM read bandwidth (`modelbench.ceilings`, 4 GiB read once) and the fp16 dense GEMM peak
  (the best cuBLAS/cuBLASLt candidate on 8192x8192x8192);
- the sweep (`ftbench.autotune.sweep.run_sweep`) over the problems of GPT-J 6B, TP 1: decode
  batches 1..256 and context 1x128, 1x2048, 8x512, timed warm (CUTLASS kernels already built;
  the cold time adds their build);
- peers on the same operands, re-measured after the sweep: the cuBLAS default and ftbench's
  choice (in the order default, choice, choice, default, so clock drift cancels), `torch` linear
  (`torch.matmul(x, w.t(), out=y)`, the kernel `F.linear` runs), torch after TunableOp tuning,
  and the best of the cuBLASLt heuristic's top 8 (from the sweep's records).

    python benchmarks/tune.py --out-dir DIR [--backends ...] [--quick] [--resume]

Writes DIR/tune-cache.json, DIR/tune-cache.results.json, DIR/tune-peers-<time>.json and
DIR/acceptance/tune.json.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

from _harness import parser, result_path, write, write_summary
from ftbench.autotune.plan import tuning_problems
from ftbench.autotune.sweep import TUNING_POLICY, SweepOptions, run_sweep
from ftbench.bench.environment import capture_environment
from ftbench.bench.timer import cold_input_sets, device_facts, time_launch
from ftbench.files import write_json_atomic
from ftbench.gemm.operands import make_operands
from ftbench.gemm.problem import GemmProblem
from ftbench.modelbench.ceilings import copy_bandwidth, gemm_peak, read_bandwidth
from ftbench.profiles.catalog import load_profile
from ftbench.profiles.spec import Workload

DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTEXTS = ((1, 128), (1, 2048), (8, 512))
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


def peers(problem: GemmProblem, entry) -> dict:
    """The cuBLAS default, ftbench's choice, torch's linear kernel and torch after TunableOp,
    re-measured one after another on the same operands, each timed like every candidate."""
    import cupy
    import torch

    from ftbench.gemm.backends import get_backend
    from ftbench.gemm.backends.cublas import gemm

    sets = cold_input_sets(problem.bytes(), device_facts(cupy)[0])
    operands = make_operands(problem, sets)
    tensors = [tuple(torch.from_dlpack(array) for array in triple) for triple in operands]
    chosen = get_backend(entry.winner.backend).prepare(entry.winner, problem)

    def torch_linear(i):
        x, w, y = tensors[i]
        with torch.cuda.stream(torch.cuda.ExternalStream(cupy.cuda.get_current_stream().ptr)):
            torch.matmul(x, w.t(), out=y)

    def timed(launch, name):
        timing = time_launch(
            launch, name=f"{name} {problem.key()}", l2="cold", input_sets=sets,
            set_bytes=problem.bytes(), policy=PEER_POLICY,
        )  # fmt: skip
        return {"median_ms": timing.median_ms, "ci_ms": [timing.ci_low_ms, timing.ci_high_ms],
                "method": timing.method, "flags": list(timing.flags)}  # fmt: skip

    def default(i):
        gemm(problem, *operands[i])

    def choice(i):
        chosen(*operands[i])

    # default, chosen, chosen, default: drift of the clocks between passes cancels out.
    passes = [timed(default, "cublas default"), timed(choice, "chosen")]
    passes += [timed(choice, "chosen again"), timed(default, "cublas default again")]
    results = {
        "default": min(passes[0], passes[3], key=lambda t: t["median_ms"]),
        "chosen": min(passes[1], passes[2], key=lambda t: t["median_ms"]),
        "passes": passes,
        "torch": timed(torch_linear, "torch"),
    }
    tunable = torch.cuda.tunable
    tunable.enable(True)
    tunable.tuning_enable(True)
    torch_linear(0)
    torch.cuda.synchronize()
    tunable.tuning_enable(False)
    results["tunableop"] = timed(torch_linear, "torch+tunableop")
    results["tunableop"]["solutions"] = [list(map(str, r)) for r in tunable.get_results()]
    tunable.enable(False)
    return results


PEERS = ("default", "chosen", "torch", "tunableop")


def slower_than_default(entry, passes: list[dict]) -> bool:
    """Both passes of the choice lie above both passes of the default, intervals apart (never
    for the default itself)."""
    if entry.winner == entry.default:
        return False
    default_high = max(passes[0]["ci_ms"][1], passes[3]["ci_ms"][1])
    return min(passes[1]["ci_ms"][0], passes[2]["ci_ms"][0]) > default_high


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
    arguments = parser(__doc__, summary=True)
    arguments.add_argument("--backends", default="cublas,cublaslt,cutlass,ftbench")
    arguments.add_argument("--quick", action="store_true", help="fewer batches, one context")
    arguments.add_argument(
        "--cold-build-s", type=float, default=None,
        help="CUTLASS build time measured before (for the cold total)",
    )  # fmt: skip
    arguments.add_argument("--resume", action="store_true",
                           help="continue the sweep of an interrupted run in --out-dir (its "
                                "sweep time is added to this run's)")  # fmt: skip
    args = arguments.parse_args()
    out_dir = args.out_dir
    environment = capture_environment()

    bandwidth = read_bandwidth()
    copy = copy_bandwidth()
    peak = gemm_peak()
    print(f"HBM read {bandwidth['bytes_per_s'] / 1e12:.3f} TB/s, "
          f"GEMM peak {peak['flops_per_s'] / 1e12:.0f} TFLOP/s")  # fmt: skip

    phases = gptj_problems(args.quick)
    problems = [p for group in phases.values() for p in group]
    # The same probe over the smallest decode GEMM's bytes, timed as its candidates are: what
    # one kernel that only reads that much reaches, launch and drain included.
    small_bytes = min(p.bytes() for p in phases["generation"])
    small_read = read_bandwidth(small_bytes)
    print(f"HBM read of {small_bytes / 2**20:.0f} MiB: {small_read['bytes_per_s'] / 1e12:.3f} TB/s")
    cache_path = out_dir / "tune-cache.json"
    # Seconds spent sweeping by earlier, interrupted runs (a resumed sweep adds them up).
    spent_path = out_dir / "tune-sweep-seconds.json"
    if not args.resume:
        cache_path.unlink(missing_ok=True)
        write_json_atomic(spent_path, {"seconds": 0.0})
    earlier_s = json.loads(spent_path.read_text())["seconds"] if spent_path.exists() else 0.0
    options = SweepOptions(backends=tuple(args.backends.split(",")))
    if "cutlass" in options.backends:
        from ftbench.gemm.backends.cutlass import prebuild

        started = time.monotonic()
        built = prebuild()
        print(f"CUTLASS: {sum(r.error is None for r in built.values())} of {len(built)} kernels "
              f"ready in {time.monotonic() - started:.1f} s")  # fmt: skip
    started = time.monotonic()
    try:
        report = run_sweep(problems, cache_path, options)
    finally:
        sweep_s = earlier_s + time.monotonic() - started
        write_json_atomic(spent_path, {"seconds": sweep_s})
    print(f"sweep: {report.tuned} problems tuned, {report.resumed} resumed, {sweep_s:.0f} s in all")
    from ftbench.bench.results import read_results

    records = read_results(report.results_path)["records"]

    rows = []
    for phase, group in phases.items():
        for problem in group:
            entry = report.cache.entries[problem.key()]
            try:
                measured = peers(problem, entry)
            except Exception as exc:  # a failing peer must not lose the sweep's numbers
                print(f"peers failed on {problem.key()}: {exc!r}")
                continue
            chosen_ms = measured["chosen"]["median_ms"]
            memory_s = problem.bytes() / bandwidth["bytes_per_s"]
            floor_s = max(problem.flops() / peak["flops_per_s"], memory_s)
            row = {
                "phase": phase,
                "problem": problem.key(),
                "m": problem.m,
                "n": problem.n,
                "k": problem.k,
                "chosen": entry.winner.to_dict(),
                "sweep_chosen_ms": entry.winner_time.median_ms,
                "sweep_default_ms": entry.default_time.median_ms,
                **{f"{name}_ms": measured[name]["median_ms"] for name in PEERS},
                "measured": measured,
                "slower_than_default": slower_than_default(entry, measured["passes"]),
                "lt_top8_ms": lt_heuristic_top8(records, problem.key()),
                "hbm_fraction": memory_s / (chosen_ms / 1e3),
                "roofline_fraction": floor_s / (chosen_ms / 1e3),
                "bound": "memory" if floor_s == memory_s else "compute",
            }
            rows.append(row)
            print(f"{phase:10s} {problem.key():48s} default {row['default_ms'] * 1e3:8.1f} "
                  f"chosen {chosen_ms * 1e3:8.1f} us ({entry.winner.backend}) torch "
                  f"{row['torch_ms'] * 1e3:8.1f} roofline {row['roofline_fraction']:.0%} "
                  f"{row['bound']}")  # fmt: skip

    def speedups(phase, peer, chosen="chosen_ms"):
        return geomean([r[peer] / r[chosen] for r in rows
                        if r["phase"] == phase and r[peer]])  # fmt: skip

    summary = {
        "problems": len(rows),
        "slower_than_default_count": sum(r["slower_than_default"] for r in rows),
        **{
            f"geomean_vs_{peer}": {phase: speedups(phase, f"{peer}_ms") for phase in phases}
            for peer in ("default", "torch", "tunableop")
        },  # fmt: skip
        # the heuristic's top 8 were timed in the sweep: compare with the sweep's own winner time
        "geomean_vs_lt_heuristic_top8": {
            phase: speedups(phase, "lt_top8_ms", "sweep_chosen_ms") for phase in phases
        },
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
        "small_read": {"bytes": small_bytes, "tb_per_s": small_read["bytes_per_s"] / 1e12},
        "copy_tb_per_s": copy["bytes_per_s"] / 1e12,
        "gemm_peak_tflops": peak["flops_per_s"] / 1e12,
        "unavailable_backends": report.unavailable_backends,
        "utc_time": environment.utc_time,
    }
    ceilings = {
        "ceilings": {"read": bandwidth, "small_read": small_read, "copy": copy, "peak": peak}
    }
    path = write(result_path(out_dir, "tune-peers"), "tune-peers", [ceilings, *rows], environment)
    summary["source"] = str(path)
    device = environment.device_label(args.device_kind)
    write_summary(out_dir, "tune", summary, device, environment.git_commit)


if __name__ == "__main__":
    main()
