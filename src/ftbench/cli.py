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
