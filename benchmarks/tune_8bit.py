"""8-bit GEMM acceptance benchmark: FP8 and weight-only GEMMs of GPT-J 6B and LLaMA-3 8B, tuned.

In one run, with one method (`bench.timer.time_launch`, cold L2):
- the ceiling: HBM read bandwidth, the read probe over 4 GiB (`modelbench.ceilings`);
- the sweep (`ftbench.autotune.sweep.run_sweep`) of the models' FP8 linear layers (per-tensor
  scales; decode m = 1, 16, 64 and a 2048-token context) over cuBLASLt, against its heuristic's
  first choice, and of their weight-only decode layers (int8 and fp8 weights, m = 1, 4, 16) over
  the project's kernels, against their untuned config; every candidate verified against the fp32
  product of the dequantised operands;
- each choice re-measured beside its default on the same operands, in the order default,
  choice, choice, default (clock drift cancels), and called slower only when both of its
  passes lie above both of the default's, intervals apart;
- for weight-only problems, the fraction of the read bandwidth reached, counted in the bytes a
  launch must move with 8-bit weights (`kernels.weight_only.hbm_bytes`).

    python benchmarks/tune_8bit.py --out-dir DIR [--quick] [--budget-s S]

Writes DIR/tune-8bit-cache.json (+ .results.json), DIR/tune-8bit-<time>.json and
DIR/acceptance/fp8_gemms.json, the last two again after every re-measured problem.
"""

from __future__ import annotations

import time

from _harness import parser, result_path, write, write_summary
from ftbench.autotune.plan import tuning_problems
from ftbench.autotune.sweep import TUNING_POLICY, SweepOptions, run_sweep
from ftbench.bench.environment import capture_environment
from ftbench.bench.timer import cold_input_sets, device_facts, time_launch
from ftbench.gemm.backends import get_backend
from ftbench.gemm.operands import make_operands
from ftbench.gemm.problem import GemmProblem
from ftbench.kernels.weight_only import hbm_bytes
from ftbench.modelbench.ceilings import read_bandwidth
from ftbench.profiles.catalog import load_profile
from ftbench.profiles.spec import Workload

MODELS = ("gptj-6b", "llama3-8b")
FP8_BATCHES = (1, 16, 64)
CONTEXT = 2048
WEIGHT_ONLY_BATCHES = (1, 4, 16)


def model_problems(quick: bool) -> list[tuple[str, str, GemmProblem]]:
    """(model, group, problem) of each distinct 8-bit linear layer: groups "fp8" and
    "weight-only"."""
    found: dict[str, tuple[str, str, GemmProblem]] = {}
    for name in MODELS[:1] if quick else MODELS:
        spec = load_profile(name)
        grids = [
            ("fp8", Workload(batch_sizes=(16,) if quick else FP8_BATCHES, dtype="fp8")),
            ("fp8", Workload(input_lens=(CONTEXT,), output_lens=(1,), dtype="fp8")),
        ]
        for weights in ("int8", "fp8"):
            batches = WEIGHT_ONLY_BATCHES[::2] if quick else WEIGHT_ONLY_BATCHES
            grids.append(("weight-only", Workload(batch_sizes=batches, weights=weights)))
        for group, workload in grids:
            for item in tuning_problems(spec, workload):
                problem = item.problem
                if problem.scaling != "none" and problem.key() not in found:
                    found[problem.key()] = (name, group, problem)
    return list(found.values())


def remeasure(problem: GemmProblem, entry) -> dict:
    """The default and the choice on the same operands: default, choice, choice, default."""
    import cupy

    sets = cold_input_sets(problem.bytes(), device_facts(cupy)[0])
    operands = make_operands(problem, sets)
    runners = {
        "default": get_backend(entry.default.backend).prepare(entry.default, problem),
        "chosen": get_backend(entry.winner.backend).prepare(entry.winner, problem),
    }

    def timed(name):
        runner = runners[name]
        timing = time_launch(
            lambda i: runner(*operands[i]), name=f"{name} {problem.key()}", l2="cold",
            input_sets=sets, set_bytes=problem.bytes(), policy=TUNING_POLICY,
        )  # fmt: skip
        ci_ms = [timing.ci_low_ms, timing.ci_high_ms]
        return {"name": name, "median_ms": timing.median_ms, "ci_ms": ci_ms,
                "flags": list(timing.flags)}  # fmt: skip

    passes = [timed("default"), timed("chosen"), timed("chosen"), timed("default")]
    slower = entry.winner != entry.default and min(p["ci_ms"][0] for p in passes[1:3]) > max(
        p["ci_ms"][1] for p in (passes[0], passes[3])
    )
    return {
        "default_ms": min(passes[0]["median_ms"], passes[3]["median_ms"]),
        "chosen_ms": min(passes[1]["median_ms"], passes[2]["median_ms"]),
        "passes": passes,
        "slower_than_default": bool(slower),
    }


