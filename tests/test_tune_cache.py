"""The tuned-config cache format and the sweep's bookkeeping (no GPU needed)."""

import json
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ftbench.autotune.sweep import sweep_problems
from ftbench.bench.results import read_results
from ftbench.errors import InvalidInputError
from ftbench.gemm.cache import (
    CacheHeader,
    TunedCache,
    default_cache_path,
    load_cache,
    merge_caches,
    open_tuned_cache,
    prune_cache,
)
from ftbench.gemm.problem import GemmProblem
from tune_fakes import entry, fake_environment, outcome

PROBLEMS = [GemmProblem(m=m, n=4096, k=4096) for m in (1, 8, 64, 256)]
HEADER = CacheHeader.from_environment(fake_environment())


def cache_with(*entries, header=HEADER):
    cache = TunedCache(header=header)
    for item in entries:
        cache.add(item)
    return cache


def test_round_trip(tmp_path):
    cache = cache_with(*(entry(p) for p in PROBLEMS))
    path = cache.save(tmp_path / "tuned.json")
    again = load_cache(path)
    assert again.entries == cache.entries
    assert again.header == cache.header


def test_a_cache_written_with_the_old_op_field_loads_and_its_keys_still_match():
    # tests/data/results/tune-cache.json was written when every problem carried "op": "gemm".
    path = Path(__file__).parent / "data" / "results" / "tune-cache.json"
    assert '"op":"gemm"' in path.read_text()
    cache = load_cache(path)
    assert cache.lookup(GemmProblem(m=128, n=4096, k=4096)).winner.backend == "cublaslt"
    assert len(cache.entries) == 6


def test_a_saved_cache_writes_no_op_field(tmp_path):
    path = cache_with(entry(PROBLEMS[0])).save(tmp_path / "tuned.json")
    assert '"op"' not in path.read_text()


def test_lookup_finds_the_tuned_entry_of_a_problem():
    cache = cache_with(entry(PROBLEMS[0], winner_ms=0.8, default_ms=1.0))
    found = cache.lookup(PROBLEMS[0])
    assert found.winner.config == {"algo": 5}
    assert found.speedup == pytest.approx(1.25)
    assert cache.lookup(PROBLEMS[1]) is None


def test_a_cache_of_the_running_gpu_is_opened_with_its_entries(tmp_path):
    path = cache_with(entry(PROBLEMS[0])).save(tmp_path / "tuned.json")
    choice = open_tuned_cache(path, fake_environment())
    assert set(choice.cache.entries) == {PROBLEMS[0].key()}
    assert (choice.path, choice.note) == (str(path), None)
    assert choice.to_dict() == {"path": str(path), "entries": 1, "note": None}


def test_a_cache_of_another_library_is_not_used_and_the_note_says_why(tmp_path):
    path = cache_with(entry(PROBLEMS[0])).save(tmp_path / "tuned.json")
    choice = open_tuned_cache(path, fake_environment(cublas="13.2.0"))
    assert choice.cache is None
    assert "tuned elsewhere" in choice.note and "cublas: file 13.1.0, running 13.2.0" in choice.note


def test_without_a_path_the_default_cache_of_the_gpu_is_opened(tmp_path, monkeypatch):
    monkeypatch.setenv("FTBENCH_CACHE_DIR", str(tmp_path))
    missing = open_tuned_cache(None, fake_environment())
    assert missing.cache is None
    assert str(default_cache_path("NVIDIA H200")) in missing.note
    cache_with(entry(PROBLEMS[0])).save(default_cache_path("NVIDIA H200"))
    found = open_tuned_cache(None, fake_environment())
    assert found.path == str(tmp_path / "tuned" / "nvidia-h200.json")
    assert len(found.cache.entries) == 1


def test_a_missing_cache_file_given_by_name_is_an_error(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file"):
        open_tuned_cache(tmp_path / "nope.json", fake_environment())


def test_inspection_without_a_gpu_loads_as_is(tmp_path):
    path = cache_with(entry(PROBLEMS[0])).save(tmp_path / "tuned.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_cache(path).entries) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"schema": 1, "kind": "something-else"}), "not an ftbench tuned-config cache"),
        (json.dumps({"schema": 7, "kind": "ftbench-tuned-cache"}), "schema 7"),
        (json.dumps({"schema": 1, "kind": "ftbench-tuned-cache", "header": {}}), "corrupt"),
    ],
)
def test_corrupt_or_foreign_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "tuned.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        load_cache(path)


