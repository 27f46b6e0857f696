"""Decode GEMV benchmark: the project's kernels against the cuBLAS default, cold L2, fp16.

For the GPT-J-6B decode shapes (n, k) and m tokens, Y[m, n] = X[m, k] @ W[n, k]^T is timed for
every config `gemv_configs` offers, each verified first against a float64 reference (output
poisoned with NaN, fresh random inputs), and for `cublasGemmEx` with its default algorithm. All
timings rotate among copies of the operands larger than L2 (`l2="cold"`). The best config is
timed again launched with programmatic dependent launch (`pdl=True`), which overlaps each launch's
start with the previous one's end; cuBLAS gets no such overlap, so the speed-up column compares
plain launches.

The ceiling is the HBM read bandwidth measured by `ftb_read_probe` (gemv.cu): every byte of a
4 GiB buffer read once with the streaming loads the GEMV kernels use for W, at 2, 4 and 8 blocks
of 256 threads per SM; the best of the three, bytes read over time. A 4 GiB device-to-device copy
is timed too, counting bytes read plus bytes written. A kernel's fraction of the ceiling is
(bytes of W + X + Y) / time / read bandwidth.

    python benchmarks/gemv.py [--out-dir benchmarks/results] [--m 1 2 4 8 16]

Writes DIR/gemv-<time>.json (kind "gemv") after every shape.
"""

from __future__ import annotations

import os
import sys
import time

from _harness import parser, result_path, write
from ftbench.bench.environment import capture_environment
from ftbench.bench.timer import TimingPolicy, cold_input_sets, device_facts, time_launch
from ftbench.modelbench.ceilings import copy_bandwidth, read_bandwidth

SHAPES = [  # (n, k) of GPT-J-6B's decode GEMMs
    (4096, 4096),  # attention output
    (12288, 4096),  # fused QKV
    (16384, 4096),  # FFN up
    (4096, 16384),  # FFN down
    (50400, 4096),  # LM head
]
TOKENS = (1, 2, 4, 8, 16)
POLICY = TimingPolicy(warmup_ms=20.0, min_time_s=0.05, budget_s=1.0, target_rel_ci=0.01)
TOLERANCE = 2e-3


def random_fp16(cupy, shape, scale=1.0):
    return (cupy.random.standard_normal(shape, dtype=cupy.float32) * scale).astype(cupy.float16)


def gemv_bytes(m, n, k):
    """The fewest bytes a GEMV moves: W and X read once, Y written once (fp16)."""
    return 2 * (n * k + m * k + m * n)


def measure_ceilings():
    """Read bandwidth (read probe) and copy bandwidth (read + write) over 4 GiB, in TB/s."""
    read, copied = read_bandwidth(), copy_bandwidth()
    return {
        "read_tb_per_s": read["bytes_per_s"] / 1e12,
        "copy_tb_per_s": copied["bytes_per_s"] / 1e12,
        "read_tb_per_s_by_blocks_per_sm": {
            b: bw / 1e12 for b, bw in read["by_blocks_per_sm"].items()
        },
        "read_timing": read["timing"],
        "copy_timing": copied["timing"],
    }


def relative_error(cupy, y, reference):
    got = y.astype(cupy.float64)
    if not bool(cupy.isfinite(got).all()):
        return float("inf")
    return float(cupy.linalg.norm(got - reference) / cupy.linalg.norm(reference))


def verify_and_time(cupy, launch, name, y, reference, sets, nbytes):
    """Run `launch` once on a NaN-poisoned y and check it; time it only if it is right."""
    y.fill(cupy.nan)
    launch(0)
    error = relative_error(cupy, y, reference)
    if not error < TOLERANCE:
        return {"name": name, "rel_err": error, "timing": None}
    timing = time_launch(
        launch, name=f"{name} m={y.shape[0]}", l2="cold", input_sets=sets, set_bytes=nbytes,
        policy=POLICY,
    )  # fmt: skip
    return {"name": name, "rel_err": error, "timing": timing.to_dict()}


def gemv_launch(operands, config, pdl=False):
    from ftbench.kernels.gemv import gemv

    def launch(index):
        gemv(*operands[index], config, pdl=pdl)

    return launch


def cublas_launch(operands):
    from ftbench.gemm.backends.cublas import gemm_ex

    def launch(index):
        gemm_ex(*operands[index])

    return launch


