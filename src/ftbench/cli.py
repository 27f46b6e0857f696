"""The `ftbench` command line: parse options, call the library, print with rich. No logic here."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.modelbench.runs import COMPARE_NAMES
from ftbench.profiles.spec import MAX_SIZE  # a batch or a length above it is a typo
from ftbench.runtime.parallel import DEFAULT_TIMEOUT_S
from ftbench.runtime.sharded import STORED_DTYPES

ALLREDUCE_METHODS = ("nccl", "one-shot")
L2_MODES = ("cold", "hot")
MAX_AGE_DAYS = 36500  # a century: any older cache entry is older than CUDA
EXIT_CODES = (
    "Exit codes: 0: success; 1: a command's own verdict (`compare`, `history check`: a "
    "significant regression; `cache validate`: tuned elsewhere); 2: bad input, or a failure "
    "ftbench explains; 3: an internal error (a bug; FTBENCH_DEBUG=1 shows its traceback); 130: "
    "interrupted."
)

app = typer.Typer(
    name="ftbench",
    help="GPU inference performance toolkit for transformer models.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console(soft_wrap=True)
error_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from ftbench import __version__

        console.print(f"ftbench {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """GPU inference performance toolkit for transformer models.

    Tunes every GEMM a transformer issues, runs a CuPy transformer runtime, benchmarks models
    against peers and reports regressions. `ftbench COMMAND --help` explains each command.
    """


@app.command("env")
def env_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full environment record as JSON.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also write the JSON record to this file. It replaces an earlier environment "
            "record; any other file only with --force.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Let --out replace a file of another kind.")
    ] = False,
) -> None:
    """Show the GPUs, driver, CUDA libraries, clocks, power and throttle state.

    Without a GPU it shows the software side and says that no GPU was found (exit code 0).
    """
    from ftbench.bench.environment import capture_environment, write_environment
    from ftbench.reports.console import print_environment

    record = capture_environment()
    if out is not None:
        write_environment(out, record, force)
    if as_json:
        console.print_json(json.dumps(record.to_dict()))
    else:
        print_environment(console, record)


profiles_app = typer.Typer(
    name="profiles",
    help="Model profiles and every GEMM problem they issue.",
    no_args_is_help=True,
)
app.add_typer(profiles_app)


def _int_list(text: str, option: str) -> tuple[int, ...]:
    """Parse a comma-separated list such as "1,8,32" given to `option`: distinct positive
    integers in ASCII digits, none above MAX_SIZE."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() and int(part) > 0 for part in parts):
        raise InvalidInputError(
            f"{option} takes comma-separated positive integers (e.g. 1,8,32), got {text!r}"
        )
    values = [int(part) for part in parts]
    for value in values:
        if value > MAX_SIZE:
            raise InvalidInputError(f"{option}: {value} is above {MAX_SIZE} (2**31)")
    _check_unique(values, option)
    return tuple(values)


PROFILE_HELP = "Built-in profile name (see `ftbench profiles list`); this or --config is required."
CONFIG_HELP = (
    "A local HF config.json (or the folder holding it) or a profile .toml, instead of --profile."
)


def _spec(profile: str | None, config: Path | None):
    """The model of --profile NAME (a built-in profile) or --config PATH (a file or its folder),
    exactly one of them."""
    from ftbench.profiles.catalog import builtin_names, load_builtin, load_profile

    if (profile is None) == (config is None):
        raise InvalidInputError("give exactly one of --profile NAME or --config PATH")
    if profile is not None and profile not in builtin_names() and _looks_like_a_path(profile):
        raise InvalidInputError(
            f"--profile takes a built-in profile name, not a file: use --config {profile}"
        )
    if profile is not None:
        return load_builtin(profile)
    if not config.exists():
        raise InvalidInputError(
            f"cannot read config file {config}: no such file or folder "
            "(built-in profiles are given with --profile NAME)"
        )
    return load_profile(config)


def _looks_like_a_path(text: str) -> bool:
    return Path(text).suffix in (".json", ".toml") or "/" in text or Path(text).exists()


def _warn(message: str | None) -> None:
    """A warning, if any, as one line on stderr (results on stdout stay clean)."""
    if message is not None:
        error_console.print(
            f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True
        )


def _workload(
    batch: str, input_len: str, output_len: str, dtype: str, tp: int, pp: int = 1, beam: int = 1
):
    """A `Workload` from the comma-list options shared by `profiles show`, `tune` and `run`."""
    from ftbench.profiles.spec import DTYPES, Workload

    for option, value in (("--tp", tp), ("--pp", pp), ("--beam", beam)):
        if value < 1:
            raise InvalidInputError(f"{option} must be at least 1, got {value}")
    if dtype not in DTYPES:
        raise InvalidInputError(f"--dtype must be {' or '.join(DTYPES)}, got {dtype!r}")
    return Workload(
        batch_sizes=_int_list(batch, "--batch"),
        input_lens=_int_list(input_len, "--input-len"),
        output_lens=_int_list(output_len, "--output-len"),
        dtype=dtype,
        tp=tp,
        pp=pp,
        beam_width=beam,
    )


def _print_table(table: object) -> None:
    """Print a table at least as wide as its content, so numbers are never cut to ellipses.

    Rich squeezes tables to the terminal width (80 columns when output is piped).
    """
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(1000), table).maximum
    target = console if natural <= console.width else Console(width=natural)
    target.print(table)


