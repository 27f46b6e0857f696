"""TMA / wgmma GEMM benchmark: the streaming kernel against the GEMV kernels and cuBLAS, cold L2.

For each problem Y[m, n] = X[m, k] @ W[n, k]^T (fp16; the GPT-J-6B linear layers at decode
batches up to 16 and the 1 x 128 context), every config `tma_configs` offers (with --explore, also
variants of the L2 prefetch depth and the stage ring) is verified against a float64 reference on
fresh random inputs and timed as the tuner times (`time_launch`, rotating operand copies larger
than L2, graph-batched, so consecutive launches overlap through programmatic dependent launch), and
so are the GEMV configs (m <= 16) and `cublasGemmEx` with its default algorithm.

A problem's bound is the larger of its bytes (W, X and Y once) over the measured HBM read
bandwidth (the 4 GiB read probe) and its operations over the measured fp16 GEMM peak; "of bound"
is that bound over the measured time.

    python benchmarks/tma_gemm.py [--out-dir benchmarks/results] [--explore] [--only M,N,K ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from ftbench.bench.ceilings import gemm_peak, read_bandwidth
from ftbench.bench.environment import capture_environment
from ftbench.bench.timer import cold_input_sets, device_facts
from ftbench.reports.results import write_results
from gemv import cublas_launch, gemv_bytes, gemv_launch, random_fp16, verify_and_time

GPTJ = [(4096, 4096), (12288, 4096), (16384, 4096), (4096, 16384), (50400, 4096)]
PROBLEMS = [(m, 4096, 4096) for m in (1, 2, 4, 8)] + [(m, n, k) for m in (16, 128) for n, k in GPTJ]


def explore(configs):
    """Variants around the offered configs: L2 prefetch depth and a deeper or shallower ring."""
    extra = []
    for config in configs:
        extra += [replace(config, prefetch=p) for p in (0, 4, 16, 32) if p != config.prefetch]
    return extra


def tma_launch(operands, config):
    from ftbench.kernels.tma_gemm import tma_gemm

    def launch(index):
        tma_gemm(*operands[index], config)

    return launch


def run_problem(cupy, m, n, k, l2_bytes, args):
    from ftbench.kernels import gemv, tma_gemm

    nbytes = gemv_bytes(m, n, k)
    sets = cold_input_sets(nbytes, l2_bytes)
    xs = [random_fp16(cupy, (m, k)) for _ in range(sets)]
    ws = [random_fp16(cupy, (n, k), scale=k**-0.5) for _ in range(sets)]
    ys = [cupy.full((m, n), cupy.nan, dtype=cupy.float16) for _ in range(sets)]
    operands = list(zip(xs, ws, ys, strict=True))
    reference = xs[0].astype(cupy.float64) @ ws[0].astype(cupy.float64).T
    check = (ys[0], reference, sets, nbytes)

    configs = tma_gemm.tma_configs(m, n, k)
    configs += explore(configs) if args.explore else []
    started = time.perf_counter()
    tma_gemm.prepare(configs, "float16")
    compile_s = time.perf_counter() - started

    def measure(kernel, config, launch):
        timed = verify_and_time(cupy, launch, config.name if config else kernel, *check)
        return {"kernel": kernel, "config": config.to_dict() if config else None, **timed}

    results = [measure("tma", c, tma_launch(operands, c)) for c in configs]
    if m <= gemv.MAX_M:
        gemv_configs = gemv.gemv_configs(m, n, k)
        gemv.prepare(gemv_configs, m, "float16")
        results += [measure("gemv", c, gemv_launch(operands, c)) for c in gemv_configs]
    results.append(measure("cublas", None, cublas_launch(operands)))
    return {"m": m, "n": n, "k": k, "bytes": nbytes, "flops": 2 * m * n * k,
            "compile_s": compile_s, "results": results}  # fmt: skip


def best_of(record, kernel):
    timed = [r for r in record["results"] if r["kernel"] == kernel and r["timing"]]
    return min(timed, key=lambda r: r["timing"]["median_ms"]) if timed else None


def print_row(record, read_bps, peak_fps):
    bound_s = max(record["bytes"] / read_bps, record["flops"] / peak_fps)
    cells = []
    for kernel in ("tma", "gemv", "cublas"):
        best = best_of(record, kernel)
        if best is None:
            cells.append(f"{'-':>8} {'':>6}")
            continue
        seconds = best["timing"]["median_ms"] * 1e-3
        cells.append(f"{seconds * 1e6:>8.2f} {bound_s / seconds:>6.1%}")
    tma = best_of(record, "tma")
    failed = [r["name"] for r in record["results"] if not r["timing"]]
    print(
        f"{record['m']:>4} {record['n']:>6} {record['k']:>6} {bound_s * 1e6:>7.2f}  "
        + "  ".join(cells)
        + f"  {tma['name'] if tma else '-':<28} {len(failed)} failed {failed[:3]}",
        flush=True,
    )


HEADER = (
    f"{'m':>4} {'n':>6} {'k':>6} {'bound':>7}  {'tma us':>8} {'of bd':>6}  {'gemv us':>8} "
    f"{'of bd':>6}  {'cuBLAS':>8} {'of bd':>6}  best tma config"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--explore", action="store_true", help="also time prefetch variants")
    parser.add_argument("--only", nargs="+", default=None, help="problems as M,N,K")
    args = parser.parse_args()
    problems = [tuple(int(v) for v in p.split(",")) for p in args.only] if args.only else PROBLEMS

    import cupy

    cupy.random.seed(int.from_bytes(os.urandom(4), "little"))
    started = time.perf_counter()
    l2_bytes, _ = device_facts(cupy)
    read = read_bandwidth()
    peak = gemm_peak("fp16")
    read_bps, peak_fps = read["bytes_per_s"], peak["flops_per_s"]
    print(f"HBM read {read_bps / 1e12:.3f} TB/s, fp16 GEMM peak {peak_fps / 1e12:.0f} TFLOP/s")
    print(HEADER, flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(args.out_dir) / f"tma-gemm-{stamp}.json"
    environment = capture_environment()
    records = []
    for m, n, k in problems:
        records.append(run_problem(cupy, m, n, k, l2_bytes, args))
        print_row(records[-1], read_bps, peak_fps)
        cupy.get_default_memory_pool().free_all_blocks()
        ceilings = {"read": read, "peak": peak}
        write_results(path, "tma-gemm", [{"ceilings": ceilings}, *records], environment)
    print(f"\n{time.perf_counter() - started:.0f} s")
    print(HEADER)
    for record in records:
        print_row(record, read_bps, peak_fps)
    print(f"wrote {path}")
    if any(not r["timing"] for record in records for r in record["results"]):
        sys.exit("some configs gave wrong results (see 'failed')")


if __name__ == "__main__":
    main()
