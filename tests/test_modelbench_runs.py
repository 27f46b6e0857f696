"""The run-record schema (`modelbench.runs`) of `ftbench run`. Timings here are synthetic."""

import pytest

from ftbench.errors import InvalidInputError
from ftbench.modelbench.runs import check_run_record, measured_ok, run_key, run_record


def summary(median_ms: float) -> dict:
    samples = [median_ms * f for f in (0.99, 1.0, 1.0, 1.01, 1.02)]
    return {"median_ms": median_ms, "ci_low_ms": samples[0], "ci_high_ms": samples[3],
            "samples_ms": samples}  # fmt: skip


def record(**overrides):
    fields = dict(
        engine="ftbench", model="gptj-6b", dtype="fp16", tp=1, pp=1, batch=8, input_len=128,
        output_len=64, ttft=summary(20.0), decode_step=summary(8.0), end_to_end=summary(532.0),
        peak_memory_bytes=13 * 2**30, floor_decode_step_ms=6.0, gemm_cache_misses=0,
        flags=("power-capped", "power-capped"),
    )  # fmt: skip
    fields.update(overrides)
    return run_record(**fields)


def test_run_record_derives_throughput_and_roofline_once():
    built = record()
    assert built["throughput_tok_s"] == pytest.approx(8 * 64 / 0.532)
    assert built["roofline_fraction"] == pytest.approx(6.0 / 8.0)
    assert built["decode_step_ms"]["samples_ms"] == summary(8.0)["samples_ms"]
    assert built["flags"] == ["power-capped"] and built["status"] == "ok"
    assert run_key(built) == "ftbench gptj-6b fp16 tp=1 pp=1 batch=8 in=128 out=64"
    assert record(floor_decode_step_ms=None)["roofline_fraction"] is None
    # A pipeline run in micro-batches is another configuration; one micro-batch keeps the key.
    assert "pp=2 mb=2 batch=8" in run_key(record(pp=2, micro_batches=2))
    assert run_key(record(micro_batches=1)) == run_key(built)


def test_timer_results_are_accepted_as_they_are():
    class Timing:  # what bench.timer.Timing offers: to_dict()
        def to_dict(self):
            return summary(8.0)

    assert record(decode_step=Timing())["decode_step_ms"]["median_ms"] == 8.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch": 0}, "batch must be a positive integer"),
        ({"micro_batches": 0}, "micro_batches must be a positive integer"),
        ({"engine": ""}, "engine must be a non-empty string"),
        ({"ttft": {"median_ms": 1.0}}, "timing summary lacks ci_low_ms, ci_high_ms, samples_ms"),
        ({"end_to_end": {**summary(1.0), "samples_ms": []}}, "no samples"),
    ],
)
def test_bad_records_are_refused(overrides, message):
    with pytest.raises(InvalidInputError, match=message):
        record(**overrides)


def test_a_configuration_that_did_not_run_needs_a_reason_and_no_timings():
    skipped = {"engine": "hf-eager", "model": "gptj-6b", "dtype": "fp16", "tp": 1, "pp": 1,
               "batch": 256, "input_len": 2048, "output_len": 128, "status": "does not fit",
               "reason": "needs 160 GiB"}  # fmt: skip
    check_run_record(skipped, "record 3")
    assert not measured_ok(skipped)
    del skipped["reason"]
    with pytest.raises(InvalidInputError, match="record 3: run record lacks reason"):
        check_run_record(skipped, "record 3")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ttft_ms", {**summary(1.0), "samples_ms": [0.0] * 5},
         r"ttft_ms: samples_ms\[0\] must be a finite number > 0, got 0.0"),
        ("ttft_ms", {**summary(1.0), "median_ms": "1.0"}, "ttft_ms: median_ms must be a finite"),
        ("decode_step_ms", {**summary(1.0), "ci_high_ms": float("inf")},
         "decode_step_ms: ci_high_ms must be a finite number > 0"),
        ("throughput_tok_s", "fast", "throughput_tok_s must be a finite number > 0"),
        ("roofline_fraction", 0, "roofline_fraction must be a finite number > 0"),
        ("peak_memory_bytes", "big", "peak_memory_bytes must be a non-negative integer"),
        ("gemm_cache_misses", -1, "gemm_cache_misses must be a non-negative integer"),
        ("flags", "power-capped", "flags must be a list of strings"),
        ("flags", [1], "flags must be a list of strings"),
    ],
)  # fmt: skip
def test_records_with_bad_numbers_are_refused(field, value, message):
    with pytest.raises(InvalidInputError, match=f"^record 3: {message}"):
        check_run_record({**record(), field: value}, "record 3")


def test_optional_fields_may_be_null_or_absent():
    built = record()
    for name in ("throughput_tok_s", "peak_memory_bytes", "roofline_fraction", "flags"):
        check_run_record({**built, name: None}, "record")
        check_run_record({key: value for key, value in built.items() if key != name}, "record")


def breakdown(whole_ms: float = 3.0) -> dict:
    """What `ftbench run --breakdown` adds to a record (numbers made up)."""
    operations = [
        {"name": "layer 00 gemm", "per_step": 28, "step_ms": 2.0, "floor_ms": 1.8,
         "roofline_fraction": 0.9, "bytes": 10**9, "flops": 10**7},
        {"name": "layer 01 decode_attention", "per_step": 28, "step_ms": 1.0, "floor_ms": 0.5,
         "roofline_fraction": 0.5, "bytes": 10**8, "flops": 0},
    ]  # fmt: skip
    return {
        "decode": {"length": 192, "whole_ms": whole_ms, "floor_ms": 2.3, "operations": operations},
        "prefill": {"tokens": 128, "whole_ms": 9.0, "floor_ms": 6.0, "operations": operations},
    }


def test_a_breakdown_of_the_shape_run_writes_is_accepted():
    check_run_record({**record(), "breakdown": breakdown()}, "record 3")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.update(sample={}), "breakdown must map decode and/or prefill to steps"),
        (lambda b: b["decode"].pop("operations"), "breakdown.decode must be a step with a list"),
        (lambda b: b["decode"].pop("length"), r"breakdown.decode.length must be a finite number"),
        (lambda b: b["prefill"].update(whole_ms=0), "breakdown.prefill.whole_ms must be a finite"),
        (lambda b: b["decode"]["operations"][1].pop("step_ms"),
         r"breakdown.decode.operations\[1\] lacks step_ms"),
        (lambda b: b["decode"]["operations"][0].update(step_ms=-1.0),
         r"breakdown.decode.operations\[0\].step_ms must be a finite number >= 0"),
    ],
)  # fmt: skip
def test_a_malformed_breakdown_is_refused(edit, message):
    taken_apart = breakdown()
    edit(taken_apart)
    with pytest.raises(InvalidInputError, match=f"^record 3: {message}"):
        check_run_record({**record(), "breakdown": taken_apart}, "record 3")