@profiles_app.command("list")
def profiles_list_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the profiles as a JSON list.")
    ] = False,
) -> None:
    """List the built-in model profiles with their size and shape numbers."""
    from rich import box
    from rich.table import Table

    from ftbench.profiles.catalog import builtin_profiles
    from ftbench.profiles.summary import profile_row

    rows = [profile_row(spec) for spec in builtin_profiles()]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="Built-in model profiles", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("name")
    table.add_column("family")
    for header in ("params (B)", "layers", "hidden", "heads/kv", "ffn", "vocab"):
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            row["name"],
            row["family"],
            f"{row['parameters'] / 1e9:.3f}",
            row["layers"],
            str(row["hidden_size"]),
            f"{row['num_heads']}/{row['num_kv_heads']}",
            str(row["ffn_hidden_size"]),
            str(row["vocab_size"]),
        )
    _print_table(table)


@profiles_app.command("show")
def profiles_show_command(
    profile: Annotated[
        str,
        typer.Argument(
            help="A built-in profile name (see `ftbench profiles list`), a profile .toml, "
            "or a local HF config.json (or the folder holding it)."
        ),
    ],
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel size; shapes are per rank.")] = 1,
    pp: Annotated[
        int, typer.Option("--pp", help="Pipeline-parallel size; counts are per stage.")
    ] = 1,
    batch: Annotated[
        str, typer.Option("--batch", help="Batch sizes, comma-separated (e.g. 1,8,32).")
    ] = "1",
    input_len: Annotated[
        str, typer.Option("--input-len", help="Input (prompt) lengths, comma-separated.")
    ] = "128",
    output_len: Annotated[
        str,
        typer.Option(
            "--output-len",
            help="Output lengths, comma-separated; with only 1, decoders have no generation step.",
        ),
    ] = "128",
    beam: Annotated[
        int,
        typer.Option(
            "--beam",
            help="Beam width: show the shapes a beam-search runtime would issue (generation "
            "GEMMs of batch x beam rows). ftbench's runtime has no beam search yet.",
        ),
    ] = 1,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Activation and weight dtype: fp16 or bf16.")
    ] = "fp16",
    unfused: Annotated[
        bool,
        typer.Option(
            "--unfused", help="List Q, K, V and gate, up as separate GEMMs instead of fused ones."
        ),
    ] = False,
    gpu: Annotated[
        str,
        typer.Option("--gpu", help="Datasheet peaks for the bound column: h100, h200 or a100."),
    ] = "h100",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the problems and their numbers as JSON.")
    ] = False,
) -> None:
    """Show every GEMM a model issues for a workload: shapes, counts, FLOPs, bytes, bound."""
    from rich import box
    from rich.table import Table

    from ftbench.gemm.problem import datasheet_peaks
    from ftbench.profiles.catalog import load_profile
    from ftbench.profiles.problems import positions_warning
    from ftbench.profiles.summary import problem_summary

    workload = _workload(batch, input_len, output_len, dtype, tp, pp, beam)
    peaks = datasheet_peaks(gpu)
    spec = load_profile(profile)
    _warn(positions_warning(spec, workload.input_lens, workload.output_lens))
    summary = problem_summary(spec, workload, peaks, fused=not unfused)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    rank = summary["rank"]
    table = Table(
        title=f"{spec.name} ({spec.parameter_count() / 1e9:.2f}B parameters), "
        f"tp={tp} pp={pp}, {dtype}, bound on {peaks.name} ({peaks.source})",
        caption=f"per rank: {rank['q_heads']} query heads, {rank['kv_heads']} KV heads "
        f"(x{rank['kv_replicas']} replicated), FFN {rank['ffn_hidden_size']}, embedding and LM "
        f"head {rank['lm_head_rows']} rows, {rank['layers_per_stage']} layers per stage. "
        "ctx = context phase, gen = generation step, * = inside fused attention, "
        "calls = per step, GFLOP and MB = per call.",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    table.add_column("phase")
    table.add_column("roles", overflow="fold", min_width=12)
    for header in ("m", "n", "k", "batch", "calls", "GFLOP", "MB"):
        table.add_column(header, justify="right")
    table.add_column("bound")
    short_phase = {"context": "ctx", "generation": "gen"}
    for row in summary["problems"]:
        problem = row["problem"]
        roles = dict.fromkeys(role.split(":")[1] for role in row["roles"])
        table.add_row(
            "+".join(short_phase[phase] for phase in row["phases"]),
            ", ".join(roles) + ("*" if row["fused_into_attention"] else ""),
            str(problem["m"]),
            str(problem["n"]),
            str(problem["k"]),
            str(problem["batch_count"]),
            str(row["count"]),
            f"{row['flops'] / 1e9:.3f}",
            f"{row['bytes'] / 1e6:.2f}",
            row["bound"],
        )
    _print_table(table)


BACKENDS_HELP = "Backends to sweep, comma-separated: cublas, cublaslt, cutlass, ftbench."


@app.command("tune")
def tune_command(
    profile: Annotated[str | None, typer.Option("--profile", help=PROFILE_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Activation and weight dtype of the GEMMs: fp16 or bf16.")
    ] = "fp16",
    tp: Annotated[
        int, typer.Option("--tp", help="Tensor-parallel size: tune per-rank shapes.")
    ] = 1,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1",
    input_len: Annotated[
        str, typer.Option("--input-len", help="Input lengths, comma-separated (context GEMMs).")
    ] = "128",
    output_len: Annotated[
        str, typer.Option("--output-len", help="Output lengths; 1 means no generation GEMMs.")
    ] = "128",
    backends: Annotated[str, typer.Option("--backends", help=BACKENDS_HELP)] = (
        "cublas,cublaslt,cutlass,ftbench"
    ),
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="Time budget for the whole sweep, e.g. 900s, 15m, 1h (default: none, every "
            "candidate is timed). It is shared out evenly over the problems left to tune; when "
            "a problem's share runs out, its candidates not yet timed are skipped (recorded as "
            "such) and the best of those timed so far, always including the cuBLAS default, "
            "wins. Every problem gets an entry; the confirming re-timings can overrun the "
            "budget a little.",
        ),
    ] = None,
    l2: Annotated[
        str, typer.Option("--l2", help="L2 cache during timing: cold (default) or hot.")
    ] = "cold",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Tuned cache to write or resume (default: $FTBENCH_CACHE_DIR/tuned/GPU-NAME.json "
            "(e.g. tuned/nvidia-h200.json), the file the runtime reads). A file that is not a "
            "tuned cache of this GPU and libraries is never replaced without --force.",
        ),
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option(
            "--results",
            help="Every candidate's timing (default: OUT.results.json); it replaces an earlier "
            "tune results file, any other file only with --force.",
        ),
    ] = None,
    attention: Annotated[
        bool, typer.Option("--attention-gemms", help="Also tune the batched attention GEMMs.")
    ] = False,
    unfused: Annotated[
        bool, typer.Option("--unfused", help="Tune separate Q/K/V and gate/up GEMMs.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Start --out over where it is a cache tuned on another GPU or library set, a "
            "corrupt cache or another file; let --results replace a file of another kind.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List problems and candidate counts; no GPU needed.")
    ] = False,
) -> None:
    """Sweep every GEMM of a model over cuBLAS, cuBLASLt, CUTLASS and ftbench's own kernels.

    Each candidate is verified against an fp32 reference, then timed (cold L2 by default); a
    candidate replaces the cuBLAS default only when faster beyond the noise. The cache is saved
    after every problem: an interrupted sweep resumes where it stopped when run again. Shapes are
    per tensor-parallel rank; every pipeline stage runs the same shapes, so one cache serves any
    `run --pp`.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ftbench.autotune.plan import candidate_counts, tuning_problems
    from ftbench.autotune.sweep import check_sweep_outputs, run_sweep
    from ftbench.gemm.cache import default_cache_path
    from ftbench.profiles.problems import positions_warning

    spec = _spec(profile, config)
    workload = _workload(batch, input_len, output_len, dtype, tp)
    _warn(positions_warning(spec, workload.input_lens, workload.output_lens))
    options = _sweep_options(backends, budget, l2)
    names = list(options.backends)
    counted = tuning_problems(spec, workload, fused=not unfused, attention=attention)
    if dry_run:
        table = Table(title=f"{spec.name}: {len(counted)} problems to tune", box=box.SIMPLE_HEAD)
        for header in ("problem", "calls/step", "roles", *names):
            table.add_column(header)
        reasons: dict[str, str] = {}
        for item in counted:
            counts = candidate_counts(item.problem, names, reasons)
            roles = ", ".join(dict.fromkeys(role.split(":")[1] for role in item.roles))
            cells = ["n/a" if count is None else str(count) for count in counts.values()]
            table.add_row(item.problem.key(), str(item.count), roles, *cells)
        _print_table(table)
        for name, reason in reasons.items():
            console.print(f"{name}: n/a here: {reason}")
        return
    from ftbench.bench.environment import capture_environment

    if out is not None:  # the default --out is named after the GPU
        check_sweep_outputs(out, results, force)
    environment = capture_environment()
    if not environment.gpus:
        raise InvalidInputError(f"tuning needs a GPU: {environment.no_gpu_reason}")
    out = out or default_cache_path(environment.gpus[0].name)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        if "cutlass" in names:
            _prebuild_cutlass(progress, dtype)
        report = run_sweep(
            [item.problem for item in counted], out, options, results_path=results,
            force=force, progress=progress,
        )  # fmt: skip
    for name, reason in report.unavailable_backends.items():
        console.print(f"[yellow]backend {name} skipped:[/] {reason}")
    _print_tuned(report.cache, [item.problem for item in counted], environment.gpus[0].name)
    console.print(
        f"tuned {report.tuned} problems, resumed {report.resumed}; cache: {out}; "
        f"every candidate: {report.results_path}"
    )


def _sweep_options(backends: str, budget: str | None, l2: str):
    """The `SweepOptions` of `tune --backends --budget --l2`, checked (for --dry-run too)."""
    from ftbench.autotune.plan import parse_duration
    from ftbench.autotune.sweep import SweepOptions
    from ftbench.gemm.backends import get_backend
    from ftbench.gemm.candidate import BACKEND_NAMES

    names = _names(backends)
    if not names:
        raise InvalidInputError(f"--backends: name at least one of {', '.join(BACKEND_NAMES)}")
    for name in names:
        get_backend(name)  # an unknown name is an error listing the known ones
    _check_unique(names, "--backends")
    if l2 not in L2_MODES:
        raise InvalidInputError(f"--l2 must be {' or '.join(L2_MODES)}, got {l2!r}")
    budget_s = None if budget is None else parse_duration(budget)
    if budget_s is not None and budget_s <= 0:
        raise InvalidInputError(f"--budget must be more than zero, got {budget!r}")
    return SweepOptions(backends=tuple(names), l2=l2, budget_s=budget_s)


def _check_unique(values: list, option: str) -> None:
    """Refuse a list given to `option` that names a value twice."""
    for value in values:
        if values.count(value) > 1:
            raise InvalidInputError(f"{option} lists {value} twice")


def _prebuild_cutlass(progress, dtype: str) -> None:
    """Compile (or find cached) this GPU's CUTLASS kernels for `dtype` before any timing."""
    from ftbench.gemm.backends.cutlass import prebuild

    try:
        built = prebuild(progress=progress, elements=(dtype,))
    except FtbenchError as exc:
        console.print(f"[yellow]CUTLASS kernels not built:[/] {exc}")
        return
    failed = [name for name, result in built.items() if result.error is not None]
    if failed:
        console.print(
            f"[yellow]{len(failed)} CUTLASS kernels failed to compile[/] (logs beside them)"
        )