def test_entry_filed_under_the_wrong_key_is_corrupt(tmp_path):
    data = cache_with(entry(PROBLEMS[0])).to_dict()
    data["entries"]["gemm:f16f16f16:f32:NT:m=9:n=9:k=9:b=1"] = data["entries"].popitem()[1]
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match="holds problem"):
        load_cache(path)


def test_merge_keeps_the_faster_winner_per_problem():
    first = cache_with(entry(PROBLEMS[0], winner_ms=0.9), entry(PROBLEMS[1], winner_ms=0.5))
    second = cache_with(entry(PROBLEMS[0], winner_ms=0.7, algo=7), entry(PROBLEMS[2]))
    merged = merge_caches({"first.json": first, "second.json": second})
    assert len(merged.entries) == 3
    assert merged.entries[PROBLEMS[0].key()].winner.config == {"algo": 7}
    assert merged.entries[PROBLEMS[1].key()].winner_time.median_ms == 0.5


def test_merge_refuses_caches_from_different_gpus():
    other = CacheHeader.from_environment(fake_environment(gpu_name="NVIDIA H100 80GB HBM3"))
    caches = {"a.json": cache_with(entry(PROBLEMS[0])), "b.json": cache_with(header=other)}
    with pytest.raises(InvalidInputError) as info:
        merge_caches(caches)
    assert str(info.value) == (
        "cannot merge caches tuned apart: gpu_name: a.json NVIDIA H200, "
        "b.json NVIDIA H100 80GB HBM3"
    )


def test_prune_drops_entries_below_the_speedup_floor():
    cache = cache_with(entry(PROBLEMS[0], winner_ms=1.0), entry(PROBLEMS[1], winner_ms=0.5))
    pruned, dropped = prune_cache(cache, min_speedup=1.05)
    assert dropped == 1
    assert list(pruned.entries) == [PROBLEMS[1].key()]


def test_prune_drops_entries_older_than_the_age_limit():
    cache = cache_with(entry(PROBLEMS[0], winner_ms=1.0), entry(PROBLEMS[1], winner_ms=0.5))
    measured = datetime.fromisoformat(next(iter(cache.entries.values())).measured_utc)
    pruned, dropped = prune_cache(cache, older_than_days=1, now=measured + timedelta(days=2))
    assert (dropped, pruned.entries) == (2, {})
    kept, dropped = prune_cache(cache, older_than_days=3, now=measured + timedelta(days=2))
    assert (dropped, len(kept.entries)) == (0, 2)


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "tuned.json"
    tuned = []

    def crash_on_third(problem, deadline, on_candidate):
        if len(tuned) == 2:
            raise KeyboardInterrupt
        tuned.append(problem)
        return outcome(problem)

    with pytest.raises(KeyboardInterrupt):
        sweep_problems(PROBLEMS, out, crash_on_third, fake_environment())
    assert set(load_cache(out).entries) == {p.key() for p in PROBLEMS[:2]}

    tuned_again = []

    def record(problem, deadline, on_candidate):
        tuned_again.append(problem)
        return outcome(problem)

    report = sweep_problems(PROBLEMS, out, record, fake_environment())
    assert tuned_again == PROBLEMS[2:]
    assert (report.tuned, report.resumed) == (2, 2)
    assert set(load_cache(out).entries) == {p.key() for p in PROBLEMS}
    records = read_results(report.results_path)["records"]
    assert sorted({r["problem_key"] for r in records}) == sorted(p.key() for p in PROBLEMS)
    assert len(records) == 2 * len(PROBLEMS)


def test_sweep_never_overwrites_a_foreign_file_unless_forced(tmp_path):
    out = tmp_path / "tuned.json"
    out.write_text('{"my": "notes"}')
    with pytest.raises(InvalidInputError, match=r"refusing to replace .*tuned.json \(a file of 15"):
        sweep_problems(PROBLEMS, out, lambda *a: outcome(a[0]), fake_environment())
    assert out.read_text() == '{"my": "notes"}'
    report = sweep_problems(PROBLEMS, out, lambda *a: outcome(a[0]), fake_environment(), force=True)
    assert report.tuned == len(PROBLEMS)
    assert set(load_cache(out).entries) == {p.key() for p in PROBLEMS}


