"""Model-run records (result files of kind "run"): the schema `ftbench run` writes.

One record per configuration (engine, model, dtype, tp, pp, batch, input_len, output_len):

    {"engine": "ftbench", "model": "gptj-6b", "dtype": "fp16", "tp": 1, "pp": 1,
     "batch": 8, "input_len": 128, "output_len": 128,
     "ttft_ms": TIMING, "decode_step_ms": TIMING, "end_to_end_ms": TIMING,
     "throughput_tok_s": 1234.5, "peak_memory_bytes": 12884901888,
     "floor_decode_step_ms": 3.1, "roofline_fraction": 0.82,
     "gemm_cache_misses": 0, "flags": ["power-capped"], "status": "ok"}

TIMING is the timer's summary (`bench.timer.Timing.to_dict()`): at least median_ms, ci_low_ms,
ci_high_ms and samples_ms, finite numbers above zero. Derived numbers are computed here, once:
throughput_tok_s is the tokens generated (batch x output_len) over the median end-to-end time;
roofline_fraction is the floor of a decode step over its median time. Runs of several ranks (tp x
pp > 1, or one rank started by a launcher) add "comm_step_ms_per_rank": per global rank, the ms one
decode step spends in communicator calls (all-reduce, all-gather, send, recv; optional, absent in
older records and single-process runs) and "micro_batches": how many micro-batches each pipeline
step ran in (optional, absent in older records: 1). ftbench's engines add "tuned_cache": {path,
entries, note}, the tuned cache the point ran with (`gemm.cache.TunedChoice`; note says why none
was used, e.g. tuned on another GPU; absent in older records). With `ftbench run --breakdown`
ftbench's records add "breakdown": {"decode": STEP, "prefill": STEP}, one decode step (at the
average decode length, "length") and the point's prefill ("tokens") taken apart operation by
operation (`modelbench.step_breakdown`): STEP is {whole_ms, floor_ms, operations: [{name,
per_step, step_ms, floor_ms, roofline_fraction, bytes, flops}]}. Fields a peer cannot report
are null (or absent: throughput_tok_s, peak_memory_bytes, floor_decode_step_ms, roofline_fraction,
gemm_cache_misses, flags). A configuration that could not run has the key fields, a status other
than "ok" (e.g. "does not fit") and a "reason", and no timings. With `ftbench run --weights
int8|fp8` ftbench's records add "weights" (the linears' 8-bit format, part of the series: absent
means the weights are in dtype; `--dtype fp8` adds "activations": "fp8" too, W8A8) and
"accuracy": {positions, mean_rel_logit_err, max_rel_logit_err, top1_agreement} of the quantised
runtime against the runtime on the unquantised weights (`runtime.agreement.accuracy_cost`).
Writers may add fields of their own; readers ignore them.

`ftbench serve-bench` writes records of this schema too, one per engine and arrival process of
a request stream (`modelbench.serving_bench`), so that report, compare and history read them as
they read any run:
- engine: "ftbench-inflight" (in-flight batching over the paged KV cache) or "ftbench-static"
  (the static-batch baseline on the same stream) (`SERVING_ENGINES`); tp = pp = 1;
- batch: --max-concurrency, the most sequences served at once (the in-flight batch's largest,
  the static batch's size);
- input_len, output_len: the stream's mean prompt and drawn output lengths, rounded (at least 1);
  the distributions themselves are in "serving";
- ttft_ms, decode_step_ms, end_to_end_ms: TIMING summaries (`records.percentile_summary`) whose
  samples are the requests': TTFT (arrival to first token, queueing included), TPOT (per request,
  (e2e - TTFT) / (its output tokens - 1): the decode step a request sees; requests of one token
  have none) and end-to-end latency, in ms;
- throughput_tok_s: output tokens over the run's span (first arrival to last finish), given by
  the writer instead of batch x output_len over the median request; floors, roofline fraction
  and GEMM cache misses null;
- "serving": {requests, arrivals, input_lengths, output_lengths (their command-line forms:
  "poisson:4", "normal:512,256", `requests.*.name`), stop_token (null: outputs of exactly their
  drawn length), seed, max_num_tokens, block_size, kv_blocks (in-flight; null for static),
  preemptions, output_tokens, span_s, request_throughput (req/s), output_throughput and
  total_throughput (tok/s, total counting prompts), ttft_ms, tpot_ms, itl_ms, e2e_ms (each
  {mean, p50, p90, p99} in ms, `serving_metrics.Distribution`; tpot_ms and itl_ms null when no
  request has two tokens), slo ({ttft_ms, tpot_ms, e2e_ms} targets, null each where none, or
  null without --slo), good_requests and goodput (req/s meeting every target; null without
  --slo)}. Its arrivals, lengths, request count and stop token are part of the series
  (`series_key`), so runs at several rates are several configurations of one file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ftbench.errors import InvalidInputError
from ftbench.files import positive_number, positive_numbers

KIND = "run"
# Known engines, in the order plots and tables show them; others are accepted as they are.
# The one list of engines a run record may name: ftbench's runtime (with the tuned cache, and
# without it), then the peers measured through torch.
OUR_ENGINES = ("ftbench", "ftbench-untuned")
PEER_ENGINES = ("hf-eager", "hf-compile", "gpt-fast")
ENGINES = OUR_ENGINES + PEER_ENGINES
# `ftbench serve-bench`'s engines: in-flight batching, and the static-batch baseline.
INFLIGHT, STATIC = SERVING_ENGINES = ("ftbench-inflight", "ftbench-static")
# `ftbench run --compare NAME`: the engine each name measures beside "ftbench".
COMPARE_NAMES = {
    "untuned": "ftbench-untuned", "hf": "hf-eager", "hf-compile": "hf-compile",
    "gpt-fast": "gpt-fast",
}  # fmt: skip
KEY_FIELDS = ("engine", "model", "dtype", "tp", "pp", "batch", "input_len", "output_len")
TIMING_METRICS = ("ttft_ms", "decode_step_ms", "end_to_end_ms")
TIMING_FIELDS = ("median_ms", "ci_low_ms", "ci_high_ms", "samples_ms")
_INT_FIELDS = ("tp", "pp", "batch", "input_len", "output_len")
# Optional: absent or null where an engine cannot report them.
_OPTIONAL_NUMBERS = ("throughput_tok_s", "floor_decode_step_ms", "roofline_fraction")
_OPTIONAL_COUNTS = ("peak_memory_bytes", "gemm_cache_misses")
OK = "ok"
SERVING_NAMES = ("arrivals", "input_lengths", "output_lengths")
SERVING_COUNTS = ("requests", "output_tokens", "max_num_tokens", "block_size")
SERVING_RATES = ("span_s", "request_throughput", "output_throughput", "total_throughput")
SERVING_LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
DISTRIBUTION_FIELDS = ("mean", "p50", "p90", "p99")


def timing_summary(timing: Any) -> dict[str, Any]:
    """The summary dict of a `bench.timer.Timing` (or of a dict of the same shape), checked."""
    summary = dict(timing.to_dict() if hasattr(timing, "to_dict") else timing)
    missing = [name for name in TIMING_FIELDS if name not in summary]
    if missing:
        raise InvalidInputError(f"timing summary lacks {', '.join(missing)}")
    for name in TIMING_FIELDS[:3]:
        summary[name] = positive_number(summary[name], name)
    summary["samples_ms"] = positive_numbers(summary["samples_ms"], "samples_ms")
    if not summary["samples_ms"]:
        raise InvalidInputError("timing summary has no samples")
    return summary


def run_record(
    *,
    engine: str,
    model: str,
    dtype: str,
    tp: int,
    pp: int,
    batch: int,
    input_len: int,
    output_len: int,
    ttft: Any,
    decode_step: Any,
    end_to_end: Any,
    peak_memory_bytes: int | None,
    floor_decode_step_ms: float | None,
    gemm_cache_misses: int | None,
    flags: Sequence[str] = (),
    comm_step_ms_per_rank: Sequence[float] | None = None,
    micro_batches: int | None = None,
    throughput_tok_s: float | None = None,
) -> dict[str, Any]:
    """One model-run record; `ttft`, `decode_step` and `end_to_end` are timer results
    (`Timing`) or their summary dicts, in ms per prefill, per decode step and per request.
    `throughput_tok_s`: a serving record's (output tokens over its span); by default batch x
    output_len over the median end-to-end time."""
    record = {
        "engine": engine, "model": model, "dtype": dtype, "tp": tp, "pp": pp, "batch": batch,
        "input_len": input_len, "output_len": output_len,
        "ttft_ms": timing_summary(ttft),
        "decode_step_ms": timing_summary(decode_step),
        "end_to_end_ms": timing_summary(end_to_end),
    }  # fmt: skip
    end_to_end_s = record["end_to_end_ms"]["median_ms"] / 1e3
    decode_ms = record["decode_step_ms"]["median_ms"]
    record["throughput_tok_s"] = (
        batch * output_len / end_to_end_s if throughput_tok_s is None else throughput_tok_s
    )
    record["peak_memory_bytes"] = peak_memory_bytes
    record["floor_decode_step_ms"] = floor_decode_step_ms
    record["roofline_fraction"] = (
        None if floor_decode_step_ms is None else floor_decode_step_ms / decode_ms
    )
    record["gemm_cache_misses"] = gemm_cache_misses
    record["flags"] = sorted(set(flags))
    if comm_step_ms_per_rank is not None:
        record["comm_step_ms_per_rank"] = [float(value) for value in comm_step_ms_per_rank]
    if micro_batches is not None:
        record["micro_batches"] = micro_batches
    record["status"] = OK
    check_run_record(record, "run record")
    return record


def check_run_record(record: Any, where: str) -> None:
    """Raise InvalidInputError naming `where` if `record` is not a valid run record."""
    if not isinstance(record, Mapping):
        raise InvalidInputError(f"{where}: a run record must be an object")
    measured = measured_ok(record)
    required = (*KEY_FIELDS, *TIMING_METRICS) if measured else (*KEY_FIELDS, "reason")
    missing = [name for name in required if name not in record]
    if missing:
        raise InvalidInputError(f"{where}: run record lacks {', '.join(missing)}")
    for name in ("engine", "model", "dtype"):
        if not isinstance(record[name], str) or not record[name]:
            raise InvalidInputError(f"{where}: {name} must be a non-empty string")
    for name in (*_INT_FIELDS, *(["micro_batches"] if "micro_batches" in record else [])):
        value = record[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{where}: {name} must be a positive integer, got {value!r}")
    for name in TIMING_METRICS if measured else ():
        try:
            timing_summary(record[name])
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: {name}: {exc}") from exc
    for name in _OPTIONAL_NUMBERS:
        if record.get(name) is not None:
            positive_number(record[name], f"{where}: {name}")
    for name in _OPTIONAL_COUNTS:
        value = record.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise InvalidInputError(
                f"{where}: {name} must be a non-negative integer, got {value!r}"
            )
    flags = record.get("flags")
    if flags is not None and not (
        isinstance(flags, list) and all(isinstance(f, str) for f in flags)
    ):
        raise InvalidInputError(f"{where}: flags must be a list of strings, got {flags!r}")
    if record.get("breakdown") is not None:
        _check_breakdown(record["breakdown"], f"{where}: breakdown")
    if "serving" in record:
        _check_serving(record["serving"], f"{where}: serving")
    communication = record.get("comm_step_ms_per_rank")
    if communication is not None and (
        not isinstance(communication, list)
        or not all(isinstance(v, (int, float)) and v >= 0 for v in communication)
    ):
        raise InvalidInputError(
            f"{where}: comm_step_ms_per_rank must be a list of non-negative ms, one per rank"
        )


BREAKDOWN_STEPS = {"decode": "length", "prefill": "tokens"}  # each step and what sizes it
OPERATION_FIELDS = ("name", "per_step", "step_ms", "floor_ms", "roofline_fraction")


def _check_breakdown(breakdown: Any, where: str) -> None:
    """Raise InvalidInputError naming `where` unless `breakdown` has the shape `ftbench run
    --breakdown` writes (the module docstring)."""
    if not isinstance(breakdown, Mapping) or not set(breakdown) <= set(BREAKDOWN_STEPS):
        raise InvalidInputError(f"{where} must map {' and/or '.join(BREAKDOWN_STEPS)} to steps")
    for phase, step in breakdown.items():
        at = f"{where}.{phase}"
        if not isinstance(step, Mapping) or not isinstance(step.get("operations"), list):
            raise InvalidInputError(f"{at} must be a step with a list of operations")
        positive_number(step.get(BREAKDOWN_STEPS[phase]), f"{at}.{BREAKDOWN_STEPS[phase]}")
        positive_number(step.get("whole_ms"), f"{at}.whole_ms")
        positive_number(step.get("floor_ms"), f"{at}.floor_ms", zero_ok=True)
        for index, operation in enumerate(step["operations"]):
            missing = [name for name in OPERATION_FIELDS if name not in operation]
            if missing:
                raise InvalidInputError(f"{at}.operations[{index}] lacks {', '.join(missing)}")
            for name in OPERATION_FIELDS[1:]:
                positive_number(operation[name], f"{at}.operations[{index}].{name}", zero_ok=True)


def _check_serving(serving: Any, where: str) -> None:
    """Raise InvalidInputError naming `where` unless `serving` has the shape `ftbench
    serve-bench` writes (the module docstring)."""
    if not isinstance(serving, Mapping):
        raise InvalidInputError(f"{where} must be an object")
    for name in SERVING_NAMES:
        if not isinstance(serving.get(name), str) or not serving[name]:
            raise InvalidInputError(f"{where}.{name} must be a non-empty string")
    for name, smallest in (*((name, 1) for name in SERVING_COUNTS), ("preemptions", 0)):
        value = serving.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise InvalidInputError(
                f"{where}.{name} must be an integer >= {smallest}, got {value!r}"
            )
    for name in SERVING_RATES:
        positive_number(serving.get(name), f"{where}.{name}")
    for name in SERVING_LATENCIES:
        latency = serving.get(name)
        if latency is None and name in ("tpot_ms", "itl_ms"):
            continue
        if not isinstance(latency, Mapping):
            raise InvalidInputError(f"{where}.{name} must be {{{', '.join(DISTRIBUTION_FIELDS)}}}")
        for field in DISTRIBUTION_FIELDS:
            positive_number(latency.get(field), f"{where}.{name}.{field}", zero_ok=True)
    stop = serving.get("stop_token")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < 0):
        raise InvalidInputError(f"{where}.stop_token must be null or a token id, got {stop!r}")


def is_serving(record: Mapping[str, Any]) -> bool:
    """True for a record of `ftbench serve-bench` (it has a "serving" block)."""
    return "serving" in record


def measured_ok(record: Mapping[str, Any]) -> bool:
    """True for a configuration that ran (status "ok", the default when absent)."""
    return record.get("status", OK) == OK


def run_key(record: Mapping[str, Any]) -> str:
    """A readable unique name of a run configuration, e.g.
    "ftbench gptj-6b fp16 tp=1 pp=1 batch=8 in=128 out=128": the engine and its `series_key`."""
    return f"{record['engine']} {series_key(record)}"


def series_key(record: Mapping[str, Any]) -> str:
    """What a configuration measures, whichever engine ran it: model, dtype and shape, e.g.
    "gptj-6b fp16 tp=1 pp=1 batch=8 in=128 out=128" (with " mb=M" after pp=P where a pipeline
    step ran in M > 1 micro-batches, "fp16 w=int8" where its linears had 8-bit weights and
    "fp16 w=fp8 a=fp8" where they also read fp8 activations). A serving record names its
    stream instead of the mean lengths: "... batch=64 in=normal:512,256 out=normal:256,128
    arrivals=poisson:4 requests=2000" (" stop=ID" after it where outputs end at a stop token)."""
    micro = record.get("micro_batches", 1)
    formats = "".join(
        f" {short}={record[name]}"
        for name, short in (("weights", "w"), ("activations", "a"))
        if record.get(name)
    )
    head = (
        f"{record['model']} {record['dtype']}{formats} tp={record['tp']} pp={record['pp']}"
        f"{f' mb={micro}' if micro > 1 else ''} batch={record['batch']}"
    )
    if not is_serving(record):
        return f"{head} in={record['input_len']} out={record['output_len']}"
    serving = record["serving"]
    stop = serving.get("stop_token")
    return (
        f"{head} in={serving['input_lengths']} out={serving['output_lengths']} "
        f"arrivals={serving['arrivals']} requests={serving['requests']}"
        f"{'' if stop is None else f' stop={stop}'}"
    )
