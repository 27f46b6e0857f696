"""The report commands' command line: help for every option, default history path, errors."""

import subprocess
import sys
from pathlib import Path

import pytest

RESULTS = Path(__file__).parent / "data" / "results"


def ftbench(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ftbench", *map(str, args)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (["report"], ["--out"]),
        (["compare"], ["--threshold", "--format", "--allow-env-mismatch"]),
        (["history", "add"], ["--db", "--benchmark"]),
        (["history", "check"], ["--db", "--threshold", "--window"]),
        (["dashboard"], ["--out", "--db", "--threshold", "--window"]),
    ],
)
def test_help_explains_every_option(command, options):
    result = ftbench(*command, "--help", env={"COLUMNS": "200", "PATH": ""})
    assert result.returncode == 0
    for option in options:
        line = next(line for line in result.stdout.splitlines() if option in line)
        assert len(line.split(option, 1)[1].strip(" │")) > 20, line


def test_history_defaults_to_the_cache_dir_and_feeds_the_dashboard(tmp_path):
    env = {"FTBENCH_CACHE_DIR": str(tmp_path / "cache"), "PATH": ""}
    added = ftbench("history", "add", *sorted(RESULTS.glob("foundation-*.json")), env=env)
    assert added.returncode == 0, added.stderr
    assert added.stdout.count(": added 3 run(s) (3 metrics) in ") == 3
    assert (tmp_path / "cache" / "history.sqlite3").exists()
    again = ftbench("history", "add", RESULTS / "foundation-20261124T154141Z.json", env=env)
    assert "already stored (3 run(s), 3 metrics)" in again.stdout
    site = ftbench("dashboard", "--out", tmp_path / "site", env=env)
    assert site.returncode == 0, site.stderr
    assert (tmp_path / "site" / "index.html").stat().st_size > 10_000
    onto_a_file = ftbench("dashboard", "--out", tmp_path / "cache" / "history.sqlite3", env=env)
    assert onto_a_file.returncode == 2
    assert "history.sqlite3 is a file, not a folder" in onto_a_file.stderr


def test_dashboard_without_history_exits_2(tmp_path):
    result = ftbench("dashboard", "--db", tmp_path / "none.sqlite3", "--out", tmp_path / "site")
    assert result.returncode == 2
    assert "none.sqlite3: no such history database" in result.stderr
