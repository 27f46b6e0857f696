"""Foundation acceptance benchmark: is the timing core repeatable, and does it agree with ncu?

Three probes, each measured by `ftbench.bench.timer.time_launch` in three separate processes:
- gemm_hot:  2048x4096x4096 fp16 GEMM (cuBLAS default algorithm), hot L2;
- gemv_cold: 1x4096x16384 fp16 GEMM, cold L2 (rotating weight copies larger than L2);
- copy:      4 GiB device-to-device copy.
Then Nsight Compute (clock control off, its default cache flush) times the cold GEMV's kernels,
and the graph-batched time is compared with it.

    python benchmarks/foundation.py [--out-dir benchmarks/results] [--runs 3] [--ncu auto|off|PATH]

Writes DIR/foundation-<time>.json (kind "foundation") and DIR/acceptance/foundation.json.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _harness import parser, result_path, write, write_summary
from ftbench.bench.environment import capture_environment
from ftbench.bench.timer import TimingPolicy, cold_input_sets, device_facts, time_launch
from ftbench.files import write_json_atomic

GEMM_HOT = (2048, 4096, 4096)
GEMV_COLD = (1, 4096, 16384)
COPY_BYTES = 4 * 2**30
NCU_CALLS = 20
# A power-capped GEMM's clock swings with the power controller (1440-1545 MHz seen on an H200):
# warm up for a second and sample for at least two, so each median spans many of its cycles.
POLICY = TimingPolicy(target_rel_ci=0.005, warmup_ms=1000.0, min_time_s=2.0, budget_s=10.0)


def random_fp16(cupy, shape, scale=1.0):
    return (cupy.random.standard_normal(shape, dtype=cupy.float32) * scale).astype(cupy.float16)


def gemm_operands(cupy, m, n, k, sets):
    """`sets` independent (x, w, y) triples of random data; y is poisoned with NaN."""
    triples = []
    for _ in range(sets):
        x = random_fp16(cupy, (m, k))
        w = random_fp16(cupy, (n, k), scale=k**-0.5)
        y = cupy.full((m, n), cupy.nan, dtype=cupy.float16)
        triples.append((x, w, y))
    return triples


def check_gemm(cupy, x, w, y, rows=64):
    """Relative error of the first rows of y against a float64 host reference."""
    rows = min(rows, x.shape[0])
    reference = cupy.asnumpy(x[:rows]).astype(np.float64) @ cupy.asnumpy(w).astype(np.float64).T
    got = cupy.asnumpy(y[:rows]).astype(np.float64)
    if not np.isfinite(got).all():
        raise SystemExit("GEMM output has unwritten (NaN) elements")
    return float(np.linalg.norm(got - reference) / np.linalg.norm(reference))


def run_probes(out: Path) -> None:
    """One process: the three probes, with correctness checks, written to `out`."""
    import cupy

    from ftbench.gemm.backends.cublas import gemm_ex

    cupy.random.seed(int.from_bytes(os.urandom(4), "little"))
    l2_bytes, _ = device_facts(cupy)
    timings = {}

    m, n, k = GEMM_HOT
    ((x, w, y),) = gemm_operands(cupy, m, n, k, 1)
    gemm_ex(x, w, y)
    gemm_err = check_gemm(cupy, x, w, y)
    timings["gemm_hot"] = time_launch(
        lambda _: gemm_ex(x, w, y), name="gemm_hot 2048x4096x4096", l2="hot", policy=POLICY
    )

    m, n, k = GEMV_COLD
    set_bytes = 2 * (m * k + n * k + m * n)
    sets = gemm_operands(cupy, m, n, k, cold_input_sets(set_bytes, l2_bytes))
    gemm_ex(*sets[0])
    gemv_err = check_gemm(cupy, *sets[0])
    timings["gemv_cold"] = time_launch(
        lambda i: gemm_ex(*sets[i]),
        name="gemv_cold 1x4096x16384",
        l2="cold",
        input_sets=len(sets),
        set_bytes=set_bytes,
        policy=POLICY,
    )

    src = cupy.random.randint(0, 255, COPY_BYTES, dtype=cupy.uint8)
    dst = cupy.zeros_like(src)
    runtime = cupy.cuda.runtime

    def copy(_):
        runtime.memcpyAsync(
            dst.data.ptr,
            src.data.ptr,
            COPY_BYTES,
            runtime.memcpyDeviceToDevice,
            cupy.cuda.get_current_stream().ptr,
        )

    copy(0)
    if not bool((dst == src).all()):
        raise SystemExit("device-to-device copy produced wrong bytes")
    timings["copy"] = time_launch(copy, name="copy 4 GiB", l2="cold", policy=POLICY)

    checks = {"gemm_hot_rel_err": gemm_err, "gemv_cold_rel_err": gemv_err}
    write_json_atomic(out, {"timings": {k: t.to_dict() for k, t in timings.items()}, **checks})


def run_ncu_target(calls: int) -> None:
    """The cold GEMV, `calls` times on fresh weight copies, between profiler start and stop."""
    import cupy

    from ftbench.gemm.backends.cublas import gemm_ex

    m, n, k = GEMV_COLD
    sets = gemm_operands(cupy, m, n, k, 2)
    for i in range(10):
        gemm_ex(*sets[i % 2])
    cupy.cuda.Device().synchronize()
    cupy.cuda.runtime.profilerStart()
    for i in range(calls):
        gemm_ex(*sets[i % 2])
    cupy.cuda.Device().synchronize()
    cupy.cuda.runtime.profilerStop()


def find_ncu(choice: str) -> str | None:
    if choice == "off":
        return None
    if choice != "auto":
        return choice
    found = shutil.which("ncu")
    candidates = sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu")) + sorted(
        glob.glob("/usr/local/cuda*/bin/ncu")
    )
    return found or (candidates[-1] if candidates else None)


UNIT_TO_MS = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0}


def ncu_gemv_ms(ncu: str, calls: int, log_dir: Path) -> dict:
    """Per-call kernel time of the cold GEMV as Nsight Compute reports it (sum over kernels)."""
    csv_path = log_dir / "ncu_gemv.csv"
    command = [
        ncu, "--clock-control", "none", "--profile-from-start", "off",
        "--metrics", "gpu__time_duration.sum", "--csv", "--print-units", "base",
        "--log-file", str(csv_path),
        sys.executable, __file__, "ncu-target", "--calls", str(calls),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not csv_path.exists():
        return {"error": f"ncu failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}"}
    lines = [line for line in csv_path.read_text().splitlines() if line.startswith('"')]
    rows = [r for r in csv.DictReader(lines) if r.get("Metric Name") == "gpu__time_duration.sum"]
    durations = [
        float(r["Metric Value"].replace(",", "")) * UNIT_TO_MS[r["Metric Unit"]] for r in rows
    ]
    if not durations or len(durations) % calls:
        return {"error": f"ncu reported {len(durations)} kernels for {calls} calls"}
    per_call = len(durations) // calls
    call_ms = [sum(durations[i : i + per_call]) for i in range(0, len(durations), per_call)]
    return {
        "median_ms": float(np.median(call_ms)),
        "kernels_per_call": per_call,
        "kernel_names": sorted({r["Kernel Name"] for r in rows}),
        "call_ms": call_ms,
    }


def spread_pct(values):
    return (max(values) - min(values)) / min(values) * 100.0


def orchestrate(args) -> None:
    out_dir = Path(args.out_dir)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(args.runs):
            path = Path(scratch) / f"run{run}.json"
            subprocess.run([sys.executable, __file__, "probes", "--out", str(path)], check=True)
            runs.append(json.loads(path.read_text()))
            medians = {p: t["median_ms"] for p, t in runs[-1]["timings"].items()}
            print(f"run {run}: " + ", ".join(f"{p} {ms:.5f} ms" for p, ms in medians.items()))
    probes = list(runs[0]["timings"])
    medians = {p: [r["timings"][p]["median_ms"] for r in runs] for p in probes}
    ncu_path = find_ncu(args.ncu)
    ncu = ncu_gemv_ms(ncu_path, NCU_CALLS, out_dir) if ncu_path else {"error": "ncu not found"}

    environment = capture_environment()
    summary = {
        "max_run_to_run_spread_pct": max(spread_pct(v) for v in medians.values()),
        "graph_vs_ncu_pct": None,
        **{f"{p}_median_ms": float(np.median(v)) for p, v in medians.items()},
        **{f"{p}_spread_pct": spread_pct(v) for p, v in medians.items()},
        "ncu_gemv_cold_ms": ncu.get("median_ms"),
        "flags": sorted({f for r in runs for t in r["timings"].values() for f in t["flags"]}),
        "utc_time": environment.utc_time,
    }
    if "median_ms" in ncu:
        graph_ms = float(np.median(medians["gemv_cold"]))
        summary["graph_vs_ncu_pct"] = (graph_ms - ncu["median_ms"]) / ncu["median_ms"] * 100.0
    m, n, k = GEMM_HOT
    summary["gemm_hot_tflops"] = 2 * m * n * k / (summary["gemm_hot_median_ms"] * 1e9)
    m, n, k = GEMV_COLD
    summary["gemv_cold_tb_per_s"] = (
        2 * (m * k + n * k + m * n) / (summary["gemv_cold_median_ms"] * 1e9)
    )
    summary["copy_tb_per_s"] = 2 * COPY_BYTES / (summary["copy_median_ms"] * 1e9)

    records = [{"run": i, **run} for i, run in enumerate(runs)] + [{"ncu": ncu}]
    path = write(result_path(out_dir, "foundation"), "foundation", records, environment)
    summary["source"] = str(path)
    device = environment.device_label(args.device_kind)
    write_summary(out_dir, "foundation", summary, device, environment.git_commit)


def main() -> None:
    arguments = parser(__doc__, summary=True)
    sub = arguments.add_subparsers(dest="mode")
    probes = sub.add_parser("probes", help="run the three probes once (one process)")
    probes.add_argument("--out", required=True)
    target = sub.add_parser("ncu-target", help="the cold GEMV between profiler start/stop")
    target.add_argument("--calls", type=int, default=NCU_CALLS)
    arguments.add_argument("--runs", type=int, default=3)
    arguments.add_argument("--ncu", default="auto", help="auto, off, or the path of ncu")
    args = arguments.parse_args()
    if args.mode == "probes":
        run_probes(Path(args.out))
    elif args.mode == "ncu-target":
        run_ncu_target(args.calls)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
