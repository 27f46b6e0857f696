"""Model-level benchmarks (`ftbench run`): generation latency and throughput over a grid.

For each grid point (batch, input length, output length) and each engine, two warm-up requests (the
second captures ftbench's prefill graph), then `repeats` timed requests of `batch` random prompts
of `input_len` tokens generating exactly `output_len` tokens each (no stop token). The times come
from CUDA events on the engine's stream (`runtime.generate.Generation`): time to first token
(prefill and the first sampled token), every decode step after it, and the end-to-end request.
Derived: per-output-token latency percentiles, output and total tokens per second, the decode
step's floor (weights plus the average KV cache read once at the HBM read bandwidth) and the
prefill's (FLOPs at the GEMM peak), peak memory, GEMM cache hits and misses, and the GPU's clocks
and power while it ran.

A point that does not fit in memory is recorded as such and the sweep goes on; results are
written after every point, so Ctrl-C keeps the finished ones.

With tp x pp > 1 every rank runs `run_benchmark` at once with its `Ranks` (`ftbench run`
spawns them, or mpirun/srun starts them): each builds its stage's shard of the weights and its
decoder, all time the same requests (rank 0's records are the run's), and after each point
every rank times one captured decode step operation by operation (`runtime.breakdown`); the
time its communicator calls take is gathered to every rank as `comm_step_ms_per_rank` (and
rank 0's calls by kind, count and ms, are the record's `comm_calls`). A
rank's error is not recorded: it stops the run (`launch.run_rank` aborts the communicators
and the spawner stops the other ranks). A pipeline step runs in `micro_batches` micro-batches
(`point_micro_batches`: 1 unless asked), which the records carry.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.bench.stats import summarize
from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.modelbench.runs import ENGINES, run_record
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.memory import footprint
from ftbench.runtime.pipeline import Stage

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class RunPoint:
    """One point of the grid: `batch` requests of `input_len` tokens generating `output_len`."""

    batch: int
    input_len: int
    output_len: int

    @property
    def max_seq_len(self) -> int:
        return self.input_len + self.output_len


def run_grid(
    batches: Iterable[int], input_lens: Iterable[int], output_lens: Iterable[int]
) -> list[RunPoint]:
    """Every (batch, input, output) combination, input length outermost, batch innermost."""
    points = [
        RunPoint(batch, input_len, output_len)
        for input_len, output_len, batch in itertools.product(input_lens, output_lens, batches)
    ]
    for point in points:
        if min(point.batch, point.input_len, point.output_len) < 1:
            raise InvalidInputError(f"batch and lengths must be positive, got {point}")
    return points


def point_micro_batches(requested: int | None, pp: int, batch: int) -> int:
    """The micro-batches a step of `batch` sequences runs in: `requested`, or by default 1.

    Not one per stage by default: every micro-batch reads its stage's weights again, so a
    weight-bound decode step takes m + pp - 1 stage reads in m micro-batches against pp in one;
    micro-batches pay where compute dominates (long prefills, large batches), so they are asked
    for."""
    if requested is None:
        return 1
    if requested < 1:
        raise InvalidInputError(f"--micro-batches must be at least 1, got {requested}")
    if requested > batch:
        raise InvalidInputError(
            f"--micro-batches {requested} needs batches of at least {requested} sequences; "
            f"batch {batch} has fewer"
        )
    return requested


def decode_floor_ms(spec: ModelSpec, point: RunPoint, dtype: str, bandwidth: float, tp: int = 1):
    """The decode step's floor: one rank's weights plus its KV cache at the average length of
    the decode steps, read once at `bandwidth` bytes/s."""
    plan = footprint(spec, point.batch, point.max_seq_len, dtype, tp, max_tokens=1)
    average_length = point.input_len + point.output_len / 2
    kv_bytes = plan.kv_cache * average_length / point.max_seq_len
    return (plan.weights + kv_bytes) / bandwidth * 1e3


def prefill_floor_ms(
    spec: ModelSpec, point: RunPoint, dtype: str, peak_flops: float, bandwidth: float, tp: int = 1
) -> float:
    """The prefill's floor on one rank: its GEMM and attention FLOPs at `peak_flops`, or its
    weights read once at `bandwidth`, whichever takes longer."""
    rank = rank_shapes(spec, tp)
    hidden, q_width = spec.hidden_size, rank.q_width
    per_token = hidden * rank.qkv_width + q_width * hidden + hidden * rank.ffn_up_rows
    per_token += rank.ffn_hidden_size * hidden
    tokens = point.batch * point.input_len
    linear = 2 * tokens * per_token * spec.num_layers
    # causal attention: QK^T and PV over half the square on average
    attention = 2 * 2 * point.batch * point.input_len**2 / 2 * q_width * spec.num_layers
    lm_head = 2 * point.batch * hidden * rank.lm_head_rows
    weights = footprint(spec, 1, 1, dtype, tp, max_tokens=1).weights
    return max((linear + attention + lm_head) / peak_flops, weights / bandwidth) * 1e3


def percentile_summary(samples: Sequence[float]) -> dict[str, Any]:
    """A timing summary of samples in ms (the shape `modelbench.runs` reads), with the mean and
    the 50th, 90th and 99th percentiles."""
    values = np.asarray(samples, dtype=np.float64)
    stats = summarize(values)
    summary = {
        "median_ms": stats.median, "ci_low_ms": stats.ci_low, "ci_high_ms": stats.ci_high,
        "min_ms": stats.minimum, "max_ms": stats.maximum, "mean_ms": stats.mean,
        "rel_ci_half_width": stats.rel_ci_half_width, "samples_ms": values.tolist(),
    }  # fmt: skip
    for q in PERCENTILES:
        summary[f"p{q}_ms"] = float(np.percentile(values, q))
    return summary


@dataclass(frozen=True)
class Measured:
    """What one engine measured at one point: per request TTFT and end-to-end, every decode
    step, peak memory, GEMM dispatch counts, the GPU's conditions, and the seconds a peer
    spent compiling ahead of its requests (None where it compiles nothing ahead)."""

    ttft_ms: list[float]
    end_to_end_ms: list[float]
    step_ms: list[float]
    peak_memory_bytes: int | None
    gemm: dict[str, Any] | None
    conditions: dict[str, Any]
    flags: tuple[str, ...] = ()
    comm_step_ms_per_rank: tuple[float, ...] | None = None
    compile_s: float | None = None
    micro_batches: int | None = None
    comm_calls: dict[str, dict[str, float]] | None = None


def point_record(
    engine: str,
    model: str,
    dtype: str,
    tp: int,
    point: RunPoint,
    measured: Measured,
    floor_decode_ms: float | None,
    floor_prefill_ms: float | None,
    pp: int = 1,
) -> dict[str, Any]:
    """The run record (`modelbench.runs` schema) of one engine at one point, with the extras."""
    record = run_record(
        engine=engine, model=model, dtype=dtype, tp=tp, pp=pp, batch=point.batch,
        input_len=point.input_len, output_len=point.output_len,
        ttft=percentile_summary(measured.ttft_ms),
        decode_step=percentile_summary(measured.step_ms),
        end_to_end=percentile_summary(measured.end_to_end_ms),
        peak_memory_bytes=measured.peak_memory_bytes, floor_decode_step_ms=floor_decode_ms,
        gemm_cache_misses=None if measured.gemm is None else measured.gemm["misses"],
        flags=measured.flags, comm_step_ms_per_rank=measured.comm_step_ms_per_rank,
        micro_batches=measured.micro_batches,
    )  # fmt: skip
    end_to_end_s = record["end_to_end_ms"]["median_ms"] / 1e3
    record["total_tok_s"] = point.batch * (point.input_len + point.output_len) / end_to_end_s
    record["floor_prefill_ms"] = floor_prefill_ms
    record["prefill_roofline_fraction"] = (
        None if floor_prefill_ms is None else floor_prefill_ms / record["ttft_ms"]["median_ms"]
    )
    record["gemm_dispatch"] = measured.gemm
    record["compile_s"] = measured.compile_s
    if measured.comm_calls is not None:
        record["comm_calls"] = measured.comm_calls
    record["conditions"] = measured.conditions
    record["status"] = "ok"
    return record


def not_fitting_record(engine: str, model: str, dtype: str, tp: int, point: RunPoint, why: str):
    """The record of a point that could not run (too large for memory): no timings."""
    return {
        "engine": engine, "model": model, "dtype": dtype, "tp": tp, "pp": 1,
        "batch": point.batch, "input_len": point.input_len, "output_len": point.output_len,
        "status": "does not fit", "reason": why,
    }  # fmt: skip


def measure_requests(
    generate: Callable[[], Any], repeats: int, monitor: Any
) -> tuple[list[float], list[float], list[float]]:
    """Run `generate` twice to warm up (ftbench's runtime runs a prefill of new lengths
    eagerly, then captures it in a CUDA graph), then `repeats` times; (TTFT, end-to-end,
    steps) in ms. `generate` returns a `Generation` (or anything with ttft_ms and step_ms)."""
    generate()
    generate()
    ttft, end_to_end, steps = [], [], []
    for _ in range(repeats):
        monitor.poll()
        result = generate()
        ttft.append(float(result.ttft_ms))
        end_to_end.append(float(result.ttft_ms + np.sum(result.step_ms)))
        steps.extend(float(value) for value in result.step_ms)
    monitor.poll()
    return ttft, end_to_end, steps


@dataclass(frozen=True)
class RunConfig:
    """What `ftbench run` measures: a model, a dtype, grid points and engines."""

    spec: ModelSpec
    dtype: str
    points: tuple[RunPoint, ...]
    engines: tuple[str, ...] = ("ftbench",)
    tuned_cache: str | None = None
    checkpoint: str | None = None
    repeats: int = 3
    seed: int = 0
    tp: int = 1
    pp: int = 1
    micro_batches: int | None = None

    def __post_init__(self) -> None:
        unknown = [engine for engine in self.engines if engine not in ENGINES]
        if unknown:
            raise InvalidInputError(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")
        if self.dtype not in ("fp16", "bf16"):
            raise InvalidInputError(f"ftbench run measures fp16 or bf16, not {self.dtype!r}")
        if self.repeats < 1:
            raise InvalidInputError(f"--repeats must be at least 1, got {self.repeats}")
        if self.checkpoint is not None and not Path(self.checkpoint).is_dir():
            raise InvalidInputError(
                f"--checkpoint {self.checkpoint}: no such folder (a local HF safetensors directory)"
            )
        if self.tuned_cache is not None and not Path(self.tuned_cache).is_file():
            raise InvalidInputError(f"--tuned {self.tuned_cache}: no such file")
        rank_shapes(self.spec, self.tp, self.pp)  # a tp or pp the model cannot split: an error
        peers = [engine for engine in self.engines if not engine.startswith("ftbench")]
        if self.tp * self.pp > 1 and peers:
            raise InvalidInputError(f"peers {peers} run on one GPU; compare them at tp=pp=1")
        from ftbench.runtime.model import check_runnable

        check_runnable(self.spec, 1)  # the model itself, then each point's lengths
        for point in self.points:
            point_micro_batches(self.micro_batches, self.pp, point.batch)
            try:
                check_runnable(self.spec, point.max_seq_len)
            except InvalidInputError as exc:
                raise InvalidInputError(
                    f"input length {point.input_len} + output length {point.output_len}: {exc}"
                ) from exc
        short = [point for point in self.points if point.output_len < 2]
        if short:
            raise InvalidInputError(
                "output lengths must be at least 2 (one prefill token and a decode step)"
            )


def max_batch(spec: ModelSpec, input_len: int, output_len: int, dtype: str, free: int) -> int:
    """The largest batch whose KV cache and buffers fit in `free` bytes next to the weights."""
    from ftbench.runtime.memory import largest_fitting

    def fits(batch: int) -> bool:
        need = footprint(spec, batch, input_len + output_len, dtype, max_tokens=batch * input_len)
        return need.total <= free

    return largest_fitting(fits, 1 << 16)


# Memory the largest batch may plan for: what is free before the run, less what the run itself
# takes outside the plan (library handles, graphs, the ceilings' probes: ~0.3 GiB seen on H200).
FREE_MEMORY_FRACTION = 0.98


def free_memory_for_runs() -> int:
    """Bytes `max_batch` may plan with on the current GPU."""
    import cupy

    return int(cupy.cuda.runtime.memGetInfo()[0] * FREE_MEMORY_FRACTION)


def throughput_batches(largest: int) -> list[int]:
    """Batches tried by --max-throughput: powers of two below the largest that fits, and it."""
    return sorted({1 << i for i in range(largest.bit_length()) if 1 << i < largest} | {largest})


@dataclass(frozen=True)
class Ranks:
    """One rank of a tp x pp run: its global rank, the communicator of every rank, its stage's
    tensor communicator (None at tp=1), its stage (with the pipeline communicator) and its
    tensor-parallel rank."""

    rank: int
    world: Any
    tensor: Any
    stage: Stage
    tp_rank: int


def run_benchmark(
    config: RunConfig,
    on_record: Callable[[dict[str, Any]], None],
    on_point: Callable[[str, RunPoint], None] = lambda engine, point: None,
    ceilings: Ceilings | None = None,
    ranks: Ranks | None = None,
) -> Ceilings:
    """Measure every engine at every point; hand each record to `on_record` as it is done.
    The HBM read bandwidth and the GEMM peak are measured first, once, for the floors (unless
    `ceilings` from the same session are given); they are returned. `ranks`: this process's
    place in a tp x pp run (see the module docstring)."""
    import cupy

    ceilings = ceilings or measure_ceilings(config.dtype)
    ours = [engine for engine in config.engines if engine.startswith("ftbench")]
    if ours:
        weights = _ftbench_weights(config, ranks)
        for engine in ours:
            cache_path = config.tuned_cache if engine == "ftbench" else None
            for point in config.points:
                on_point(engine, point)
                measured = _measure_ftbench(
                    config, weights, cache_path, point, engine, ranks, ceilings
                )
                on_record(_record(config, engine, point, measured, ceilings))
        del weights
        cupy.get_default_memory_pool().free_all_blocks()
    for engine in (engine for engine in config.engines if engine in PEERS):
        peer = None
        for point in config.points:
            on_point(engine, point)
            try:
                peer = peer or _peer(config, engine)
                measured = _measure_peer(peer, config, point)
            except Exception as exc:  # a peer's failure is its result, not ours
                on_record(failed_record(engine, config, point, exc))
                continue
            on_record(_record(config, engine, point, measured, ceilings))
        del peer
    return ceilings


def measure_ceilings(dtype: str) -> Ceilings:
    """The HBM read bandwidth and the dense GEMM peak of `dtype`, measured now."""
    from ftbench.modelbench.ceilings import gemm_peak, read_bandwidth

    return Ceilings(read_bandwidth()["bytes_per_s"], gemm_peak(dtype)["flops_per_s"])


@dataclass(frozen=True)
class Ceilings:
    """The GPU's measured HBM read bandwidth (bytes/s) and dense GEMM peak (FLOP/s)."""

    hbm_read_bytes_per_s: float
    gemm_peak_flops: float


