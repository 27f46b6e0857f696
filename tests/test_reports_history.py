"""The SQLite history: runs keyed by benchmark, commit, time and GPU; writes are all or nothing."""

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftbench.errors import InvalidInputError
from ftbench.reports import history
from ftbench.reports.history import (
    add_files,
    add_run,
    default_history_path,
    metrics_table,
    open_history,
    runs_table,
)
from ftbench.reports.records import load_result_set

RESULTS = Path(__file__).parent / "data" / "results"
FOUNDATIONS = sorted(RESULTS.glob("foundation-*.json"))
TUNE = RESULTS / "tune-candidates.json"


def stored(db: Path) -> tuple[int, int]:
    """(runs, metrics) in the database, read by a fresh connection."""
    with sqlite3.connect(db) as connection:
        runs = connection.execute("SELECT count(*) FROM runs").fetchone()[0]
        metrics = connection.execute("SELECT count(*) FROM metrics").fetchone()[0]
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return runs, metrics


def test_runs_are_keyed_and_keep_every_sample(tmp_path):
    db = tmp_path / "history.sqlite3"
    added = add_files(db, [*FOUNDATIONS, TUNE])
    assert [a.new for _, a in added] == [True] * 4
    assert [a.metrics for _, a in added] == [3, 3, 3, 12]
    again = add_files(db, [FOUNDATIONS[0]], None)
    assert again[0][1].new is False and again[0][1].run_id == added[0][1].run_id
    assert stored(db) == (4, 21)

    with open_history(db) as connection:
        runs, metrics = runs_table(connection), metrics_table(connection)
    assert list(runs["benchmark"]) == ["foundation"] * 3 + ["tune"]
    assert set(runs["gpu"]) == {"NVIDIA H200"}
    assert list(runs["git_commit"].str[:7]) == ["cdd25c9", "11ea820", "6aeeecd", "b197fa7"]
    first = json.loads(FOUNDATIONS[0].read_text())["records"][0]["timings"]["gemv_cold"]
    row = metrics[(metrics["run_id"] == 1) & (metrics["name"] == "gemv_cold")].iloc[0]
    assert row["samples_ms"] == first["samples_ms"]
    assert row["median_ms"] == pytest.approx(first["median_ms"])


def test_a_named_benchmark_is_a_separate_series(tmp_path):
    db = tmp_path / "h.sqlite3"
    add_files(db, [FOUNDATIONS[0]])
    added = add_files(db, [FOUNDATIONS[0]], benchmark="foundation-nightly")
    assert added[0][1].new
    with open_history(db) as connection:
        assert sorted(runs_table(connection)["benchmark"]) == ["foundation", "foundation-nightly"]


def test_an_exception_inside_the_write_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    db = tmp_path / "h.sqlite3"
    add_files(db, FOUNDATIONS[:1])
    before = stored(db)
    calls = []
    real_insert = history._insert_metric

    def failing_insert(*args):
        calls.append(args[2])
        if len(calls) == 5:
            raise RuntimeError("disk pulled out")
        real_insert(*args)

    monkeypatch.setattr(history, "_insert_metric", failing_insert)
    with open_history(db) as connection, pytest.raises(RuntimeError, match="disk pulled out"):
        add_run(connection, load_result_set(TUNE))
    assert len(calls) == 5  # the run row and four metrics were written, then rolled back
    assert stored(db) == before
    monkeypatch.setattr(history, "_insert_metric", real_insert)
    assert add_files(db, [TUNE])[0][1].new


