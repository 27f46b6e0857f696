"""The records `ftbench run` writes for each engine and point (`modelbench.runs` schema), built
from what was measured, the floors and the ceilings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ftbench.bench.stats import summarize
from ftbench.modelbench.ceilings import Ceilings
from ftbench.modelbench.floors import decode_floor_ms, prefill_floor_ms
from ftbench.modelbench.grid import RunConfig, RunPoint
from ftbench.modelbench.runs import OUR_ENGINES, run_record

PERCENTILES = (50, 90, 99)


def percentile_summary(samples: Sequence[float]) -> dict[str, Any]:
    """A timing summary of samples in ms (the shape `modelbench.runs` reads), with the mean and
    the 50th, 90th and 99th percentiles."""
    values = np.asarray(samples, dtype=np.float64)
    stats = summarize(values)
    summary = {
        "median_ms": stats.median, "ci_low_ms": stats.ci_low, "ci_high_ms": stats.ci_high,
        "min_ms": stats.minimum, "max_ms": stats.maximum, "mean_ms": stats.mean,
        "rel_ci_half_width": stats.rel_ci_half_width, "samples_ms": values.tolist(),
    }  # fmt: skip
    for q in PERCENTILES:
        summary[f"p{q}_ms"] = float(np.percentile(values, q))
    return summary


@dataclass(frozen=True)
class Measured:
    """What one engine measured at one point: per request TTFT and end-to-end, every decode
    step, peak memory, GEMM dispatch counts, the GPU's conditions, and the seconds a peer
    spent compiling ahead of its requests (None where it compiles nothing ahead)."""

    ttft_ms: list[float]
    end_to_end_ms: list[float]
    step_ms: list[float]
    peak_memory_bytes: int | None
    gemm: dict[str, Any] | None
    conditions: dict[str, Any]
    flags: tuple[str, ...] = ()
    comm_step_ms_per_rank: tuple[float, ...] | None = None
    compile_s: float | None = None
    micro_batches: int | None = None
    comm_calls: dict[str, dict[str, float]] | None = None
    breakdown: dict[str, dict[str, Any]] | None = None


def point_record(
    engine: str,
    model: str,
    dtype: str,
    tp: int,
    point: RunPoint,
    measured: Measured,
    floor_decode_ms: float | None,
    floor_prefill_ms: float | None,
    pp: int = 1,
) -> dict[str, Any]:
    """The run record (`modelbench.runs` schema) of one engine at one point, with the extras."""
    record = run_record(
        engine=engine, model=model, dtype=dtype, tp=tp, pp=pp, batch=point.batch,
        input_len=point.input_len, output_len=point.output_len,
        ttft=percentile_summary(measured.ttft_ms),
        decode_step=percentile_summary(measured.step_ms),
        end_to_end=percentile_summary(measured.end_to_end_ms),
        peak_memory_bytes=measured.peak_memory_bytes, floor_decode_step_ms=floor_decode_ms,
        gemm_cache_misses=None if measured.gemm is None else measured.gemm["misses"],
        flags=measured.flags, comm_step_ms_per_rank=measured.comm_step_ms_per_rank,
        micro_batches=measured.micro_batches,
    )  # fmt: skip
    end_to_end_s = record["end_to_end_ms"]["median_ms"] / 1e3
    record["total_tok_s"] = point.batch * (point.input_len + point.output_len) / end_to_end_s
    record["floor_prefill_ms"] = floor_prefill_ms
    record["prefill_roofline_fraction"] = (
        None if floor_prefill_ms is None else floor_prefill_ms / record["ttft_ms"]["median_ms"]
    )
    record["gemm_dispatch"] = measured.gemm
    record["compile_s"] = measured.compile_s
    if measured.comm_calls is not None:
        record["comm_calls"] = measured.comm_calls
    if measured.breakdown is not None:
        record["breakdown"] = measured.breakdown
    record["conditions"] = measured.conditions
    record["status"] = "ok"
    return record


def engine_record(config: RunConfig, engine: str, point: RunPoint, measured, ceilings: Ceilings):
    """The record of `engine` at `point`: `measured` with its floors and the run's ceilings, or
    `measured` itself when it is already a record (of a point that could not run)."""
    if isinstance(measured, dict):
        return measured
    spec = config.spec
    # A step runs the stages one after another: its floor is one tensor-parallel rank's share
    # of every layer, whatever pp.
    bandwidth = ceilings.hbm_read_bytes_per_s
    weights = config.weights if engine in OUR_ENGINES else None
    record = point_record(
        engine, spec.name, config.dtype, config.tp, point, measured,
        decode_floor_ms(spec, point, config.dtype, bandwidth, config.tp, weights),
        prefill_floor_ms(
            spec, point, config.dtype, ceilings.gemm_peak_flops, bandwidth, config.tp, weights
        ),
        config.pp,
    )  # fmt: skip
    if weights is not None:
        record["weights"] = weights
    if config.activations is not None and engine in OUR_ENGINES:
        record["activations"] = config.activations
    record["hbm_read_bytes_per_s"] = ceilings.hbm_read_bytes_per_s
    record["hbm_read_by"] = ceilings.hbm_read_by
    record["gemm_peak_flops"] = ceilings.gemm_peak_flops
    return record


def failed_record(engine: str, config: RunConfig, point: RunPoint, error: Exception):
    """A point an engine could not run: out of memory ("does not fit") or another failure."""
    text = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    out_of_memory = "OutOfMemory" in text or "does not fit" in text or "are free" in text
    return {
        "engine": engine, "model": config.spec.name, "dtype": config.dtype, "tp": config.tp,
        "pp": config.pp,
        "batch": point.batch, "input_len": point.input_len, "output_len": point.output_len,
        "status": "does not fit" if out_of_memory else "failed", "reason": text,
    }  # fmt: skip


def conditions_dict(conditions) -> dict[str, Any]:

    data = asdict(conditions)
    data["other_processes"] = list(data["other_processes"])
    return data