def run_shape(cupy, n, k, tokens, l2_bytes, read_tb_per_s):
    """Verify and time every config and cuBLAS for (n, k) and each m; one record per m."""
    from ftbench.kernels.gemv import GemvConfig, gemv_configs, prepare

    m_max = max(tokens)
    sets = cold_input_sets(gemv_bytes(1, n, k), l2_bytes)
    xs = [random_fp16(cupy, (m_max, k)) for _ in range(sets)]
    ws = [random_fp16(cupy, (n, k), scale=k**-0.5) for _ in range(sets)]
    ys = [cupy.full((m_max, n), cupy.nan, dtype=cupy.float16) for _ in range(sets)]
    reference = xs[0].astype(cupy.float64) @ ws[0].astype(cupy.float64).T
    records = []
    for m in tokens:
        operands = [(xs[i][:m], ws[i], ys[i][:m]) for i in range(sets)]
        nbytes = gemv_bytes(m, n, k)
        check = (operands[0][2], reference[:m], sets, nbytes)
        configs = gemv_configs(m, n, k)
        compile_s = prepare(configs, m, "float16")
        results = [
            {
                "config": config.to_dict(),
                **verify_and_time(cupy, gemv_launch(operands, config), config.name, *check),
            }
            for config in configs
        ]
        cublas = verify_and_time(cupy, cublas_launch(operands), "cublas_default", *check)
        timed = [result for result in results if result["timing"]]
        best_pdl = {"name": "-", "rel_err": None, "timing": None}
        if timed:
            best = min(timed, key=lambda result: result["timing"]["median_ms"])
            config = GemvConfig.from_dict(best["config"])
            launch = gemv_launch(operands, config, pdl=True)
            best_pdl = verify_and_time(cupy, launch, f"{config.name}+pdl", *check)
        records.append(
            {
                "m": m, "n": n, "k": k, "dtype": "float16", "bytes": nbytes,
                "read_tb_per_s": read_tb_per_s, "compile_s": compile_s,
                "configs": results, "cublas": cublas, "best_pdl": best_pdl,
            }
        )  # fmt: skip
        print_row(records[-1], flush=True)
    return records


def summarize_record(record):
    """(best config name, best us, best us with PDL, cuBLAS us, failed names) of one record."""
    timed = [c for c in record["configs"] if c["timing"]]
    failed = [c["name"] for c in record["configs"] + [record["best_pdl"]] if not c["timing"]]
    best = min(timed, key=lambda c: c["timing"]["median_ms"]) if timed else None
    pdl = record["best_pdl"]["timing"]
    cublas = record["cublas"]["timing"]
    return (
        best["name"] if best else "-",
        best["timing"]["median_ms"] * 1e3 if best else float("nan"),
        pdl["median_ms"] * 1e3 if pdl else float("nan"),
        cublas["median_ms"] * 1e3 if cublas else float("nan"),
        failed,
    )


HEADER = (
    f"{'m':>3} {'n':>6} {'k':>6}  {'best config':<22} {'us':>7} {'+PDL us':>7} "
    f"{'cuBLAS us':>9} {'speed-up':>8} {'%HBM':>6} {'+PDL':>6} {'cuBLAS':>6}  failed"
)


def print_row(record, flush=False):
    name, best_us, pdl_us, cublas_us, failed = summarize_record(record)
    read = record["read_tb_per_s"] * 1e12

    def percent(us):
        return record["bytes"] / (us * 1e-6) / read * 100

    print(
        f"{record['m']:>3} {record['n']:>6} {record['k']:>6}  {name:<22} {best_us:>7.2f} "
        f"{pdl_us:>7.2f} {cublas_us:>9.2f} {cublas_us / best_us:>8.2f} {percent(best_us):>5.1f}% "
        f"{percent(pdl_us):>5.1f}% {percent(cublas_us):>5.1f}%  "
        f"{len(failed)}/{len(record['configs']) + 1}",
        flush=flush,
    )


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--m", type=int, nargs="+", default=list(TOKENS), help="token counts")
    args = arguments.parse_args()

    import cupy

    cupy.random.seed(int.from_bytes(os.urandom(4), "little"))
    started = time.perf_counter()
    l2_bytes, _ = device_facts(cupy)
    ceilings = measure_ceilings()
    print(
        f"HBM read (read probe, 4 GiB): {ceilings['read_tb_per_s']:.3f} TB/s; "
        f"copy (read + write, 4 GiB): {ceilings['copy_tb_per_s']:.3f} TB/s",
        flush=True,
    )
    print(HEADER, flush=True)
    environment = capture_environment()
    path = result_path(args.out_dir, "gemv")
    records = []
    for n, k in SHAPES:
        records += run_shape(cupy, n, k, sorted(args.m), l2_bytes, ceilings["read_tb_per_s"])
        cupy.get_default_memory_pool().free_all_blocks()
        write(path, "gemv", [{"ceilings": ceilings}, *records], environment)

    print(f"\nfp16, cold L2, {time.perf_counter() - started:.0f} s; %HBM = (W + X + Y bytes) / "
          f"time / {ceilings['read_tb_per_s']:.3f} TB/s (read probe)")  # fmt: skip
    print(HEADER)
    for record in records:
        print_row(record)
    print(f"wrote {path}")
    if any(summarize_record(record)[4] for record in records):
        sys.exit("some configs gave wrong results (see 'failed')")


if __name__ == "__main__":
    main()
