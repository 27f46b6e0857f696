"""`ftbench profiles list` and `ftbench profiles show`, without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftbench.cli import app
from ftbench.errors import InvalidInputError

runner = CliRunner()
CONFIGS = Path(__file__).parent / "data" / "hf_configs"


def test_list_json_has_every_profile_with_its_size():
    result = runner.invoke(app, ["profiles", "list", "--json"])
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert len(rows) == 19
    assert rows["llama2-70b"]["parameters"] == 68_976_648_192
    assert (rows["llama2-70b"]["num_heads"], rows["llama2-70b"]["num_kv_heads"]) == (64, 8)
    assert rows["t5-base"]["layers"] == "12+12"


def test_list_table_shows_names_and_sizes_unabridged():
    result = runner.invoke(app, ["profiles", "list"])
    assert result.exit_code == 0
    assert "megatron-gpt-345m" in result.stdout
    assert "174.616" in result.stdout and "128256" in result.stdout


def test_show_json_for_gptj_tp2():
    result = runner.invoke(
        app,
        [
            "profiles",
            "show",
            "gptj-6b",
            "--tp",
            "2",
            "--batch",
            "1,8",
            "--input-len",
            "128",
            "--json",
        ],
    )
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["profile"] == "gptj-6b"
    assert summary["workload"]["batch_sizes"] == [1, 8]
    assert summary["rank"]["lm_head_rows"] == 25200
    rows = {row["key"]: row for row in summary["problems"]}
    qkv = rows["gemm:f16f16f16:f32:NT:m=1:n=6144:k=4096:b=1"]
    assert (qkv["count"], qkv["roles"], qkv["bound"]) == (28, ["generation:qkv"], "memory")
    assert qkv["flops"] == 2 * 6144 * 4096
    assert rows["gemm:f16f16f16:f32:NT:m=1024:n=8192:k=4096:b=1"]["bound"] == "compute"
    assert len(summary["problems"]) == 22


def show_json(*options):
    result = runner.invoke(app, ["profiles", "show", "--profile", "gptj-6b", *options, "--json"])
    assert result.exit_code == 0, result.output
    return {row["key"]: row for row in json.loads(result.stdout)["problems"]}


def test_show_pp_counts_the_calls_of_one_stage():
    qkv = "gemm:f16f16f16:f32:NT:m=1:n=12288:k=4096:b=1"
    assert show_json()[qkv]["count"] == 28
    assert show_json("--pp", "2")[qkv]["count"] == 14  # 28 layers, 14 per stage


def test_show_beam_gives_generation_gemms_batch_x_beam_rows():
    rows = show_json("--batch", "2", "--beam", "4")
    assert rows["gemm:f16f16f16:f32:NT:m=8:n=12288:k=4096:b=1"]["roles"] == ["generation:qkv"]


def test_show_beam_help_says_the_runtime_has_no_beam_search():
    result = subprocess.run(
        [sys.executable, "-m", "ftbench", "profiles", "show", "--help"],
        capture_output=True, text=True, timeout=120, env={"COLUMNS": "300", "PATH": ""},
    )  # fmt: skip
    line = next(line for line in result.stdout.splitlines() if "--beam" in line)
    assert "ftbench's runtime has no beam search yet" in line


def test_show_table_lists_roles_and_shapes():
    result = runner.invoke(
        app, ["profiles", "show", "--profile", "llama2-70b", "--tp", "8", "--unfused"]
    )
    assert result.exit_code == 0
    for text in ("ffn_gate, ffn_up", "k, v", "attn_scores*", "4000", "3584"):
        assert text in result.stdout


def test_show_reads_a_local_hf_config():
    result = runner.invoke(
        app,
        [
            "profiles",
            "show",
            "--config",
            str(CONFIGS / "bert-base-uncased.json"),
            "--json",
            "--gpu",
            "a100",
        ],
    )
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["profile"] == "bert-base-uncased"
    assert summary["gpu"]["source"] == "datasheet"
    assert all(phases == ["context"] for phases in (row["phases"] for row in summary["problems"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "nope"], "no built-in profile 'nope'"),
        (
            ["--profile", "gptj-6b", "--batch", "1,x"],
            "--batch takes comma-separated positive integers",
        ),
        (
            ["--profile", "gptj-6b", "--input-len", "0"],
            "--input-len takes comma-separated positive integers",
        ),
        (["--profile", "gptj-6b", "--batch", "1,8,1"], "--batch lists 1 twice"),
        (["--profile", "gptj-6b", "--output-len", "128, 128"], "--output-len lists 128 twice"),
        (
            ["--profile", "gptj-6b", "--batch", "\u00b2"],
            "--batch takes comma-separated positive integers",
        ),
        (
            ["--profile", "gptj-6b", "--batch", "\u0663"],
            "--batch takes comma-separated positive integers",
        ),
        (
            ["--profile", "gptj-6b", "--batch", "99999999999999999999"],
            "--batch: 99999999999999999999 is above",
        ),
        (
            ["--profile", "gptj-6b", "--input-len", "2147483649"],
            "--input-len: 2147483649 is above 2147483648",
        ),
        (["--profile", "gptj-6b", "--tp", "3"], "cannot be split evenly over tp=3"),
    ],
)
def test_bad_arguments_raise_ftbench_errors(args, message):
    result = runner.invoke(app, ["profiles", "show", *args])
    assert result.exit_code != 0
    assert isinstance(result.exception, InvalidInputError)
    assert message in str(result.exception)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "fp4"], "'fp4' is not one of 'fp16', 'bf16', 'fp8'"),
        (["--weights", "fp4"], "'fp4' is not one of 'fp16', 'bf16', 'fp8', 'int8'"),
        (["--scaling", "row"], "'row' is not one of 'tensor', 'outer', 'channel'"),
        (["--tp", "0"], "Invalid value for '--tp'"),
        (["--pp", "-2"], "Invalid value for '--pp'"),
        (["--beam", "0"], "Invalid value for '--beam'"),
        (["--gpu", "v100"], "'v100' is not one of 'a100', 'h100', 'h200'"),
    ],
)
def test_values_outside_an_options_choices_or_range_are_usage_errors(args, message, capsys):
    from ftbench import cli

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["ftbench", "profiles", "show", "--profile", "gptj-6b", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_old_positional_model_still_works_with_a_deprecation_warning():
    old = CliRunner().invoke(app, ["profiles", "show", "gptj-6b", "--json"])
    new = CliRunner().invoke(app, ["profiles", "show", "--profile", "gptj-6b", "--json"])
    assert old.exit_code == new.exit_code == 0
    assert old.stdout == new.stdout
    assert old.stderr.startswith("warning: `profiles show gptj-6b` is deprecated")


def test_profiles_show_tune_and_run_select_the_model_with_the_same_options():
    for command in (["profiles", "show"], ["tune"], ["run"]):
        help_text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).stdout
        assert "--profile" in help_text and "--config" in help_text, command


MISTRAL = str(CONFIGS / "mistral-7b-v0.1.json")
PAST_MISTRAL = (
    "warning: mistral-7b-v0.1 was trained for 32,768 positions (max_positions) but input length "
    "1000000 + output length 128 - 1 = 1000127 are asked for: the shapes and timings hold, the "
    "model's output past them is untrained\n"
)


@pytest.mark.parametrize(
    "command",
    [["profiles", "show", "--config", MISTRAL], ["tune", "--config", MISTRAL, "--dry-run"]],
    ids=["profiles show", "tune --dry-run"],
)
def test_lengths_past_a_rotary_models_positions_warn_naming_the_limit(command):
    result = CliRunner().invoke(app, [*command, "--input-len", "1000000"])
    assert result.exit_code == 0, result.output
    assert result.stderr == PAST_MISTRAL
    assert "1000000" in result.stdout  # the shapes are listed all the same


def test_run_warns_of_lengths_past_the_positions_before_it_looks_for_a_gpu(monkeypatch, capsys):
    from ftbench import cli

    monkeypatch.setattr(sys, "argv", ["ftbench", "run", "--config", MISTRAL, "--input-len",
                                      "1000000", "--out", "/nonexistent/r.json"])  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main()
    warning, error = capsys.readouterr().err.splitlines(keepends=True)
    assert warning == PAST_MISTRAL
    assert error.startswith("error: ")


def test_lengths_within_the_positions_give_no_warning():
    result = CliRunner().invoke(
        app, ["profiles", "show", "--config", MISTRAL, "--input-len", "32641"]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_bad_name_is_one_line_on_stderr_and_exit_code_2():
    result = subprocess.run(
        [sys.executable, "-m", "ftbench", "profiles", "show", "--profile", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: no built-in profile 'nope'; available: bert-base")
