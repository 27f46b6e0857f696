"""JSON-ready summaries of profiles and their GEMM problems, for `ftbench profiles` and reports."""

from __future__ import annotations

from typing import Any

from ftbench.gemm.problem import GpuPeaks
from ftbench.profiles.problems import Fused, deduplicate, gemm_problems, rank_shapes
from ftbench.profiles.spec import ModelSpec, Workload

SUMMARY_SCHEMA = 1


def profile_row(spec: ModelSpec) -> dict[str, Any]:
    """One line of `ftbench profiles list`: the headline numbers of a model."""
    layers = spec.num_layers
    return {
        "name": spec.name,
        "family": spec.family,
        "architecture": spec.architecture,
        "parameters": spec.parameter_count(),
        "layers": f"{layers}+{spec.decoder_layers}" if spec.decoder_layers else str(layers),
        "hidden_size": spec.hidden_size,
        "num_heads": spec.num_heads,
        "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "ffn_hidden_size": spec.ffn_hidden_size,
        "vocab_size": spec.vocab_size,
    }


def problem_summary(
    spec: ModelSpec, workload: Workload, peaks: GpuPeaks, fused: Fused = True
) -> dict[str, Any]:
    """The deduplicated problems of `workload` with counts, FLOPs, bytes and roofline bound."""
    counted = deduplicate(gemm_problems(spec, workload, fused))
    problems = [
        {
            "key": item.problem.key(),
            "phases": list(item.phases),
            "roles": list(item.roles),
            "count": item.count,
            "flops": item.problem.flops(),
            "bytes": item.problem.bytes(),
            "arithmetic_intensity": round(item.problem.arithmetic_intensity(), 2),
            "bound": peaks.bound(item.problem),
            "fused_into_attention": item.fused_into_attention,
            "problem": item.problem.to_dict(),
        }
        for item in counted
    ]
    return {
        "schema": SUMMARY_SCHEMA,
        "profile": spec.name,
        "parameters": spec.parameter_count(),
        "workload": workload.to_dict(),
        "fused": fused,
        "rank": rank_shapes(spec, workload.tp, workload.pp).to_dict(),
        "gpu": peaks.to_dict(),
        "problems": problems,
    }