def test_sweep_starts_a_corrupt_cache_over_only_when_forced(tmp_path):
    out = tmp_path / "tuned.json"
    out.write_text('{"schema": 1, "kind": "ftbench-tuned-cache", "header": {}}')
    with pytest.raises(InvalidInputError, match="header must be an object"):
        sweep_problems(PROBLEMS, out, lambda *a: outcome(a[0]), fake_environment())
    report = sweep_problems(PROBLEMS, out, lambda *a: outcome(a[0]), fake_environment(), force=True)
    assert report.tuned == len(PROBLEMS)


def test_sweep_never_writes_its_results_over_another_kind_of_file(tmp_path):
    cache = tmp_path / "tuned.json"
    cache_with(entry(PROBLEMS[0])).save(cache)
    before = cache.read_bytes()
    with pytest.raises(InvalidInputError, match="refusing to replace .*kind 'ftbench-tuned-cache'"):
        sweep_problems(
            PROBLEMS, tmp_path / "new.json", lambda *a: outcome(a[0]), fake_environment(),
            results_path=cache,
        )  # fmt: skip
    assert cache.read_bytes() == before
    assert not (tmp_path / "new.json").exists()


def test_sweep_refuses_one_file_for_cache_and_results(tmp_path):
    out = tmp_path / "tuned.json"
    with pytest.raises(InvalidInputError, match="--results and --out are both"):
        sweep_problems(
            PROBLEMS, out, lambda *a: outcome(a[0]), fake_environment(), results_path=out
        )
    assert not out.exists()


def test_sweep_refuses_to_extend_a_cache_from_another_gpu_unless_forced(tmp_path):
    out = tmp_path / "tuned.json"
    other = CacheHeader.from_environment(fake_environment(gpu_name="NVIDIA A100-SXM4-80GB"))
    cache_with(entry(PROBLEMS[0]), header=other).save(out)
    with pytest.raises(InvalidInputError, match="--force"):
        sweep_problems(PROBLEMS, out, lambda *a: outcome(a[0]), fake_environment())
    report = sweep_problems(PROBLEMS, out, lambda *a: outcome(a[0]), fake_environment(), force=True)
    assert report.tuned == len(PROBLEMS)
    assert load_cache(out).header.gpu_name == "NVIDIA H200"


def test_budget_is_shared_out_over_the_problems(tmp_path):
    deadlines = []

    def note(problem, deadline, on_candidate):
        deadlines.append(deadline)
        return outcome(problem)

    sweep_problems(PROBLEMS, tmp_path / "t.json", note, fake_environment(), budget_s=40.0)
    steps = [b - a for a, b in zip(deadlines, deadlines[1:], strict=False)]
    assert steps == pytest.approx([10.0, 10.0, 10.0], abs=0.5)


def test_a_winner_must_clear_the_intervals_and_the_minimum_gain():
    from ftbench.gemm.cache import TimeSummary

    default = TimeSummary(1.000, 0.998, 1.002, 0.002)
    tight_but_tiny = TimeSummary(0.995, 0.994, 0.996, 0.001)
    clear = TimeSummary(0.950, 0.949, 0.951, 0.001)
    overlapping = TimeSummary(0.950, 0.900, 1.000, 0.05)
    assert tight_but_tiny.faster_beyond_noise(default)
    assert not tight_but_tiny.faster_beyond_noise(default, min_gain=0.01)
    assert clear.faster_beyond_noise(default, min_gain=0.01)
    assert not overlapping.faster_beyond_noise(default)


class _Timing:
    def __init__(self, median_ms):
        self.median_ms, self.rel_noise = median_ms, 0.005
        self.ci_low_ms, self.ci_high_ms = median_ms * 0.995, median_ms * 1.005


class _ConfirmingTuner:
    """Times each candidate from a script of medians, one per round."""

    def __init__(self, problem, medians):
        self.problem, self.medians, self.calls = problem, medians, []

    def time(self, runner, name, abandon_above_ms):
        self.calls.append(runner)
        return _Timing(self.medians[runner].pop(0))


