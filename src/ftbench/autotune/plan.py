"""What a sweep will tune: the problems of a profile and workload, and candidate counts."""

from __future__ import annotations

import re

from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.gemm.backends import get_backend
from ftbench.gemm.problem import DATASHEET_PEAKS, GemmProblem, GpuPeaks
from ftbench.profiles.problems import CountedProblem, Fused, deduplicate, gemm_problems
from ftbench.profiles.spec import ModelSpec, Workload

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """'900', '900s', '15m', '1.5h' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidInputError(f"a duration is a number with s, m or h (e.g. 15m), got {text!r}")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600}[unit]


def tuning_problems(
    spec: ModelSpec, workload: Workload, *, fused: Fused = True, attention: bool = False
) -> list[CountedProblem]:
    """The distinct GEMMs of `workload`, without those run inside fused attention unless asked."""
    counted = deduplicate(gemm_problems(spec, workload, fused))
    return [item for item in counted if attention or not item.fused_into_attention]


def candidate_counts(
    problem: GemmProblem, backend_names: list[str], reasons: dict[str, str]
) -> dict[str, int | None]:
    """Per backend, how many candidates it offers for `problem`; None where it cannot compute
    the problem (an 8-bit one, a shape its kernels do not take) or cannot say here (a GPU or
    package is missing), with the reason added to `reasons` (distinct reasons joined by "; ")."""
    counts: dict[str, int | None] = {}
    for name in backend_names:
        backend = get_backend(name)
        try:  # asking may need the backend's library (cuBLASLt checks FP8 rules itself)
            reason = backend.unsupported_reason(problem)
            if reason is None:
                counts[name] = len(backend.candidates(problem))
                continue
        except (FtbenchError, ImportError, RuntimeError, OSError) as exc:
            reason = backend.unavailable_reason() or str(exc)
        counts[name] = None
        previous = reasons.get(name)
        if previous is None:
            reasons[name] = reason
        elif reason not in previous.split("; "):
            reasons[name] = f"{previous}; {reason}"
    return counts


def peaks_for_gpu(gpu_name: str) -> GpuPeaks | None:
    """Datasheet roofline numbers for a GPU by its name, if ftbench knows it."""
    lowered = gpu_name.lower()
    for key, peaks in DATASHEET_PEAKS.items():
        if key in lowered:
            return peaks
    return None
