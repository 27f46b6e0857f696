"""The floors of a run's points: the least time a decode step and a prefill can take on one
rank, from the bytes and FLOPs the model needs at the ceilings measured in the same run."""

from __future__ import annotations

from ftbench.modelbench.grid import RunPoint
from ftbench.profiles.problems import gemm_problems
from ftbench.profiles.spec import ModelSpec, Workload
from ftbench.runtime.memory import footprint


def decode_floor_ms(
    spec: ModelSpec, point: RunPoint, dtype: str, bandwidth: float, tp: int = 1,
    weights: str | None = None,
) -> float:  # fmt: skip
    """The decode step's floor: one rank's weights (8-bit `weights`: their bytes and scales,
    `runtime.memory.footprint`) plus its KV cache at the average length of the decode steps,
    read once at `bandwidth` bytes/s."""
    plan = footprint(spec, point.batch, point.max_seq_len, dtype, tp, max_tokens=1, weights=weights)
    average_length = point.input_len + point.output_len / 2
    kv_bytes = plan.kv_cache * average_length / point.max_seq_len
    return (plan.weights + kv_bytes) / bandwidth * 1e3


def prefill_floor_ms(
    spec: ModelSpec, point: RunPoint, dtype: str, peak_flops: float, bandwidth: float, tp: int = 1,
    weights: str | None = None,
) -> float:  # fmt: skip
    """The prefill's floor on one rank: the FLOPs of its context-phase GEMMs (the problems the
    profile derives, `profiles.problems.gemm_problems`, in `dtype`: 8-bit `weights` are
    multiplied as `dtype` ones) at `peak_flops`, or its weights (8-bit `weights`: their bytes) read
    once at `bandwidth`, whichever takes longer. Causal attention computes half of its score and
    context products' square on average."""
    workload = Workload((point.batch,), (point.input_len,), (point.output_len,), dtype, tp)
    flops = 0.0
    for use in gemm_problems(spec, workload):
        if use.phase == "context":
            causal = 0.5 if use.fused_into_attention else 1.0
            flops += use.problem.flops() * use.calls_per_step * causal
    weight_bytes = footprint(spec, 1, 1, dtype, tp, max_tokens=1, weights=weights).weights
    return max(flops / peak_flops, weight_bytes / bandwidth) * 1e3
