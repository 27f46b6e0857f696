"""Model architectures (`ModelSpec`), workloads and the GEMM problems they issue.

`load_profile` finds a spec (built-in name, profile TOML or HF config.json); `gemm_problems`
expands a spec and a `Workload` into every GEMM per phase and rank; `deduplicate` counts them.
"""

from ftbench.profiles.catalog import builtin_names, load_profile
from ftbench.profiles.problems import (
    CountedProblem,
    ProblemUse,
    RankShapes,
    deduplicate,
    gemm_problems,
    rank_shapes,
)
from ftbench.profiles.spec import ModelSpec, Workload

__all__ = [
    "CountedProblem",
    "ModelSpec",
    "ProblemUse",
    "RankShapes",
    "Workload",
    "builtin_names",
    "deduplicate",
    "gemm_problems",
    "load_profile",
    "rank_shapes",
]
