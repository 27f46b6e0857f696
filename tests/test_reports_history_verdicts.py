"""The history's verdicts: each run against the run before and against the median run of a
window, in `ftbench history check` and the dashboard; a drift of small steps is flagged.

The runs are the real llama2-7b bf16 run file (3 TTFT and end-to-end samples, 93 decode-step
samples a point) at planted commits, every sample scaled by a factor per run.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftbench.errors import InvalidInputError
from ftbench.modelbench.runs import TIMING_METRICS
from ftbench.reports.compare import SLOWER, UNCHANGED, compare_files
from ftbench.reports.dashboard import write_dashboard
from ftbench.reports.history import (
    add_files,
    check_newest_runs,
    check_window,
    judged_series,
    read_history,
)

RESULTS = Path(__file__).parent / "data" / "results"
RUN = RESULTS / "run-llama2-7b-bf16.json"
FIVE_STEPS = [1.02**step for step in range(6)]  # +2% a run: +10.4% over five steps
SERIES = [f"llama2-7b bf16 tp=1 pp=1 batch={batch} in=128 out=32" for batch in (1, 16)]


def ftbench(*args):
    return subprocess.run(
        [sys.executable, "-m", "ftbench", *map(str, args)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def history_of(tmp_path: Path, factors: list[float]) -> Path:
    """A history of one run file per factor, at commits 000..., 111..., a day apart."""
    paths = []
    for index, factor in enumerate(factors):
        document = json.loads(RUN.read_text())
        document["environment"].update(
            git_commit=str(index) * 40, utc_time=f"2026-12-{index + 1:02}T00:00:00+00:00"
        )
        for record in document["records"]:
            for metric in TIMING_METRICS:
                timing = record[metric]
                timing["samples_ms"] = [sample * factor for sample in timing["samples_ms"]]
                timing["median_ms"] *= factor
        paths.append(tmp_path / f"run-{index}.json")
        paths[-1].write_text(json.dumps(document))
    db = tmp_path / "history.sqlite3"
    add_files(db, paths)
    return db


def points_of(db: Path, series: str, window: int = 5):
    runs, metrics = read_history(db)
    return judged_series(metrics[metrics["series"] == series], 0.03, window)


def test_each_step_of_a_five_step_drift_passes_compare_alone(tmp_path):
    history_of(tmp_path, FIVE_STEPS)
    for before in range(5):
        step = compare_files(tmp_path / f"run-{before}.json", tmp_path / f"run-{before + 1}.json")
        assert step.exit_code == 0 and not step.regressions


def test_five_steps_of_two_percent_are_flagged_against_the_window_not_the_run_before(tmp_path):
    points = points_of(history_of(tmp_path, FIVE_STEPS), SERIES[0])
    assert SLOWER not in set(points["previous_verdict"])
    newest = points[points["run"] == 5].set_index("name")
    decode = newest.loc["ftbench llama2-7b bf16 tp=1 pp=1 batch=1 in=128 out=32 decode_step_ms"]
    assert decode["previous_change"] == pytest.approx(0.02)
    # the window's median run is run 2, two steps back: +4.04% > 3%
    assert decode["window_verdict"] == SLOWER and decode["verdict"] == SLOWER
    assert decode["window_change"] == pytest.approx(1.02**3 - 1)
    assert (decode["window_runs"], decode["window_baseline"]) == (5, "22222222 12-03 00:00")
    # from the third step on the drift shows: run 3 against run 1, +4.04% again
    assert list(points.groupby("run")["window_verdict"].agg(lambda v: SLOWER in set(v))) == [
        False, False, False, True, True, True,
    ]  # fmt: skip


def test_five_steps_of_two_percent_fail_history_check(tmp_path):
    db = history_of(tmp_path, FIVE_STEPS)
    result = ftbench("history", "check", "--db", db)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    flagged = [line for line in lines if line.startswith("REGRESSION run: ")]
    assert [line.split(" on ")[0] for line in flagged] == [f"REGRESSION run: {s}" for s in SERIES]
    assert "newest of 6 run(s) (commit 555555555555, 2026-12-06T00:00:00+00:00)" in flagged[0]
    assert lines[1].startswith("    ftbench decode_step_ms: ")  # the first series' metric
    decode = lines[1]
    assert "+2.00% [" in decode and "against the run before: unchanged" in decode
    assert "against the median run of the last 5 runs (22222222 12-03 00:00): slower" in decode
    assert lines[-1] == (
        "REGRESSION: the newest run of 2 of 2 series is slower beyond 3.0% (against the run "
        "before or the median run of the last 5 runs)"
    )


def test_a_wider_threshold_or_a_short_window_passes_the_same_drift(tmp_path):
    db = history_of(tmp_path, FIVE_STEPS)
    assert ftbench("history", "check", "--db", db, "--threshold", "7%").returncode == 0
    # two runs before: the median run of the last 2 is the slower one, run 4: +2% only
    assert all(check.slower.empty for check in check_newest_runs(db, 0.03, window=2))


def test_five_steps_of_two_percent_are_flagged_by_the_dashboard(tmp_path):
    db = history_of(tmp_path, FIVE_STEPS)
    page = write_dashboard(db, tmp_path / "site").read_text()
    sections = page.split('<section class="series"')[1:]
    assert len(sections) == 2 and all('<h3 class="slower">Regressions</h3>' in s for s in sections)
    regressions = sections[0].split('<h3 class="slower">Regressions</h3>')[1]
    assert "the median run of the last 5 runs (22222222 12-03 00:00)" in regressions
    assert "+4.04%" in regressions and "the run before</td>" not in regressions


def test_the_same_measurement_at_every_commit_is_unchanged_everywhere(tmp_path):
    db = history_of(tmp_path, [1.0] * 6)
    for series in SERIES:
        points = points_of(db, series)
        judged = points[points["run"] > 0]
        assert set(judged["previous_verdict"]) == {UNCHANGED}
        assert set(judged.loc[judged["run"] > 1, "window_verdict"]) == {UNCHANGED}
    result = ftbench("history", "check", "--db", db)
    assert result.returncode == 0, result.stdout
    assert "against the run before: 6 unchanged; against the median run of the last 5 runs: " in (
        result.stdout
    )
    assert result.stdout.splitlines()[-1].startswith("no significant regression beyond 3.0%")


def test_a_series_with_one_run_is_not_judged(tmp_path):
    result = ftbench("history", "check", "--db", history_of(tmp_path, [1.0]))
    assert result.returncode == 0
    assert result.stdout.count("nothing before it to judge against") == 2


@pytest.mark.parametrize("command", [["history", "check"], ["dashboard", "--out", "site"]])
def test_a_window_below_two_runs_is_refused_in_one_line(tmp_path, command):
    result = ftbench(*command, "--db", history_of(tmp_path, [1.0, 1.0]), "--window", "1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--window must be at least 2 runs (the run before is judged anyway), got 1" in (
        result.stderr
    )


@pytest.mark.parametrize("window", [0, -3])
def test_a_window_of_no_runs_is_refused(window):
    with pytest.raises(InvalidInputError, match=f"--window must be at least 2 .*got {window}$"):
        check_window(window)
