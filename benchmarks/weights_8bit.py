"""8-bit weights in the runtime: kernel error on small models, then GPT-J 6B and LLaMA-3 8B decode.

1. For small random GPT-J and LLaMA (GQA) models, int8 and fp8 weights (and fp8 W8A8, its
   prefill): the 8-bit runtime's logits against float64 on the dequantised weights (W8A8: with
   the activations rounded the same way), beside the fp16 runtime's against float64 on its own
   (`validation.quantised_check`): do the kernels add error beyond the quantisation?
2. GPT-J 6B and LLaMA-3 8B, random fp16 weights, 128 tokens in and out, at each --batch (default
   1): `ftbench run`'s measurement (`modelbench.engine.run_benchmark`, untuned GEMMs) with fp16,
   int8 and fp8 weights (weight-only) and fp8 W8A8 (`--dtype fp8`) in one process against one set
   of ceilings (HBM read bandwidth, GEMM peak, measured first). Each 8-bit record carries its
   accuracy cost against the fp16 runtime on the same weights.

    python benchmarks/weights_8bit.py --out-dir benchmarks/results --device-kind nvidia-h100-x1

Writes DIR/weights-8bit-<time>.json (run records), DIR/quantised-check-<time>.json and
DIR/acceptance/fp8_decode.json.
"""

from __future__ import annotations

from _harness import parser, result_path, write, write_summary
from ftbench.bench.environment import capture_environment
from ftbench.modelbench.ceilings import measure_ceilings
from ftbench.modelbench.engine import run_benchmark
from ftbench.modelbench.grid import RunConfig, RunPoint
from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.random_weights import random_weights
from ftbench.validation.parallel_check import CASES, SEED
from ftbench.validation.quantised_check import kernel_error

FORMATS = ("int8", "fp8")
# (weights, activations) of the decode runs: fp16, weight-only int8 and fp8, and W8A8 fp8
RUNS = ((None, None), ("int8", None), ("fp8", None), ("fp8", "fp8"))
MODELS = ("gptj-6b", "llama3-8b")
SMALL_CASES = ("gptj", "llama-gqa")
INPUT_LEN = OUTPUT_LEN = 128
REPEATS = 3


def kernel_errors() -> list[dict]:
    rows = []
    for case in SMALL_CASES:
        spec = CASES[case]
        weights = random_weights(spec, "fp16", seed=SEED)
        for fmt, activations in (*((fmt, None) for fmt in FORMATS), ("fp8", "fp8")):
            check = kernel_error(spec, weights, fmt, activations)
            row = {"model": spec.name, **check.to_dict()}
            print(row, flush=True)
            rows.append(row)
    return rows


def decode_runs(models, batches, ceilings, keep) -> list[dict]:
    """Every model and weight format at every batch; `keep(records)` after each record (the
    file is rewritten, so an interrupted run keeps what finished)."""
    records = []
    points = tuple(RunPoint(batch, INPUT_LEN, OUTPUT_LEN) for batch in batches)

    def on_record(record: dict) -> None:
        records.append(record)
        keep(records)

    for name in models:
        spec = load_builtin(name)
        for weights, activations in RUNS:
            config = RunConfig(
                spec, "fp16", points, repeats=REPEATS, weights=weights, activations=activations
            )
            run_benchmark(config, on_record, ceilings=ceilings)
            for record in records[-len(points) :]:
                step = record.get("decode_step_ms", {}).get("median_ms")
                fraction, cost = record.get("roofline_fraction"), record.get("accuracy")
                print(name, _label(record), record["batch"], record["status"], step, fraction,
                      cost, record.get("throughput_tok_s"), flush=True)  # fmt: skip
    return records


def _label(record: dict) -> str:
    """fp16, int8 / fp8 (weight-only) or w8a8-fp8."""
    if record.get("activations"):
        return f"w8a8-{record['weights']}"
    return record.get("weights") or "fp16"


def summarise(records: list[dict], checks: list[dict], ceilings) -> dict:
    steps: dict[tuple, list[float]] = {}
    for record in records:
        if record["status"] == "ok":
            key = (record["model"], _label(record), record["batch"])
            steps.setdefault(key, []).append(record["decode_step_ms"]["median_ms"])
    rows = {}
    for (model, label, batch), values in steps.items():
        fp16 = steps.get((model, "fp16", batch))
        mine = next(
            r for r in records
            if r["status"] == "ok" and (r["model"], _label(r), r["batch"]) == (model, label, batch)
        )  # fmt: skip
        rows[f"{model} {label} batch={batch}"] = {
            "decode_step_ms": min(values),
            "over_fp16": None if fp16 is None else min(values) / min(fp16),
            "floor_decode_step_ms": mine["floor_decode_step_ms"],
            "over_floor": min(values) / mine["floor_decode_step_ms"],
            "accuracy": mine.get("accuracy"),
            "output_tok_s": mine["throughput_tok_s"],
        }
    summary = {
        "hbm_read_tb_per_s": ceilings.hbm_read_bytes_per_s / 1e12,
        "kernel_error": {f"{row['model']} {row['fmt']}": row["ratio"] for row in checks},
        "kernel_error_within_fp16": all(row["ratio"] <= 2.0 for row in checks),
        "decode": rows,
    }
    for label in (*FORMATS, "w8a8-fp8"):
        row = rows.get(f"gptj-6b {label} batch=1")
        if row:
            summary[f"gptj_b1_{label.replace('-', '_')}_over_fp16"] = row["over_fp16"]
            summary[f"gptj_b1_{label.replace('-', '_')}_over_floor"] = row["over_floor"]
    return summary


def main() -> None:
    arguments = parser(__doc__, summary=True)
    arguments.add_argument("--batch", default="1", help="decode batches, comma-separated")
    arguments.add_argument("--models", default=",".join(MODELS), help="models, comma-separated")
    arguments.add_argument("--skip-check", action="store_true", help="skip part 1")
    args = arguments.parse_args()
    environment = capture_environment()
    checks = [] if args.skip_check else kernel_errors()
    if checks:
        write(result_path(args.out_dir, "quantised-check"), "quantised-check", checks, environment)
    ceilings = measure_ceilings("fp16")
    print(f"HBM read {ceilings.hbm_read_bytes_per_s / 1e12:.3f} TB/s", flush=True)
    batches = [int(value) for value in args.batch.split(",")]
    path = result_path(args.out_dir, "weights-8bit")
    records = decode_runs(
        args.models.split(","), batches, ceilings,
        lambda records: write(path, "run", records, environment),
    )  # fmt: skip
    summary = {**summarise(records, checks, ceilings), "source": str(path)}
    device = environment.device_label(args.device_kind)
    write_summary(args.out_dir, "fp8_decode", summary, device, environment.git_commit)


if __name__ == "__main__":
    main()