def _print_tuned(cache, problems, gpu_name: str) -> None:
    """Per problem: default, winner, speed-up and the fraction of its datasheet roofline."""
    from ftbench.autotune.plan import peaks_for_gpu

    peaks = peaks_for_gpu(gpu_name)
    table = Table(
        title="Tuned GEMMs"
        + ("" if peaks is None else f" (roofline: {peaks.name}, {peaks.source})"),
        box=box.SIMPLE_HEAD,
    )
    for header in ("problem", "default us", "winner", "winner us", "speed-up", "roofline"):
        table.add_column(header, justify="left" if header in ("problem", "winner") else "right")
    for problem in problems:
        entry = cache.entries.get(problem.key())
        if entry is None:
            continue
        seconds = entry.winner_time.median_ms / 1e3
        roofline = "n/a"
        if peaks is not None:
            floor = max(problem.flops() / peaks.dense_fp16_flops_per_s,
                        problem.bytes() / peaks.hbm_bytes_per_s)  # fmt: skip
            roofline = f"{floor / seconds:.0%} {peaks.bound(problem)}"
        table.add_row(
            problem.key(),
            f"{entry.default_time.median_ms * 1e3:.1f}",
            f"{entry.winner.backend}: {entry.winner.name}",
            f"{entry.winner_time.median_ms * 1e3:.1f}",
            f"{entry.speedup:.2f}x",
            roofline,
        )
    _print_table(table)


