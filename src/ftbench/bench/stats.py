"""Statistics of timing samples: the median, its bootstrap confidence interval, and noise.

Defaults, stated once:
- the summary statistic is the median (robust to the occasional preempted sample);
- its confidence interval is a percentile bootstrap at 95% with 1000 resamples and a fixed
  seed, so the same samples always give the same interval;
- noise is the robust relative spread 1.4826 * MAD / median (equals stdev/mean for a normal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0x5EED
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class SampleSummary:
    """What a set of samples says about the quantity measured (all values in the samples' unit)."""

    count: int
    median: float
    minimum: float
    maximum: float
    mean: float
    ci_low: float
    ci_high: float
    confidence: float
    rel_ci_half_width: float
    rel_noise: float


def bootstrap_median_ci(
    samples: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of `samples`."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples")
    if values.size == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(resamples, values.size))
    medians = np.median(values[picks], axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return float(low), float(high)


def summarize(samples: Sequence[float], confidence: float = CONFIDENCE) -> SampleSummary:
    """Median, extremes, bootstrap CI of the median and relative noise of `samples`."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    median = float(np.median(values))
    ci_low, ci_high = bootstrap_median_ci(values, confidence)
    mad = float(np.median(np.abs(values - median)))
    scale = abs(median) if median != 0 else float("nan")
    return SampleSummary(
        count=int(values.size),
        median=median,
        minimum=float(values.min()),
        maximum=float(values.max()),
        mean=float(values.mean()),
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=confidence,
        rel_ci_half_width=(ci_high - ci_low) / 2.0 / scale,
        rel_noise=MAD_TO_SIGMA * mad / scale,
    )


def bootstrap_ratio_ci(
    baseline: Sequence[float],
    current: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of median(current) / median(baseline).

    The two sides are independent measurements, so each is resampled on its own.
    """
    base = np.asarray(baseline, dtype=np.float64)
    now = np.asarray(current, dtype=np.float64)
    if base.size == 0 or now.size == 0:
        raise ValueError("no samples")
    rng = np.random.default_rng(seed)
    base_medians = np.median(base[rng.integers(0, base.size, size=(resamples, base.size))], axis=1)
    now_medians = np.median(now[rng.integers(0, now.size, size=(resamples, now.size))], axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(now_medians / base_medians, [tail, 1.0 - tail])
    return float(low), float(high)
