"""Tensor- and pipeline-parallel acceptance on one GPU: emulated ranks against the TP=1 runtime.

For GPT-J (parallel block, partial interleaved rotary, LM-head bias), LLaMA with grouped-query
attention (4 KV heads, replicated at tp=8) and GPT-2 (learned positions, LM head tied to the
vocabulary-split embedding), small random fp16 models run unsharded and as tp = 2, 4 and 8
emulated ranks and as pipelines of pp = 2 and 4 stages and tp=2 x pp=2 in one process, the
pipelines pp = 2 and tp=2 x pp=2 also with 2 and 3 micro-batches per step
(`validation.parallel_check`): the largest relative logit error
‖tp − tp1‖ / ‖tp1‖ over every position of a ragged prefill and the teacher-forced decode steps,
with both runs' distance from the float64 NumPy reference for scale.

    python benchmarks/parallel_emulated.py --out-dir benchmarks/results

Writes DIR/parallel-emulated-<time>.json (every case, environment) and
DIR/acceptance/parallel_emulated.json.
"""

from __future__ import annotations

from _harness import parser, result_path, write, write_summary
from ftbench.bench.environment import capture_environment
from ftbench.validation.parallel_check import (
    CASES,
    MICRO_BATCH_SIZES,
    PIPELINE_SIZES,
    TP_SIZES,
    compare_emulated,
    tp1_logits,
)

DTYPE = "fp16"
CASE_FIELDS = (
    "model", "tp", "pp", "micro_batches", "kv_replicas", "max_rel_err", "argmax_agreement",
)  # fmt: skip


def main() -> None:
    args = parser(__doc__, summary=True).parse_args()
    environment = capture_environment()
    records = []
    for case in CASES:
        tp1 = tp1_logits(case, DTYPE)
        for tp in TP_SIZES:
            result = compare_emulated(case, tp, DTYPE, tp1=tp1).to_dict()
            print(result, flush=True)
            records.append({"kind": "tp-emulated", **result})
        for tp, pp in PIPELINE_SIZES:
            result = compare_emulated(case, tp, DTYPE, tp1=tp1, pp=pp).to_dict()
            print(result, flush=True)
            records.append({"kind": "pp-emulated", **result})
        for tp, pp, micro in MICRO_BATCH_SIZES:
            result = compare_emulated(
                case, tp, DTYPE, tp1=tp1, pp=pp, micro_batches=micro
            ).to_dict()
            print(result, flush=True)
            records.append({"kind": "pp-micro-batches-emulated", **result})
    path = write(
        result_path(args.out_dir, "parallel-emulated"), "parallel-emulated", records, environment
    )
    summary = {"dtype": DTYPE, "models": list(CASES), "source": str(path)}
    for tp in TP_SIZES:
        summary[f"tp{tp}_emulated_max_rel_err"] = max(
            r["max_rel_err"] for r in records if r["tp"] == tp and r["pp"] == 1
        )
    for tp, pp, micro in (*((tp, pp, 1) for tp, pp in PIPELINE_SIZES), *MICRO_BATCH_SIZES):
        name = (f"pp{pp}" if tp == 1 else f"tp{tp}_pp{pp}") + (f"_mb{micro}" if micro > 1 else "")
        summary[f"{name}_emulated_max_rel_err"] = max(
            r["max_rel_err"]
            for r in records
            if (r["tp"], r["pp"], r["micro_batches"]) == (tp, pp, micro)
        )
    summary["tp1_vs_float64_reference_max_rel_err"] = max(
        r["tp1_vs_reference_max_rel_err"] for r in records
    )
    summary["min_argmax_agreement"] = min(r["argmax_agreement"] for r in records)
    summary["ranks_identical"] = all(r["ranks_identical"] for r in records)
    summary["cases"] = [{k: r[k] for k in CASE_FIELDS} for r in records]
    summary["utc_time"] = environment.utc_time
    device = environment.device_label(args.device_kind)
    write_summary(args.out_dir, "parallel_emulated", summary, device, environment.git_commit)


if __name__ == "__main__":
    main()
