"""`ftbench run`'s records as a table: one row per engine and point, for the console and CSV;
`ftbench serve-bench`'s: one row per engine and arrival process."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftbench.errors import InvalidInputError
from ftbench.files import check_file_target, write_text_atomic

RUN_COLUMNS = {
    "engine": "engine", "batch": "batch", "input_len": "in", "output_len": "out",
    "ttft_ms": "TTFT ms", "step_p50_ms": "step p50 ms", "step_p99_ms": "step p99 ms",
    "throughput_tok_s": "out tok/s", "roofline_fraction": "decode/floor",
    "prefill_roofline_fraction": "prefill/floor", "peak_memory_gib": "memory GiB",
    "gemm_cache_misses": "GEMM misses", "comm_ms_per_rank": "comm ms/rank", "status": "status",
}  # fmt: skip
SERVING_COLUMNS = {
    "engine": "engine", "arrivals": "arrivals", "batch": "concurrency",
    "request_throughput": "req/s", "output_throughput": "out tok/s", "goodput": "goodput req/s",
    "ttft_p50_ms": "TTFT p50 ms", "ttft_p99_ms": "TTFT p99 ms", "tpot_p50_ms": "TPOT p50 ms",
    "tpot_p99_ms": "TPOT p99 ms", "itl_p99_ms": "ITL p99 ms", "e2e_p50_ms": "e2e p50 ms",
    "e2e_p99_ms": "e2e p99 ms", "preemptions": "preemptions",
}  # fmt: skip


def check_run_outputs(out: Path, force: bool) -> None:
    """Refuse a results path (`run --out`) where the results or the CSV table beside them would
    replace an existing file, unless `force` (a measurement is never replaced silently), or one
    ending in .csv (the table would take its place)."""
    if out.suffix == ".csv":
        raise InvalidInputError(
            f"--out {out}: results are JSON, with a CSV table written beside them as "
            f"{out.stem}.csv; give a name ending in .json"
        )
    check_file_target(out, "run results", force)
    check_file_target(out.with_suffix(".csv"), "the run's CSV table", force)


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


def serving_table(records: Iterable[dict[str, Any]]):
    """serve-bench's records as a pandas DataFrame, one row per (engine, arrivals)."""
    import pandas as pd

    def percentile(serving: dict[str, Any], metric: str, q: str) -> float | None:
        distribution = serving[metric]
        return None if distribution is None else distribution[q]

    rows = []
    for record in records:
        serving = record["serving"]
        rows.append({
            "engine": record["engine"], "arrivals": serving["arrivals"], "batch": record["batch"],
            "request_throughput": serving["request_throughput"],
            "output_throughput": serving["output_throughput"], "goodput": serving["goodput"],
            **{
                f"{name}_{q}_ms": percentile(serving, f"{name}_ms", q)
                for name, q in (("ttft", "p50"), ("ttft", "p99"), ("tpot", "p50"),
                                ("tpot", "p99"), ("itl", "p99"), ("e2e", "p50"), ("e2e", "p99"))
            },
            "preemptions": serving["preemptions"],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=list(SERVING_COLUMNS))


def write_run_table(records: Iterable[dict[str, Any]], out: Path, table=run_table):
    """Write the records' table (`table`: `run_table` or `serving_table`) as CSV beside the
    results file `out` (OUT.csv); return it."""
    rows = table(records)
    write_text_atomic(out.with_suffix(".csv"), rows.to_csv(index=False))
    return rows
