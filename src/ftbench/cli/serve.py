"""`ftbench serve-bench`: a request stream served by in-flight batching over a paged KV cache and
by static batches, at one or more request rates (`modelbench.serving_bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from ftbench.cli.options import (
    ConfigOption,
    ProfileOption,
    RuntimeDType,
    force_option,
    model_spec,
)
from ftbench.cli.output import PROGRESS_COLUMNS, console, warn
from ftbench.cli.tables import print_run_table
from ftbench.errors import InvalidInputError

LENGTHS = (
    "fixed:N (or N), uniform:LOW,HIGH (both included) or normal:MEAN,STD (trtllm-bench's "
    "token-norm-dist: ceil of a normal sample, at least 1)"
)


def serve_bench_command(
    profile: ProfileOption = None,
    config: ConfigOption = None,
    dtype: Annotated[
        RuntimeDType, typer.Option("--dtype", help="Activation and weight dtype of the model.")
    ] = RuntimeDType.fp16,
    requests: Annotated[
        int, typer.Option("--requests", help="Requests in the stream (at every rate).")
    ] = 1000,
    input_len: Annotated[
        str | None,
        typer.Option(
            "--input-len", help=f"Prompt lengths in tokens: {LENGTHS}. Default: 128 each."
        ),
    ] = None,
    output_len: Annotated[
        str | None,
        typer.Option(
            "--output-len",
            help=f"Output lengths in tokens: {LENGTHS}. Default: 128 each, or with --dataset "
            "the file's own outputs.",
        ),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset",
            help="A local ShareGPT-format JSON file (no download): each conversation whose "
            "first turn is human and second gpt gives a prompt and an output, their tokens "
            "estimated as ceil(characters / 4); drawn in a seeded order, each once before any "
            "repeats. Instead of --input-len; --output-len replaces its outputs.",
        ),
    ] = None,
    rate: Annotated[
        str,
        typer.Option(
            "--rate",
            help="Request rates (requests/s), comma-separated, each a stream of its own: inf "
            "(every request at once) or a number (e.g. inf,4,8,16).",
        ),
    ] = "inf",
    burstiness: Annotated[
        float,
        typer.Option(
            "--burstiness",
            help="Shape of the gamma distribution of the gaps between arrivals at a finite "
            "rate (vllm bench serve's): 1 is a Poisson process, below 1 burstier, above more "
            "regular, inf evenly spaced.",
        ),
    ] = 1.0,
    max_concurrency: Annotated[
        int,
        typer.Option(
            "--max-concurrency",
            help="Most requests served at once: in-flight batching runs at most this many "
            "sequences a step, the static baseline batches of this many; later arrivals queue "
            "(their TTFT counts the wait). The records' batch.",
        ),
    ] = 64,
    block_size: Annotated[
        int, typer.Option("--block-size", help="Tokens per block of the paged KV cache.")
    ] = 16,
    max_num_tokens: Annotated[
        int,
        typer.Option(
            "--max-num-tokens",
            help="In-flight batching's token budget per step: decodes first, then prefill "
            "chunks up to it (a longer prompt is prefilled over several steps); at least "
            "--max-concurrency.",
        ),
    ] = 2048,
    slo: Annotated[
        str | None,
        typer.Option(
            "--slo",
            help="Latency targets for goodput, the requests/s that meet every one, e.g. "
            "ttft:200ms,tpot:50ms (metrics ttft, tpot, e2e; units ms or s).",
        ),
    ] = None,
    stop_token: Annotated[
        int | None,
        typer.Option(
            "--stop-token",
            help="A token id that ends a request's output where it is sampled, so its drawn "
            "length is a maximum. Without it, every request generates exactly its drawn "
            "output length (stop tokens ignored, as --ignore-eos in vllm bench serve).",
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="Seed of the lengths, arrivals and prompts: the same seed serves the same "
            "requests at every rate and to both engines.",
        ),
    ] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Results file, JSON (run records), with a CSV table beside it (default: "
            "ftbench-serve-MODEL-TIME.json in the current folder). An existing file is never "
            "replaced without --force.",
        ),
    ] = None,
    force: Annotated[bool, force_option("Let --out (and its CSV) replace existing files.")] = (
        False
    ),
) -> None:
    """Serve a stream of requests: TTFT, TPOT, ITL and end-to-end latency, throughput, goodput.

    The stream (`--requests` of `--input-len`/`--output-len` tokens, or from a ShareGPT
    `--dataset`) arrives at each `--rate`; in-flight batching over a paged KV cache serves it
    (chunked prefill beside decodes under `--max-num-tokens`, preemption by recomputation when
    blocks run out), then static batches of `--max-concurrency` serve the same requests, as the
    baseline. Every token is timed; each engine and rate is one run record (p50/p90/p99 of each
    latency, request and token throughput, goodput under `--slo`), written as it is done, so
    Ctrl-C keeps what finished. `ftbench report` plots latency against throughput over the
    rates. Needs the GPU engines (`docs/serving.md`).
    """
    from ftbench.bench.environment import capture_environment
    from ftbench.bench.results import write_results
    from ftbench.modelbench.serving_bench import (
        ServingConfig,
        longest_request,
        open_gpu_engines,
        parse_rates,
        run_serving_benchmark,
        stream_lengths,
    )
    from ftbench.modelbench.serving_metrics import parse_slo
    from ftbench.modelbench.tables import (
        SERVING_COLUMNS,
        check_run_outputs,
        serving_table,
        write_run_table,
    )
    from ftbench.profiles.problems import positions_warning

    spec = model_spec(profile, config)
    prompts, outputs = stream_lengths(input_len, output_len, dataset)
    # every option checked here, the stream's lengths drawn, before a GPU is looked for
    serving = ServingConfig(
        spec, dtype.value, requests, prompts, outputs, rates=parse_rates(rate),
        burstiness=burstiness, max_concurrency=max_concurrency, max_num_tokens=max_num_tokens,
        block_size=block_size, stop_token=stop_token,
        slo=None if slo is None else parse_slo(slo), seed=seed,
    )  # fmt: skip
    longest = longest_request(serving.lengths)
    warn(positions_warning(spec, [longest.prompt_len], [longest.output_len]))
    if dataset is not None:
        warn(f"--dataset {dataset}: token counts estimated as ceil(characters / 4)")
    if out is not None:
        check_run_outputs(out, force)
    environment = capture_environment()
    if not environment.gpus:
        raise InvalidInputError(f"ftbench serve-bench needs a GPU: {environment.no_gpu_reason}")
    engines = open_gpu_engines(serving)
    if out is None:
        stamp = environment.utc_time.replace(":", "").replace("-", "")[:15]
        out = Path(f"ftbench-serve-{spec.name}-{stamp}.json")
        check_run_outputs(out, force)
    records: list[dict] = []
    with Progress(*PROGRESS_COLUMNS, console=console) as progress:
        task = progress.add_task("serving", total=2 * len(serving.rates))

        def on_record(record: dict) -> None:
            records.append(record)
            write_results(out, "run", records, environment)
            progress.advance(task)

        run_serving_benchmark(
            serving, engines, on_record,
            lambda engine, arrivals: progress.update(task, description=f"{engine} {arrivals.name}"),
        )  # fmt: skip
    print_run_table(write_run_table(records, out, serving_table), SERVING_COLUMNS)
    console.print(f"results: {out} (and {out.with_suffix('.csv')})")
