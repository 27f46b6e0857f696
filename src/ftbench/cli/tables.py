"""Tables more than one command prints: tuned GEMMs (`tune`, `cache show`) and run records
(`run`, `serve-bench`)."""

from __future__ import annotations

from rich import box
from rich.table import Table

from ftbench.cli.output import number_cell, print_table


def print_tuned(cache, problems, gpu_name: str) -> None:
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
            roofline = f"{peaks.floor_s(problem) / seconds:.0%} {peaks.bound(problem)}"
        table.add_row(
            problem.key(),
            f"{entry.default_time.median_ms * 1e3:.1f}",
            f"{entry.winner.backend}: {entry.winner.name}",
            f"{entry.winner_time.median_ms * 1e3:.1f}",
            f"{entry.speedup:.2f}x",
            roofline,
        )
    print_table(table)


def print_run_table(table, columns: dict[str, str] | None = None) -> None:
    """`ftbench run`'s records, one row per engine and point (`modelbench.tables.run_table`),
    or serve-bench's (`serving_table`, its `SERVING_COLUMNS`)."""
    from ftbench.modelbench.tables import RUN_COLUMNS

    rich_table = Table(box=box.SIMPLE_HEAD)
    for header in (columns or RUN_COLUMNS).values():
        rich_table.add_column(header)
    for row in table.itertuples(index=False):
        rich_table.add_row(*(number_cell(value) for value in row))
    print_table(rich_table)
