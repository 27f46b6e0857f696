"""The command line without a GPU: help, env, and the one-line error path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftbench import cli
from ftbench.errors import InvalidInputError

runner = CliRunner()


def ftbench(*args):
    return subprocess.run(
        [sys.executable, "-m", "ftbench", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_commands():
    result = ftbench("--help")
    assert result.returncode == 0
    assert "env" in result.stdout


def test_version():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("ftbench ")


def test_env_json_is_a_complete_record():
    result = runner.invoke(cli.app, ["env", "--json"])
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    assert {"software", "gpus", "git_commit", "driver_version", "schema"} <= record.keys()
    if not record["gpus"]:
        assert record["no_gpu_reason"].startswith("no GPU found")


def test_env_table_without_gpu_says_so_and_exits_zero(monkeypatch, tmp_path):
    from ftbench.bench import environment

    def fail():
        raise RuntimeError("NVML could not start: driver not loaded")

    monkeypatch.setattr(environment.gpu_state, "nvml", fail)
    out = tmp_path / "env.json"
    result = runner.invoke(cli.app, ["env", "--out", str(out)])
    assert result.exit_code == 0
    assert "no GPU found" in result.stdout
    assert json.loads(out.read_text())["gpus"] == []


def test_ftbench_errors_become_one_line_and_exit_2(monkeypatch, capsys):
    def broken(**options):
        raise InvalidInputError("profile 'nope' not found; try: gptj-6b")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: profile 'nope' not found; try: gptj-6b"
    assert "Traceback" not in err


def test_unexpected_errors_are_one_line_and_exit_3(monkeypatch, capsys):
    def broken(**options):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.delenv("FTBENCH_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 3
    assert capsys.readouterr().err.strip() == (
        "ftbench: internal error: ZeroDivisionError: float division by zero "
        "(set FTBENCH_DEBUG=1 for the traceback)"
    )


def test_ftbench_debug_re_raises_unexpected_errors(monkeypatch):
    def broken(**options):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.setenv("FTBENCH_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main()


def test_help_states_the_exit_codes():
    result = ftbench("--help")
    assert "3: an internal error" in " ".join(result.stdout.split())


def test_failed_writes_exit_2_with_one_line(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("mine")
    cache = tmp_path / "c.json"
    cache.write_text((Path(__file__).parent / "data" / "results" / "tune-cache.json").read_text())
    env = {**os.environ, "FTBENCH_CACHE_DIR": str(tmp_path / "cache")}
    commands = [
        ["env", "--out", tmp_path / "folder"],
        ["env", "--out", "/proc/ftbench-test.json"],
        ["cache", "prune", cache, "--out", tmp_path / "folder"],
        ["cache", "merge", tmp_path / "folder", cache, "--force"],
        ["report", cache, "--out", tmp_path / "file"],
    ]
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "ftbench", *map(str, command)],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.startswith("error: cannot write") and result.stderr.count("\n") == 1
    assert (tmp_path / "file").read_text() == "mine"


def test_convert_names_the_dtypes_its_help_lists(tmp_path):
    result = ftbench("convert", str(tmp_path), str(tmp_path / "out"), "--dtype", "fp8")
    assert result.returncode == 2
    assert "'fp8' is not one of 'fp16', 'bf16', 'fp32'" in result.stderr
    help_text = " ".join(ftbench("convert", "--help").stdout.split())
    assert "fp16|bf16|fp32" in help_text  # the choices, from the table of stored dtypes


def help_text(*command):
    """The help of `ftbench COMMAND` as one line of words, without the boxes rich draws."""
    result = runner.invoke(cli.app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.translate(str.maketrans("│╭╮╰╯─", "      ")).split())


def test_tune_budget_help_says_its_default_and_what_happens_when_time_runs_out():
    assert (
        "Time budget for the whole sweep, e.g. 900s, 15m, 1h (default: none, "
        "every candidate is timed). It is shared out evenly over the problems left to tune; when "
        "a problem's share runs out, its candidates not yet timed are skipped"
    ) in help_text("tune")


def test_min_speedup_help_says_it_is_a_ratio_and_which_one():
    assert (
        "Drop entries whose speed-up is below this ratio: the cuBLAS default's time over the "
        "winner's (1.05 keeps winners at least 5% faster; default 0: keep all)"
    ) in help_text("cache", "prune")


def test_help_says_which_model_option_is_required_and_that_run_out_has_a_default():
    for command in ("tune", "run", "serve-bench"):
        assert "this or --config is required" in help_text(command)
    assert "(default: ftbench-run-MODEL-TIME.json in the current folder)" in help_text("run")
    assert "(default: ftbench-serve-MODEL-TIME.json in the current folder)" in help_text(
        "serve-bench"
    )
    assert "a folder holding anything else only with --force. [required]" in help_text("report")


@pytest.mark.parametrize("command", ["env", "tune", "cache prune", "cache merge", "run",
                                     "serve-bench", "report", "dashboard", "convert"])  # fmt: skip
def test_every_command_that_writes_offers_force_and_says_what_it_replaces(command):
    text = help_text(*command.split())
    assert "--force" in text
    assert "replace" in text or "renewed" in text


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--arch", "70"], "no CUTLASS kernel set for sm70; choose 90 or 80"),
        (["--arch", "90", "--dtype", "fp8"], "no CUTLASS kernels of ['fp8']; choose fp16 or bf16"),
    ],
)
def test_build_cutlass_refuses_an_arch_or_dtype_it_has_no_kernels_of(tmp_path, arguments, message):
    result = runner.invoke(cli.app, ["build-cutlass", *arguments, "--out", str(tmp_path)])
    assert isinstance(result.exception, InvalidInputError)
    assert str(result.exception) == message
    assert not (tmp_path / "cutlass").exists()


def test_build_cutlass_without_a_gpu_asks_for_the_arch(monkeypatch):
    from ftbench.errors import NoGpuError
    from ftbench.gemm.backends import cutlass

    def no_gpu():
        raise NoGpuError("no usable CUDA GPU through CuPy: no cupy")

    monkeypatch.setattr(cutlass, "gpu_build_arch", no_gpu)
    result = runner.invoke(cli.app, ["build-cutlass"])
    assert str(result.exception).endswith(
        "no cupy; to build for a GPU elsewhere give --arch 90 or 80"
    )