def test_a_writer_killed_mid_transaction_leaves_the_database_intact(tmp_path):
    db = tmp_path / "h.sqlite3"
    add_files(db, FOUNDATIONS[:2])
    before = stored(db)
    writer = textwrap.dedent(
        f"""
        import os, signal
        from ftbench.reports import history
        from ftbench.reports.records import load_result_set

        real_insert, count = history._insert_metric, [0]

        def insert_then_die(*args):
            real_insert(*args)
            count[0] += 1
            if count[0] == 6:
                os.kill(os.getpid(), signal.SIGKILL)

        history._insert_metric = insert_then_die
        with history.open_history({str(db)!r}) as connection:
            history.add_run(connection, load_result_set({str(TUNE)!r}))
        """
    )
    killed = subprocess.run([sys.executable, "-c", writer], capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert stored(db) == before
    assert add_files(db, [TUNE])[0][1].new
    assert stored(db) == (before[0] + 1, before[1] + 12)


def test_bad_files_and_databases_are_refused_by_name(tmp_path):
    db = tmp_path / "h.sqlite3"
    with pytest.raises(InvalidInputError, match="tune-peers.json: a tune-peers file keeps no"):
        add_files(db, [FOUNDATIONS[0], RESULTS / "tune-peers.json"])
    assert not db.exists()  # every file is checked before anything is written

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(InvalidInputError, match=rf"^{garbage}: not an ftbench history"):
        add_files(garbage, [FOUNDATIONS[0]])
    foreign = tmp_path / "foreign.sqlite3"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE things (x)")
    with pytest.raises(InvalidInputError, match="an SQLite file, but not an ftbench history"):
        add_files(foreign, [FOUNDATIONS[0]])
    with (
        pytest.raises(InvalidInputError, match="no such history database"),
        open_history(tmp_path / "missing.sqlite3", create=False),
    ):
        pass


def test_default_path_follows_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FTBENCH_CACHE_DIR", str(tmp_path))
    assert default_history_path() == tmp_path / "history.sqlite3"


def test_a_file_with_zero_samples_is_never_stored(tmp_path):
    document = json.loads(FOUNDATIONS[1].read_text())
    timing = document["records"][0]["timings"]["copy"]
    timing["samples_ms"] = [0.0] * len(timing["samples_ms"])
    poisoned = tmp_path / "poisoned.json"
    poisoned.write_text(json.dumps(document))
    db = tmp_path / "h.sqlite3"
    with pytest.raises(InvalidInputError, match=rf"^{poisoned}: .*copy\.samples_ms\[0\] must be"):
        add_files(db, [FOUNDATIONS[0], poisoned])
    assert not db.exists()


def test_the_dashboard_refuses_a_history_poisoned_before_checks(tmp_path):
    from ftbench.reports.dashboard import write_dashboard

    db = tmp_path / "h.sqlite3"
    add_files(db, FOUNDATIONS[:2])
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE metrics SET samples_ms = '[0.0, 0.0]' WHERE run_id = 1")
    with pytest.raises(InvalidInputError, match=rf"^{db}: run 1 \w+: samples_ms\[0\] must be"):
        write_dashboard(db, tmp_path / "site")


def test_another_file_claiming_a_stored_run_is_refused_not_dropped(tmp_path):
    # A copy of a run with other samples (a planted regression, a re-measurement that kept the
    # environment) would otherwise be "already stored" and never reach the dashboard.
    document = json.loads(FOUNDATIONS[1].read_text())
    timing = document["records"][0]["timings"]["copy"]
    timing["samples_ms"] = [sample * 1.1 for sample in timing["samples_ms"]]
    slower = tmp_path / "slower.json"
    slower.write_text(json.dumps(document))
    db = tmp_path / "h.sqlite3"
    add_files(db, [FOUNDATIONS[1]])
    with pytest.raises(InvalidInputError, match=rf"^{slower}: foundation at commit 11ea820"):
        add_files(db, [slower])
    with pytest.raises(InvalidInputError, match=rf"already in {FOUNDATIONS[1]} with other"):
        add_files(tmp_path / "other.sqlite3", [FOUNDATIONS[1], slower])
    assert not (tmp_path / "other.sqlite3").exists()
    assert stored(db) == (1, 3)
    assert add_files(db, [FOUNDATIONS[1]])[0][1].new is False


def test_the_dashboard_marks_a_planted_regression_and_names_an_environment_change(tmp_path):
    from ftbench.reports.dashboard import write_dashboard

    document = json.loads(FOUNDATIONS[1].read_text())
    timing = document["records"][0]["timings"]["gemv_cold"]
    timing["samples_ms"] = [sample * 1.1 for sample in timing["samples_ms"]]
    document["environment"].update(git_commit="f" * 40, utc_time="2026-11-30T00:00:00+00:00")
    document["environment"]["software"]["cublas"] = "13.2.0"
    later = tmp_path / "later.json"
    later.write_text(json.dumps(document))
    db = tmp_path / "h.sqlite3"
    add_files(db, [FOUNDATIONS[1], later])
    page = write_dashboard(db, tmp_path / "site").read_text()
    regressions = page.split('<h3 class="slower">Regressions</h3>')[1]
    assert "gemv_cold" in regressions and "+10.00%" in regressions
    runs = page.split("<h3>Runs</h3>")[1].split("</table>")[0]
    assert "environment change" in runs
    assert "cublas: baseline 13.1.0, current 13.2.0" in runs
