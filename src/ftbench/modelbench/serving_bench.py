"""What `ftbench serve-bench` measures: one request stream per request rate, served by in-flight
batching and by the static-batch baseline (`modelbench.serving`), each becoming a run record
(`modelbench.runs`, whose docstring gives the mapping).

`ServingConfig` holds and checks every option before any GPU is touched, drawing the stream's
lengths (and reading a ShareGPT file) once to check them against the model (`check_streams`).
Each rate's stream has the same requests and prompts (one seed: the lengths do not depend on the
arrivals), so rates differ only in when requests arrive, and both engines serve exactly the
same requests. Lengths are clipped to the model's `max_positions` (ShareGPT pairs above it are
dropped); a request's prompt plus output (less its last, uncached token) must be a sequence the
runtime runs.

`run_serving_benchmark` serves every stream with both engines, in-flight first, handing each
record over as soon as it is made (a caller that writes each one keeps them on Ctrl-C).
`open_gpu_engines` is where the GPU engines come from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import RUNTIME_DTYPES
from ftbench.errors import FtbenchError, InvalidInputError, MeasurementError
from ftbench.modelbench.records import percentile_summary
from ftbench.modelbench.requests import (
    Arrivals,
    Fixed,
    LengthDistribution,
    Request,
    ShareGpt,
    arrivals_for,
    parse_lengths,
    request_stream,
)
from ftbench.modelbench.runs import INFLIGHT, STATIC, check_run_record, run_record
from ftbench.modelbench.serving import (
    Served,
    ServingEngine,
    StaticBatchEngine,
    prompt_tokens,
    serve_inflight,
    serve_static,
)
from ftbench.modelbench.serving_metrics import (
    Distribution,
    Slo,
    request_latency,
    serving_metrics,
)
from ftbench.profiles.spec import MAX_SIZE, ModelSpec


@dataclass(frozen=True)
class ServingConfig:
    """What serve-bench measures (see `ftbench serve-bench --help` for each option):
    `requests` requests of `input_lengths` prompts and `output_lengths` outputs (a ShareGpt
    for both: the file's pairs; a ShareGpt prompt and a distribution: its prompts, those
    outputs), at each of `rates` (requests/s, inf: all at once) with gamma gaps of shape
    `burstiness`; at most `max_concurrency` sequences at once, `max_num_tokens` tokens a step,
    KV blocks of `block_size` tokens; outputs end at `stop_token` where given."""

    spec: ModelSpec
    dtype: str
    requests: int
    input_lengths: LengthDistribution | ShareGpt
    output_lengths: LengthDistribution | ShareGpt
    rates: tuple[float, ...] = (math.inf,)
    burstiness: float = 1.0
    max_concurrency: int = 64
    max_num_tokens: int = 2048
    block_size: int = 16
    stop_token: int | None = None
    slo: Slo | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        from ftbench.runtime.model import check_runnable

        if self.dtype not in RUNTIME_DTYPES:
            raise InvalidInputError(f"serve-bench measures fp16 or bf16, not {self.dtype!r}")
        _check_count("--requests", self.requests)
        _check_count("--max-concurrency", self.max_concurrency)
        _check_count("--block-size", self.block_size)
        _check_count("--max-num-tokens", self.max_num_tokens)
        if self.max_num_tokens < self.max_concurrency:
            raise InvalidInputError(
                f"--max-num-tokens {self.max_num_tokens} must be at least --max-concurrency "
                f"{self.max_concurrency}: a step decodes one token of every running sequence"
            )
        if not self.rates:
            raise InvalidInputError("--rate needs at least one request rate")
        for rate in self.rates:
            arrivals_for(rate, self.burstiness)  # a rate or burstiness that is not one: said
        if isinstance(self.output_lengths, ShareGpt) and self.output_lengths != self.input_lengths:
            raise InvalidInputError("ShareGPT outputs come with ShareGPT prompts (--dataset)")
        vocab = self.spec.vocab_size
        if self.stop_token is not None and not 0 <= self.stop_token < vocab:
            raise InvalidInputError(
                f"--stop-token {self.stop_token} is not a token of {self.spec.name}'s "
                f"vocabulary (0..{vocab - 1})"
            )
        check_runnable(self.spec, 1)
        for option, lengths in (("--input-len", self.input_lengths),
                                ("--output-len", self.output_lengths)):  # fmt: skip
            if not isinstance(lengths, ShareGpt):
                try:  # no sample drawn: a distribution checks its maximum first
                    lengths.sample(np.random.default_rng(), 0, self.spec.max_positions)
                except InvalidInputError as exc:
                    raise InvalidInputError(
                        f"{option} {lengths.name}: {exc}, {self.spec.name}'s max_positions"
                    ) from exc
        check_streams(self.spec, self.lengths)

    @property
    def arrivals(self) -> tuple[Arrivals, ...]:
        return tuple(arrivals_for(rate, self.burstiness) for rate in self.rates)

    def stream(self, arrivals: Arrivals) -> list[Request]:
        """The requests, arriving by `arrivals` (lengths the same whatever the arrivals)."""
        limit = self.spec.max_positions
        return request_stream(
            self.requests, self.input_lengths, self.output_lengths, arrivals, self.seed,
            max_prompt_len=limit, max_output_len=limit,
        )  # fmt: skip

    @cached_property
    def lengths(self) -> tuple[Request, ...]:
        """The stream's requests at an infinite rate: their lengths (checked on creation)."""
        return tuple(self.stream(arrivals_for(math.inf)))

    @cached_property
    def prompts(self) -> dict[int, np.ndarray]:
        """Every request's prompt token ids (seeded: the same for every rate and engine)."""
        return prompt_tokens(self.lengths, self.spec.vocab_size, self.seed)


