"""Acceptance summaries of `ftbench run` result files: the throughput tables and the runtime at
the hardware limit. `ftbench run` measures; this only sums up what it wrote.

`run` (DIR/acceptance/run.json), per model (fp16, random weights, the tuned cache of `ftbench
tune`): for 128/128 and 2048/128 every power-of-two batch up to the largest that fits and that
one, tuned and with library-default GEMMs, then HF transformers eager at batch 1:

    ftbench run --profile gptj-6b --max-throughput --input-len 128,2048 --output-len 128 \\
        --compare untuned --out DIR/run-gptj-6b.json
    ftbench run --profile gptj-6b --compare hf --out DIR/run-gptj-6b-hf.json
    (the same for llama2-7b)
    python benchmarks/run_acceptance.py run DIR/run-gptj-6b*.json DIR/run-llama2-7b*.json

`speed` (DIR/acceptance/speed.json), GPT-J 6B: the decode step at batch 1 and 64 (128/128)
against its floor, the 1 x 2048 prefill against the GEMM peak, HF eager and the gpt-fast-style
compiled decoder at batch 1; `--breakdown` keeps each step taken apart operation by operation:

    ftbench run --profile gptj-6b --batch 1,64 --breakdown --out DIR/speed-decode.json
    ftbench run --profile gptj-6b --input-len 2048 --output-len 2 --breakdown \\
        --out DIR/speed-prefill.json
    ftbench run --profile gptj-6b --compare hf,gpt-fast --out DIR/speed-peers.json
    python benchmarks/run_acceptance.py speed DIR/speed-*.json

Where a configuration is in several files, the first file's record counts. Each summary names
the machine (--device-kind) and the commit of the last file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from _harness import parser, write_summary
from ftbench.modelbench import runs
from ftbench.reports.records import load_result_set

LENGTHS = ("128/128", "2048/128")
# TensorRT-LLM's published H100 FP8 output tokens/s (the seed article), for the note.
TRT_LLM_FP8 = {"gptj-6b": {"128/128": 34955, "2048/128": 2800}, "llama2-7b": {"128/128": 16985}}


def _lengths(record: dict[str, Any]) -> str:
    return f"{record['input_len']}/{record['output_len']}"


def _find(records, engine: str, batch: int, lengths: str) -> dict[str, Any] | None:
    """The first measured record of `engine` at `batch` and `lengths` ("128/128")."""
    return next(
        (r for r in records if r["engine"] == engine and r["batch"] == batch
         and _lengths(r) == lengths and runs.measured_ok(r)),
        None,
    )  # fmt: skip


def _median(record: dict[str, Any] | None, metric: str) -> float | None:
    return None if record is None else record[metric]["median_ms"]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _best(records, engine: str, lengths: str) -> dict[str, Any] | None:
    rows = [
        r for r in records if r["engine"] == engine and runs.measured_ok(r)
        and _lengths(r) == lengths
    ]  # fmt: skip
    return max(rows, key=lambda r: r["throughput_tok_s"], default=None)


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def run_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: the best ftbench throughput per length pair, the batch-1 decode step against
    HF eager's, and the geometric mean of untuned over tuned end-to-end time."""
    details: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in records):
        mine = [r for r in records if r["model"] == model]
        for lengths in LENGTHS:
            best = _best(mine, "ftbench", lengths)
            details[f"{model}_{lengths}"] = None if best is None else {
                "best_tok_s": best["throughput_tok_s"], "batch": best["batch"],
                "decode_step_ms": best["decode_step_ms"]["median_ms"],
                "trt_llm_h100_fp8_tok_s": TRT_LLM_FP8.get(model, {}).get(lengths),
            }  # fmt: skip
        at_b1 = {engine: _find(mine, engine, 1, "128/128") for engine in runs.ENGINES}
        if at_b1["ftbench"] is not None and at_b1["hf-eager"] is not None:
            details[f"{model}_b1_decode_ms"] = {
                engine: _median(record, "decode_step_ms")
                for engine, record in at_b1.items()
                if record is not None
            }
            details[f"{model}_b1_speedup_vs_hf"] = _ratio(
                _median(at_b1["hf-eager"], "decode_step_ms"),
                _median(at_b1["ftbench"], "decode_step_ms"),
            )
        ratios = []
        for tuned in (r for r in mine if r["engine"] == "ftbench" and runs.measured_ok(r)):
            untuned = _find(mine, "ftbench-untuned", tuned["batch"], _lengths(tuned))
            if untuned is not None:
                ratios.append(_median(untuned, "end_to_end_ms") / _median(tuned, "end_to_end_ms"))
        details[f"{model}_tuned_vs_untuned_e2e_geomean"] = _geomean(ratios)

    def value(key: str, field: str | None = None):
        entry = details.get(key)
        return entry if field is None or entry is None else entry[field]

    return {
        "gptj_128_128_best_tok_s": value("gptj-6b_128/128", "best_tok_s"),
        "gptj_2048_128_best_tok_s": value("gptj-6b_2048/128", "best_tok_s"),
        "llama2_7b_128_128_best_tok_s": value("llama2-7b_128/128", "best_tok_s"),
        "gptj_b1_speedup_vs_hf": value("gptj-6b_b1_speedup_vs_hf"),
        "tuned_vs_untuned_e2e": value("gptj-6b_tuned_vs_untuned_e2e_geomean"),
        "details": details,
    }