def _record(config: RunConfig, engine: str, point: RunPoint, measured, ceilings: Ceilings):
    if isinstance(measured, dict):
        return measured
    spec = config.spec
    # A step runs the stages one after another: its floor is one tensor-parallel rank's share
    # of every layer, whatever pp.
    bandwidth = ceilings.hbm_read_bytes_per_s
    record = point_record(
        engine, spec.name, config.dtype, config.tp, point, measured,
        decode_floor_ms(spec, point, config.dtype, bandwidth, config.tp),
        prefill_floor_ms(
            spec, point, config.dtype, ceilings.gemm_peak_flops, bandwidth, config.tp
        ),
        config.pp,
    )  # fmt: skip
    record["hbm_read_bytes_per_s"] = ceilings.hbm_read_bytes_per_s
    record["gemm_peak_flops"] = ceilings.gemm_peak_flops
    return record


def failed_record(engine: str, config: RunConfig, point: RunPoint, error: Exception):
    """A point an engine could not run: out of memory ("does not fit") or another failure."""
    text = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    out_of_memory = "OutOfMemory" in text or "does not fit" in text or "are free" in text
    return {
        "engine": engine, "model": config.spec.name, "dtype": config.dtype, "tp": config.tp,
        "pp": config.pp,
        "batch": point.batch, "input_len": point.input_len, "output_len": point.output_len,
        "status": "does not fit" if out_of_memory else "failed", "reason": text,
    }  # fmt: skip


