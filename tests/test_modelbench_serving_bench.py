"""serve-bench's configuration, checked before a GPU (`modelbench.serving_bench`), and the run
records it makes of a served stream: the `modelbench.runs` schema with the serving mapping,
built here from fake engines of exact step times (tests/serving_fakes.py)."""

import math

import pytest

from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.modelbench.requests import Fixed, Normal, ShareGpt, Uniform, poisson
from ftbench.modelbench.runs import check_run_record, run_key, series_key
from ftbench.modelbench.serving_bench import (
    ServingConfig,
    ServingEngines,
    open_gpu_engines,
    run_serving_benchmark,
)
from ftbench.modelbench.serving_metrics import Slo
from ftbench.profiles.catalog import load_builtin
from serving_fakes import FakeServingEngine, FakeStaticEngine

GPTJ = load_builtin("gptj-6b")
GPT2 = load_builtin("gpt2-124m")


def config(**changes) -> ServingConfig:
    fields = dict(
        spec=GPTJ, dtype="fp16", requests=40, input_lengths=Uniform(16, 256),
        output_lengths=Uniform(2, 64), rates=(math.inf, 200.0), max_concurrency=8,
        max_num_tokens=512, block_size=16, seed=7,
    )  # fmt: skip
    return ServingConfig(**(fields | changes))


def served_records(settings: ServingConfig, kv_blocks: int = 4096) -> list[dict]:
    records = []
    engines = ServingEngines(FakeServingEngine(kv_blocks, settings.block_size),
                             FakeStaticEngine(memory=2**30))  # fmt: skip
    run_serving_benchmark(settings, engines, records.append)
    return records


@pytest.fixture(scope="module")
def records():
    return served_records(config(slo=Slo(ttft_ms=50.0, tpot_ms=2.0)))


def test_each_rate_gives_an_inflight_and_a_static_record_in_the_run_schema(records):
    assert [(r["engine"], r["serving"]["arrivals"]) for r in records] == [
        ("ftbench-inflight", "inf"), ("ftbench-static", "inf"),
        ("ftbench-inflight", "poisson:200"), ("ftbench-static", "poisson:200"),
    ]  # fmt: skip
    for record in records:
        check_run_record(record, "record")
        assert (record["model"], record["batch"], record["tp"]) == ("gptj-6b", 8, 1)
        assert record["pp"] == 1
        assert record["status"] == "ok" and record["floor_decode_step_ms"] is None


def test_a_record_keeps_every_request_latency_as_samples(records):
    for record in records:
        serving = record["serving"]
        assert len(record["ttft_ms"]["samples_ms"]) == 40
        assert len(record["end_to_end_ms"]["samples_ms"]) == 40
        assert record["ttft_ms"]["p99_ms"] == pytest.approx(serving["ttft_ms"]["p99"])
        assert record["decode_step_ms"]["p50_ms"] == pytest.approx(serving["tpot_ms"]["p50"])
        assert record["throughput_tok_s"] == serving["output_throughput"]
        assert serving["output_throughput"] == pytest.approx(
            serving["output_tokens"] / serving["span_s"]
        )


def test_both_engines_serve_the_same_requests_at_every_rate(records):
    keys = {(r["input_len"], r["output_len"], r["serving"]["output_tokens"]) for r in records}
    assert len(keys) == 1  # the same lengths, all generated (no stop token)
    assert {r["serving"]["requests"] for r in records} == {40}


def test_goodput_counts_the_requests_within_the_targets(records):
    for record in records:
        serving = record["serving"]
        assert serving["slo"] == {"ttft_ms": 50.0, "tpot_ms": 2.0, "e2e_ms": None}
        assert 0 <= serving["good_requests"] <= 40
        assert serving["goodput"] == pytest.approx(serving["good_requests"] / serving["span_s"])


def test_the_static_baseline_reports_no_blocks_and_no_preemptions(records):
    static = [r for r in records if r["engine"] == "ftbench-static"]
    assert all(r["serving"]["kv_blocks"] is None for r in static)
    assert all(r["serving"]["preemptions"] == 0 for r in static)
    assert all(r["peak_memory_bytes"] == 2**30 for r in static)
    inflight = [r for r in records if r["engine"] == "ftbench-inflight"]
    assert all(r["serving"]["kv_blocks"] == 4096 for r in inflight)


