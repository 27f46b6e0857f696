"""The history of results: runs and their metrics in one SQLite file.

A run is one result file, keyed by (benchmark, git commit, time, GPU); its metrics
(`records.metrics`) are stored with every sample, so any two runs can be compared later with the
same statistics as `ftbench compare`. Every write is one transaction: a writer interrupted at any
point (an exception, Ctrl-C, a killed process) leaves the database as it was before that write.
The default file is <ftbench cache dir>/history.sqlite3 ($FTBENCH_CACHE_DIR or
$XDG_CACHE_HOME/ftbench).
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
from ftbench.files import default_cache_dir
from ftbench.reports.records import ResultSet, load_result_set, metrics

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0  # another writer holds the lock: wait this long before giving up
_TABLES = (
    """CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    benchmark TEXT NOT NULL,
    kind TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    utc_time TEXT NOT NULL,
    gpu TEXT NOT NULL,
    source TEXT NOT NULL,
    environment TEXT NOT NULL,
    added_utc TEXT NOT NULL,
    UNIQUE (benchmark, git_commit, utc_time, gpu)
)""",
    """CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    median_ms REAL NOT NULL,
    samples_ms TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
)""",
)


def default_history_path() -> Path:
    return default_cache_dir() / "history.sqlite3"


@contextlib.contextmanager
def open_history(path: str | os.PathLike[str], create: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection to the history at `path` (created when missing and `create`), closed after."""
    target = Path(path)
    if not target.exists() and not create:
        raise InvalidInputError(
            f"{target}: no such history database (add runs with `ftbench history add`)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        connection = sqlite3.connect(target, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise InvalidInputError(f"{target}: cannot open the history database ({exc})") from exc
    try:
        _prepare(connection, target)
        yield connection
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
        if version != SCHEMA_VERSION:
            raise InvalidInputError(
                f"{path}: history schema {version} is not supported (this ftbench reads "
                f"schema {SCHEMA_VERSION})"
            )
    except sqlite3.DatabaseError as exc:
        raise InvalidInputError(f"{path}: not an ftbench history database ({exc})") from exc


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
    """What `add_run` did: the run's id, and whether it was new (False: already stored)."""

    run_id: int
    new: bool
    metrics: int


def add_run(
    connection: sqlite3.Connection, result_set: ResultSet, benchmark: str | None = None
) -> Added:
    """Store one result set as a run (benchmark defaults to its kind); storing it twice is a
    no-op. A set without samples (tune-peers, tuned caches) is refused."""
    found = _storable_metrics(result_set)
    environment = result_set.environment
    key = _run_key(result_set, benchmark)
    with transaction(connection):
        run_id = _stored_run(connection, key, found, result_set.path)
        if run_id is not None:
            return Added(run_id, False, len(found))
        cursor = connection.execute(
            "INSERT INTO runs (benchmark, kind, git_commit, utc_time, gpu, source, environment,"
            " added_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *key[:1], result_set.kind, *key[1:], str(result_set.path),
                json.dumps(environment.to_dict()),
                datetime.now(timezone.utc).isoformat(timespec="seconds"),
            ),
        )  # fmt: skip
        run_id = cursor.lastrowid
        for metric, samples in found.items():
            _insert_metric(connection, run_id, metric, samples)
    return Added(run_id, True, len(found))


def _run_key(result_set: ResultSet, benchmark: str | None) -> tuple[str, str, str, str]:
    environment = result_set.environment
    return (benchmark or result_set.kind, environment.git_commit, environment.utc_time,
            result_set.gpu)  # fmt: skip


def _same_key_error(path: str, key: tuple[str, str, str, str], other: str) -> InvalidInputError:
    benchmark, commit, utc_time, gpu = key
    return InvalidInputError(
        f"{path}: {benchmark} at commit {commit[:12]}, {utc_time} on {gpu} is already {other} "
        "with other samples; a run is named by the commit and time in its environment, so "
        "another measurement needs its own"
    )


def _stored_run(
    connection: sqlite3.Connection,
    key: tuple[str, str, str, str],
    found: dict[str, tuple[float, ...]],
    path: str,
) -> int | None:
    """The id of the run stored under `key` (None if none); one stored there with other metrics
    or samples than `found` (another file claiming the same run) is an InvalidInputError."""
    row = connection.execute(
        "SELECT id, source FROM runs WHERE benchmark = ? AND git_commit = ? AND utc_time = ?"
        " AND gpu = ?",
        key,
    ).fetchone()
    if row is None:
        return None
    stored = connection.execute("SELECT name, samples_ms FROM metrics WHERE run_id = ?", row[:1])
    if dict(stored.fetchall()) != {name: json.dumps(list(v)) for name, v in found.items()}:
        raise _same_key_error(path, key, f"stored as run {row[0]} (from {row[1]})")
    return row[0]


def _storable_metrics(result_set: ResultSet) -> dict[str, tuple[float, ...]]:
    found = metrics(result_set)
    if not found or result_set.environment is None:
        raise InvalidInputError(
            f"{result_set.path}: a {result_set.kind} file keeps no timing samples to store"
        )
    return found


def add_files(
    db: str | os.PathLike[str], paths: list[str | os.PathLike[str]], benchmark: str | None = None
) -> list[tuple[str, Added]]:
    """Read every file first (a bad one, or one claiming the run of another with other samples,
    stops everything before any write), then store each as a run, one transaction per file."""
    result_sets = [load_result_set(path) for path in paths]
    claimed: dict[tuple[str, str, str, str], tuple[str, dict[str, tuple[float, ...]]]] = {}
    for result_set in result_sets:
        key, found = _run_key(result_set, benchmark), _storable_metrics(result_set)
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
    """Every run: id, benchmark, kind, git_commit, utc_time, gpu, source, environment (JSON),
    metrics (count)."""
    return pd.read_sql_query(
        "SELECT r.id, r.benchmark, r.kind, r.git_commit, r.utc_time, r.gpu, r.source,"
        " r.environment, count(m.name) AS metrics"
        " FROM runs r LEFT JOIN metrics m ON m.run_id = r.id"
        " GROUP BY r.id ORDER BY r.benchmark, r.gpu, r.utc_time",
        connection,
    )


def metrics_table(connection: sqlite3.Connection) -> pd.DataFrame:
    """Every metric of every run, with the run's key; samples_ms as lists of floats."""
    table = pd.read_sql_query(
        "SELECT r.id AS run_id, r.benchmark, r.git_commit, r.utc_time, r.gpu, m.name,"
        " m.median_ms, m.samples_ms FROM metrics m JOIN runs r ON r.id = m.run_id"
        " ORDER BY r.benchmark, r.gpu, r.utc_time, m.rowid",
        connection,
    )
    table["samples_ms"] = table["samples_ms"].map(json.loads)
    return table
