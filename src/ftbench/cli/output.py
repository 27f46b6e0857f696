"""Where the command line prints: results on stdout, warnings and errors as one line on stderr,
tables never cut to ellipses."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

console = Console(soft_wrap=True)
error_console = Console(stderr=True)
# The progress bar of long commands (tune, build-cutlass, run): what, bar, done/total, time.
PROGRESS_COLUMNS = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn())  # fmt: skip


def print_table(table: object) -> None:
    """Print a table at least as wide as its content, so numbers are never cut to ellipses.

    Rich squeezes tables to the terminal width (80 columns when output is piped).
    """
    natural = Measurement.get(console, console.options.update_width(1000), table).maximum
    target = console if natural <= console.width else Console(width=natural)
    target.print(table)


def warn(message: str | None) -> None:
    """A warning, if any, as one line on stderr (results on stdout stay clean)."""
    if message is not None:
        error_console.print(
            f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True
        )


def print_error(message: str) -> None:
    """An error as the one line `error: ...` on stderr."""
    error_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def number_cell(value: object) -> str:
    """A table cell: "-" for None or NaN, 3 significant digits below 100, thousands above."""
    if value is None or value != value:  # None or NaN
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:,.0f}"
    return str(value)
