"""The `ftbench` command line: parse options, call the library, print with rich. No logic here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ftbench.errors import FtbenchError

app = typer.Typer(
    name="ftbench",
    help="GPU inference performance toolkit for transformer models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
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
        Path | None, typer.Option("--out", help="Also write the JSON record to this file.")
    ] = None,
) -> None:
    """Show the GPUs, driver, CUDA libraries, clocks, power and throttle state.

    Without a GPU it shows the software side and says that no GPU was found (exit code 0).
    """
    from ftbench.bench.environment import capture_environment
    from ftbench.files import write_json_atomic
    from ftbench.reports.console import print_environment

    record = capture_environment()
    if out is not None:
        write_json_atomic(out, record.to_dict())
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
    """Parse a comma-separated list such as "1,8,32" given to `option`."""
    from ftbench.errors import InvalidInputError

    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise InvalidInputError(
            f"{option} takes comma-separated positive integers (e.g. 1,8,32), got {text!r}"
        )
    return tuple(int(part) for part in parts)


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
        int, typer.Option("--beam", help="Beam width; generation GEMMs have batch x beam rows.")
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

    from ftbench.autotune.problem import datasheet_peaks
    from ftbench.profiles.catalog import load_profile
    from ftbench.profiles.spec import Workload
    from ftbench.profiles.summary import problem_summary

    workload = Workload(
        batch_sizes=_int_list(batch, "--batch"),
        input_lens=_int_list(input_len, "--input-len"),
        output_lens=_int_list(output_len, "--output-len"),
        dtype=dtype,
        tp=tp,
        pp=pp,
        beam_width=beam,
    )
    peaks = datasheet_peaks(gpu)
    spec = load_profile(profile)
    summary = problem_summary(spec, workload, peaks, fused=not unfused)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    rank = summary["rank"]
    table = Table(
        title=f"{spec.name} ({spec.parameter_count() / 1e9:.2f}B parameters), "
        f"tp={tp} pp={pp}, {dtype}, bound on {peaks.name} ({peaks.source})",
        caption=f"per rank: {rank['q_heads']} query heads, {rank['kv_heads']} KV heads "
        f"(x{rank['kv_replicas']} replicated), FFN {rank['ffn_hidden_size']}, LM head "
        f"{rank['lm_head_rows']} rows, {rank['layers_per_stage']} layers per stage. "
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


def main() -> None:
    """Console-script entry point: FtbenchError becomes one line on stderr and exit code 2."""
    try:
        app()
    except FtbenchError as exc:
        error_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        error_console.print("[yellow]interrupted[/]")
        sys.exit(130)
