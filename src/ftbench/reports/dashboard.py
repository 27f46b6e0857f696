"""`ftbench dashboard`: a static site (one self-contained index.html) from the history.

One section per benchmark and GPU: every metric's median over the runs, relative to its first
run, with each run judged against the run before it on the same GPU by the rules of
`ftbench compare` (slower runs marked red, faster green); the runs and the regressions as
tables. A selector filters the sections by GPU (inline script; the page needs no network).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pandas as pd

from ftbench.bench.environment import EnvironmentRecord
from ftbench.errors import InvalidInputError
from ftbench.files import positive_numbers, write_text_atomic
from ftbench.reports import plots
from ftbench.reports.compare import (
    DEFAULT_THRESHOLD,
    FASTER,
    SLOWER,
    environment_mismatches,
    judge,
)
from ftbench.reports.history import metrics_table, open_history, runs_table
from ftbench.reports.html import figure_html, page, table_html

FILTER_SCRIPT = """<script>
function filterGpu(choice) {
  document.querySelectorAll("section.series").forEach(function (section) {
    section.style.display = choice === "" || section.dataset.gpu === choice ? "" : "none";
  });
}
</script>"""


def judged_points(metrics: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The metrics of one benchmark on one GPU, runs in time order, each judged against the
    same metric in the run before: columns run (0..), label, name, median_ms, relative,
    verdict ("" for a first value), change, ci_low, ci_high."""
    order = metrics.drop_duplicates("run_id").sort_values(["utc_time", "run_id"])
    position = {run_id: index for index, run_id in enumerate(order["run_id"])}
    points = []
    for name, rows in metrics.groupby("name", sort=False):
        rows = rows.assign(run=rows["run_id"].map(position)).sort_values("run")
        first = rows["median_ms"].iloc[0]
        previous = None
        for row in rows.itertuples():
            point = {
                "run": row.run, "name": name, "median_ms": row.median_ms,
                "relative": row.median_ms / first, "verdict": "", "change": None,
                "ci_low": None, "ci_high": None,
                "label": f"{row.git_commit[:8]} {row.utc_time[5:16].replace('T', ' ')}",
            }  # fmt: skip
            if previous is not None:
                change = judge(name, previous, row.samples_ms, threshold)
                point.update(verdict=change.verdict, change=change.change,
                             ci_low=change.ci_low, ci_high=change.ci_high)  # fmt: skip
            previous = row.samples_ms
            points.append(point)
    return pd.DataFrame(points).sort_values(["run", "name"], kind="stable")


def _environment_changes(environments: pd.Series) -> list[str]:
    """Per run (in order), what changed in its environment since the run before (`ftbench
    compare` refuses such pairs; the dashboard judges them, so it says so)."""
    records = [EnvironmentRecord.from_dict(json.loads(text)) for text in environments]
    pairs = zip(records, records[1:], strict=False)
    changes = [environment_mismatches(was, now) for was, now in pairs]
    return ["", *("; ".join(change) for change in changes)]


def _series_section(benchmark: str, gpu: str, runs: pd.DataFrame, points: pd.DataFrame) -> str:
    title = f"{benchmark} on {gpu}"
    figure = plots.history_lines(points, title)
    slower = points[points["verdict"] == SLOWER]
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
    if not slower.empty:
        labels = points.drop_duplicates("run").set_index("run")["label"]
        regressions = pd.DataFrame(
            {
                "run": slower["run"].map(labels).to_numpy(),
                "metric": slower["name"].to_numpy(),
                "change": slower["change"].map("{:+.2%}".format).to_numpy(),
                "95% interval": [
                    f"[{low:+.2%}, {high:+.2%}]"
                    for low, high in zip(slower["ci_low"], slower["ci_high"], strict=True)
                ],
            }
        )
        parts += ['<h3 class="slower">Regressions</h3>', table_html(regressions)]
    parts.append("</section>")
    return "\n".join(parts)


def build_dashboard(runs: pd.DataFrame, metrics: pd.DataFrame, threshold: float) -> str:
    """The dashboard page of the history's runs and metrics (`history.runs_table`,
    `history.metrics_table`)."""
    gpus = sorted(runs["gpu"].unique())
    options = "".join(
        f'<option value="{html.escape(gpu, quote=True)}">{html.escape(gpu)}</option>'
        for gpu in gpus
    )
    sections = [
        f"<p>{len(runs)} runs of {runs['benchmark'].nunique()} benchmarks on {len(gpus)} GPU "
        f"kind(s). Each run is judged against the run before it on the same GPU: slower or "
        f"faster when the 95% bootstrap interval of the change excludes zero and the change "
        f"exceeds {threshold:.1%} (the rules of <code>ftbench compare</code>).</p>",
        '<p><label for="gpu">GPU: </label><select id="gpu" onchange="filterGpu(this.value)">'
        f'<option value="">all</option>{options}</select></p>',
    ]
    for (benchmark, gpu), group in runs.groupby(["benchmark", "gpu"], sort=True):
        selected = metrics[(metrics["benchmark"] == benchmark) & (metrics["gpu"] == gpu)]
        if selected.empty:
            continue
        points = judged_points(selected, threshold)
        sections.append(_series_section(benchmark, gpu, group, points))
    return page("ftbench dashboard", sections, head=FILTER_SCRIPT)


def write_dashboard(
    db: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
) -> Path:
    """Write OUT/index.html from the history at `db`."""
    with open_history(db, create=False) as connection:
        runs, metrics = runs_table(connection), metrics_table(connection)
    if runs.empty:
        raise InvalidInputError(
            f"{db}: the history holds no runs yet (add some with `ftbench history add`)"
        )
    for row in metrics.itertuples():  # `history add` checks them; older versions did not
        positive_numbers(row.samples_ms, f"{db}: run {row.run_id} {row.name}: samples_ms")
    return write_text_atomic(
        Path(out_dir) / "index.html", build_dashboard(runs, metrics, threshold)
    )
