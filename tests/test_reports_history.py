"""The SQLite history: one run per series (benchmark, model, dtype, shape, GPU) a file holds,
keyed by commit and time; writes are all or nothing; unusable databases are one line."""

import json
import os
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
TUNED_PROBLEM = "gemm:f16f16f16:f32:NT:m=1:n=4096:k=4096:b=1"
OTHER_PROBLEMS = [
    f"gemm:f16f16f16:f32:NT:m={m}:n={n}:k={k}:b=1"
    for m, n, k in [(16, 50400, 4096), (128, 4096, 4096), (64, 4096, 4096),
                    (2048, 4096, 16384), (4096, 16384, 4096)]
]  # fmt: skip
RUN = RESULTS / "run-llama2-7b-bf16.json"
PARALLEL = Path(__file__).parents[1] / "benchmarks" / "results" / "parallel-20261124"


def ftbench(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ftbench", *map(str, args)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def stored(db: Path) -> tuple[int, int]:
    """(runs, metrics) in the database, read by a fresh connection."""
    with sqlite3.connect(db) as connection:
        runs = connection.execute("SELECT count(*) FROM runs").fetchone()[0]
        metrics = connection.execute("SELECT count(*) FROM metrics").fetchone()[0]
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return runs, metrics


def test_runs_are_keyed_by_series_and_keep_every_sample(tmp_path):
    db = tmp_path / "history.sqlite3"
    added = add_files(db, [*FOUNDATIONS, TUNE])
    # a foundation file: three probes of three shapes; the tune file: six GEMM problems
    assert [(len(a.run_ids), a.new, a.metrics) for _, a in added] == [(3, 3, 3)] * 3 + [(6, 6, 12)]
    again = add_files(db, [FOUNDATIONS[0]], None)
    assert again[0][1].new == 0 and again[0][1].run_ids == added[0][1].run_ids
    assert stored(db) == (15, 21)

    with open_history(db) as connection:
        runs, metrics = runs_table(connection), metrics_table(connection)
    assert list(runs["benchmark"]) == ["foundation"] * 9 + ["tune"] * 6
    assert list(runs["series"].iloc[:9:3]) == [
        "copy 4 GiB", "gemm_hot 2048x4096x4096", "gemv_cold 1x4096x16384",
    ]  # fmt: skip
    assert set(runs["series"].iloc[9:]) == {TUNED_PROBLEM, *OTHER_PROBLEMS}
    assert set(runs["gpu"]) == {"NVIDIA H200"}
    assert list(runs["git_commit"].str[:7].iloc[:3]) == ["cdd25c9", "11ea820", "6aeeecd"]
    first = json.loads(FOUNDATIONS[0].read_text())["records"][0]["timings"]["gemv_cold"]
    [row] = metrics[(metrics["run_id"] == added[0][1].run_ids[1])].itertuples()
    assert (row.series, row.name) == ("gemv_cold 1x4096x16384", "gemv_cold")
    assert row.samples_ms == first["samples_ms"]
    assert row.median_ms == pytest.approx(first["median_ms"])


def test_a_named_benchmark_is_a_separate_series(tmp_path):
    db = tmp_path / "h.sqlite3"
    add_files(db, [FOUNDATIONS[0]])
    added = add_files(db, [FOUNDATIONS[0]], benchmark="foundation-nightly")
    assert added[0][1].new == 3
    with open_history(db) as connection:
        benchmarks = sorted(set(runs_table(connection)["benchmark"]))
    assert benchmarks == ["foundation", "foundation-nightly"]


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
    assert len(calls) == 5  # two runs of two metrics each were written, then rolled back
    assert stored(db) == before
    monkeypatch.setattr(history, "_insert_metric", real_insert)
    assert add_files(db, [TUNE])[0][1].new == 6


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
    assert add_files(db, [TUNE])[0][1].new == 6
    assert stored(db) == (before[0] + 6, before[1] + 12)


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


def remeasured(tmp_path: Path) -> Path:
    """FOUNDATIONS[1] with a 10% slower copy probe, claiming its commit and time."""
    document = json.loads(FOUNDATIONS[1].read_text())
    timing = document["records"][0]["timings"]["copy"]
    timing["samples_ms"] = [sample * 1.1 for sample in timing["samples_ms"]]
    path = tmp_path / "remeasured.json"
    path.write_text(json.dumps(document))
    return path


def test_another_file_claiming_a_stored_run_is_refused_not_dropped(tmp_path):
    # A copy of a run with other samples (a planted regression, a re-measurement that kept the
    # environment) would otherwise be "already stored" and never reach the dashboard.
    slower = remeasured(tmp_path)
    db = tmp_path / "h.sqlite3"
    add_files(db, [FOUNDATIONS[1]])
    claim = rf"^{slower}: foundation 'copy 4 GiB' at commit 11ea820"
    with pytest.raises(InvalidInputError, match=claim):
        add_files(db, [slower])
    with pytest.raises(InvalidInputError, match=rf"already in {FOUNDATIONS[1]} with other"):
        add_files(tmp_path / "other.sqlite3", [FOUNDATIONS[1], slower])
    assert not (tmp_path / "other.sqlite3").exists()
    assert stored(db) == (3, 3)
    assert add_files(db, [FOUNDATIONS[1]])[0][1].new == 0


def test_a_refused_duplicate_names_the_benchmark_option_that_stores_it(tmp_path):
    again = remeasured(tmp_path)
    db = tmp_path / "h.sqlite3"
    add_files(db, [FOUNDATIONS[1]])
    refused = ftbench("history", "add", again, "--db", db)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "under another benchmark name (--benchmark NAME)" in refused.stderr
    named = ftbench("history", "add", again, "--db", db, "--benchmark", "foundation-again")
    assert named.returncode == 0, named.stderr
    assert stored(db) == (6, 6)


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


def test_runs_of_several_shapes_in_one_file_are_one_series_each(tmp_path):
    db = tmp_path / "h.sqlite3"
    [(_, added)] = add_files(db, [RUN])
    assert (len(added.run_ids), added.new, added.metrics) == (2, 2, 12)
    with open_history(db) as connection:
        runs = runs_table(connection)
    assert list(runs["series"]) == [
        "llama2-7b bf16 tp=1 pp=1 batch=1 in=128 out=32",
        "llama2-7b bf16 tp=1 pp=1 batch=16 in=128 out=32",
    ]
    assert list(runs["metrics"]) == [6, 6]  # ftbench and ftbench-untuned, three timings each


def test_the_llama2_13b_and_gptj_runs_of_one_commit_and_time_are_both_stored(tmp_path):
    gptj, llama = PARALLEL / "run-gptj-6b-tp1-pp1.json", PARALLEL / "run-llama2-13b-tp1-pp1.json"
    environments = [json.loads(path.read_text())["environment"] for path in (gptj, llama)]
    assert len({(e["git_commit"], e["utc_time"]) for e in environments}) == 1
    db = tmp_path / "h.sqlite3"
    result = ftbench("history", "add", gptj, llama, "--db", db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": added 2 run(s) (6 metrics) in ") == 2
    with open_history(db) as connection:
        runs = runs_table(connection)
    assert sorted(runs["series"]) == [
        f"{model} fp16 tp=1 pp=1 batch={batch} in=128 out=128"
        for model in ("gptj-6b", "llama2-13b")
        for batch in (1, 64)
    ]
    assert set(runs["gpu"]) == {"2x NVIDIA H200"}


def test_a_tuned_cache_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    db = tmp_path / "h.sqlite3"
    result = ftbench("history", "add", RESULTS / "tune-cache.json", "--db", db)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "tune-cache.json: a tuned cache keeps each winner's median, not its samples" in (
        result.stderr
    )
    assert "add the tune run's result file instead" in result.stderr
    assert not db.exists()


def unusable(result) -> str:
    """The one line of a refused `history add`."""
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    return result.stderr


def test_a_cache_home_that_cannot_hold_the_history_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"XDG_CACHE_HOME": str(blocker), "HOME": str(tmp_path), "PATH": ""}
    line = unusable(ftbench("history", "add", FOUNDATIONS[0], env=env))
    database = blocker / "ftbench" / "history.sqlite3"
    assert f"cannot create or open the history database {database}: {blocker} is a file," in line
    line = unusable(ftbench("history", "add", FOUNDATIONS[0], "--db", blocker / "h.sqlite3"))
    assert f"{blocker} is a file, not a folder" in line
    line = unusable(ftbench("history", "add", FOUNDATIONS[0], "--db", tmp_path))
    assert f"cannot create or open the history database {tmp_path}" in line