cache_app = typer.Typer(name="cache", help="Inspect and maintain tuned-config caches.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(cache_app)


@cache_app.command("show")
def cache_show_command(
    path: Annotated[Path, typer.Argument(help="A tuned cache file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the file's content as JSON.")] = (
        False
    ),
) -> None:
    """Show a cache's header and every tuned problem."""
    from ftbench.gemm.cache import load_cache

    cache = load_cache(path)
    if as_json:
        console.print_json(json.dumps(cache.to_dict()))
        return
    header = cache.header
    console.print(
        f"{path}: {len(cache.entries)} problems, tuned on {header.gpu_name} (sm "
        f"{header.compute_capability}), driver {header.driver}, CUDA {header.cuda_runtime}, "
        f"cuBLAS {header.cublas}, cuBLASLt {header.cublaslt}, CUTLASS {header.cutlass}, "
        f"ftbench {header.ftbench}, created {header.created_utc}"
    )
    _print_tuned(cache, [entry.problem for entry in cache.entries.values()], header.gpu_name)


@cache_app.command("validate")
def cache_validate_command(
    path: Annotated[Path, typer.Argument(help="A tuned cache file.")],
) -> None:
    """Check a cache file; on a GPU machine also check it matches this GPU and its libraries.

    Exit code 0: valid (and matching); 1: valid but tuned elsewhere; 2: not a valid cache.
    """
    from ftbench.bench.environment import capture_environment
    from ftbench.gemm.cache import CacheHeader, load_cache

    cache = load_cache(path)
    environment = capture_environment()
    if not environment.gpus:
        console.print(f"{path}: valid, {len(cache.entries)} problems (no GPU here to match)")
        return
    problems = cache.header.mismatches(CacheHeader.from_environment(environment))
    if problems:
        console.print(f"{path}: valid but tuned elsewhere: {'; '.join(problems)}")
        raise typer.Exit(1)
    console.print(f"{path}: valid, {len(cache.entries)} problems, matches this GPU")


@cache_app.command("merge")
def cache_merge_command(
    out: Annotated[Path, typer.Argument(help="The merged cache to write.")],
    inputs: Annotated[list[Path], typer.Argument(help="Caches of the same GPU and libraries.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUT if it exists and is not one of INPUTS.")
    ] = False,
) -> None:
    """Merge caches tuned on the same GPU and libraries; per problem the faster winner wins.

    OUT may be one of the INPUTS (merged into); any other existing file is replaced only with
    --force.
    """
    from ftbench.files import check_file_target
    from ftbench.gemm.cache import load_cache, merge_caches

    check_file_target(out, "a merged cache", force, inputs=inputs)
    merged = merge_caches({str(path): load_cache(path) for path in inputs})
    merged.save(out)
    console.print(f"{out}: {len(merged.entries)} problems from {len(inputs)} caches")


@cache_app.command("prune")
def cache_prune_command(
    path: Annotated[Path, typer.Argument(help="A tuned cache file (rewritten in place).")],
    min_speedup: Annotated[
        float,
        typer.Option(
            "--min-speedup",
            help="Drop entries whose speed-up is below this ratio: the cuBLAS default's time "
            "over the winner's (1.05 keeps winners at least 5% faster; default 0: keep all). "
            "A ratio above every entry's speed-up is refused: it would empty the cache.",
        ),
    ] = 0.0,
    older_than_days: Annotated[
        float | None,
        typer.Option(
            "--older-than-days",
            help=f"Drop entries measured more than this many days ago (0 to {MAX_AGE_DAYS}).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the result here instead of in place; an existing file only with --force.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Let --out replace an existing file.")
    ] = False,
) -> None:
    """Drop entries that no longer pay (speed-up below a threshold) or are too old."""
    from datetime import datetime, timedelta, timezone

    from ftbench.files import check_file_target
    from ftbench.gemm.cache import check_min_speedup, load_cache, prune_cache

    target = out or path
    check_file_target(target, "a pruned cache", force, inputs=[path])
    if older_than_days is not None and not 0 <= older_than_days <= MAX_AGE_DAYS:
        raise InvalidInputError(
            f"--older-than-days takes a number of days from 0 to {MAX_AGE_DAYS}, "
            f"got {older_than_days}"
        )
    cache = load_cache(path)
    check_min_speedup(cache, min_speedup)
    cutoff = None
    if older_than_days is not None:
        cutoff = datetime.now(timezone.utc) - timedelta(days=older_than_days)

    def drop(entry) -> bool:
        too_old = cutoff is not None and datetime.fromisoformat(entry.measured_utc) < cutoff
        return entry.speedup < min_speedup or too_old

    pruned, dropped = prune_cache(cache, drop)
    pruned.save(target)
    console.print(f"{target}: dropped {dropped}, kept {len(pruned.entries)}")


# --- reports: compare, report, history, dashboard (logic in ftbench.reports) ---


@app.command("compare")
def compare_command(
    baseline: Annotated[Path, typer.Argument(help="Result file of the baseline (e.g. main).")],
    current: Annotated[Path, typer.Argument(help="Result file to judge, of the same kind.")],
    threshold: Annotated[
        str,
        typer.Option(
            "--threshold",
            help="Smallest change that counts, as 3% or 0.03. A metric is slower when its 95% "
            "interval lies above zero and its change exceeds this (with fewer than 5 samples a "
            "side: when its sample range lies above this).",
        ),
    ] = "3%",
    fmt: Annotated[
        str, typer.Option("--format", help="Output: text, md (Markdown, for PRs) or json.")
    ] = "text",
    allow_env_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-env-mismatch",
            help="Compare even if the GPU, driver or library versions differ (listed in output).",
        ),
    ] = False,
) -> None:
    """Compare two result files metric by metric, with intervals and verdicts.

    Verdicts: faster, slower, unchanged (the interval lies within the threshold), too noisy to
    tell (the interval straddles it). A file against itself is unchanged. With 5 or more samples
    a side the interval is a 95% bootstrap; with fewer (`ftbench run` keeps 3 TTFT samples) it
    is the sample range, and slower needs every current sample above every baseline sample by
    more than the threshold: 2 samples a side can show a clear regression, never a subtle one,
    and 1 a side cannot show the noise. The output names the metrics so limited. Exit code 0:
    nothing slower beyond the threshold; 1: a significant regression; 2: bad input
    (unreadable, wrong kind, other GPU).
    """
    from ftbench.reports.compare import compare_files, parse_threshold, render

    comparison = compare_files(baseline, current, parse_threshold(threshold), allow_env_mismatch)
    typer.echo(render(comparison, fmt))
    raise typer.Exit(comparison.exit_code)