def speed_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """GPT-J's decode steps at batch 1 and 64 against their floors, the prefill against the GEMM
    peak, the peers at batch 1."""
    b1, b64 = (_find(records, "ftbench", batch, "128/128") for batch in (1, 64))
    prefill = _find(records, "ftbench", 1, "2048/2")
    hf, compiled = (_find(records, engine, 1, "128/128") for engine in ("hf-eager", "gpt-fast"))
    b1_ms, b64_ms = _median(b1, "decode_step_ms"), _median(b64, "decode_step_ms")
    floor_ms = b1 and b1["floor_decode_step_ms"]
    b64_floor_ms = b64 and b64["floor_decode_step_ms"]
    hf_ms, compile_ms = _median(hf, "decode_step_ms"), _median(compiled, "decode_step_ms")
    return {
        "floor_ms": floor_ms,
        "decode_b1_ms": b1_ms,
        "decode_b1_over_floor": _ratio(b1_ms, floor_ms),
        "hf_eager_b1_ms": hf_ms,
        "speedup_vs_hf_b1": _ratio(hf_ms, b1_ms),
        "compile_peer_b1_ms": compile_ms,
        "speedup_vs_compile_peer_b1": _ratio(compile_ms, b1_ms),
        "decode_b64_ms": b64_ms,
        "decode_b64_floor_ms": b64_floor_ms,
        "decode_b64_over_floor": _ratio(b64_ms, b64_floor_ms),
        "prefill_1x2048_ms": _median(prefill, "ttft_ms"),
        "prefill_peak_fraction": prefill and prefill["prefill_roofline_fraction"],
        "hbm_read_tb_per_s": b1 and b1["hbm_read_bytes_per_s"] / 1e12,
        "gemm_peak_tflops": b1 and b1["gemm_peak_flops"] / 1e12,
    }


SUMMARIES = {"run": run_summary, "speed": speed_summary}


def main() -> None:
    arguments = parser(__doc__, summary=True)
    arguments.add_argument("summary", choices=tuple(SUMMARIES), help="which summary to write")
    arguments.add_argument("files", nargs="+", type=Path, help="`ftbench run` result files")
    args = arguments.parse_args()
    result_sets = [load_result_set(path) for path in args.files]
    others = [result_set.path for result_set in result_sets if result_set.kind != runs.KIND]
    if others:
        raise SystemExit(f"not `ftbench run` results: {', '.join(others)}")
    summary = SUMMARIES[args.summary]([r for rs in result_sets for r in rs.data])
    summary["sources"] = [str(path) for path in args.files]
    environment = result_sets[-1].environment
    device = environment.device_label(args.device_kind)
    write_summary(args.out_dir, args.summary, summary, device, environment.git_commit)


if __name__ == "__main__":
    main()