def test_a_folder_without_write_permission_is_one_line(tmp_path, monkeypatch):
    # What a read-only XDG_CACHE_HOME gives a user who is not root (root writes through it).
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    db = tmp_path / "cache" / "ftbench" / "history.sqlite3"
    with pytest.raises(
        InvalidInputError, match=rf"^cannot create or open the history database {db}: Permission"
    ):
        add_files(db, [FOUNDATIONS[0]])


def test_a_read_only_database_is_one_line(tmp_path, monkeypatch):
    db = tmp_path / "h.sqlite3"
    add_files(db, [FOUNDATIONS[0]])
    connect = sqlite3.connect

    def read_only(path, **kwargs):  # what a read-only file or mount gives, also for root
        return connect(f"file:{path}?mode=ro", uri=True, **kwargs)

    monkeypatch.setattr(history.sqlite3, "connect", read_only)
    with pytest.raises(
        InvalidInputError,
        match=rf"^{db}: cannot use the history database \(attempt to write a readonly database\)",
    ):
        add_files(db, [FOUNDATIONS[1]])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_read_only_xdg_cache_home_is_one_line(tmp_path):
    cache_home = tmp_path / "cache"
    cache_home.mkdir(mode=0o555)
    env = {"XDG_CACHE_HOME": str(cache_home), "HOME": str(tmp_path), "PATH": ""}
    line = unusable(ftbench("history", "add", FOUNDATIONS[0], env=env))
    assert "cannot create or open the history database" in line and "Permission denied" in line


def test_a_schema_1_history_is_refused_with_what_to_do(tmp_path):
    old = tmp_path / "old.sqlite3"
    with sqlite3.connect(old) as connection:
        connection.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, source TEXT)")
        connection.execute("PRAGMA user_version = 1")
    for command in (["history", "add", FOUNDATIONS[0]], ["dashboard", "--out", tmp_path / "s"]):
        line = unusable(ftbench(*command, "--db", old))
        assert f"{old}: a history of schema 1 (ftbench before series)" in line
        assert "add the result files again to a new --db" in line
