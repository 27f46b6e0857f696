"""`ftbench dashboard`: a static site (one self-contained index.html) from the history.

One section per series (benchmark, model, dtype, shape and GPU: `history`): every metric's
median over the runs, relative to its first run, with each run judged against the run before it
and against the median run of the last runs (`history.judged_series`, the rules of `ftbench
compare`; slower runs marked red, faster green); the runs and the regressions as tables. A
selector filters the sections by GPU (inline script; the page needs no network).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pandas as pd

from ftbench.bench.environment import EnvironmentRecord
from ftbench.files import write_text_atomic
from ftbench.reports import plots
from ftbench.reports.compare import DEFAULT_THRESHOLD, FASTER, SLOWER, environment_mismatches
from ftbench.reports.history import (
    DEFAULT_WINDOW,
    MIN_WINDOW_RUNS,
    check_window,
    judged_series,
    metric_label,
    read_history,
    series_groups,
    window_basis,
)
from ftbench.reports.html import figure_html, page, table_html

FILTER_SCRIPT = """<script>
function filterGpu(choice) {
  document.querySelectorAll("section.series").forEach(function (section) {
    section.style.display = choice === "" || section.dataset.gpu === choice ? "" : "none";
  });
}
</script>"""


def _environment_changes(environments: pd.Series) -> list[str]:
    """Per run (in order), what changed in its environment since the run before (`ftbench
    compare` refuses such pairs; the dashboard judges them, so it says so)."""
    records = [EnvironmentRecord.from_dict(json.loads(text)) for text in environments]
    pairs = zip(records, records[1:], strict=False)
    changes = [environment_mismatches(was, now) for was, now in pairs]
    return ["", *("; ".join(change) for change in changes)]


def _regressions(points: pd.DataFrame) -> pd.DataFrame:
    """One row per slower judgement: the run, the metric, what it was judged against, the
    change and its interval."""
    labels = points.drop_duplicates("run").set_index("run")["label"]
    rows = []
    for point in points.to_dict("records"):
        bases = {"previous": "the run before", "window": window_basis(point)}
        rows += [
            {
                "run": labels[point["run"]], "metric": point["name"], "against": basis,
                "change": f"{point[f'{p}_change']:+.2%}",
                "interval": f"[{point[f'{p}_ci_low']:+.2%}, {point[f'{p}_ci_high']:+.2%}] "
                f"({point[f'{p}_interval']})",
            }
            for p, basis in bases.items()
            if point[f"{p}_verdict"] == SLOWER
        ]  # fmt: skip
    return pd.DataFrame(rows)


def _series_section(title: str, gpu: str, runs: pd.DataFrame, points: pd.DataFrame) -> str:
    figure = plots.history_lines(points, title)
    counts = points.groupby("run")["verdict"].agg(
        slower=lambda v: int((v == SLOWER).sum()), faster=lambda v: int((v == FASTER).sum())
    )
    run_rows = runs.sort_values(["utc_time", "id"]).reset_index(drop=True)
    run_table = pd.DataFrame(
        {
            "time (UTC)": run_rows["utc_time"],
            "commit": run_rows["git_commit"].str[:12],
            "metrics": run_rows["metrics"],
            "slower": counts["slower"].reindex(range(len(run_rows)), fill_value=0).to_numpy(),
            "faster": counts["faster"].reindex(range(len(run_rows)), fill_value=0).to_numpy(),
            "source": run_rows["source"],
            "environment change": _environment_changes(run_rows["environment"]),
        }
    )
    parts = [
        f'<section class="series" data-gpu="{html.escape(gpu, quote=True)}">',
        f"<h2>{html.escape(title)}</h2>",
        figure_html(figure, f"{title}: time series"),
        "<h3>Runs</h3>",
        table_html(run_table),
    ]
    regressions = _regressions(points)
    if not regressions.empty:
        parts += ['<h3 class="slower">Regressions</h3>', table_html(regressions)]
    parts.append("</section>")
    return "\n".join(parts)


def build_dashboard(
    runs: pd.DataFrame, metrics: pd.DataFrame, threshold: float, window: int = DEFAULT_WINDOW
) -> str:
    """The dashboard page of the history's runs and metrics (`history.read_history`)."""
    gpus = sorted(runs["gpu"].unique())
    options = "".join(
        f'<option value="{html.escape(gpu, quote=True)}">{html.escape(gpu)}</option>'
        for gpu in gpus
    )
    groups = list(series_groups(runs, metrics))
    sections = [
        f"<p>{len(runs)} runs of {len(groups)} series ({runs['benchmark'].nunique()} "
        f"benchmark(s); a series is one benchmark, model, dtype and shape on one GPU kind) on "
        f"{len(gpus)} GPU kind(s). Each run is judged against the run before it and, with "
        f"{MIN_WINDOW_RUNS} or more runs before it, against the median run of the last "
        f"{window} (or fewer) runs, so that a drift of small steps shows; slower and faster "
        f"follow the rules of <code>ftbench compare</code> at a threshold of "
        f"{threshold:.1%}.</p>",
        '<p><label for="gpu">GPU: </label><select id="gpu" onchange="filterGpu(this.value)">'
        f'<option value="">all</option>{options}</select></p>',
    ]
    for (benchmark, series, gpu), group, selected in groups:
        points = judged_series(selected, threshold, window)
        points["name"] = [metric_label(name, series) for name in points["name"]]
        sections.append(_series_section(f"{benchmark}: {series} on {gpu}", gpu, group, points))
    return page("ftbench dashboard", sections, head=FILTER_SCRIPT)


def write_dashboard(
    db: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
) -> Path:
    """Write OUT/index.html from the history at `db`."""
    check_window(window)
    runs, metrics = read_history(db)
    return write_text_atomic(
        Path(out_dir) / "index.html", build_dashboard(runs, metrics, threshold, window)
    )
