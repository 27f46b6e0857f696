"""A serving benchmark's latency and throughput, from when each request arrived and when each of
its output tokens was produced (all times in seconds on one clock).

Per request (`RequestLatency`), in ms:
- TTFT: first token - arrival (queueing and prefill included);
- end-to-end (e2e): finish - arrival;
- TPOT: (e2e - TTFT) / (output tokens - 1), the mean time per token after the first; a request
  of one token has none;
- ITL: the gaps between consecutive tokens (output tokens - 1 of them).

Over the run (`ServingMetrics`): the mean and the 50th, 90th and 99th percentiles of each
(`Distribution`; percentiles by NumPy's default "linear" method, the same as
`modelbench.records`; ITL over every gap of every request pooled, TPOT over the requests that
have one). Throughputs divide by the run's span, from the first request's arrival to the last
request's finish: requests per second, output tokens per second. Goodput is the requests per
second, over the same span, that met every latency target given (`Slo`, parsed from
"ttft:200ms,tpot:50ms,e2e:2s"); a request without a TPOT meets a TPOT target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from ftbench.errors import InvalidInputError
from ftbench.modelbench.records import PERCENTILES

SLO_METRICS = ("ttft", "tpot", "e2e")
UNIT_MS = {"ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class RequestTiming:
    """When a request arrived, when each of its output tokens was produced (the first is its
    first token), and when it finished (at or after its last token)."""

    arrival_s: float
    token_s: tuple[float, ...]
    finish_s: float

    def __post_init__(self) -> None:
        times = (self.arrival_s, *self.token_s, self.finish_s)
        if not self.token_s or any(later < earlier for earlier, later in pairwise(times)):
            raise InvalidInputError(
                "a request's timing needs at least one token and arrival <= each token <= the "
                f"next <= finish, got arrival {self.arrival_s}, tokens {self.token_s}, finish "
                f"{self.finish_s}"
            )


@dataclass(frozen=True)
class RequestLatency:
    """One request's latencies in ms (see the module docstring); tpot_ms None for one token."""

    ttft_ms: float
    tpot_ms: float | None
    itl_ms: tuple[float, ...]
    e2e_ms: float
    output_tokens: int


def request_latency(timing: RequestTiming) -> RequestLatency:
    tokens = timing.token_s
    ttft_ms = 1000 * (tokens[0] - timing.arrival_s)
    e2e_ms = 1000 * (timing.finish_s - timing.arrival_s)
    tpot_ms = (e2e_ms - ttft_ms) / (len(tokens) - 1) if len(tokens) > 1 else None
    itl_ms = tuple(1000 * (later - earlier) for earlier, later in pairwise(tokens))
    return RequestLatency(ttft_ms, tpot_ms, itl_ms, e2e_ms, len(tokens))


@dataclass(frozen=True)
class Distribution:
    """The mean and the PERCENTILES of a set of samples, in the samples' unit."""

    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Distribution | None:
        """None for no samples; percentiles by numpy.percentile's default (linear) method."""
        if not len(samples):
            return None
        values = np.asarray(samples, dtype=np.float64)
        p50, p90, p99 = (float(np.percentile(values, q)) for q in PERCENTILES)
        return cls(float(values.mean()), p50, p90, p99)


@dataclass(frozen=True)
class Slo:
    """Latency targets in ms (None: no target on that metric)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met_by(self, latency: RequestLatency) -> bool:
        return (
            (self.ttft_ms is None or latency.ttft_ms <= self.ttft_ms)
            and (self.tpot_ms is None or latency.tpot_ms is None or latency.tpot_ms <= self.tpot_ms)
            and (self.e2e_ms is None or latency.e2e_ms <= self.e2e_ms)
        )


def parse_slo(text: str) -> Slo:
    """ "ttft:200ms,tpot:50ms,e2e:2s": each metric of SLO_METRICS at most once, each target a
    positive number with a unit, ms or s."""
    targets: dict[str, float] = {}
    for part in text.split(","):
        metric, _, value = part.strip().partition(":")
        number, unit = _split_unit(value)
        if metric not in SLO_METRICS or metric in targets or unit is None:
            raise InvalidInputError(
                f"latency targets {text!r}: expected metric:NUMBERms or metric:NUMBERs, each of "
                f"{', '.join(SLO_METRICS)} at most once (e.g. ttft:200ms,tpot:50ms)"
            )
        try:
            target_ms = float(number) * UNIT_MS[unit]
        except ValueError:
            target_ms = math.nan
        if not (math.isfinite(target_ms) and target_ms > 0):
            raise InvalidInputError(f"latency target {part!r} must be a positive number")
        targets[metric] = target_ms
    return Slo(**{f"{metric}_ms": target for metric, target in targets.items()})


def _split_unit(value: str) -> tuple[str, str | None]:
    for unit in sorted(UNIT_MS, key=len, reverse=True):  # "ms" before "s"
        if value.endswith(unit):
            return value[: -len(unit)], unit
    return value, None


@dataclass(frozen=True)
class ServingMetrics:
    """A run's requests, span, throughputs and latency distributions (module docstring)."""

    requests: int
    output_tokens: int
    span_s: float
    request_throughput: float
    output_throughput: float
    ttft_ms: Distribution
    tpot_ms: Distribution | None
    itl_ms: Distribution | None
    e2e_ms: Distribution
    good_requests: int | None
    goodput: float | None


def serving_metrics(timings: Sequence[RequestTiming], slo: Slo | None = None) -> ServingMetrics:
    """The metrics of the finished requests `timings`; goodput only with an `slo`."""
    if not timings:
        raise InvalidInputError("serving metrics need at least one finished request")
    span_s = max(t.finish_s for t in timings) - min(t.arrival_s for t in timings)
    if span_s <= 0:
        raise InvalidInputError("the requests' span (first arrival to last finish) is zero")
    latencies = [request_latency(timing) for timing in timings]
    output_tokens = sum(latency.output_tokens for latency in latencies)
    good = None if slo is None else sum(slo.met_by(latency) for latency in latencies)
    return ServingMetrics(
        requests=len(latencies),
        output_tokens=output_tokens,
        span_s=span_s,
        request_throughput=len(latencies) / span_s,
        output_throughput=output_tokens / span_s,
        ttft_ms=Distribution.of([latency.ttft_ms for latency in latencies]),
        tpot_ms=Distribution.of([lat.tpot_ms for lat in latencies if lat.tpot_ms is not None]),
        itl_ms=Distribution.of([gap for latency in latencies for gap in latency.itl_ms]),
        e2e_ms=Distribution.of([latency.e2e_ms for latency in latencies]),
        good_requests=good,
        goodput=None if good is None else good / span_s,
    )
