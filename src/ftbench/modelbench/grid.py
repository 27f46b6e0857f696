"""What `ftbench run` measures: grid points, the run's configuration (checked before any GPU
is touched), the micro-batches of a point, and the batches `--max-throughput` tries."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ftbench.dtypes import EIGHT_BIT_DTYPES, RUNTIME_DTYPES
from ftbench.errors import InvalidInputError
from ftbench.modelbench.runs import ENGINES, PEER_ENGINES
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.memory import footprint


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
    breakdown: bool = False  # ftbench's points: a decode step and prefill taken apart
    # ftbench's engines: the layers' linears quantised to 8 bits ("int8", "fp8") at load
    weights: str | None = None
    # "fp8" (with fp8 weights): GEMMs of more than 16 tokens read E4M3 activations (W8A8)
    activations: str | None = None

    def __post_init__(self) -> None:
        unknown = [engine for engine in self.engines if engine not in ENGINES]
        if unknown:
            raise InvalidInputError(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")
        if self.dtype not in RUNTIME_DTYPES:
            raise InvalidInputError(f"ftbench run measures fp16 or bf16, not {self.dtype!r}")
        if self.weights is not None and self.weights not in EIGHT_BIT_DTYPES:
            raise InvalidInputError(
                f"--weights must be {' or '.join(EIGHT_BIT_DTYPES)}, not {self.weights!r}"
            )
        if self.activations is not None and (self.activations, self.weights) != ("fp8", "fp8"):
            raise InvalidInputError(
                f"fp8 activations need fp8 weights (--dtype fp8 sets both), got activations "
                f"{self.activations!r} with weights {self.weights!r}"
            )
        peers = [engine for engine in self.engines if engine in PEER_ENGINES]
        if self.weights is not None and peers:
            raise InvalidInputError(
                f"--weights {self.weights} quantises ftbench's weights; peers {peers} would run "
                "other weights: compare them in a run of their own"
            )
        if self.repeats < 1:
            raise InvalidInputError(f"--repeats must be at least 1, got {self.repeats}")
        if self.checkpoint is not None and not Path(self.checkpoint).is_dir():
            raise InvalidInputError(
                f"--checkpoint {self.checkpoint}: no such folder (a local HF safetensors directory)"
            )
        if self.tuned_cache is not None and not Path(self.tuned_cache).is_file():
            raise InvalidInputError(f"--tuned {self.tuned_cache}: no such file")
        if self.tuned_cache is not None:
            from ftbench.gemm.cache import load_cache

            load_cache(self.tuned_cache)  # corrupt, or not a cache: said before any GPU work
        rank_shapes(self.spec, self.tp, self.pp)  # a tp or pp the model cannot split: an error
        if self.tp * self.pp > 1 and peers:
            raise InvalidInputError(f"peers {peers} run on one GPU; compare them at tp=pp=1")
        if self.tp * self.pp > 1 and self.breakdown:
            raise InvalidInputError(
                "--breakdown takes steps apart on one GPU; with --tp/--pp every record has "
                "each rank's communication time per step"
            )
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


def max_batch(
    spec: ModelSpec, input_len: int, output_len: int, dtype: str, free: int,
    weights: str | None = None,
) -> int:  # fmt: skip
    """The largest batch whose KV cache and buffers fit in `free` bytes next to the weights
    (8-bit `weights`: theirs)."""
    from ftbench.runtime.memory import largest_fitting

    def fits(batch: int) -> bool:
        length, tokens = input_len + output_len, batch * input_len
        need = footprint(spec, batch, length, dtype, max_tokens=tokens, weights=weights)
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


def throughput_points(
    spec: ModelSpec, dtype: str, input_lens, output_lens, micro_batches: int | None = None,
    weights: str | None = None,
) -> tuple[RunPoint, ...]:  # fmt: skip
    """`--max-throughput`'s points: per length pair, the batches of `throughput_batches` up to
    the largest that fits in this GPU's free memory (from `micro_batches` up: a batch needs a
    sequence per micro-batch; 8-bit `weights` leave more of it to the KV cache)."""
    free = free_memory_for_runs()
    return tuple(
        RunPoint(batch, input_len, output_len)
        for input_len in input_lens
        for output_len in output_lens
        for batch in throughput_batches(
            max_batch(spec, input_len, output_len, dtype, free, weights)
        )
        if micro_batches is None or batch >= micro_batches
    )