@app.command("report")
def report_command(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="Result files, acceptance summaries or tuned caches (.json, .json.gz), or "
            "folders of them (every such file under a folder)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for report.html and report.md (created): new, empty (but for the "
            "result files and hidden entries) or an earlier report's, which is renewed; a "
            "folder holding anything else only with --force.",
        ),
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Let --out be a folder that holds other files.")
    ] = False,
) -> None:
    """Write a self-contained HTML page (plots embedded, no network needed) and a Markdown
    summary of result files, with the environment each was measured in."""
    from ftbench.reports.report import write_report

    page, summary = write_report(results, out, force)
    console.print(f"wrote {page} and {summary}")


history_app = typer.Typer(
    name="history", help="The SQLite history of results that feeds the dashboard and CI.",
    no_args_is_help=True,
)  # fmt: skip
app.add_typer(history_app)
DB_HELP = "History database (default: $FTBENCH_CACHE_DIR/history.sqlite3, else under XDG cache)."
THRESHOLD_HELP = "Change that marks a regression, as 3% or 0.03 (the rules of `ftbench compare`)."
WINDOW_HELP = (
    "Runs in the baseline window: each run is also judged against the median run of the last N "
    "runs before it (from 2 runs before on), so that small steps that add up are flagged."
)


@history_app.command("add")
def history_add_command(
    results: Annotated[list[Path], typer.Argument(help="Result files with timing samples.")],
    db: Annotated[Path | None, typer.Option("--db", help=DB_HELP)] = None,
    benchmark: Annotated[
        str | None,
        typer.Option(
            "--benchmark",
            help="Name of the benchmark (default: the file's kind); two measurements of one "
            "commit and time need two names.",
        ),
    ] = None,
) -> None:
    """Store result files: one run per series (benchmark, model, dtype, shape, GPU) a file
    holds, keyed by its commit and time (adding a file again: no-op). Tuned caches keep no
    samples: add the tune run's result file."""
    from ftbench.reports.history import add_files, default_history_path

    target = db or default_history_path()
    for path, added in add_files(target, results, benchmark):
        runs, stored = len(added.run_ids), len(added.run_ids) - added.new
        if not added.new:
            state = f"already stored ({runs} run(s), {added.metrics} metrics)"
        else:
            again = f", {stored} already stored" if stored else ""
            state = f"added {added.new} run(s){again} ({added.metrics} metrics)"
        console.print(f"{path}: {state} in {target}", markup=False, highlight=False)


