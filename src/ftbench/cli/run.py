"""`ftbench run`: text generation measured over a grid of batches and lengths, with peers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from ftbench.cli.options import (
    Allreduce,
    BatchOption,
    ConfigOption,
    DTypeOption,
    EightBitWeights,
    InputLenOption,
    OutputLenOption,
    PpOption,
    ProfileOption,
    RunDType,
    TpOption,
    force_option,
    int_list,
    model_spec,
    names,
)
from ftbench.cli.output import PROGRESS_COLUMNS, console, warn
from ftbench.cli.tables import print_run_table
from ftbench.errors import InvalidInputError
from ftbench.modelbench.runs import COMPARE_NAMES
from ftbench.runtime.parallel import DEFAULT_TIMEOUT_S


def run_command(
    profile: ProfileOption = None,
    config: ConfigOption = None,
    dtype: DTypeOption = RunDType.fp16,
    batch: BatchOption = "1",
    input_len: InputLenOption = "128",
    output_len: OutputLenOption = "128",
    tp: TpOption = 1,
    pp: PpOption = 1,
    micro_batches: Annotated[
        int | None,
        typer.Option(
            "--micro-batches",
            help="Micro-batches each step's batch is cut into, so that pipeline stages work at "
            "once (default 1: each micro-batch reads its stage's weights again, which a "
            "weight-bound decode step pays for; at most the smallest batch; --max-throughput "
            "skips smaller batches).",
        ),
    ] = None,
    tuned: Annotated[
        Path | None,
        typer.Option(
            "--tuned",
            help="Tuned-config cache the GEMMs come from (default: the cache `ftbench tune` "
            "writes for this GPU, if there is one). Misses run the cuBLAS default.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="A local HF safetensors directory (default: random)."),
    ] = None,
    weights: Annotated[
        EightBitWeights | None,
        typer.Option(
            "--weights",
            help="Quantise the transformer layers' linear weights to int8 or fp8 (E4M3) at load, "
            "one fp32 scale per output channel (absmax), on the GPU; embeddings, norms and LM "
            "head stay --dtype. Decode GEMMs (up to 16 tokens) read the 8-bit codes, longer "
            "steps multiply by dequantised weights. Every record adds the accuracy cost: logit "
            "error and top-1 agreement against the unquantised weights (fp8 needs sm_89+). "
            "Peers run their own weights: compare them in another run.",
        ),
    ] = None,
    compare: Annotated[
        str,
        typer.Option(
            "--compare",
            help="Peers measured in the same run, comma-separated: untuned (ftbench with "
            "library-default GEMMs), hf (transformers eager generate), hf-compile (static cache "
            "+ torch.compile), gpt-fast (plain torch decoder on the same weights, static cache, "
            "decode step compiled into one CUDA graph; compile seconds recorded).",
        ),
    ] = "",
    max_throughput: Annotated[
        bool,
        typer.Option(
            "--max-throughput",
            help="Ignore --batch: per length pair, try powers of two up to the largest batch "
            "that fits and report the best output tokens/s.",
        ),
    ] = False,
    repeats: Annotated[
        int,
        typer.Option(
            "--repeats",
            help="Timed requests per point, after two warm-ups (each gives one TTFT and one "
            "end-to-end sample and output-len - 1 decode-step samples; `ftbench compare` "
            "judges a metric of fewer than 5 samples a side only when they do not overlap).",
        ),
    ] = 3,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Results file, JSON, with a CSV table beside it (default: "
            "ftbench-run-MODEL-TIME.json in the current folder). An existing file is never "
            "replaced without --force.",
        ),
    ] = None,
    force: Annotated[bool, force_option("Let --out (and its CSV) replace existing files.")] = (
        False
    ),
    allreduce: Annotated[
        Allreduce,
        typer.Option(
            "--allreduce",
            help="With --tp: how the decoder's all-reduces run: nccl, or one-shot (those of up "
            "to 256 KiB through ftbench's one-shot kernel reading the peers' memory over CUDA "
            "IPC, for GPUs of one host with peer access; larger ones through NCCL).",
        ),
    ] = Allreduce.nccl,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            help="With --tp/--pp: seconds a rank waits at a collective or a step before it "
            "decides a peer has died or hangs, aborts and stops with a message.",
            min=1.0,
        ),
    ] = DEFAULT_TIMEOUT_S,
    breakdown: Annotated[
        bool,
        typer.Option(
            "--breakdown",
            help="Also take one decode step (at the average decode length) and the prefill of "
            "every ftbench point apart, operation by operation, into its record (one GPU; "
            "`ftbench report` shows where each step's time goes).",
        ),
    ] = False,
) -> None:
    """Measure text generation: time to first token, per-token latency, throughput, memory.

    Every grid point (batch x input length x output length) runs two warm-up requests and then
    `--repeats` timed ones with random prompts, generating exactly `--output-len` tokens. Results
    are written after every point, so Ctrl-C keeps what finished; a point that does not fit in
    memory is recorded as such and the sweep goes on.

    With `--tp N --pp M` (N x M > 1) it starts one process per local GPU (or, under mpirun or
    srun, runs as the rank the launcher made); every rank measures, rank 0 writes the results,
    which add each rank's communication time per decode step. One rank's failure stops all.
    `--micro-batches m` cuts every step's batch into m micro-batches that follow each other
    through the stages (GPipe; pipeline bubble (pp - 1) / (m + pp - 1)).
    """
    import dataclasses

    from ftbench.bench.environment import capture_environment
    from ftbench.bench.results import write_results
    from ftbench.gemm.cache import open_tuned_cache
    from ftbench.modelbench.distributed import launch_mode, run_as_rank
    from ftbench.modelbench.engine import run_benchmark
    from ftbench.modelbench.grid import RunConfig, run_grid, throughput_points
    from ftbench.modelbench.tables import check_run_outputs
    from ftbench.profiles.problems import positions_warning
    from ftbench.runtime import launch

    spec = model_spec(profile, config)
    peers = names(compare, "--compare", tuple(COMPARE_NAMES))
    if tp * pp > 1 and peers:
        raise InvalidInputError("--compare runs peers on one GPU: use it with --tp 1 --pp 1")
    inputs, outputs = int_list(input_len, "--input-len"), int_list(output_len, "--output-len")
    warn(positions_warning(spec, inputs, outputs))
    # --max-throughput finds its batches on the GPU, from --micro-batches (or 1) up
    batches = [micro_batches or 1] if max_throughput else int_list(batch, "--batch")
    engines = ("ftbench", *(COMPARE_NAMES[name] for name in peers))
    # every option checked here, before a rank is started or a GPU looked for
    runtime_dtype, activations, weight_format = dtype.value, None, weights and weights.value
    if dtype.value == "fp8":
        if weight_format not in (None, "fp8"):
            raise InvalidInputError(
                f"--dtype fp8 runs fp8 weights; --weights {weight_format} is another format: "
                "leave --weights out, or use --dtype fp16 --weights int8 (weight-only)"
            )
        runtime_dtype, activations, weight_format = "fp16", "fp8", "fp8"
    run = RunConfig(
        spec, runtime_dtype, tuple(run_grid(batches, inputs, outputs)), engines,
        None if tuned is None else str(tuned), None if checkpoint is None else str(checkpoint),
        repeats, tp=tp, pp=pp, micro_batches=micro_batches, breakdown=breakdown,
        weights=weight_format, activations=activations,
    )  # fmt: skip
    if out is not None:
        check_run_outputs(out, force)
    info = launch.discover()
    mode = launch_mode(run, info)
    if mode == "spawn":
        launch.spawn(tp * pp, [sys.executable, "-m", "ftbench", *sys.argv[1:]])
        return
    environment = capture_environment()
    if not environment.gpus:
        raise InvalidInputError(f"ftbench run needs a GPU: {environment.no_gpu_reason}")
    choice = open_tuned_cache(run.tuned_cache, environment)
    console.print(
        f"tuned cache: {choice.note}" if choice.cache is None
        else f"tuned cache: {choice.path} ({len(choice.cache.entries)} problems)"
    )  # fmt: skip
    if max_throughput:
        points = throughput_points(spec, run.dtype, inputs, outputs, micro_batches, run.weights)
        run = dataclasses.replace(run, points=points)
    if out is None:
        stamp = environment.utc_time.replace(":", "").replace("-", "")[:15]
        out = Path(f"ftbench-run-{spec.name}-{stamp}.json")
        check_run_outputs(out, force)
    records: list[dict] = []

    def keep(record: dict) -> None:
        records.append(record)
        write_results(out, "run", records, environment)

    if mode == "rank":

        def on_rank_record(record: dict) -> None:
            keep(record)
            console.print(f"measured {len(records)} point(s)")

        if launch.run_rank(
            lambda info, world: run_as_rank(
                run, info, world, on_rank_record, allreduce.value, choice
            ),  # fmt: skip
            timeout,
        ):
            _finish_run(records, out)
        return
    with Progress(*PROGRESS_COLUMNS, console=console) as progress:
        task = progress.add_task("measuring", total=len(run.points) * len(engines))

        def on_point(engine, point) -> None:
            progress.update(task, description=f"{engine} b={point.batch} "
                            f"{point.input_len}/{point.output_len}")  # fmt: skip

        def on_record(record) -> None:
            keep(record)
            progress.advance(task)

        run_benchmark(run, on_record, on_point, tuned=choice)
    _finish_run(records, out)


def _finish_run(records: list[dict], out: Path) -> None:
    """The CSV table beside the results, and the table on the console."""
    from ftbench.modelbench.tables import write_run_table

    print_run_table(write_run_table(records, out))
    console.print(f"results: {out} (and {out.with_suffix('.csv')})")
