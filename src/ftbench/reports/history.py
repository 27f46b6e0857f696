"""The history of results: runs and their metrics in one SQLite file, and their verdicts.

A series is what one benchmark measures of one model, dtype and shape on one GPU
(`records.metrics_by_series`); a run is one result file's measurement of one series, keyed by
(benchmark, series, git commit, time, GPU). A file of six models or twenty shapes is as many
runs, each in its own series. Metrics are stored with every sample, so any two runs can be
compared later with the statistics of `ftbench compare`. Every write is one transaction: a
writer interrupted at any point (an exception, Ctrl-C, a killed process) leaves the database as
it was before that write. The default file is <ftbench cache dir>/history.sqlite3
($FTBENCH_CACHE_DIR or $XDG_CACHE_HOME/ftbench).

Each run of a series is judged per metric twice (`judged_series`), by the rules of `ftbench
compare`: against the run before, and against a baseline window, the median run of up to
`window` runs before it (the run whose median is their median; of an even count the slower of
the two middle ones; from the third run on), as asv's step detection and PyTorch's HUD judge
against the median of recent runs: steps each below the threshold add up against the window, so
a sustained drift is flagged.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ftbench.errors import InvalidInputError
from ftbench.files import default_cache_dir, positive_numbers
from ftbench.reports.compare import FASTER, SLOWER, VERDICTS, MetricChange, judge
from ftbench.reports.records import TUNED_CACHE, ResultSet, load_result_set, metrics_by_series

SCHEMA_VERSION = 2  # 1: one run per file, keyed without its series
BUSY_TIMEOUT_S = 30.0  # another writer holds the lock: wait this long before giving up
DEFAULT_WINDOW = 5  # runs in the baseline window
MIN_WINDOW_RUNS = 2  # with one run before, the window is the run before: judged already
_TABLES = (
    """CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    benchmark TEXT NOT NULL,
    series TEXT NOT NULL,
    kind TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    utc_time TEXT NOT NULL,
    gpu TEXT NOT NULL,
    source TEXT NOT NULL,
    environment TEXT NOT NULL,
    added_utc TEXT NOT NULL,
    UNIQUE (benchmark, series, git_commit, utc_time, gpu)
)""",
    """CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    median_ms REAL NOT NULL,
    samples_ms TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
)""",
)
# (benchmark, series, git commit, utc time, GPU)
RunKey = tuple[str, str, str, str, str]
Found = dict[str, tuple[float, ...]]  # a series' metrics: name -> samples (ms)


def default_history_path() -> Path:
    return default_cache_dir() / "history.sqlite3"


def check_window(window: int) -> int:
    """`window` if it is a usable number of runs for the baseline window."""
    if window < MIN_WINDOW_RUNS:
        raise InvalidInputError(
            f"--window must be at least {MIN_WINDOW_RUNS} runs (the run before is judged "
            f"anyway), got {window}"
        )
    return window


@contextlib.contextmanager
def open_history(path: str | os.PathLike[str], create: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection to the history at `path` (created when missing and `create`), closed after.
    A database that cannot be created, read or written (a read-only folder or file, a lock held
    past BUSY_TIMEOUT_S, a full disk) is an InvalidInputError naming it."""
    target = Path(path)
    if not target.exists() and not create:
        raise InvalidInputError(
            f"{target}: no such history database (add runs with `ftbench history add`)"
        )
    cannot = f"cannot create or open the history database {target}"
    blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InvalidInputError(f"{cannot}: {blocker} is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(target, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except (OSError, sqlite3.Error) as exc:
        raise InvalidInputError(f"{cannot}: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        _prepare(connection, target)
        yield connection
    except sqlite3.OperationalError as exc:
        raise InvalidInputError(f"{target}: cannot use the history database ({exc})") from exc
    finally:
        connection.close()


def _prepare(connection: sqlite3.Connection, path: Path) -> None:
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        with transaction(connection):
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if version == 0 and tables:
                raise InvalidInputError(f"{path}: an SQLite file, but not an ftbench history")
            if version == 0:
                for statement in _TABLES:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                version = SCHEMA_VERSION
    except sqlite3.OperationalError:
        raise  # read-only, locked, unopenable: `open_history` says so
    except sqlite3.DatabaseError as exc:
        raise InvalidInputError(f"{path}: not an ftbench history database ({exc})") from exc
    if version == 1:
        raise InvalidInputError(
            f"{path}: a history of schema 1 (ftbench before series), whose runs mix models, "
            f"dtypes and shapes; this ftbench reads schema {SCHEMA_VERSION}: add the result "
            f"files again to a new --db (the files it holds: sqlite3 {path} 'SELECT source FROM "
            "runs')"
        )
    if version != SCHEMA_VERSION:
        raise InvalidInputError(
            f"{path}: history schema {version} is not supported (this ftbench reads "
            f"schema {SCHEMA_VERSION})"
        )


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; any exception (or interruption) rolls everything back."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


@dataclass(frozen=True)
class Added:
    """What `add_run` did with one file: its runs' ids (one per series), how many of them were
    new (the others were stored already), and its metrics."""

    run_ids: tuple[int, ...]
    new: int
    metrics: int


def add_run(
    connection: sqlite3.Connection, result_set: ResultSet, benchmark: str | None = None
) -> Added:
    """Store one result set as one run per series (benchmark defaults to its kind), in one
    transaction; storing it twice is a no-op. A set without samples (tune-peers, tuned caches)
    is refused."""
    grouped = _storable_series(result_set)
    run_ids, new = [], 0
    with transaction(connection):
        for series, found in grouped.items():
            key = _run_key(result_set, benchmark, series)
            run_id = _stored_run(connection, key, found, result_set.path)
            if run_id is None:
                run_id, new = _insert_run(connection, result_set, key, found), new + 1
            run_ids.append(run_id)
    return Added(tuple(run_ids), new, sum(map(len, grouped.values())))


def _insert_run(
    connection: sqlite3.Connection, result_set: ResultSet, key: RunKey, found: Found
) -> int:
    benchmark, series, *rest = key
    cursor = connection.execute(
        "INSERT INTO runs (benchmark, series, kind, git_commit, utc_time, gpu, source,"
        " environment, added_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            benchmark, series, result_set.kind, *rest, str(result_set.path),
            json.dumps(result_set.environment.to_dict()),
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ),
    )  # fmt: skip
    for metric, samples in found.items():
        _insert_metric(connection, cursor.lastrowid, metric, samples)
    return cursor.lastrowid


def _run_key(result_set: ResultSet, benchmark: str | None, series: str) -> RunKey:
    environment = result_set.environment
    return (benchmark or result_set.kind, series, environment.git_commit, environment.utc_time,
            result_set.gpu)  # fmt: skip


def _same_key_error(path: str, key: RunKey, other: str) -> InvalidInputError:
    benchmark, series, commit, utc_time, gpu = key
    return InvalidInputError(
        f"{path}: {benchmark} {series!r} at commit {commit[:12]}, {utc_time} on {gpu} is "
        f"already {other} with other samples; a run is named by its benchmark, series, commit "
        "and time, so store another measurement of them under another benchmark name "
        "(--benchmark NAME)"
    )


def _stored_run(connection: sqlite3.Connection, key: RunKey, found: Found, path: str) -> int | None:
    """The id of the run stored under `key` (None if none); one stored there with other metrics
    or samples than `found` (another file claiming the same run) is an InvalidInputError."""
    row = connection.execute(
        "SELECT id, source FROM runs WHERE benchmark = ? AND series = ? AND git_commit = ?"
        " AND utc_time = ? AND gpu = ?",
        key,
    ).fetchone()
    if row is None:
        return None
    stored = connection.execute("SELECT name, samples_ms FROM metrics WHERE run_id = ?", row[:1])
    if dict(stored.fetchall()) != {name: json.dumps(list(v)) for name, v in found.items()}:
        raise _same_key_error(path, key, f"stored as run {row[0]} (from {row[1]})")
    return row[0]


def _storable_series(result_set: ResultSet) -> dict[str, Found]:
    if result_set.kind == TUNED_CACHE:
        raise InvalidInputError(
            f"{result_set.path}: a tuned cache keeps each winner's median, not its samples, so "
            "the history cannot judge it; add the tune run's result file instead (`ftbench "
            "tune` writes it beside the cache as NAME.results.json, or to --results)"
        )
    grouped = metrics_by_series(result_set)
    if not grouped:
        raise InvalidInputError(
            f"{result_set.path}: a {result_set.kind} file keeps no timing samples to store"
        )
    return grouped


def add_files(
    db: str | os.PathLike[str], paths: list[str | os.PathLike[str]], benchmark: str | None = None
) -> list[tuple[str, Added]]:
    """Read every file first (a bad one, or one claiming the run of another with other samples,
    stops everything before any write), then store each, one transaction per file."""
    result_sets = [load_result_set(path) for path in paths]
    claimed: dict[RunKey, tuple[str, Found]] = {}
    for result_set in result_sets:
        for series, found in _storable_series(result_set).items():
            key = _run_key(result_set, benchmark, series)
            if key in claimed and claimed[key][1] != found:
                raise _same_key_error(result_set.path, key, f"in {claimed[key][0]}")
            claimed[key] = (result_set.path, found)
    with open_history(db) as connection:
        for key, (path, found) in claimed.items():
            _stored_run(connection, key, found, path)
        return [(rs.path, add_run(connection, rs, benchmark)) for rs in result_sets]


def _insert_metric(connection: sqlite3.Connection, run_id: int, name: str, samples) -> None:
    median = float(np.median(samples))
    connection.execute(
        "INSERT INTO metrics (run_id, name, median_ms, samples_ms) VALUES (?, ?, ?, ?)",
        (run_id, name, median, json.dumps(list(samples))),
    )


def runs_table(connection: sqlite3.Connection) -> pd.DataFrame:
    """Every run: id, benchmark, series, kind, git_commit, utc_time, gpu, source, environment
    (JSON), metrics (count)."""
    return pd.read_sql_query(
        "SELECT r.id, r.benchmark, r.series, r.kind, r.git_commit, r.utc_time, r.gpu, r.source,"
        " r.environment, count(m.name) AS metrics"
        " FROM runs r LEFT JOIN metrics m ON m.run_id = r.id"
        " GROUP BY r.id ORDER BY r.benchmark, r.series, r.gpu, r.utc_time",
        connection,
    )


def metrics_table(connection: sqlite3.Connection) -> pd.DataFrame:
    """Every metric of every run, with the run's key; samples_ms as lists of floats."""
    table = pd.read_sql_query(
        "SELECT r.id AS run_id, r.benchmark, r.series, r.git_commit, r.utc_time, r.gpu, m.name,"
        " m.median_ms, m.samples_ms FROM metrics m JOIN runs r ON r.id = m.run_id"
        " ORDER BY r.benchmark, r.series, r.gpu, r.utc_time, m.rowid",
        connection,
    )
    table["samples_ms"] = table["samples_ms"].map(json.loads)
    return table


def read_history(db: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs and metrics of the history at `db` (`runs_table`, `metrics_table`); an empty
    history, or samples that are not finite positive numbers, is an InvalidInputError."""
    with open_history(db, create=False) as connection:
        runs, metrics = runs_table(connection), metrics_table(connection)
    if runs.empty:
        raise InvalidInputError(
            f"{db}: the history holds no runs yet (add some with `ftbench history add`)"
        )
    for row in metrics.itertuples():  # `history add` checks them; older versions did not
        positive_numbers(row.samples_ms, f"{db}: run {row.run_id} {row.name}: samples_ms")
    return runs, metrics


def series_groups(
    runs: pd.DataFrame, metrics: pd.DataFrame
) -> Iterator[tuple[tuple[str, str, str], pd.DataFrame, pd.DataFrame]]:
    """Per series, sorted by (benchmark, series, GPU): that key, its runs and its metrics."""
    for key, group in runs.groupby(["benchmark", "series", "gpu"], sort=True):
        selected = metrics[metrics["run_id"].isin(group["id"])]
        if not selected.empty:
            yield key, group, selected


def _columns(prefix: str, change: MetricChange | None) -> dict[str, object]:
    if change is None:
        return {f"{prefix}_verdict": "", f"{prefix}_change": None, f"{prefix}_ci_low": None,
                f"{prefix}_ci_high": None, f"{prefix}_interval": ""}  # fmt: skip
    return {f"{prefix}_verdict": change.verdict, f"{prefix}_change": change.change,
            f"{prefix}_ci_low": change.ci_low, f"{prefix}_ci_high": change.ci_high,
            f"{prefix}_interval": change.interval}  # fmt: skip


def _mark(*changes: MetricChange | None) -> str:
    """Slower when any judgement is, else faster when any is, else the first's verdict."""
    verdicts = [change.verdict for change in changes if change is not None]
    for verdict in (SLOWER, FASTER):
        if verdict in verdicts:
            return verdict
    return verdicts[0] if verdicts else ""


def _label(row) -> str:
    """A run's label on a time axis: its commit and time, e.g. "cdd25c98 11-24 15:41"."""
    return f"{row.git_commit[:8]} {row.utc_time[5:16].replace('T', ' ')}"


def judged_series(
    metrics: pd.DataFrame, threshold: float, window: int = DEFAULT_WINDOW
) -> pd.DataFrame:
    """The metrics of one series (rows of `metrics_table`), runs in time order, each judged
    (`compare.judge`) against the same metric in the run before and in the median run of up to
    `window` runs before (see the module's docstring; from MIN_WINDOW_RUNS runs before on).
    Columns: run (0..), label, name, median_ms, relative (to its first run); previous_* and
    window_*: verdict ("" where not judged), change, ci_low, ci_high, interval; window_runs
    (how many runs the window held) and window_baseline (the label of its median run);
    verdict: slower when either judgement is, else faster when either is, else the verdict
    against the run before."""
    check_window(window)
    order = metrics.drop_duplicates("run_id").sort_values(["utc_time", "run_id"])
    position = {run_id: index for index, run_id in enumerate(order["run_id"])}
    points = []
    for name, rows in metrics.groupby("name", sort=False):
        rows = rows.assign(run=rows["run_id"].map(position)).sort_values("run")
        first = rows["median_ms"].iloc[0]
        earlier: list = []  # this metric's rows in the runs before
        for row in rows.itertuples():
            previous = windowed = middle = None
            if earlier:
                previous = judge(name, earlier[-1].samples_ms, row.samples_ms, threshold)
            recent = earlier[-window:]
            if len(recent) >= MIN_WINDOW_RUNS:
                middle = sorted(recent, key=lambda run: run.median_ms)[len(recent) // 2]
                windowed = judge(name, middle.samples_ms, row.samples_ms, threshold)
            points.append(
                {
                    "run": row.run, "name": name, "median_ms": row.median_ms,
                    "relative": row.median_ms / first,
                    "label": _label(row),
                    **_columns("previous", previous), **_columns("window", windowed),
                    "window_runs": 0 if windowed is None else len(recent),
                    "window_baseline": "" if windowed is None else _label(middle),
                    "verdict": _mark(previous, windowed),
                }
            )  # fmt: skip
            earlier.append(row)
    return pd.DataFrame(points).sort_values(["run", "name"], kind="stable")


@dataclass(frozen=True)
class SeriesCheck:
    """The newest run of one series, judged: the series' key, its run count, and the newest
    run's commit, time and points (its rows of `judged_series`)."""

    benchmark: str
    series: str
    gpu: str
    runs: int
    git_commit: str
    utc_time: str
    points: pd.DataFrame

    @property
    def slower(self) -> pd.DataFrame:
        return self.points[self.points["verdict"] == SLOWER]


def check_newest_runs(
    db: str | os.PathLike[str], threshold: float, window: int = DEFAULT_WINDOW
) -> list[SeriesCheck]:
    """The newest run of every series in the history at `db`, judged (see `judged_series`)."""
    runs, metrics = read_history(db)
    checks = []
    for (benchmark, series, gpu), group, selected in series_groups(runs, metrics):
        points = judged_series(selected, threshold, window)
        newest = group.sort_values(["utc_time", "id"]).iloc[-1]
        checks.append(
            SeriesCheck(
                benchmark, series, gpu, len(group), newest["git_commit"], newest["utc_time"],
                points[points["run"] == points["run"].max()],
            )
        )  # fmt: skip
    return checks


def metric_label(name: str, series: str) -> str:
    """A metric's name where its series is named already: "ftbench gptj-6b fp16 tp=1 ...
    ttft_ms" in the series "gptj-6b fp16 tp=1 ..." reads "ftbench ttft_ms"."""
    return " ".join(name.replace(series, " ").split())


def window_basis(point: dict) -> str:
    """What a point was judged against in its window, for readers."""
    return f"the median run of the last {point['window_runs']} runs ({point['window_baseline']})"


def _counts(verdicts: pd.Series) -> str:
    return ", ".join(f"{int((verdicts == v).sum())} {v}" for v in VERDICTS if (verdicts == v).any())


def _judgements(point: dict) -> str:
    """A point's judgements, e.g. "+2.00% [+1.90%, +2.10%] (95% bootstrap) against the run
    before: unchanged; +6.12% [...] against the median run of the last 5 runs: slower"."""
    bases = {"previous": "the run before", "window": window_basis(point)}
    return "; ".join(
        f"{point[f'{p}_change']:+.2%} [{point[f'{p}_ci_low']:+.2%}, "
        f"{point[f'{p}_ci_high']:+.2%}] ({point[f'{p}_interval']}) against {basis}: "
        f"{point[f'{p}_verdict']}"
        for p, basis in bases.items()
        if point[f"{p}_verdict"]
    )


def render_check(checks: list[SeriesCheck], threshold: float, window: int) -> str:
    """`ftbench history check`'s report: per series one line (and one per slower metric), then
    a summary line."""
    lines = []
    for check in checks:
        head = (
            f"{check.benchmark}: {check.series} on {check.gpu}, newest of {check.runs} run(s) "
            f"(commit {check.git_commit[:12]}, {check.utc_time})"
        )
        if check.runs == 1:
            lines.append(f"first run  {head}: nothing before it to judge against")
            continue
        points = check.points
        counts = f"against the run before: {_counts(points['previous_verdict'])}"
        window_runs = int(points["window_runs"].max())
        if window_runs:
            counts += (
                f"; against the median run of the last {window_runs} runs: "
                f"{_counts(points['window_verdict'])}"
            )
        state = "REGRESSION" if not check.slower.empty else "ok"
        lines.append(f"{state:<10} {head}: {counts}")
        lines += [
            f"    {metric_label(point['name'], check.series)}: {_judgements(point)}"
            for point in check.slower.to_dict("records")
        ]
    regressed = sum(not check.slower.empty for check in checks)
    against = f"against the run before or the median run of the last {window} runs"
    if regressed:
        lines.append(
            f"REGRESSION: the newest run of {regressed} of {len(checks)} series is slower "
            f"beyond {threshold:.1%} ({against})"
        )
    else:
        lines.append(
            f"no significant regression beyond {threshold:.1%} in the newest run of "
            f"{len(checks)} series ({against})"
        )
    return "\n".join(lines)
