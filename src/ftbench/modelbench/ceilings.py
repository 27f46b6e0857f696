"""The two ceilings every roofline fraction is measured against, measured here and now.

- HBM read bandwidth: the faster of two reads. `kernels.gemv.read_probe` reads a 4 GiB buffer
  once with the loads the GEMV kernels use (the best of 2, 4 and 8 blocks per SM), and the
  project's fastest GEMV configuration reads a 1 x 16384 x 4096 fp16 problem (GPT-J's FFN up at
  batch 1, 128 MiB), counting its weight, input and output once. The GEMV beats the probe on
  H100 (it issues its loads deeper), and no kernel of a run may read faster than its ceiling.
- Device-to-device copy bandwidth (bytes read plus bytes written), for comparison.
Both cold (the buffer is 70 times the L2), both through `bench.timer`.
- Dense GEMM peak: the best cuBLAS / cuBLASLt candidate on 8192^3, tuned as `ftbench tune`
  tunes (every candidate verified, then timed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftbench.bench.timer import TimingPolicy, cold_input_sets, device_facts, time_launch

PROBE_BYTES = 4 * 2**30
POLICY = TimingPolicy(warmup_ms=20.0, min_time_s=0.05, budget_s=1.0, target_rel_ci=0.01)
BLOCKS_PER_SM = (2, 4, 8)
SMALL_READ_L2S = 4  # reads below this many L2 sizes rotate among cold copies


def _source(cupy, nbytes: int) -> Any:
    return cupy.random.randint(0, 2**31 - 1, nbytes // 4, dtype=cupy.int32)


def read_bandwidth(nbytes: int = PROBE_BYTES, policy: TimingPolicy = POLICY) -> dict[str, Any]:
    """Bytes per second of one read of `nbytes` (best grid), with each grid's timing.

    Up to a few times the L2 size the reads rotate among enough copies to keep them cold, as
    kernels are timed (`timer.cold_input_sets`): the ceiling of one kernel that reads that many
    bytes, launch and drain included, which is below the large-read bandwidth. Larger reads
    flush L2 before each launch, whose cost they dwarf.
    """
    import cupy

    from ftbench.kernels.gemv import read_probe

    sm_count = cupy.cuda.Device().attributes["MultiProcessorCount"]
    l2_bytes = device_facts(cupy)[0]
    sets = cold_input_sets(nbytes, l2_bytes) if nbytes < SMALL_READ_L2S * l2_bytes else 1
    sources = [_source(cupy, nbytes) for _ in range(sets)]
    sink = cupy.empty(256 * max(BLOCKS_PER_SM) * sm_count, dtype=cupy.uint32)
    timings = {
        per_sm: time_launch(
            lambda i, blocks=per_sm * sm_count: read_probe(sources[i], sink, blocks),
            name=f"read {nbytes / 2**30:g} GiB, {per_sm} blocks/SM",
            l2="cold",
            input_sets=sets,
            set_bytes=nbytes,
            policy=policy,
        )  # fmt: skip
        for per_sm in BLOCKS_PER_SM
    }
    best = min(timings.values(), key=lambda timing: timing.median_ms)
    return {
        "bytes_per_s": nbytes / (best.median_ms / 1e3),
        "by_blocks_per_sm": {b: nbytes / (t.median_ms / 1e3) for b, t in timings.items()},
        "timing": best.to_dict(),
    }


GEMV_READ_SHAPE = (1, 16384, 4096)  # GPT-J's FFN up at batch 1: 128 MiB of fp16 weight
GEMV_POLICY = TimingPolicy(warmup_ms=10.0, min_time_s=0.02, budget_s=0.3, target_rel_ci=0.01)


def gemv_read_bandwidth(policy: TimingPolicy = GEMV_POLICY) -> dict[str, Any]:
    """Bytes per second of the fastest `kernels.gemv` configuration on `GEMV_READ_SHAPE` (fp16,
    cold, random operands), its weight, input and output counted once; with the winner's name
    and timing."""
    import cupy

    from ftbench.kernels import gemv

    m, n, k = GEMV_READ_SHAPE
    sm_count = cupy.cuda.Device().attributes["MultiProcessorCount"]
    configs = gemv.gemv_configs(m, n, k, sm_count)
    gemv.prepare(configs, m, "float16")
    nbytes = (n * k + m * k + m * n) * gemv.W_BYTES
    sets = cold_input_sets(nbytes, device_facts(cupy)[0])
    rng = cupy.random.RandomState(0)
    operands = [
        (rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16),
         (rng.standard_normal((n, k), dtype=cupy.float32) * 0.02).astype(cupy.float16),
         cupy.empty((m, n), cupy.float16))
        for _ in range(sets)
    ]  # fmt: skip
    timings = {
        config.name: time_launch(
            lambda i, config=config: gemv.gemv(*operands[i], config),
            name=f"gemv {config.name} {m}x{n}x{k}",
            l2="cold",
            input_sets=sets,
            set_bytes=nbytes,
            policy=policy,
        )  # fmt: skip
        for config in configs
    }
    name, best = min(timings.items(), key=lambda item: item[1].median_ms)
    return {
        "bytes_per_s": nbytes / (best.median_ms / 1e3),
        "config": name,
        "timing": best.to_dict(),
    }


def copy_bandwidth(nbytes: int = PROBE_BYTES, policy: TimingPolicy = POLICY) -> dict[str, Any]:
    """Bytes read plus written per second by a device-to-device copy of `nbytes`."""
    import cupy

    source = _source(cupy, nbytes)
    target = cupy.empty_like(source)

    def copy(_):
        target.data.copy_from_device_async(source.data, nbytes)

    copy(0)
    if not bool((target == source).all()):
        raise RuntimeError("device-to-device copy produced wrong bytes")
    timing = time_launch(copy, name=f"copy {nbytes / 2**30:g} GiB", l2="cold", policy=policy)
    return {"bytes_per_s": 2 * nbytes / (timing.median_ms / 1e3), "timing": timing.to_dict()}


def gemm_peak(dtype: str = "fp16") -> dict[str, Any]:
    """FLOP/s of the best cuBLAS/cuBLASLt candidate on an 8192^3 GEMM of `dtype`."""
    from ftbench.autotune.sweep import SweepOptions, available_backends, tune_problem
    from ftbench.gemm.problem import GemmProblem

    problem = GemmProblem(8192, 8192, 8192, a_dtype=dtype, b_dtype=dtype, c_dtype=dtype)
    backends, _ = available_backends(("cublas", "cublaslt"))
    options = SweepOptions(backends=("cublas", "cublaslt"), l2="hot")
    outcome = tune_problem(problem, backends, options)
    best_ms = outcome.entry.winner_time.median_ms
    return {
        "flops_per_s": problem.flops() / (best_ms / 1e3),
        "winner": outcome.entry.winner.to_dict(),
        "median_ms": best_ms,
    }


@dataclass(frozen=True)
class Ceilings:
    """The GPU's measured HBM read bandwidth (bytes/s) and dense GEMM peak (FLOP/s); `hbm_read_by`
    says which read reached the bandwidth ("read probe", or "gemv CONFIG")."""

    hbm_read_bytes_per_s: float
    gemm_peak_flops: float
    hbm_read_by: str = "read probe"


def measure_ceilings(dtype: str) -> Ceilings:
    """The HBM read bandwidth (the faster of the read probe and the fastest GEMV, see the module
    docstring) and the dense GEMM peak of `dtype`, measured now."""
    probe, fastest_gemv = read_bandwidth(), gemv_read_bandwidth()
    peak = gemm_peak(dtype)["flops_per_s"]
    if fastest_gemv["bytes_per_s"] > probe["bytes_per_s"]:
        return Ceilings(fastest_gemv["bytes_per_s"], peak, f"gemv {fastest_gemv['config']}")
    return Ceilings(probe["bytes_per_s"], peak)