def parse_rates(text: str) -> tuple[float, ...]:
    """--rate: comma-separated request rates (requests/s), "inf" for all at once, each once."""
    rates = []
    for part in text.split(","):
        try:
            rates.append(float(part.strip()))
        except ValueError:
            raise InvalidInputError(
                f"--rate takes comma-separated request rates (requests/s) or inf, got {text!r}"
            ) from None
    for rate in rates:
        if rates.count(rate) > 1:
            raise InvalidInputError(f"--rate lists {rate:g} twice")
    return tuple(rates)


def stream_lengths(
    input_len: str | None, output_len: str | None, dataset: Path | None
) -> tuple[LengthDistribution | ShareGpt, LengthDistribution | ShareGpt]:
    """(prompt, output) lengths of --input-len, --output-len and --dataset: a ShareGPT file's
    pairs, or its prompts with --output-len's outputs; else the distributions (default 128
    tokens each)."""
    if dataset is not None and input_len is not None:
        raise InvalidInputError("--dataset gives the prompts: leave --input-len out")
    given = [
        (option, parse_lengths(text))
        for option, text in (("--input-len", input_len), ("--output-len", output_len))
        if text is not None
    ]
    for option, lengths in given:
        if isinstance(lengths, ShareGpt):
            raise InvalidInputError(f"{option}: give a ShareGPT file with --dataset PATH")
    chosen = dict(given)
    if dataset is not None:
        if not Path(dataset).is_file():
            raise InvalidInputError(f"--dataset {dataset}: no such file (a local ShareGPT JSON)")
        file = ShareGpt(Path(dataset))
        return file, chosen.get("--output-len", file)
    return chosen.get("--input-len", Fixed(128)), chosen.get("--output-len", Fixed(128))


def _check_count(option: str, value: int) -> None:
    if not 1 <= value <= MAX_SIZE:
        raise InvalidInputError(f"{option} must be between 1 and {MAX_SIZE}, got {value}")


def longest_request(requests: Sequence[Request]) -> Request:
    """The request of the most positions (prompt plus output)."""
    return max(requests, key=lambda request: request.prompt_len + request.output_len)


def check_streams(spec: ModelSpec, requests: Sequence[Request]) -> None:
    """Refuse lengths the runtime cannot run for `spec` (its learned positions, a sliding
    window), naming the longest request, and a stream in which no request has two output
    tokens (no TPOT: a serving record's decode step)."""
    from ftbench.runtime.model import check_runnable

    longest = longest_request(requests)
    try:
        check_runnable(spec, longest.prompt_len + longest.output_len - 1)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"request {longest.id} of {longest.prompt_len} prompt and {longest.output_len} "
            f"output tokens: {exc} (choose shorter --input-len or --output-len)"
        ) from exc
    if all(request.output_len < 2 for request in requests):
        raise InvalidInputError(
            "every request generates one token: outputs of at least 2 tokens give a time per "
            "output token (TPOT)"
        )


@dataclass(frozen=True)
class ServingEngines:
    """The engines a serving run measures: in-flight batching and the static-batch baseline."""

    inflight: ServingEngine
    static: StaticBatchEngine