def main() -> None:
    arguments = parser(__doc__, summary=True)
    arguments.add_argument(
        "--quick", action="store_true",
        help="GPT-J only: FP8 at m = 16 and 2048, weight-only at m = 1 and 16",
    )  # fmt: skip
    arguments.add_argument("--budget-s", type=float, default=None, help="sweep time budget")
    args = arguments.parse_args()
    out_dir = args.out_dir
    environment = capture_environment()
    bandwidth = read_bandwidth()
    read_bytes_per_s = bandwidth["bytes_per_s"]
    print(f"HBM read {read_bytes_per_s / 1e12:.3f} TB/s", flush=True)

    chosen = model_problems(args.quick)
    cache_path = out_dir / "tune-8bit-cache.json"
    cache_path.unlink(missing_ok=True)
    options = SweepOptions(backends=("cublaslt", "ftbench"), budget_s=args.budget_s)
    started = time.monotonic()
    report = run_sweep([p for _, _, p in chosen], cache_path, options, force=True)
    sweep_s = time.monotonic() - started
    print(f"sweep: {report.tuned} problems in {sweep_s:.0f} s", flush=True)

    rows = []
    results_path = result_path(out_dir, "tune-8bit")
    for model, group, problem in chosen:
        entry = report.cache.entries[problem.key()]
        try:
            measured = remeasure(problem, entry)
        except Exception as exc:  # a failing re-measure must not lose the sweep's numbers
            print(f"re-measure failed on {problem.key()}: {exc!r}")
            continue
        row = {
            "model": model,
            "group": group,
            "problem": problem.key(),
            "m": problem.m,
            "n": problem.n,
            "k": problem.k,
            "default": entry.default.to_dict(),
            "chosen": entry.winner.to_dict(),
            "candidates_timed": entry.candidates_timed,
            "candidates_failed": entry.candidates_failed,
            "sweep_default_ms": entry.default_time.median_ms,
            "sweep_chosen_ms": entry.winner_time.median_ms,
            **measured,
            "speedup_over_default": measured["default_ms"] / measured["chosen_ms"],
        }
        if group == "weight-only":
            moved = hbm_bytes(problem.m, problem.n, problem.k, "float16", "float32")
            row["hbm_bytes"] = moved
            row["read_fraction"] = moved / (measured["chosen_ms"] / 1e3) / read_bytes_per_s
        rows.append(row)
        extra = f" read {row['read_fraction']:.1%}" if "read_fraction" in row else ""
        print(f"{model:9s} {problem.key():58s} default {row['default_ms'] * 1e3:8.1f} us chosen "
              f"{row['chosen_ms'] * 1e3:8.1f} us x{row['speedup_over_default']:.3f}{extra}",
              flush=True)  # fmt: skip

        # Rewritten after every problem: a run cut short keeps what it measured.
        write_files(args, environment, bandwidth, rows, sweep_s, report, results_path)


def write_files(args, environment, bandwidth, rows, sweep_s, report, results_path) -> None:
    """The result file (`results_path`) and the acceptance summary of the rows so far."""
    read_bytes_per_s = bandwidth["bytes_per_s"]
    weight_only = [r for r in rows if r["group"] == "weight-only"]
    summary = {
        "hbm_read_tb_per_s": read_bytes_per_s / 1e12,
        "fp8_problems": sum(r["group"] == "fp8" for r in rows),
        "fp8_slower_than_heuristic_count": sum(
            r["slower_than_default"] for r in rows if r["group"] == "fp8"
        ),
        "fp8_speedup_over_heuristic": {
            r["problem"]: round(r["speedup_over_default"], 4) for r in rows if r["group"] == "fp8"
        },
        "weight_only_problems": len(weight_only),
        "weight_only_min_read_fraction": min(
            (r["read_fraction"] for r in weight_only), default=None
        ),  # fmt: skip
        "weight_only_read_fraction": {
            f"{r['model']} {r['problem']}": round(r["read_fraction"], 4) for r in weight_only
        },
        "sweep_minutes": sweep_s / 60,
        "unavailable_backends": report.unavailable_backends,
        "utc_time": environment.utc_time,
    }
    path = write(results_path, "tune-8bit", [{"ceilings": {"read": bandwidth}}, *rows],
                 environment)  # fmt: skip
    summary["source"] = str(path)
    device = environment.device_label(args.device_kind)
    write_summary(args.out_dir, "fp8_gemms", summary, device, environment.git_commit)


if __name__ == "__main__":
    main()
