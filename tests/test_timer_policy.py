"""The GPU-free parts of the timing core: L2 planning, batching and the stopping rule."""

import itertools

import numpy as np
import pytest

from ftbench.bench.stats import summarize
from ftbench.bench.timer import (
    TimingPolicy,
    choose_l2_mode,
    cold_input_sets,
    launches_per_sample,
    sample_until_stable,
)
from ftbench.errors import InvalidInputError

MiB = 2**20


def test_cold_sets_for_a_weight_larger_than_l2_is_two():
    assert cold_input_sets(set_bytes=128 * MiB, l2_bytes=60 * MiB) == 2


def test_cold_sets_for_small_inputs_cover_twice_l2():
    sets = cold_input_sets(set_bytes=8 * MiB, l2_bytes=50 * MiB)
    assert (sets - 1) * 8 * MiB >= 2 * 50 * MiB
    assert (sets - 2) * 8 * MiB < 2 * 50 * MiB


def test_l2_mode_rotates_only_when_the_sets_evict_each_other():
    assert choose_l2_mode("hot", 1, 0, 50 * MiB) == "hot"
    assert choose_l2_mode("cold", 2, 128 * MiB, 50 * MiB) == "cold-rotate"
    assert choose_l2_mode("cold", 2, 8 * MiB, 50 * MiB) == "cold-flush"
    assert choose_l2_mode("cold", 1, 0, 50 * MiB) == "cold-flush"


def test_unknown_l2_mode_is_an_error():
    with pytest.raises(InvalidInputError, match="hot' or 'cold"):
        choose_l2_mode("warm", 1, 0, 50 * MiB)


def test_launches_per_sample_fills_the_sample_time():
    policy = TimingPolicy(sample_ms=1.0)
    assert launches_per_sample(0.010, policy, 1) == 100
    assert launches_per_sample(5.0, policy, 1) == 1


def test_launches_per_sample_is_a_multiple_of_the_sets_and_capped():
    policy = TimingPolicy(sample_ms=1.0, max_launches_per_sample=1000)
    assert launches_per_sample(0.030, policy, 2) == 34
    assert launches_per_sample(1e-6, policy, 3) == 1002  # cap 1000, rounded up to 3 * 334


def _sampler(values):
    iterator = iter(values)
    return lambda count: list(itertools.islice(iterator, count))


def test_stable_samples_converge_at_the_minimum_count():
    policy = TimingPolicy(min_samples=20, target_rel_ci=0.01, min_time_s=0.0)
    rng = np.random.default_rng(0)
    samples, converged, _ = sample_until_stable(_sampler(rng.normal(1.0, 0.001, 10_000)), policy)
    assert converged
    assert len(samples) == 20


def test_noisy_samples_need_more_samples_than_stable_ones():
    policy = TimingPolicy(
        min_samples=20, target_rel_ci=0.01, max_samples=5000, budget_s=1e9, min_time_s=0.0
    )
    rng = np.random.default_rng(1)
    samples, converged, _ = sample_until_stable(_sampler(rng.normal(1.0, 0.05, 100_000)), policy)
    assert converged
    # theory: n ~ (1.96 * 1.2533 * 0.05 / 0.01)^2 ~ 150 samples for a 1% half-width
    assert 60 <= len(samples) <= 400
    assert summarize(samples).rel_ci_half_width <= 0.01


def test_hopeless_noise_stops_at_max_samples_unconverged():
    policy = TimingPolicy(min_samples=10, max_samples=200, target_rel_ci=1e-6, budget_s=1e9)
    rng = np.random.default_rng(2)
    samples, converged, _ = sample_until_stable(_sampler(rng.exponential(1.0, 10_000)), policy)
    assert not converged
    assert len(samples) == 200


def test_budget_stops_sampling():
    ticks = itertools.count()
    policy = TimingPolicy(min_samples=10, max_samples=10_000, target_rel_ci=1e-9, budget_s=3.0)
    rng = np.random.default_rng(3)
    samples, converged, spent = sample_until_stable(
        _sampler(rng.exponential(1.0, 100_000)), policy, clock=lambda: float(next(ticks))
    )
    assert not converged
    assert spent >= 3.0
    assert len(samples) < 10_000


def test_sampling_lasts_at_least_min_time_even_when_stable():
    ticks = itertools.count()
    policy = TimingPolicy(min_samples=20, min_time_s=5.0, budget_s=100.0)
    samples, converged, spent = sample_until_stable(
        _sampler([1.0] * 10_000), policy, clock=lambda: float(next(ticks))
    )
    assert converged
    assert spent >= 5.0
    assert len(samples) > 20


def test_after_chunk_runs_once_per_chunk():
    calls = []
    policy = TimingPolicy(min_samples=20, min_time_s=0.0)
    sample_until_stable(_sampler([1.0] * 1000), policy, after_chunk=lambda: calls.append(1))
    assert len(calls) == 1


@pytest.mark.parametrize(
    "fields",
    [{"min_samples": 2}, {"min_samples": 50, "max_samples": 10}, {"target_rel_ci": 0.0},
     {"sample_ms": 0.0}, {"budget_s": -1.0}, {"min_time_s": 10.0, "budget_s": 5.0}],
)  # fmt: skip
def test_policy_rejects_nonsense(fields):
    with pytest.raises(InvalidInputError):
        TimingPolicy(**fields)


@pytest.mark.parametrize(
    "counts",
    [
        dict(launches_per_sample=0, samples=10),
        dict(launches_per_sample=10, samples=2),
        dict(launches_per_sample=10, samples=10, warmup_launches=-1),
    ],
)
def test_fixed_count_timing_refuses_counts_it_cannot_use(counts):
    from ftbench.bench.timer import time_fixed

    with pytest.raises(InvalidInputError, match="launches_per_sample"):
        time_fixed(lambda _: None, name="x", **counts)