def test_inflight_serves_the_stream_faster_than_static_batches(records):
    by_engine = {(r["engine"], r["serving"]["arrivals"]): r for r in records}
    for arrivals in ("inf", "poisson:200"):
        ours = by_engine["ftbench-inflight", arrivals]["throughput_tok_s"]
        assert ours > by_engine["ftbench-static", arrivals]["throughput_tok_s"]


def test_a_pool_too_small_preempts_and_the_record_counts_it():
    record = served_records(config(rates=(math.inf,)), kv_blocks=40)[0]
    assert record["serving"]["preemptions"] > 0
    assert len(record["end_to_end_ms"]["samples_ms"]) == 40


def test_the_series_names_the_stream_so_rates_are_configurations_of_their_own(records):
    assert series_key(records[2]) == (
        "gptj-6b fp16 tp=1 pp=1 batch=8 in=uniform:16,256 out=uniform:2,64 "
        "arrivals=poisson:200 requests=40"
    )
    assert len({run_key(r) for r in records}) == 4
    stopped = served_records(config(rates=(math.inf,), stop_token=5))[0]
    assert series_key(stopped).endswith("requests=40 stop=5")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("arrivals"), "serving.arrivals must be a non-empty string"),
        (lambda s: s.update(requests=0), "serving.requests must be an integer >= 1"),
        (lambda s: s.update(preemptions=-1), "serving.preemptions must be an integer >= 0"),
        (lambda s: s.update(span_s=0), "serving.span_s must be a finite number > 0"),
        (lambda s: s.update(ttft_ms=None), "serving.ttft_ms must be"),
        (lambda s: s["e2e_ms"].pop("p99"), "serving.e2e_ms.p99 must be a finite number"),
        (lambda s: s.update(stop_token="eos"), "serving.stop_token must be null or a token"),
    ],
)
def test_a_serving_block_of_another_shape_is_refused(records, edit, message):
    record = {**records[0], "serving": {**records[0]["serving"]}}
    record["serving"]["e2e_ms"] = dict(record["serving"]["e2e_ms"])
    edit(record["serving"])
    with pytest.raises(InvalidInputError, match=f"^record 1: {message}"):
        check_run_record(record, "record 1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dtype": "fp8"}, "serve-bench measures fp16 or bf16"),
        ({"requests": 0}, "--requests must be between 1"),
        ({"max_concurrency": 0}, "--max-concurrency must be between 1"),
        ({"block_size": 0}, "--block-size must be between 1"),
        ({"max_num_tokens": 4}, "--max-num-tokens 4 must be at least --max-concurrency 8"),
        ({"rates": ()}, "--rate needs at least one request rate"),
        ({"rates": (0.0,)}, "rate must be positive"),
        ({"burstiness": 0.0}, "burstiness must be positive"),
        ({"stop_token": 50400}, "--stop-token 50400 is not a token of gptj-6b's vocabulary"),
        ({"output_lengths": ShareGpt("sg.json")}, "ShareGPT outputs come with ShareGPT prompts"),
        ({"spec": load_builtin("bert-base")}, "the runtime runs decoder models only"),
    ],
)
def test_bad_options_are_refused_before_a_gpu(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        config(**changes)


def test_lengths_past_learned_positions_are_refused_naming_the_longest_request():
    with pytest.raises(InvalidInputError, match="request 0 of 1000 prompt and 100 output tokens"):
        config(spec=GPT2, input_lengths=Fixed(1000), output_lengths=Fixed(100))


def test_a_stream_of_one_token_outputs_is_refused():
    with pytest.raises(InvalidInputError, match="every request generates one token"):
        config(output_lengths=Fixed(1))


def test_every_rate_has_the_same_lengths_and_prompts():
    settings = config(input_lengths=Normal(128, 64))
    streams = [settings.stream(arrivals) for arrivals in settings.arrivals]
    lengths = [[(r.prompt_len, r.output_len) for r in stream] for stream in streams]
    assert lengths[0] == lengths[1]
    assert [r.arrival_s for r in streams[0]] == [0.0] * 40
    assert streams[1][-1].arrival_s > 0
    assert settings.arrivals[1] == poisson(200.0)
    assert sorted(settings.prompts) == list(range(40))


def test_without_the_paged_gpu_engine_nothing_is_measured():
    with pytest.raises(FtbenchError, match="needs the paged GPU engine .* nothing was measured"):
        open_gpu_engines(config())
