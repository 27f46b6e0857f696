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

With `RunConfig.breakdown` (`ftbench run --breakdown`, one GPU) every point of ftbench's engines
also takes one decode step and its prefill apart, operation by operation, after its timed
requests (`step_breakdown`): the record's "breakdown".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.gemm.cache import UNTUNED, TunedChoice
from ftbench.modelbench.ceilings import Ceilings, measure_ceilings
from ftbench.modelbench.grid import RunConfig, RunPoint, point_micro_batches
from ftbench.modelbench.records import Measured, conditions_dict, engine_record, failed_record
from ftbench.modelbench.runs import OUR_ENGINES, PEER_ENGINES
from ftbench.modelbench.step_breakdown import point_breakdown
from ftbench.runtime.pipeline import Stage
from ftbench.runtime.quantize import weight_format


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
    tuned: TunedChoice = UNTUNED,
) -> Ceilings:
    """Measure every engine at every point; hand each record to `on_record` as it is done.
    The HBM read bandwidth and the GEMM peak are measured first, once, for the floors (unless
    `ceilings` from the same session are given); they are returned. `ranks`: this process's
    place in a tp x pp run (see the module docstring). `tuned`: the tuned cache the "ftbench"
    engine runs with (`gemm.cache.open_tuned_cache`, opened once by the caller), named in each
    of its records; "ftbench-untuned" always runs without one."""
    import cupy

    ceilings = ceilings or measure_ceilings(config.dtype)
    ours = [engine for engine in config.engines if engine in OUR_ENGINES]
    if ours:
        weights, accuracy = _quantised(config, _ftbench_weights(config, ranks), ranks)
        if weight_format(weights) != config.weights:  # a checkpoint's own 8-bit format
            config = replace(config, weights=weight_format(weights))  # what the records say
        for engine in ours:
            choice = tuned if engine == "ftbench" else UNTUNED
            for point in config.points:
                on_point(engine, point)
                measured = _measure_ftbench(config, weights, choice, point, engine, ranks, ceilings)
                record = engine_record(config, engine, point, measured, ceilings)
                extra = {} if accuracy is None else {"accuracy": accuracy}
                on_record({**record, "tuned_cache": choice.to_dict(), **extra})
        del weights
        cupy.get_default_memory_pool().free_all_blocks()
    for engine in (engine for engine in config.engines if engine in PEER_ENGINES):
        peer = None
        for point in config.points:
            on_point(engine, point)
            try:
                peer = peer or _peer(config, engine)
                measured = _measure_peer(peer, config, point)
            except Exception as exc:  # a peer's failure is its result, not ours
                on_record(failed_record(engine, config, point, exc))
                continue
            on_record(engine_record(config, engine, point, measured, ceilings))
        del peer
    return ceilings


def _ftbench_weights(config: RunConfig, ranks: Ranks | None):
    """This rank's weights on the GPU: its stage's layers of its tensor-parallel shard."""
    import cupy

    from ftbench.runtime.hf_checkpoint import load_hf_weights
    from ftbench.runtime.random_weights import random_weights
    from ftbench.runtime.sharding import shard, stage_weights
    from ftbench.runtime.weights import to_device

    spec, tp = config.spec, config.tp
    if ranks is None:
        layers, tp_rank = range(spec.num_layers), 0
    else:
        layers, tp_rank = ranks.stage.layers, ranks.tp_rank
    if config.checkpoint:
        weights = load_hf_weights(config.checkpoint, spec, config.dtype)
        part = stage_weights(shard(weights, spec, tp, tp_rank), spec, layers)
        return part.map(to_device)
    return random_weights(spec, config.dtype, seed=config.seed, tp=tp, xp=cupy, layers=layers)


def _quantised(config: RunConfig, weights, ranks: Ranks | None):
    """(the weights the run measures, the accuracy cost of their 8 bits or None): `weights`
    themselves, or with `config.weights` quantised on the GPU, and on one GPU what that costs
    against them (`runtime.agreement.accuracy_cost`; a rank of a tp x pp run has a shard)."""
    import cupy

    from ftbench.runtime.agreement import accuracy_cost
    from ftbench.runtime.quantize import quantize_weights

    given = weight_format(weights)  # a checkpoint may hold 8-bit weights already
    if given is not None and config.weights not in (None, given):
        raise InvalidInputError(
            f"--checkpoint {config.checkpoint} holds {given} weights; --weights {config.weights} "
            f"cannot quantise them again: leave --weights out or pass --weights {given}"
        )
    if config.weights is None or given is not None:
        return weights, None
    quantised = quantize_weights(weights, config.weights)
    accuracy = None
    if ranks is None:
        accuracy = accuracy_cost(config.spec, weights, quantised, config.activations)
    del weights
    cupy.get_default_memory_pool().free_all_blocks()
    return quantised, None if accuracy is None else accuracy.to_dict()


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
    tuned: TunedChoice,
    point: RunPoint,
    engine: str,
    ranks: Ranks | None,
    ceilings: Ceilings,
):
    """One point through ftbench's runtime: a `Measured`, or (on one GPU) the record of why it
    could not run (too large for memory, or a kernel refusing the shape)."""
    import cupy

    from ftbench.gemm.dispatch import GemmDispatch
    from ftbench.runtime.generate import Generator
    from ftbench.runtime.rank import make_decoder

    gemm = GemmDispatch(tuned.cache, activations=config.activations)
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
    measured = Measured(
        ttft, end_to_end, steps, int(pool.total_bytes()), gemm.stats.to_dict(),
        conditions_dict(conditions), tuple(conditions.flags),
        comm_step_ms_per_rank=communication, micro_batches=micro_batches, comm_calls=calls,
    )  # fmt: skip
    if not config.breakdown:
        return measured
    # after the memory and GEMM counts are taken: the breakdown's graphs are not the run's
    taken_apart = point_breakdown(decoder, generator, prompts, point.output_len, ceilings)
    return replace(measured, breakdown=taken_apart)


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
        conditions_dict(conditions), tuple(conditions.flags), compile_s=compile_s,
    )  # fmt: skip