def _ftbench_weights(config: RunConfig, ranks: Ranks | None):
    """This rank's weights on the GPU: its stage's layers of its tensor-parallel shard."""
    import cupy

    from ftbench.runtime.weights import load_hf_weights, random_weights, shard, stage_weights

    spec, tp = config.spec, config.tp
    if ranks is None:
        layers, tp_rank = range(spec.num_layers), 0
    else:
        layers, tp_rank = ranks.stage.layers, ranks.tp_rank
    if config.checkpoint:
        weights = load_hf_weights(config.checkpoint, spec, config.dtype)
        part = stage_weights(shard(weights, spec, tp, tp_rank), spec, layers)
        return part.map(cupy.asarray)
    return random_weights(spec, config.dtype, seed=config.seed, tp=tp, xp=cupy, layers=layers)


def _prompts(config: RunConfig, point: RunPoint) -> np.ndarray:
    rng = np.random.default_rng(config.seed)
    return rng.integers(0, config.spec.vocab_size, (point.batch, point.input_len))


def _monitor():
    import cupy

    from ftbench.bench.gpu_state import ConditionMonitor
    from ftbench.bench.timer import device_facts

    return ConditionMonitor(device_facts(cupy)[1])


def _measure_ftbench(
    config: RunConfig,
    weights,
    cache_path: str | None,
    point: RunPoint,
    engine: str,
    ranks: Ranks | None,
    ceilings: Ceilings,
):
    """One point through ftbench's runtime: a `Measured`, or (on one GPU) the record of why it
    could not run (too large for memory, or a kernel refusing the shape)."""
    import cupy

    from ftbench.bench.environment import capture_environment
    from ftbench.gemm.cache import CacheHeader, load_cache
    from ftbench.gemm.dispatch import GemmDispatch
    from ftbench.runtime.generate import Generator
    from ftbench.runtime.rank import make_decoder

    cache = None
    if cache_path:
        running = CacheHeader.from_environment(capture_environment())
        cache = load_cache(cache_path, running=running)
    gemm = GemmDispatch(cache)
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    prompts = list(_prompts(config, point))
    monitor = _monitor()
    micro_batches = point_micro_batches(config.micro_batches, config.pp, point.batch)
    try:
        decoder = make_decoder(
            config.spec, weights, max_batch=point.batch, max_seq_len=point.max_seq_len,
            max_tokens=point.batch * point.input_len, gemm=gemm, tp=config.tp,
            comm=None if ranks is None else ranks.tensor,
            stage=None if ranks is None else ranks.stage, micro_batches=micro_batches,
        )  # fmt: skip
        generator = Generator(decoder)
        ttft, end_to_end, steps = measure_requests(
            lambda: generator.generate(prompts, point.output_len), config.repeats, monitor
        )
    except (FtbenchError, cupy.cuda.memory.OutOfMemoryError) as exc:
        if ranks is not None:
            raise  # the other ranks would wait for this one: stop the run (module docstring)
        return failed_record(engine, config, point, exc)
    conditions = monitor.conditions()
    communication = calls = None
    if ranks is not None:
        communication, calls = _communication_per_rank(decoder, generator, ranks, ceilings)
    return Measured(
        ttft, end_to_end, steps, int(pool.total_bytes()), gemm.stats.to_dict(),
        _conditions_dict(conditions), tuple(conditions.flags),
        comm_step_ms_per_rank=communication, micro_batches=micro_batches, comm_calls=calls,
    )  # fmt: skip


