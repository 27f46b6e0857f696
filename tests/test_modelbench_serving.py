"""The serving loops (`modelbench.serving`) driven through fake engines whose step time is a
function of its tokens (tests/serving_fakes.py), so every time here is exact: when tokens come
out, how arrivals and the concurrency limit admit requests, what preemption costs, and in-flight
batching against static batches on the same stream."""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError, MeasurementError
from ftbench.modelbench.requests import Gamma, InfiniteRate, Request, Uniform, request_stream
from ftbench.modelbench.serving import (
    StaticBatchResult,
    WallClock,
    prompt_tokens,
    serve_inflight,
    serve_static,
)
from ftbench.modelbench.serving_metrics import serving_metrics
from serving_fakes import FakeServingEngine, FakeStaticEngine, step_s

VOCAB = 1000


def requests_of(*lengths, arrivals=None):
    """Requests of (prompt, output) lengths, arriving at `arrivals` (default all at 0)."""
    arrivals = arrivals or [0.0] * len(lengths)
    return [
        Request(i, prompt, output, arrival)
        for i, ((prompt, output), arrival) in enumerate(zip(lengths, arrivals, strict=True))
    ]


def inflight(requests, kv_blocks=1024, concurrency=8, step_tokens=256, **options):
    engine = FakeServingEngine(kv_blocks, **options.pop("engine", {}))
    prompts = prompt_tokens(requests, VOCAB, seed=0)
    return engine, serve_inflight(engine, requests, prompts, concurrency, step_tokens, **options)


def static(requests, batch=8, engine=None, **options):
    engine = engine or FakeStaticEngine()
    prompts = prompt_tokens(requests, VOCAB, seed=0)
    return engine, serve_static(engine, requests, prompts, batch, **options)


def test_one_request_gets_its_first_token_after_its_prefill_and_one_per_decode_after():
    _, served = inflight(requests_of((100, 4)))
    (timing,) = served.timings
    prefill, decode = step_s(100), step_s(1)
    expected = (prefill, prefill + decode, prefill + 2 * decode, prefill + 3 * decode)
    assert timing.token_s == expected and timing.finish_s == expected[-1]
    assert timing.arrival_s == 0.0 and served.preemptions == 0


def test_a_prompt_longer_than_the_step_budget_is_prefilled_in_chunks():
    engine, served = inflight(requests_of((100, 2)), step_tokens=32)
    assert [batch.num_tokens for batch in engine.batches] == [32, 32, 32, 4, 1]
    assert served.timings[0].token_s[0] == 3 * step_s(32) + step_s(4)


def test_decodes_and_a_new_prompt_share_a_step():
    engine, served = inflight(requests_of((8, 3), (40, 2), arrivals=[0.0, step_s(8) / 2]))
    # step 1: the first prompt; the second arrives during it; step 2: a decode and its prompt
    second = engine.batches[1]
    assert second.num_decodes == 1 and second.num_tokens == 1 + 40
    assert served.timings[1].token_s[0] == step_s(8) + step_s(41)
    assert served.timings[1].arrival_s == step_s(8) / 2


def test_the_engine_idles_until_a_request_arrives_and_ttft_counts_from_arrival():
    engine, served = inflight(requests_of((8, 2), (8, 2), arrivals=[0.0, 1.0]))
    assert engine.waits == [1.0]
    late = served.timings[1]
    assert late.token_s[0] == 1.0 + step_s(8)
    assert serving_metrics(served.timings).ttft_ms.p50 == pytest.approx(1000 * step_s(8))


def test_no_step_runs_more_sequences_than_the_concurrency_limit():
    requests = requests_of(*[(16, 8)] * 20)
    engine, served = inflight(requests, concurrency=4)
    assert max(len(batch.steps) for batch in engine.batches) == 4
    assert [len(timing.token_s) for timing in served.timings] == [8] * 20


