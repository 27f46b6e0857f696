"""The `ftbench` command tree: every command and group, in the order `ftbench --help` lists
them. Each command lives in the module of its topic; this file only names them."""

from __future__ import annotations

from typing import Annotated

import typer

from ftbench.cli import cache, convert, env, profiles, reports, run, serve, tune
from ftbench.cli.output import console

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


app.command("env")(env.env_command)
app.add_typer(profiles.app)
app.command("tune")(tune.tune_command)
app.add_typer(cache.app)
app.command("compare")(reports.compare_command)
app.command("report")(reports.report_command)
app.add_typer(reports.history_app)
app.command("dashboard")(reports.dashboard_command)
app.command("build-cutlass")(tune.build_cutlass_command)
app.command("convert")(convert.convert_command)
app.command("run")(run.run_command)
app.command("serve-bench")(serve.serve_bench_command)
