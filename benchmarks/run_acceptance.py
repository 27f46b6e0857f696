"""`ftbench run` acceptance: throughput tables up to the memory limit, with peers in the same run.

Per model (fp16, random weights): for input/output 128/128 and 2048/128, every power-of-two batch
up to the largest that fits, and that largest one (`--max-throughput`'s points), through
ftbench with the tuned-config cache and without it (library-default GEMMs); then HF transformers
eager `generate()` at batch 1, 128/128, on the same GPU in the same process.

    python benchmarks/run_acceptance.py measure --model gptj-6b --cache FILE --out-dir DIR
    python benchmarks/run_acceptance.py summarize DIR/run-gptj-6b-*.json DIR/run-llama2-7b-*.json

`measure` writes DIR/run-<model>-<time>.json (kind "run", the environment attached);
`summarize` reads such files and writes DIR/acceptance/run.json from them.
"""

from __future__ import annotations

import argparse
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from ftbench.bench.environment import capture_environment
from ftbench.bench.results import read_results, write_results
from ftbench.files import write_json_atomic
from ftbench.modelbench.engine import run_benchmark
from ftbench.modelbench.grid import (
    RunConfig,
    RunPoint,
    free_memory_for_runs,
    max_batch,
    throughput_batches,
)
from ftbench.profiles.catalog import load_builtin

LENGTHS = ((128, 128), (2048, 128))
# TensorRT-LLM's published H100 FP8 output tokens/s (the seed article), for the note.
TRT_LLM_FP8 = {"gptj-6b": {"128/128": 34955, "2048/128": 2800}, "llama2-7b": {"128/128": 16985}}


def measure(args: argparse.Namespace) -> None:
    spec = load_builtin(args.model)
    environment = capture_environment()
    free = free_memory_for_runs()
    points = tuple(
        RunPoint(batch, input_len, output_len)
        for input_len, output_len in LENGTHS
        for batch in throughput_batches(max_batch(spec, input_len, output_len, "fp16", free))
    )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out_dir / f"run-{spec.name}-{stamp}.json"
    records: list[dict] = []

    def keep(record: dict) -> None:
        records.append(record)
        write_results(out, "run", records, environment)
        brief = {k: record.get(k) for k in ("engine", "batch", "input_len", "status")}
        print(brief, record.get("throughput_tok_s"), record.get("reason", ""), flush=True)

    ours = RunConfig(
        spec, "fp16", points, ("ftbench", "ftbench-untuned"), args.cache, repeats=args.repeats
    )
    ceilings = run_benchmark(ours, keep)
    peer = RunConfig(spec, "fp16", (RunPoint(1, 128, 128),), ("hf-eager",), repeats=args.repeats)
    run_benchmark(peer, keep, ceilings=ceilings)
    print(f"wrote {out}")


def _best(records: list[dict], engine: str, lengths: str) -> dict | None:
    rows = [
        r for r in records
        if r["engine"] == engine and r.get("status", "ok") == "ok"
        and f"{r['input_len']}/{r['output_len']}" == lengths
    ]  # fmt: skip
    return max(rows, key=lambda r: r["throughput_tok_s"], default=None)


def summarize(args: argparse.Namespace) -> None:
    by_model: dict[str, list[dict]] = {}
    environments = []
    for path in args.files:
        document = read_results(path)
        environments.append(document["environment"])
        for record in document["records"]:
            by_model.setdefault(record["model"], []).append(record)
    summary: dict = {}
    for model, records in by_model.items():
        ok = [r for r in records if r.get("status", "ok") == "ok"]
        for lengths in ("128/128", "2048/128"):
            best = _best(records, "ftbench", lengths)
            summary[f"{model}_{lengths}"] = None if best is None else {
                "best_tok_s": best["throughput_tok_s"], "batch": best["batch"],
                "decode_step_ms": best["decode_step_ms"]["median_ms"],
                "trt_llm_h100_fp8_tok_s": TRT_LLM_FP8.get(model, {}).get(lengths),
            }  # fmt: skip
        b1 = {r["engine"]: r for r in ok if r["batch"] == 1 and r["input_len"] == 128}
        if "hf-eager" in b1 and "ftbench" in b1:
            summary[f"{model}_b1_decode_ms"] = {
                engine: b1[engine]["decode_step_ms"]["median_ms"] for engine in b1
            }
            summary[f"{model}_b1_speedup_vs_hf"] = (
                b1["hf-eager"]["decode_step_ms"]["median_ms"]
                / b1["ftbench"]["decode_step_ms"]["median_ms"]
            )
        pairs = [
            (r, u) for r in ok if r["engine"] == "ftbench"
            for u in ok if u["engine"] == "ftbench-untuned"
            and (u["batch"], u["input_len"], u["output_len"])
            == (r["batch"], r["input_len"], r["output_len"])
        ]  # fmt: skip
        ratios = [
            u["end_to_end_ms"]["median_ms"] / r["end_to_end_ms"]["median_ms"] for r, u in pairs
        ]
        summary[f"{model}_tuned_vs_untuned_e2e_geomean"] = (
            math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None
        )
    environment = environments[-1]

    def value(key: str, field: str | None = None):
        entry = summary.get(key)
        return entry if field is None or entry is None else entry[field]

    acceptance = {
        "device": environment.device_label(os.environ.get("FTBENCH_DEVICE_KIND", "")),
        "commit": environment.git_commit,
        "gptj_128_128_best_tok_s": value("gptj-6b_128/128", "best_tok_s"),
        "gptj_2048_128_best_tok_s": value("gptj-6b_2048/128", "best_tok_s"),
        "llama2_7b_128_128_best_tok_s": value("llama2-7b_128/128", "best_tok_s"),
        "gptj_b1_speedup_vs_hf": value("gptj-6b_b1_speedup_vs_hf"),
        "tuned_vs_untuned_e2e": value("gptj-6b_tuned_vs_untuned_e2e_geomean"),
        "details": summary,
        "sources": [str(path) for path in args.files],
    }
    write_json_atomic(args.out_dir / "acceptance" / "run.json", acceptance)
    print(acceptance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure", help="measure one model")
    run.add_argument("--model", required=True)
    run.add_argument("--cache", help="tuned-config cache for the tuned engine")
    run.add_argument("--repeats", type=int, default=3)
    run.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    total = commands.add_parser("summarize", help="write acceptance/run.json from result files")
    total.add_argument("files", nargs="+", type=Path)
    total.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    measure(args) if args.command == "measure" else summarize(args)


if __name__ == "__main__":
    main()