def test_a_stream_that_exhausts_the_blocks_preempts_and_loses_no_request():
    stream = request_stream(60, Uniform(32, 128), Uniform(32, 128), InfiniteRate(), seed=3,
                            max_prompt_len=128, max_output_len=128)  # fmt: skip
    # 24 blocks of 16 tokens hold 384: fewer than 8 sequences of up to 255 each need
    engine, served = inflight(stream, kv_blocks=24, concurrency=8)
    assert served.preemptions > 0
    assert [len(timing.token_s) for timing in served.timings] == [r.output_len for r in stream]
    assert all(timing.finish_s == timing.token_s[-1] for timing in served.timings)
    # a preempted sequence prefilled its prompt and the tokens it had generated again (the
    # fake checks that they are the same tokens) before it went on
    restarts = [
        step for batch in engine.batches for step in batch.steps
        if step.start == 0 and step.end > stream[step.seq_id].prompt_len
    ]  # fmt: skip
    assert restarts


def test_a_request_the_pool_cannot_hold_is_refused_before_any_step():
    engine = FakeServingEngine(kv_blocks=4, block_size=16)
    requests = requests_of((8, 2), (60, 10))
    with pytest.raises(InvalidInputError, match="request 1 caches up to 69 tokens"):
        serve_inflight(engine, requests, prompt_tokens(requests, VOCAB, 0), 4, 64)
    assert engine.batches == []


def test_a_stop_token_ends_a_request_early_and_frees_its_place():
    def token(seq_id, position):  # request 0 samples the stop token for its third output
        return 7 if (seq_id, position) == (0, 10 + 2) else 1

    engine, served = inflight(requests_of((10, 50), (10, 5)), engine={"token": token},
                              stop_token=7)  # fmt: skip
    assert len(served.timings[0].token_s) == 3 and len(served.timings[1].token_s) == 5
    assert served.timings[0].finish_s == served.timings[0].token_s[-1]
    assert max(len(batch.steps) for batch in engine.batches[3:]) == 1  # request 0 has left


def test_outputs_ignore_a_token_that_is_not_the_stop_token():
    _, served = inflight(requests_of((10, 6)), engine={"token": lambda seq, position: 7})
    assert len(served.timings[0].token_s) == 6


def test_an_engine_that_returns_the_wrong_number_of_tokens_is_an_error():
    class Wrong(FakeServingEngine):
        def step(self, batch):
            return [*super().step(batch), 1]

    requests = requests_of((8, 2))
    with pytest.raises(MeasurementError, match="returned 2 tokens for a step that samples 1"):
        serve_inflight(Wrong(64), requests, prompt_tokens(requests, VOCAB, 0), 4, 64)


def test_static_batches_pad_to_the_longest_prompt_and_run_to_the_longest_output():
    requests = requests_of((10, 3), (30, 5), (20, 2))
    engine, served = static(requests, batch=2)
    (first, first_len), (second, second_len) = engine.calls
    assert first.shape == (2, 30) and first_len == 5
    assert second.shape == (1, 20) and second_len == 2
    prompts = prompt_tokens(requests, VOCAB, seed=0)
    assert (first[0, :20] == 0).all() and (first[0, 20:] == prompts[0]).all()  # left-padded
    prefill = step_s(2 * 30)
    assert served.timings[0].token_s == (prefill, prefill + step_s(2), prefill + 2 * step_s(2))
    batch_end = prefill + 4 * step_s(2)
    assert served.timings[1].finish_s == batch_end
    assert served.timings[2].token_s == (batch_end + step_s(20), batch_end + step_s(20) + step_s(1))


def test_a_static_batch_takes_only_the_requests_that_have_arrived():
    requests = requests_of((8, 2), (8, 2), (8, 2), arrivals=[0.0, 0.0, 10.0])
    engine, served = static(requests, batch=8)
    assert [call[0].shape[0] for call in engine.calls] == [2, 1]
    assert engine.waits == [10.0]
    assert served.timings[2].token_s[0] == 10.0 + step_s(8)