def open_gpu_engines(config: ServingConfig) -> ServingEngines:
    """The GPU engines of `config`'s model: a paged decoder step (`ServingEngine`, its pool
    planned in blocks of `config.block_size` from the GPU's free memory) and the static-batch
    runtime (`StaticBatchEngine`, `runtime.generate.Generator` at `config.max_concurrency`).
    The paged decoder step does not exist yet, so nothing can be measured: this says so."""
    raise FtbenchError(
        "ftbench serve-bench needs the paged GPU engine (a decoder step over the paged KV "
        "cache, for in-flight batching), which this ftbench does not have yet; nothing was "
        "measured"
    )


def run_serving_benchmark(
    config: ServingConfig,
    engines: ServingEngines,
    on_record: Callable[[dict[str, Any]], None],
    on_serve: Callable[[str, Arrivals], None] = lambda engine, arrivals: None,
) -> None:
    """Serve every rate's stream with in-flight batching, then with static batches; hand each
    record to `on_record` as it is made (`on_serve` is told what is served next)."""
    for arrivals in config.arrivals:
        requests = config.stream(arrivals)
        on_serve(INFLIGHT, arrivals)
        served = serve_inflight(
            engines.inflight, requests, config.prompts, config.max_concurrency,
            config.max_num_tokens, config.stop_token,
        )  # fmt: skip
        memory = engines.inflight.peak_memory_bytes()
        on_record(serving_record(config, INFLIGHT, arrivals, requests, served, memory,
                                 engines.inflight.kv_blocks))  # fmt: skip
        on_serve(STATIC, arrivals)
        served = serve_static(
            engines.static, requests, config.prompts, config.max_concurrency, config.stop_token
        )
        memory = engines.static.peak_memory_bytes()
        on_record(serving_record(config, STATIC, arrivals, requests, served, memory))


def serving_record(
    config: ServingConfig,
    engine: str,
    arrivals: Arrivals,
    requests: Sequence[Request],
    served: Served,
    peak_memory_bytes: int | None,
    kv_blocks: int | None = None,
    flags: Sequence[str] = (),
) -> dict[str, Any]:
    """The run record (`modelbench.runs` schema, serving mapping) of `engine` serving
    `requests` (the stream at `arrivals`)."""
    metrics = serving_metrics(served.timings, config.slo)
    latencies = [request_latency(timing) for timing in served.timings]
    tpot = [latency.tpot_ms for latency in latencies if latency.tpot_ms is not None]
    if not tpot:
        raise MeasurementError(
            f"{engine} at {arrivals.name}: every request stopped after one token; no TPOT"
        )
    prompt_tokens_total = sum(request.prompt_len for request in requests)
    record = run_record(
        engine=engine, model=config.spec.name, dtype=config.dtype, tp=1, pp=1,
        batch=config.max_concurrency,
        input_len=max(1, round(prompt_tokens_total / len(requests))),
        output_len=max(1, round(np.mean([request.output_len for request in requests]))),
        ttft=percentile_summary([latency.ttft_ms for latency in latencies]),
        decode_step=percentile_summary(tpot),
        end_to_end=percentile_summary([latency.e2e_ms for latency in latencies]),
        peak_memory_bytes=peak_memory_bytes, floor_decode_step_ms=None, gemm_cache_misses=None,
        flags=flags, throughput_tok_s=metrics.output_throughput,
    )  # fmt: skip
    slo = config.slo
    record["serving"] = {
        "requests": metrics.requests, "arrivals": arrivals.name,
        "input_lengths": config.input_lengths.name, "output_lengths": config.output_lengths.name,
        "stop_token": config.stop_token, "seed": config.seed,
        "max_num_tokens": config.max_num_tokens, "block_size": config.block_size,
        "kv_blocks": kv_blocks, "preemptions": served.preemptions,
        "output_tokens": metrics.output_tokens, "span_s": metrics.span_s,
        "request_throughput": metrics.request_throughput,
        "output_throughput": metrics.output_throughput,
        "total_throughput": (prompt_tokens_total + metrics.output_tokens) / metrics.span_s,
        "ttft_ms": _distribution(metrics.ttft_ms), "tpot_ms": _distribution(metrics.tpot_ms),
        "itl_ms": _distribution(metrics.itl_ms), "e2e_ms": _distribution(metrics.e2e_ms),
        "slo": None if slo is None else {
            "ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "e2e_ms": slo.e2e_ms,
        },
        "good_requests": metrics.good_requests, "goodput": metrics.goodput,
    }  # fmt: skip
    check_run_record(record, f"{engine} record")
    return record


def _distribution(distribution: Distribution | None) -> dict[str, float] | None:
    return None if distribution is None else asdict(distribution)
