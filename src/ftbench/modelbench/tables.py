"""`ftbench run`'s records as a table: one row per engine and point, for the console and CSV."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

RUN_COLUMNS = {
    "engine": "engine", "batch": "batch", "input_len": "in", "output_len": "out",
    "ttft_ms": "TTFT ms", "step_p50_ms": "step p50 ms", "step_p99_ms": "step p99 ms",
    "throughput_tok_s": "out tok/s", "roofline_fraction": "decode/floor",
    "prefill_roofline_fraction": "prefill/floor", "peak_memory_gib": "memory GiB",
    "gemm_cache_misses": "GEMM misses", "comm_ms_per_rank": "comm ms/rank", "status": "status",
}  # fmt: skip


def run_table(records: Iterable[dict[str, Any]]):
    """The records as a pandas DataFrame with one row per (engine, point), for tables and CSV."""
    import pandas as pd

    rows = []
    for record in records:
        ok = record.get("status", "ok") == "ok"
        memory = record.get("peak_memory_bytes")
        rows.append({
            "engine": record["engine"], "batch": record["batch"],
            "input_len": record["input_len"], "output_len": record["output_len"],
            "ttft_ms": record["ttft_ms"]["median_ms"] if ok else None,
            "step_p50_ms": record["decode_step_ms"]["p50_ms"] if ok else None,
            "step_p99_ms": record["decode_step_ms"]["p99_ms"] if ok else None,
            "throughput_tok_s": record.get("throughput_tok_s"),
            "roofline_fraction": record.get("roofline_fraction"),
            "prefill_roofline_fraction": record.get("prefill_roofline_fraction"),
            "peak_memory_gib": None if memory is None else memory / 2**30,
            "gemm_cache_misses": record.get("gemm_cache_misses"),
            "comm_ms_per_rank": " ".join(
                f"{value:.3g}" for value in record["comm_step_ms_per_rank"]
            ) if record.get("comm_step_ms_per_rank") else None,
            "status": record.get("status", "ok") if ok else f"{record['status']}: "
            f"{record.get('reason', '')}"[:80],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))
