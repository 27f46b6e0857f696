"""A serving benchmark's metrics (`modelbench.serving_metrics`): per-request TTFT, TPOT, ITL and
end-to-end latency, their percentiles, throughput over the run's span, and goodput under SLOs."""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.modelbench.serving_metrics import (
    Distribution,
    RequestLatency,
    RequestTiming,
    Slo,
    parse_slo,
    request_latency,
    serving_metrics,
)


def test_one_request_s_latencies_follow_from_its_token_times():
    timing = RequestTiming(arrival_s=1.0, token_s=(1.25, 1.3, 1.4, 1.45), finish_s=1.5)
    latency = request_latency(timing)
    assert latency.ttft_ms == pytest.approx(250)
    assert latency.e2e_ms == pytest.approx(500)
    assert latency.tpot_ms == pytest.approx((500 - 250) / 3)
    assert latency.itl_ms == pytest.approx((50, 100, 50))
    assert latency.output_tokens == 4


def test_a_one_token_request_has_no_tpot_and_no_gaps():
    latency = request_latency(RequestTiming(0.0, (0.1,), 0.1))
    assert (latency.tpot_ms, latency.itl_ms) == (None, ())


@pytest.mark.parametrize(
    ("arrival", "tokens", "finish"),
    [(0.0, (), 1.0), (0.5, (0.4,), 1.0), (0.0, (0.3, 0.2), 1.0), (0.0, (0.3,), 0.2)],
)
def test_timings_out_of_order_or_without_tokens_are_refused(arrival, tokens, finish):
    with pytest.raises(InvalidInputError, match="arrival <= each token <= the next <= finish"):
        RequestTiming(arrival, tokens, finish)


def test_distribution_is_the_mean_and_numpy_linear_percentiles():
    samples = np.random.default_rng().exponential(
        10.0, size=int(np.random.default_rng().integers(2, 500))
    )
    distribution = Distribution.of(samples.tolist())
    assert distribution.mean == pytest.approx(samples.mean())
    for q, value in ((50, distribution.p50), (90, distribution.p90), (99, distribution.p99)):
        assert value == pytest.approx(np.percentile(samples, q, method="linear"))


def test_distribution_percentiles_interpolate_between_samples():
    distribution = Distribution.of([10.0, 20.0, 30.0, 40.0])
    assert (distribution.mean, distribution.p50, distribution.p90) == (25.0, 25.0, 37.0)
    assert distribution.p99 == pytest.approx(39.7)


def test_distribution_of_nothing_is_none():
    assert Distribution.of([]) is None


def random_timings(rng, count):
    timings = []
    for _ in range(count):
        arrival = float(rng.uniform(0, 10))
        tokens = arrival + np.cumsum(rng.uniform(0.001, 0.2, size=int(rng.integers(1, 40))))
        timings.append(RequestTiming(arrival, tuple(tokens.tolist()), float(tokens[-1])))
    return timings


def test_throughput_divides_by_the_span_from_first_arrival_to_last_finish():
    rng = np.random.default_rng()
    timings = random_timings(rng, 50)
    metrics = serving_metrics(timings)
    span = max(t.finish_s for t in timings) - min(t.arrival_s for t in timings)
    tokens = sum(len(t.token_s) for t in timings)
    assert (metrics.requests, metrics.output_tokens) == (50, tokens)
    assert metrics.span_s == pytest.approx(span)
    assert metrics.request_throughput == pytest.approx(50 / span)
    assert metrics.output_throughput == pytest.approx(tokens / span)


def test_run_distributions_pool_every_request_and_every_gap():
    rng = np.random.default_rng()
    timings = random_timings(rng, 30)
    metrics = serving_metrics(timings)
    latencies = [request_latency(t) for t in timings]
    assert metrics.ttft_ms == Distribution.of([lat.ttft_ms for lat in latencies])
    assert metrics.e2e_ms == Distribution.of([lat.e2e_ms for lat in latencies])
    assert metrics.itl_ms == Distribution.of([gap for lat in latencies for gap in lat.itl_ms])
    tpots = [lat.tpot_ms for lat in latencies if lat.tpot_ms is not None]
    assert metrics.tpot_ms == Distribution.of(tpots)


def test_goodput_counts_requests_meeting_every_target():
    timings = [
        RequestTiming(0.0, (0.1, 0.15, 0.2), 0.2),  # TTFT 100 ms, TPOT 50 ms: meets both
        RequestTiming(0.0, (0.3, 0.32), 0.32),  # TTFT 300 ms: misses TTFT
        RequestTiming(0.0, (0.1, 0.3), 0.3),  # TPOT 200 ms: misses TPOT
        RequestTiming(0.0, (0.15,), 0.4),  # one token: no TPOT, meets TTFT
    ]
    metrics = serving_metrics(timings, Slo(ttft_ms=200, tpot_ms=50))
    assert metrics.good_requests == 2
    assert metrics.goodput == pytest.approx(2 / 0.4)


def test_without_targets_there_is_no_goodput():
    metrics = serving_metrics([RequestTiming(0.0, (0.1,), 0.1)])
    assert (metrics.good_requests, metrics.goodput) == (None, None)


def test_an_e2e_target_is_met_at_equality_and_missed_past_it():
    latency = RequestLatency(ttft_ms=10, tpot_ms=5, itl_ms=(5,), e2e_ms=1000, output_tokens=2)
    assert Slo(e2e_ms=1000).met_by(latency)
    assert not Slo(e2e_ms=999.9).met_by(latency)


def test_no_finished_requests_or_a_zero_span_is_refused():
    with pytest.raises(InvalidInputError, match="at least one finished request"):
        serving_metrics([])
    with pytest.raises(InvalidInputError, match="span .* is zero"):
        serving_metrics([RequestTiming(1.0, (1.0,), 1.0)])


@pytest.mark.parametrize(
    ("text", "slo"),
    [
        ("ttft:200ms,tpot:50ms", Slo(ttft_ms=200, tpot_ms=50)),
        ("e2e:2s", Slo(e2e_ms=2000)),
        ("tpot:12.5ms, ttft:0.5s", Slo(ttft_ms=500, tpot_ms=12.5)),
    ],
)
def test_slo_specs_parse_into_milliseconds(text, slo):
    assert parse_slo(text) == slo


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft:200", "expected metric:NUMBERms or metric:NUMBERs"),
        ("itl:20ms", "each of ttft, tpot, e2e at most once"),
        ("ttft:200ms,ttft:100ms", "at most once"),
        ("ttft:-5ms", "must be a positive number"),
        ("tpot:fastms", "must be a positive number"),
        ("", "expected metric:NUMBERms"),
    ],
)
def test_bad_slo_specs_are_refused(text, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_slo(text)