def _communication_per_rank(decoder, generator, ranks: Ranks, ceilings: Ceilings):
    """(every rank's time in communicator calls during one decode step, ms by global rank;
    this rank's calls by kind, `breakdown.communication_calls`): each rank times its captured
    step (`runtime.breakdown`), then the ranks all-gather their totals."""
    import cupy

    from ftbench.runtime.breakdown import breakdown, communication_calls, communication_ms

    with generator.stream:
        operations, _ = breakdown(
            decoder, generator.state.step, ceilings.hbm_read_bytes_per_s,
            ceilings.gemm_peak_flops,
        )  # fmt: skip
        mine = cupy.full(1, communication_ms(operations), cupy.float32)
        gathered = cupy.empty((ranks.world.world_size, 1), cupy.float32)
        ranks.world.all_gather(mine, gathered)
        ranks.world.synchronize("the ranks' communication times")
        per_rank = tuple(float(value) for value in cupy.asnumpy(gathered).ravel())
        return per_rank, communication_calls(operations)


# Peers measured through torch, after ftbench's engines.
PEERS = ("hf-eager", "hf-compile", "gpt-fast")


def _peer(config: RunConfig, engine: str):
    if engine == "gpt-fast":
        from ftbench.modelbench.gptfast import GptFastPeer

        return GptFastPeer(config.spec, _ftbench_weights(config, None))
    from ftbench.modelbench.peers import HfPeer

    return HfPeer(config.spec, config.dtype, mode=engine.removeprefix("hf-"), seed=config.seed)


