"""Every kind of file ftbench writes, in one table: who writes it, what one record holds, which
fields `records.load_result_set` checks, and what `ftbench report` shows of it.

A result file is `{schema, kind, environment, records}` (`bench.results.write_results`); an
acceptance summary and a `benchmarks/parallel.py` step are one flat object with a kind
(`bench.results.write_acceptance`); a tuned cache is `gemm.cache`'s own format. Kinds with
something to plot have a section of their own in the report (`reports.sections`), the others a
table of their fields (`reports.tables`); `tests/test_reports_kinds.py` holds this table, the
readers and the report together. A file of a kind not listed here is still reported: a table of
its fields and a note saying that ftbench does not know its kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftbench.bench.results import ACCEPTANCE
from ftbench.modelbench import runs

TUNED_CACHE = "tuned-cache"  # a tuned cache (its file says kind `gemm.cache.KIND`)
PARALLEL_STEP = "parallel-step"
UNKNOWN = "unknown"  # the report's name for a file of a kind not listed here


@dataclass(frozen=True)
class ResultKind:
    """One kind of file: `writer` writes it; each of its records (or the file itself, for a
    flat kind) holds `record`; `required`: the fields every measured record has, checked when it
    is read (kinds with a reader of their own check more), and `variants`: where records differ
    by their own "kind" field, the further fields of each (a record of another is refused);
    `shown`: what the report shows."""

    name: str
    writer: str
    record: str
    shown: str
    required: tuple[str, ...] = ()
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    plotted: bool = True


def _fields(names: str) -> tuple[str, ...]:
    return tuple(names.split())


KINDS = {
    kind.name: kind
    for kind in (
        ResultKind(
            "tune",
            writer="`ftbench tune --results`",
            record="one candidate on one problem: problem_key, problem, candidate, status, timing",
            shown="speed-up of the winner over the cuBLAS default per problem, winning backends",
        ),
        ResultKind(
            TUNED_CACHE,
            writer="`ftbench tune --out` (`gemm.cache`)",
            record="per problem: the winner, its time and the cuBLAS default's",
            shown="the same as `tune`",
        ),
        ResultKind(
            "tune-peers",
            writer="`benchmarks/tune.py`",
            record="per problem: the choice re-measured beside the cuBLAS default, torch and "
            "torch+TunableOp, its roofline fraction; one record of the run's ceilings",
            shown="time against the measured roofline; speed-ups over the peers",
        ),
        ResultKind(
            "tune-8bit",
            writer="`benchmarks/tune_8bit.py`",
            record="per 8-bit problem: the choice and its default re-measured side by side, the "
            "weight-only read fraction; one record of the run's ceilings",
            shown="a table of the problems",
            required=_fields("model group problem default_ms chosen_ms slower_than_default"),
            plotted=False,
        ),
        ResultKind(
            "foundation",
            writer="`benchmarks/foundation.py`",
            record="per process: the three probes' timings; one record of Nsight Compute's time",
            shown="each probe's samples per run, Nsight Compute's time of the cold GEMV",
        ),
        ResultKind(
            "gemv",
            writer="`benchmarks/gemv.py`",
            record="per decode shape: every config's timing, the cuBLAS default's, the best "
            "with PDL",
            shown="fraction of the HBM read bandwidth per shape",
        ),
        ResultKind(
            "attention",
            writer="`benchmarks/attention.py`",
            record="per case: decode (batch, length, bytes, read_fraction) or context (tokens, "
            "flops, tflop_per_s), its error against float64 and its timing (null when it was "
            "wrong); one record of the run's ceilings",
            shown="decode attention's fraction of the HBM read bandwidth, context attention's "
            "TFLOP/s",
            required=_fields("kind model dtype q_heads kv_heads head_dim rel_err timing"),
            variants={
                "decode": _fields("batch length bytes read_fraction"),
                "context": _fields("tokens flops tflop_per_s"),
            },
        ),
        ResultKind(
            "allreduce",
            writer="`benchmarks/allreduce.py`",
            record="per method, ranks and message size: the all-reduce's timing (median_us etc.)",
            shown="latency against message size, per method and number of ranks",
            required=_fields("method world_size emulated dtype bytes median_us timing"),
        ),
        ResultKind(
            runs.KIND,
            writer="`ftbench run`",
            record="per configuration: the `modelbench.runs` schema (TTFT, decode step, end to "
            "end, throughput, floors; with --breakdown each operation of a decode step and a "
            "prefill)",
            shown="latency and throughput against batch, TTFT against input length, ftbench "
            "against untuned and peers, where a step's time goes",
        ),
        ResultKind(
            "parallel-emulated",
            writer="`benchmarks/parallel_emulated.py`",
            record="per model and tp x pp (x micro-batches) emulated on one GPU: logit errors "
            "against tp=1 and float64, argmax agreement (pp and micro_batches: absent in older "
            "files, 1)",
            shown="a table of the cases",
            required=_fields("kind model dtype tp max_rel_err argmax_agreement ranks_identical"),
            plotted=False,
        ),
        ResultKind(
            "runtime-acceptance",
            writer="`benchmarks/runtime_acceptance.py`",
            record="an HF comparison (logit error, token agreement) or a GPT-J speed row (TTFT, "
            "decode step against its floor)",
            shown="a table per record kind",
            required=_fields("kind model dtype"),
            variants={
                "hf-comparison": _fields(
                    "max_rel_logit_err greedy_token_agreement teacher_forced_agreement"
                ),
                "gptj-speed": _fields("gemm batch decode_step_median_ms floor_decode_step_ms"),
            },
            plotted=False,
        ),
        ResultKind(
            "quantised-check",
            writer="`benchmarks/weights_8bit.py`",
            record="per small model and 8-bit format: the 8-bit runtime's and the fp16 runtime's "
            "logit errors against float64 on their own weights (`validation.quantised_check`)",
            shown="a table of the cases",
            required=_fields("model fmt ratio quantised_vs_float64 plain_vs_float64"),
            plotted=False,
        ),
        ResultKind(
            "comm-cost",
            writer="`benchmarks/comm_cost.py`",
            record="per model and communicator variant: the median batch-1 decode step",
            shown="a table of the variants",
            required=_fields("model variant decode_step_ms"),
            plotted=False,
        ),
        ResultKind(
            ACCEPTANCE,
            writer="the acceptance benchmarks (`benchmarks/*.py`)",
            record="one flat object: name, device, commit and the benchmark's headline numbers",
            shown="a table of its fields",
            required=_fields("name device commit"),
            plotted=False,
        ),
        ResultKind(
            PARALLEL_STEP,
            writer="`benchmarks/parallel.py`",
            record="one flat object: the step's name, commit, seconds and what it found",
            shown="a table of its fields",
            required=_fields("step commit step_seconds"),
            plotted=False,
        ),
    )
}
FLAT_KINDS = (ACCEPTANCE, PARALLEL_STEP)  # one object per file, no records list