@history_app.command("check")
def history_check_command(
    db: Annotated[Path | None, typer.Option("--db", help=DB_HELP)] = None,
    threshold: Annotated[str, typer.Option("--threshold", help=THRESHOLD_HELP)] = "3%",
    window: Annotated[int, typer.Option("--window", help=WINDOW_HELP)] = 5,
) -> None:
    """Judge the newest run of every series against the run before it and against the median
    of the last runs; one line per series, one per slower metric.

    Exit code 0: no newest run is slower beyond the threshold; 1: one is (a regression, or a
    drift of small steps); 2: bad input (no such history, a bad option).
    """
    from ftbench.reports.compare import parse_threshold
    from ftbench.reports.history import check_newest_runs, default_history_path, render_check

    limit = parse_threshold(threshold)
    checks = check_newest_runs(db or default_history_path(), limit, window)
    typer.echo(render_check(checks, limit, window))
    raise typer.Exit(1 if any(not check.slower.empty for check in checks) else 0)


@app.command("dashboard")
def dashboard_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for the site's index.html: new, empty (but for the history and hidden "
            "entries such as .git) or an earlier dashboard's, which is renewed; a folder "
            "holding anything else only with --force.",
        ),
    ],
    db: Annotated[Path | None, typer.Option("--db", help=DB_HELP)] = None,
    threshold: Annotated[str, typer.Option("--threshold", help=THRESHOLD_HELP)] = "3%",
    window: Annotated[int, typer.Option("--window", help=WINDOW_HELP)] = 5,
    force: Annotated[
        bool, typer.Option("--force", help="Let --out be a folder that holds other files.")
    ] = False,
) -> None:
    """Write a static site from the history: a time series per series (benchmark, model,
    dtype, shape, GPU), regressions against the run before and the window marked, a GPU
    filter."""
    from ftbench.reports.compare import parse_threshold
    from ftbench.reports.dashboard import write_dashboard
    from ftbench.reports.history import default_history_path
    from ftbench.reports.html import check_site_folder

    history = db or default_history_path()
    check_site_folder(out, "index.html", "ftbench dashboard", force, inputs=[history])
    page = write_dashboard(history, out, parse_threshold(threshold), window)
    console.print(f"wrote {page}")