def _measure_peer(peer, config: RunConfig, point: RunPoint) -> Measured:
    prompts = _prompts(config, point)
    monitor = _monitor()
    compile_s = peer.prepare(point.batch, point.max_seq_len)
    peer.torch.cuda.reset_peak_memory_stats()
    ttft, end_to_end, steps = measure_requests(
        lambda: peer.generate(prompts, point.output_len), config.repeats, monitor
    )
    conditions = monitor.conditions()
    return Measured(
        ttft, end_to_end, steps, peer.peak_memory_bytes(), None,
        _conditions_dict(conditions), tuple(conditions.flags), compile_s=compile_s,
    )  # fmt: skip


def _conditions_dict(conditions) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(conditions)
    data["other_processes"] = list(data["other_processes"])
    return data


RUN_COLUMNS = {
    "engine": "engine", "batch": "batch", "input_len": "in", "output_len": "out",
    "ttft_ms": "TTFT ms", "step_p50_ms": "step p50 ms", "step_p99_ms": "step p99 ms",
    "throughput_tok_s": "out tok/s", "roofline_fraction": "decode/floor",
    "prefill_roofline_fraction": "prefill/floor", "peak_memory_gib": "memory GiB",
    "gemm_cache_misses": "GEMM misses", "comm_ms_per_rank": "comm ms/rank", "status": "status",
}  # fmt: skip


