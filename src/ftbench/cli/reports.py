"""`ftbench compare`, `report`, `history add|check` and `dashboard`: results judged, rendered
and kept (the logic lives in ftbench.reports)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftbench.cli.options import (
    CompareFormat,
    DbOption,
    ThresholdOption,
    WindowOption,
    force_option,
)
from ftbench.cli.output import console

history_app = typer.Typer(
    name="history", help="The SQLite history of results that feeds the dashboard and CI.",
    no_args_is_help=True,
)  # fmt: skip


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
        CompareFormat,
        typer.Option("--format", help="Output: text, md (Markdown, for PRs) or json."),
    ] = CompareFormat.text,
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
    typer.echo(render(comparison, fmt.value))
    raise typer.Exit(comparison.exit_code)


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
    force: Annotated[bool, force_option("Let --out be a folder that holds other files.")] = False,
) -> None:
    """Write a self-contained HTML page (plots embedded, no network needed) and a Markdown
    summary of result files, with the environment each was measured in."""
    from ftbench.reports.report import write_report

    page, summary = write_report(results, out, force)
    console.print(f"wrote {page} and {summary}")


@history_app.command("add")
def history_add_command(
    results: Annotated[list[Path], typer.Argument(help="Result files with timing samples.")],
    db: DbOption = None,
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
    db: DbOption = None, threshold: ThresholdOption = "3%", window: WindowOption = 5
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
    db: DbOption = None,
    threshold: ThresholdOption = "3%",
    window: WindowOption = 5,
    force: Annotated[bool, force_option("Let --out be a folder that holds other files.")] = False,
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