def _choices(values: tuple[str, ...]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    return ", ".join(values[:-1]) + " or " + values[-1]


@app.command("build-cutlass")
def build_cutlass_command(
    arch: Annotated[
        int | None,
        typer.Option(
            "--arch", help="Build for sm90 (Hopper) or sm80 (Ampere, Ada); default: this GPU's."
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Kernel dtypes, comma-separated: fp16, bf16.")
    ] = "fp16,bf16",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Build under OUT/cutlass/ (use it with FTBENCH_CACHE_DIR=OUT) instead of the "
            "cache folder `ftbench tune` reads ($FTBENCH_CACHE_DIR/cutlass).",
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", help="nvcc processes at once (default: one per core).", min=1),
    ] = None,
) -> None:
    """Compile the curated CUTLASS kernels ahead of tuning: nvcc and nvidia-cutlass are needed
    only here, so a machine without the GPU can build for it.

    Kernels already built are kept; one that fails to compile is listed with its log and the
    others still build.
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ftbench.errors import NoGpuError
    from ftbench.files import check_folder_writable
    from ftbench.gemm.backends.cutlass import gpu_build_arch, prebuild
    from ftbench.kernels.cutlass_build import cache_root

    try:
        arch = arch or gpu_build_arch()
    except NoGpuError as exc:
        raise InvalidInputError(
            f"{exc}; to build for a GPU elsewhere give --arch 90 or 80"
        ) from exc
    if arch is None:
        raise InvalidInputError("no CUTLASS kernel set for this GPU; give --arch 90 or 80")
    root = cache_root() if out is None else out / "cutlass"
    check_folder_writable(root)  # kernels already there are its own: kept, not replaced
    start = time.perf_counter()
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        results = prebuild(arch, jobs, progress, tuple(_names(dtype)), root=root)
    table = Table(title="CUTLASS kernels", box=box.SIMPLE_HEAD)
    for header in ("kernel", "status", "compile s", "library MiB"):
        table.add_column(header, justify="left" if header in ("kernel", "status") else "right")
    for name, result in results.items():
        size = "" if result.library is None else f"{result.library.stat().st_size / 2**20:.2f}"
        status = "failed" if result.library is None else "cached" if result.cached else "built"
        table.add_row(name, status, f"{result.compile_s:.1f}", size)
    _print_table(table)
    for name, result in results.items():
        if result.error is not None:
            console.print(f"[red]{name}[/red]: {escape(result.error)}")
    built = sum(result.library is not None for result in results.values())
    console.print(
        f"{built}/{len(results)} kernels in {time.perf_counter() - start:.0f} s under {root}"
    )


@app.command("convert")
def convert_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="A local HF safetensors checkpoint directory (with config.json).")
    ],
    out: Annotated[
        Path,
        typer.Argument(
            help="Directory for the pre-sharded checkpoint (created): new, empty or an earlier "
            "conversion's, which is renewed; a folder holding anything else only with --force; "
            "never the checkpoint or a folder inside it."
        ),
    ],
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel size to shard for.")] = 1,
    dtype: Annotated[
        str, typer.Option("--dtype", help=f"Stored dtype: {_choices(STORED_DTYPES)}.")
    ] = "fp16",
    force: Annotated[
        bool, typer.Option("--force", help="Let OUT be a folder that holds other files.")
    ] = False,
) -> None:
    """Shard an HF checkpoint once for --tp ranks: each rank then reads only its own file.

    Needs the whole checkpoint in host memory once; see docs/runtime/parallel.md.
    """
    from ftbench.profiles.hf import spec_from_hf_config
    from ftbench.runtime.hf_checkpoint import load_hf_weights
    from ftbench.runtime.sharded import check_output, save_sharded

    if dtype not in STORED_DTYPES:
        raise InvalidInputError(f"--dtype must be {_choices(STORED_DTYPES)}, got {dtype!r}")
    spec = spec_from_hf_config(checkpoint / "config.json")
    check_output(checkpoint, out, spec, tp, force)
    weights = load_hf_weights(checkpoint, spec, dtype)
    manifest = save_sharded(weights, spec, tp, out)
    console.print(f"{spec.name}: {tp} rank file(s) and {manifest.name} in {out}")


@app.command("run")
def run_command(
    profile: Annotated[str | None, typer.Option("--profile", help=PROFILE_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weights and activations: fp16 or bf16.")
    ] = ("fp16"),
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1",
    input_len: Annotated[
        str, typer.Option("--input-len", help="Prompt lengths in tokens, comma-separated.")
    ] = "128",
    output_len: Annotated[
        str, typer.Option("--output-len", help="Generated tokens per request (at least 2).")
    ] = "128",
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel size.")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline-parallel size (layer stages).")] = 1,
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
    force: Annotated[
        bool, typer.Option("--force", help="Let --out (and its CSV) replace existing files.")
    ] = False,
    allreduce: Annotated[
        str,
        typer.Option(
            "--allreduce",
            help="With --tp: how the decoder's all-reduces run: nccl, or one-shot (those of up "
            "to 256 KiB through ftbench's one-shot kernel reading the peers' memory over CUDA "
            "IPC, for GPUs of one host with peer access; larger ones through NCCL).",
        ),
    ] = "nccl",
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ftbench.bench.environment import capture_environment
    from ftbench.bench.results import write_results
    from ftbench.gemm.cache import UNTUNED, open_tuned_cache
    from ftbench.modelbench.engine import run_benchmark
    from ftbench.modelbench.grid import (
        RunConfig,
        RunPoint,
        free_memory_for_runs,
        max_batch,
        run_grid,
        throughput_batches,
    )
    from ftbench.modelbench.tables import check_run_outputs
    from ftbench.profiles.problems import positions_warning
    from ftbench.runtime import launch

    spec = _spec(profile, config)
    if tp < 1 or pp < 1:
        raise InvalidInputError(f"--tp and --pp must be at least 1, got {tp} and {pp}")
    unknown = [name for name in _names(compare) if name not in COMPARE_NAMES]
    if unknown:
        raise InvalidInputError(f"--compare: unknown {unknown}; use {', '.join(COMPARE_NAMES)}")
    if tp * pp > 1 and compare:
        raise InvalidInputError("--compare runs peers on one GPU: use it with --tp 1 --pp 1")
    if allreduce not in ALLREDUCE_METHODS:
        raise InvalidInputError(f"--allreduce: {allreduce!r}; use {' or '.join(ALLREDUCE_METHODS)}")
    inputs, outputs = _int_list(input_len, "--input-len"), _int_list(output_len, "--output-len")
    _warn(positions_warning(spec, inputs, outputs))
    # --max-throughput finds its batches on the GPU, from --micro-batches (or 1) up
    batches = [micro_batches or 1] if max_throughput else _int_list(batch, "--batch")
    engines = ("ftbench", *(COMPARE_NAMES[name] for name in _names(compare)))
    # every option checked here, before a rank is started or a GPU looked for
    run = RunConfig(
        spec, dtype, tuple(run_grid(batches, inputs, outputs)), engines,
        None if tuned is None else str(tuned), None if checkpoint is None else str(checkpoint),
        repeats, tp=tp, pp=pp, micro_batches=micro_batches, breakdown=breakdown,
    )  # fmt: skip
    if out is not None:
        check_run_outputs(out, force)
    info = launch.discover()
    if info.launcher == "single" and tp * pp > 1:
        gpus = launch.visible_gpus()
        if tp * pp > gpus:
            raise InvalidInputError(
                f"--tp {tp} --pp {pp} needs {tp * pp} GPUs, one per rank; this machine shows "
                f"{gpus} (for more, launch ranks on several nodes with mpirun or srun)"
            )
        launch.spawn(tp * pp, [sys.executable, "-m", "ftbench", *sys.argv[1:]])
        return
    if info.launcher != "single" and info.world_size != tp * pp:
        raise InvalidInputError(
            f"--tp {tp} --pp {pp} needs {tp * pp} ranks; the {info.launcher} launcher started "
            f"{info.world_size}"
        )
    environment = capture_environment()
    if not environment.gpus:
        raise InvalidInputError(f"ftbench run needs a GPU: {environment.no_gpu_reason}")
    choice = open_tuned_cache(run.tuned_cache, environment) if "ftbench" in engines else UNTUNED
    if "ftbench" in engines:
        console.print(
            f"tuned cache: {choice.note}" if choice.cache is None
            else f"tuned cache: {choice.path} ({len(choice.cache.entries)} problems)"
        )  # fmt: skip
    if max_throughput:
        free = free_memory_for_runs()
        points = [
            RunPoint(b, i, o)
            for i in inputs
            for o in outputs
            for b in throughput_batches(max_batch(spec, i, o, dtype, free))
            if micro_batches is None or b >= micro_batches  # a batch needs m sequences
        ]
        run = dataclasses.replace(run, points=tuple(points))
    if out is None:
        stamp = environment.utc_time.replace(":", "").replace("-", "")[:15]
        out = Path(f"ftbench-run-{spec.name}-{stamp}.json")
        check_run_outputs(out, force)
    records: list[dict] = []
    if info.launcher != "single":
        launch.run_rank(
            lambda info, world: _run_as_rank(run, info, world, out, environment, allreduce, choice),
            timeout,
        )
        return
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("measuring", total=len(run.points) * len(engines))

        def on_point(engine, point) -> None:
            progress.update(task, description=f"{engine} b={point.batch} "
                            f"{point.input_len}/{point.output_len}")  # fmt: skip

        def on_record(record) -> None:
            records.append(record)
            write_results(out, "run", records, environment)
            progress.advance(task)

        run_benchmark(run, on_record, on_point, tuned=choice)
    _finish_run(records, out)


def _run_as_rank(run, info, world, out: Path, environment, allreduce: str, tuned) -> None:
    """One rank of a tp x pp `ftbench run`: join the stage's groups, measure; rank 0 writes."""
    from ftbench.bench.results import write_results
    from ftbench.modelbench.engine import Ranks, run_benchmark
    from ftbench.runtime.ipc import IpcCommunicator
    from ftbench.runtime.launch import connect_groups
    from ftbench.runtime.pipeline import Stage, rank_place, stage_plan

    tensor, pipeline = connect_groups(info, world, run.tp, run.pp, world.timeout_s)
    groups = [comm for comm in (tensor, pipeline) if comm is not None and comm is not world]
    one_shot = None
    try:
        if allreduce == "one-shot" and tensor is not None:
            one_shot = IpcCommunicator(tensor)
        index, tp_rank = rank_place(info.rank, run.tp, run.pp)
        stage = Stage(index, run.pp, stage_plan(run.spec, run.pp)[index], pipeline)
        ranks = Ranks(info.rank, world, one_shot or tensor, stage, tp_rank)
        records: list[dict] = []

        def on_record(record) -> None:
            if info.rank == 0:
                records.append({**record, "allreduce": allreduce})
                write_results(out, "run", records, environment)
                console.print(f"measured {len(records)} point(s)")

        run_benchmark(run, on_record, ranks=ranks, tuned=tuned)
    except BaseException:
        for comm in (one_shot, *groups):
            if comm is not None:
                comm.abort()
        raise
    if one_shot is not None:
        one_shot.close_ipc()
    for comm in groups:
        comm.close()
    if info.rank == 0:
        _finish_run(records, out)


def _finish_run(records: list[dict], out: Path) -> None:
    from ftbench.files import write_text_atomic
    from ftbench.modelbench.tables import run_table

    table = run_table(records)
    write_text_atomic(out.with_suffix(".csv"), table.to_csv(index=False))
    _print_run_table(table)
    console.print(f"results: {out} (and {out.with_suffix('.csv')})")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _print_run_table(table) -> None:
    from ftbench.modelbench.tables import RUN_COLUMNS

    rich_table = Table(box=box.SIMPLE_HEAD)
    for header in RUN_COLUMNS.values():
        rich_table.add_column(header)
    for row in table.itertuples(index=False):
        cells = []
        for value in row:
            if value is None or value != value:  # None or NaN
                cells.append("-")
            elif isinstance(value, float):
                cells.append(f"{value:.3g}" if value < 100 else f"{value:,.0f}")
            else:
                cells.append(str(value))
        rich_table.add_row(*cells)
    _print_table(rich_table)


def main() -> None:
    """Console-script entry point: FtbenchError, and a command line click cannot parse (an
    unknown option, a value of the wrong type, a missing argument), become one line on stderr
    and exit code 2; any other exception is a bug: one line naming it and exit code 3
    (FTBENCH_DEBUG=1 re-raises it, for the traceback)."""
    try:  # typer 0.2x carries its own copy of click, whose exceptions it raises
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors

    try:
        code = app(standalone_mode=False)  # click's errors come here, not to its own printer
    except FtbenchError as exc:
        _print_error(str(exc))
        sys.exit(2)
    except click_errors.NoArgsIsHelpError as exc:  # `ftbench cache`: the group's help
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "ftbench"
        _print_error(f"{exc.format_message().rstrip('.')} (see `{where} --help`)")
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        _print_error(exc.format_message())
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except Exception as exc:
        if os.environ.get("FTBENCH_DEBUG") == "1":
            raise
        error_console.print(
            f"ftbench: internal error: {type(exc).__name__}: {exc} "
            "(set FTBENCH_DEBUG=1 for the traceback)",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
        sys.exit(3)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        error_console.print("[yellow]interrupted[/]")
    sys.exit(code if isinstance(code, int) else 0)


def _print_error(message: str) -> None:
    error_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
