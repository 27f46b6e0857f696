import numpy as np
import pytest

from ftbench.bench.stats import bootstrap_median_ci, bootstrap_ratio_ci, summarize


def test_summary_of_known_samples():
    summary = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary.count == 5
    assert summary.median == 3.0
    assert summary.minimum == 1.0 and summary.maximum == 5.0
    assert summary.mean == 3.0
    assert summary.ci_low <= 3.0 <= summary.ci_high


def test_constant_samples_have_zero_width_and_noise():
    summary = summarize([2.5] * 50)
    assert summary.ci_low == summary.ci_high == 2.5
    assert summary.rel_ci_half_width == 0.0
    assert summary.rel_noise == 0.0


def test_rel_noise_estimates_relative_sigma_of_a_normal():
    rng = np.random.default_rng(1)
    samples = rng.normal(100.0, 2.0, size=20_000)
    assert summarize(samples).rel_noise == pytest.approx(0.02, rel=0.05)


def test_ci_half_width_matches_theory_for_the_median_of_a_normal():
    # The median of n normal samples has standard error sqrt(pi/2) * sigma / sqrt(n).
    rng = np.random.default_rng(2)
    n, sigma = 400, 1.0
    low, high = bootstrap_median_ci(rng.normal(10.0, sigma, size=n))
    expected_half_width = 1.96 * np.sqrt(np.pi / 2) * sigma / np.sqrt(n)
    assert (high - low) / 2 == pytest.approx(expected_half_width, rel=0.25)


def test_ci_covers_the_true_median_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    trials = 300
    covered = 0
    for _ in range(trials):
        samples = rng.lognormal(0.0, 0.5, size=60)  # skewed, true median exp(0) = 1
        low, high = bootstrap_median_ci(samples)
        covered += low <= 1.0 <= high
    assert 0.90 <= covered / trials <= 0.99


def test_bootstrap_is_deterministic():
    samples = np.random.default_rng(4).exponential(size=100)
    assert bootstrap_median_ci(samples) == bootstrap_median_ci(samples)


def test_empty_samples_are_refused():
    with pytest.raises(ValueError):
        summarize([])


def test_ratio_ci_covers_the_true_ratio_about_95_percent_of_the_time():
    rng = np.random.default_rng(6)
    trials, covered = 200, 0
    for _ in range(trials):
        baseline = rng.lognormal(0.0, 0.3, size=80)  # true median 1
        current = 1.05 * rng.lognormal(0.0, 0.3, size=60)  # true median 1.05
        low, high = bootstrap_ratio_ci(baseline, current)
        covered += low <= 1.05 <= high
    assert 0.90 <= covered / trials <= 0.99


def test_ratio_ci_of_scaled_constant_samples_is_the_scale():
    assert bootstrap_ratio_ci([2.0] * 10, [2.1] * 7) == pytest.approx((1.05, 1.05))
    with pytest.raises(ValueError):
        bootstrap_ratio_ci([], [1.0])
