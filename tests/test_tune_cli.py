"""`ftbench tune --dry-run` and `ftbench cache ...` without a GPU."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ftbench.autotune.plan import parse_duration
from ftbench.cli import app
from ftbench.errors import InvalidInputError
from ftbench.gemm.cache import CacheHeader, TunedCache, load_cache
from ftbench.gemm.problem import GemmProblem
from tune_fakes import entry, fake_environment

runner = CliRunner()
HEADER = CacheHeader.from_environment(fake_environment())


def saved_cache(path, *ms):
    cache = TunedCache(header=HEADER)
    for m in ms:
        cache.add(entry(GemmProblem(m=m, n=4096, k=4096), winner_ms=0.5 if m > 1 else 1.0))
    return cache.save(path)


def test_dry_run_lists_every_problem_with_candidate_counts():
    result = runner.invoke(
        app, ["tune", "--profile", "gptj-6b", "--batch", "1,8", "--input-len", "128",
              "--backends", "cublas", "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "18 problems to tune" in result.output
    assert "gemm:f16f16f16:f32:NT:m=1:n=12288:k=4096:b=1" in result.output
    assert "42" in result.output


def test_dry_run_from_an_hf_config(tmp_path):
    config = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
              "n_positions": 1024, "vocab_size": 50257}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = runner.invoke(
        app, ["tune", "--config", str(path), "--backends", "cublas", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "m=1:n=2304:k=768" in result.output  # fused QKV of GPT-2 small


def test_profile_and_config_are_exclusive():
    result = runner.invoke(app, ["tune", "--dry-run"])
    assert isinstance(result.exception, InvalidInputError)
    assert "exactly one of --profile" in str(result.exception)


def test_unknown_backend_is_named():
    result = runner.invoke(
        app, ["tune", "--profile", "gpt2-124m", "--backends", "magic", "--dry-run"]
    )
    assert isinstance(result.exception, InvalidInputError)
    assert "magic" in str(result.exception)


@pytest.mark.parametrize(
    ("text", "seconds"), [("900", 900), ("90s", 90), ("15m", 900), ("1.5h", 5400)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration_is_an_error():
    with pytest.raises(InvalidInputError, match="15m"):
        parse_duration("fifteen minutes")


def test_cache_show(tmp_path):
    path = saved_cache(tmp_path / "c.json", 1, 8)
    result = runner.invoke(app, ["cache", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 problems, tuned on NVIDIA H200" in result.output
    assert "m=8:n=4096:k=4096" in result.output
    shown = json.loads(runner.invoke(app, ["cache", "show", str(path), "--json"]).output)
    assert len(shown["entries"]) == 2


def test_cache_validate_without_a_gpu(tmp_path, monkeypatch):
    from ftbench.bench import environment

    monkeypatch.setattr(
        environment.gpu_state, "nvml", lambda: (_ for _ in ()).throw(RuntimeError("x"))
    )
    path = saved_cache(tmp_path / "c.json", 1)
    result = runner.invoke(app, ["cache", "validate", str(path)])
    assert result.exit_code == 0
    assert "valid, 1 problems (no GPU here to match)" in result.output


def test_cache_validate_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"schema": 1, "kind": "ftbench-tuned-cache", "header": {"gpu_name": 1}}')
    result = runner.invoke(app, ["cache", "validate", str(path)])
    assert isinstance(result.exception, InvalidInputError)


def test_cache_merge_and_prune(tmp_path):
    first = saved_cache(tmp_path / "a.json", 1)
    second = saved_cache(tmp_path / "b.json", 8, 64)
    merged = tmp_path / "m.json"
    result = runner.invoke(app, ["cache", "merge", str(merged), str(first), str(second)])
    assert result.exit_code == 0, result.output
    assert len(load_cache(merged).entries) == 3
    again = runner.invoke(app, ["cache", "merge", str(merged), str(first)])
    assert isinstance(again.exception, InvalidInputError)  # never overwrites without --force

    result = runner.invoke(app, ["cache", "prune", str(merged), "--min-speedup", "1.5"])
    assert result.exit_code == 0, result.output
    assert "dropped 1, kept 2" in result.output
    assert len(load_cache(merged).entries) == 2


def test_a_cache_with_a_zero_time_is_invalid_everywhere(tmp_path):
    path = saved_cache(tmp_path / "c.json", 1, 8)
    data = json.loads(path.read_text())
    next(iter(data["entries"].values()))["winner_time"]["median_ms"] = 0
    path.write_text(json.dumps(data))
    for command in (["validate"], ["show"], ["prune", "--min-speedup", "1.1"],
                    ["merge", str(tmp_path / "m.json")]):  # fmt: skip
        result = runner.invoke(app, ["cache", *command, str(path)])
        assert isinstance(result.exception, InvalidInputError), (command, result.output)
        assert "winner_time.median_ms must be a finite number > 0" in str(result.exception)
        assert "valid" not in result.output


@pytest.mark.parametrize("days", ["-1", "nan", "inf", "1e9"])
def test_prune_refuses_an_age_that_is_not_a_sane_number_of_days(tmp_path, days):
    path = saved_cache(tmp_path / "c.json", 1)
    result = runner.invoke(app, ["cache", "prune", str(path), "--older-than-days", days])
    assert isinstance(result.exception, InvalidInputError), result.output
    assert "--older-than-days takes a number of days from 0 to 36500" in str(result.exception)


@pytest.mark.parametrize("ratio", ["nan", "-1", "inf", "-inf"])
def test_prune_refuses_a_speedup_that_is_not_a_finite_ratio(tmp_path, ratio):
    path = saved_cache(tmp_path / "c.json", 1, 8)
    before = path.read_bytes()
    result = runner.invoke(app, ["cache", "prune", str(path), "--min-speedup", ratio])
    assert isinstance(result.exception, InvalidInputError), result.output
    assert str(result.exception).startswith(
        "--min-speedup takes a ratio >= 0, the cuBLAS default's time over the winner's (e.g. 1.05"
    )
    assert path.read_bytes() == before


def test_prune_refuses_a_speedup_above_every_entry_naming_the_largest(tmp_path):
    path = saved_cache(tmp_path / "c.json", 1, 8)  # speed-ups 1.0 and 2.0
    before = path.read_bytes()
    result = runner.invoke(app, ["cache", "prune", str(path), "--min-speedup", "100"])
    assert str(result.exception) == (
        "--min-speedup 100 is above every entry's speed-up (the largest is 2.000): it would drop "
        "all 2 entries; nothing written"
    )
    assert path.read_bytes() == before
    kept = runner.invoke(app, ["cache", "prune", str(path), "--min-speedup", "2"])
    assert "dropped 1, kept 1" in kept.output


def test_prune_drops_entries_older_than_the_age(tmp_path):
    path = saved_cache(tmp_path / "c.json", 1, 8)
    result = runner.invoke(app, ["cache", "prune", str(path), "--older-than-days", "0"])
    assert "dropped 2, kept 0" in result.output


def test_config_is_a_path_never_a_profile_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["tune", "--config", "gptj-6b", "--dry-run"])
    assert isinstance(result.exception, InvalidInputError), result.output
    assert str(result.exception).startswith("cannot read config file gptj-6b")


def test_profile_is_a_name_never_a_path(tmp_path):
    config = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
              "n_positions": 1024, "vocab_size": 50257}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = runner.invoke(app, ["tune", "--profile", str(path), "--dry-run"])
    assert isinstance(result.exception, InvalidInputError), result.output
    assert str(result.exception) == (
        f"--profile takes a built-in profile name, not a file: use --config {path}"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--budget", "0m"], "--budget must be more than zero, got 0 s"),
        (["--budget", "soon"], "a duration is a number with s, m or h"),
        (["--backends", ""], "--backends: name at least one of cublas, cublaslt, cutlass, ftbench"),
        (["--backends", " , "], "--backends: name at least one of"),
        (["--backends", "cublas,magic"], "unknown backend 'magic'"),
        (["--backends", "cublas,cutlass,cublas"], "--backends lists cublas twice"),
    ],
)
def test_dry_run_checks_the_options_a_real_run_checks(options, message):
    result = runner.invoke(app, ["tune", "--profile", "gpt2-124m", *options, "--dry-run"])
    assert isinstance(result.exception, InvalidInputError), result.output
    assert message in str(result.exception)


@pytest.mark.parametrize("option", ["--pp", "--beam"])
def test_tune_has_no_option_that_changes_nothing_tuned(option):
    # Pipeline stages run the same shapes as one GPU, and the runtime has no beam search.
    result = runner.invoke(app, ["tune", "--profile", "gpt2-124m", option, "2", "--dry-run"])
    assert result.exit_code == 2
    assert f"No such option: {option}" in result.output


def test_help_shows_the_default_cache_path_whole():
    result = subprocess.run(
        [sys.executable, "-m", "ftbench", "tune", "--help"],
        capture_output=True, text=True, timeout=120, env={"COLUMNS": "300", "PATH": ""},
    )  # fmt: skip
    line = next(line for line in result.stdout.splitlines() if "--out " in line)
    assert "$FTBENCH_CACHE_DIR/tuned/GPU-NAME.json (e.g. tuned/nvidia-h200.json)" in line