def run_table(records: Iterable[dict[str, Any]]):
    """The records as a pandas DataFrame with one row per (engine, point), for tables and CSV."""
    import pandas as pd

    rows = []
    for record in records:
        ok = record.get("status", "ok") == "ok"
        memory = record.get("peak_memory_bytes")
        rows.append({
            "engine": record["engine"], "batch": record["batch"],
            "input_len": record["input_len"], "output_len": record["output_len"],
            "ttft_ms": record["ttft_ms"]["median_ms"] if ok else None,
            "step_p50_ms": record["decode_step_ms"]["p50_ms"] if ok else None,
            "step_p99_ms": record["decode_step_ms"]["p99_ms"] if ok else None,
            "throughput_tok_s": record.get("throughput_tok_s"),
            "roofline_fraction": record.get("roofline_fraction"),
            "prefill_roofline_fraction": record.get("prefill_roofline_fraction"),
            "peak_memory_gib": None if memory is None else memory / 2**30,
            "gemm_cache_misses": record.get("gemm_cache_misses"),
            "comm_ms_per_rank": " ".join(
                f"{value:.3g}" for value in record["comm_step_ms_per_rank"]
            ) if record.get("comm_step_ms_per_rank") else None,
            "status": record.get("status", "ok") if ok else f"{record['status']}: "
            f"{record.get('reason', '')}"[:80],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))