@pytest.mark.parametrize(
    ("medians", "winner"),
    [
        # the sweep's fastest is only as fast as the default when timed again: default kept
        ({"default": [1.0, 1.0], "algo 1": [0.999, 0.90], "algo 2": [1.2, 1.2]}, "default"),
        # beats the default in every round: wins over a finalist that does once
        ({"default": [1.0, 1.0], "algo 1": [0.95, 0.94], "algo 2": [0.90, 1.01]}, "algo 1"),
        # both beat it every round: the lower mean wins
        ({"default": [1.0, 1.02], "algo 1": [0.95, 0.94], "algo 2": [0.90, 0.93]}, "algo 2"),
    ],
)  # fmt: skip
def test_a_winner_is_confirmed_against_the_default_in_every_round(monkeypatch, medians, winner):
    from ftbench.autotune import sweep
    from ftbench.gemm.candidate import Candidate

    class Backend:
        def prepare(self, candidate, problem):
            return candidate.name

    monkeypatch.setattr(sweep, "get_backend", lambda name: Backend())
    problem = GemmProblem(1, 4096, 4096)
    default = Candidate("cublas", "default", {"algo": -1})
    finalists = [Candidate("cublas", f"algo {i}", {"algo": i}) for i in (1, 2)]
    records = {c.key(): {} for c in [default, *finalists]}
    expected = {name: list(values) for name, values in medians.items()}
    tuner = _ConfirmingTuner(problem, medians)
    best, best_timing, default_timing = sweep._confirm(
        tuner, default, finalists, records, sweep.SweepOptions()
    )
    assert best.name == winner
    # rounds alternate: default, finalists, default, finalists
    assert tuner.calls == ["default", "algo 1", "algo 2"] * sweep.CONFIRM_ROUNDS
    # the entry keeps the last round's times, and every contender's record its medians
    assert default_timing.median_ms == expected["default"][-1]
    assert best_timing.median_ms == expected[winner][-1]
    for candidate in [default, *finalists]:
        assert records[candidate.key()]["confirm_median_ms"] == expected[candidate.name]


def _corrupt(data, key, field, value):
    """Set `field` ("winner_time.median_ms" reaches inside) of one entry, or of the header."""
    target = data["header"] if key == "header" else data["entries"][key]
    *inside, name = field.split(".")
    for step in inside:
        target = target[step]
    target[name] = value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("winner", None, "winner must be a candidate object, got None"),
        ("default", [1], "default must be a candidate object"),
        ("winner_time", None, "winner_time must be an object with median_ms"),
        ("winner_time.median_ms", 0, r"winner_time.median_ms must be a finite number > 0, got 0"),
        ("default_time.median_ms", "0.5", "default_time.median_ms must be a finite number > 0"),
        ("winner_time.ci_low_ms", float("nan"), "winner_time.ci_low_ms must be a finite number"),
        ("winner_time.median_ms", -1.0, "winner_time.median_ms must be a finite number > 0"),
        ("winner_time.median_ms", float("inf"), "winner_time.median_ms must be a finite"),
        ("winner_time.rel_noise", -0.1, r"winner_time.rel_noise must be a finite number >= 0"),
        ("runner_up_time.median_ms", [1.0], "runner_up_time.median_ms must be a finite number"),
        ("winner.name", ["algo"], "winner.name must be a string"),
        ("candidates_timed", "many", "candidates_timed must be a non-negative integer"),
        ("candidates_failed", 1.5, "candidates_failed must be a non-negative integer"),
        ("measured_utc", "yesterday", "measured_utc must be an ISO 8601 time with a time zone"),
        ("measured_utc", "2026-11-24T16:48:53", "measured_utc must be an ISO 8601 time with"),
        ("measured_utc", 20261124, "measured_utc must be an ISO 8601 time with a time zone"),
    ],
)  # fmt: skip
def test_entries_with_bad_values_are_corrupt_and_named(tmp_path, field, value, message):
    data = cache_with(entry(PROBLEMS[0])).to_dict()
    _corrupt(data, PROBLEMS[0].key(), field, value)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(data))
    where = rf"^{path}: entry {PROBLEMS[0].key()}: "
    with pytest.raises(InvalidInputError, match=where + message):
        load_cache(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gpu_name", ["NVIDIA H200"], "gpu_name must be a string"),
        ("cublas", None, "cublas must be a string"),
        ("created_utc", "x", "created_utc must be an ISO 8601 time with a time zone"),
    ],
)
def test_headers_with_bad_values_are_corrupt_and_named(tmp_path, field, value, message):
    data = cache_with(entry(PROBLEMS[0])).to_dict()
    _corrupt(data, "header", field, value)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match=rf"^{path}: header\.{message}"):
        load_cache(path)