def test_a_static_request_keeps_its_tokens_up_to_its_stop_token():
    def tokens(prompts, output_len):
        out = np.ones((len(prompts), output_len), dtype=np.int64)
        out[0, 1] = 7
        return out

    _, served = static(requests_of((8, 4), (8, 4)), engine=FakeStaticEngine(tokens), stop_token=7)
    assert [len(timing.token_s) for timing in served.timings] == [2, 4]


def test_a_static_engine_that_returns_too_few_steps_is_an_error():
    class Short(FakeStaticEngine):
        def generate(self, prompts, output_len):
            result = super().generate(prompts, output_len)
            return StaticBatchResult(result.tokens, result.token_s[:-1])

    with pytest.raises(MeasurementError, match="returned tokens of shape"):
        static(requests_of((8, 3)), engine=Short())


def test_inflight_beats_static_batches_on_a_mixed_stream_and_ties_on_one_length():
    mixed = request_stream(256, Uniform(16, 512), Uniform(8, 256), InfiniteRate(), seed=1,
                           max_prompt_len=512, max_output_len=256)  # fmt: skip
    fixed = requests_of(*[(128, 128)] * 64)
    for stream, at_least in ((mixed, 1.5), (fixed, 1.0)):
        _, by_inflight = inflight(stream, kv_blocks=16 * 1024, concurrency=16, step_tokens=2048)
        _, by_static = static(stream, batch=16)
        ratio = (
            serving_metrics(by_inflight.timings).output_throughput
            / serving_metrics(by_static.timings).output_throughput
        )
        assert ratio >= at_least, ratio


def test_both_loops_serve_a_bursty_stream_in_full():
    stream = request_stream(40, Uniform(8, 64), Uniform(2, 32), Gamma(200.0, 0.5), seed=5,
                            max_prompt_len=64, max_output_len=32)  # fmt: skip
    for _, served in (inflight(stream), static(stream)):
        assert [len(t.token_s) for t in served.timings] == [r.output_len for r in stream]
        assert all(t.token_s[0] > r.arrival_s for t, r in zip(served.timings, stream, strict=True))


@pytest.mark.parametrize("engine_kind", ["inflight", "static"])
def test_an_engine_whose_clock_is_not_at_zero_serves_a_stream_at_a_rate(engine_kind):
    """Arrivals are due at start + arrival_s: on a clock at 1/3 s, (start + a) - start rounds
    below some a, and a loop comparing the difference would wait for them for ever."""
    stream = request_stream(24, Uniform(16, 128), Uniform(8, 40), Gamma(100.0, 1.0), seed=1,
                            max_prompt_len=128, max_output_len=40)  # fmt: skip
    prompts = prompt_tokens(stream, VOCAB, seed=0)
    if engine_kind == "inflight":
        engine = FakeServingEngine(4096)
        engine.time = 1 / 3
        served = serve_inflight(engine, stream, prompts, 4, 256)
    else:
        engine = FakeStaticEngine()
        engine.time = 1 / 3
        served = serve_static(engine, stream, prompts, 4)
    assert [len(t.token_s) for t in served.timings] == [r.output_len for r in stream]


def test_prompts_are_seeded_and_within_the_vocabulary():
    requests = requests_of((5, 1), (7, 1))
    first = prompt_tokens(requests, 11, seed=4)
    assert [first[i].tolist() for i in (0, 1)] == [
        p.tolist() for p in prompt_tokens(requests, 11, seed=4).values()
    ]
    assert [len(first[0]), len(first[1])] == [5, 7]
    assert all(0 <= token < 11 for prompt in first.values() for token in prompt)


def test_the_wall_clock_waits_until_the_time_it_is_given():
    clock = WallClock()
    target = clock.now() + 0.01
    clock.wait_until(target)
    assert clock.now() >= target
