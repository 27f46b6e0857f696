"""No command replaces a user's file: each refuses a target it did not write for the same
purpose, in one line, and renews what it wrote itself; --force replaces."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from ftbench import cli
from ftbench.gemm.cache import load_cache

RESULTS = Path(__file__).parent / "data" / "results"
TINY_LLAMA = {
    "model_type": "llama", "vocab_size": 101, "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 32,
}  # fmt: skip


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A tuned cache (cache.json), another (other.json), a run result (run.json), a history
    (history.sqlite3) and a checkpoint folder with its config (ckpt/), in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTBENCH_CACHE_DIR", str(tmp_path / "ftbench-cache"))
    shutil.copy(RESULTS / "tune-cache.json", tmp_path / "cache.json")
    shutil.copy(RESULTS / "tune-cache.json", tmp_path / "other.json")
    shutil.copy(RESULTS / "run-llama2-7b-bf16.json", tmp_path / "run.json")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(TINY_LLAMA))
    from ftbench.reports.history import add_files

    add_files(tmp_path / "history.sqlite3", [next(RESULTS.glob("foundation-*.json"))])
    return tmp_path


def ftbench(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    """Run `ftbench ARGV` in this process as the console script does: (exit code, out, err)."""
    monkeypatch.setattr(sys, "argv", ["ftbench", *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


REFUSED = "error: refusing to replace cache.json (an ftbench file of kind 'ftbench-tuned-cache')"
# every command that writes, pointed at the tuned cache cache.json, and how its error begins
AT_THE_CACHE = {
    "env --out": (["env", "--out", "cache.json"], REFUSED),
    "cache prune --out": (["cache", "prune", "other.json", "--out", "cache.json"], REFUSED),
    "cache merge": (["cache", "merge", "cache.json", "other.json"], REFUSED),
    "tune --results": (["tune", "--profile", "gpt2-124m", "--out", "t.json", "--results",
                        "cache.json"], REFUSED),
    "run --out": (["run", "--profile", "gpt2-124m", "--out", "cache.json"], REFUSED),
    "serve-bench --out": (["serve-bench", "--profile", "gpt2-124m", "--out", "cache.json"],
                          REFUSED),
    "report --out": (["report", "run.json", "--out", "cache.json"],
                     "error: cannot write the ftbench report: cache.json is a file, not a folder"),
    "dashboard --out": (["dashboard", "--db", "history.sqlite3", "--out", "cache.json"],
                        "error: cannot write the ftbench dashboard: cache.json is a file"),
    "convert OUT": (["convert", "ckpt", "cache.json"],
                    "error: cannot write a pre-sharded checkpoint: cache.json is a file"),
    "history add --db": (["history", "add", "run.json", "--db", "cache.json"],
                         "error: cache.json: not an ftbench history database"),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "error"), AT_THE_CACHE.values(), ids=AT_THE_CACHE.keys())
def test_a_tuned_cache_is_byte_identical_after_every_refused_write(
    files, monkeypatch, capsys, argv, error
):
    before = sha256(files / "cache.json")
    code, _, err = ftbench(monkeypatch, capsys, *argv)
    assert (code, err.count("\n")) == (2, 1), err
    assert err.startswith(error), err
    assert sha256(files / "cache.json") == before
    assert not (files / "t.json").exists()


def test_env_out_replaces_an_environment_record_and_a_cache_only_with_force(
    files, monkeypatch, capsys
):
    assert ftbench(monkeypatch, capsys, "env", "--out", "env.json")[0] == 0
    assert json.loads((files / "env.json").read_text())["kind"] == "environment"
    assert ftbench(monkeypatch, capsys, "env", "--out", "env.json")[0] == 0
    code, _, err = ftbench(monkeypatch, capsys, "env", "--out", "cache.json")
    assert (code, err) == (2, (
        "error: refusing to replace cache.json (an ftbench file of kind 'ftbench-tuned-cache') "
        "with an environment record: choose another path, or pass --force to replace it\n"
    ))  # fmt: skip
    assert ftbench(monkeypatch, capsys, "env", "--out", "cache.json", "--force")[0] == 0
    assert json.loads((files / "cache.json").read_text())["kind"] == "environment"


def test_cache_prune_rewrites_its_input_and_replaces_another_file_only_with_force(
    files, monkeypatch, capsys
):
    assert (
        ftbench(monkeypatch, capsys, "cache", "prune", "cache.json", "--out", "cache.json")[0] == 0
    )
    code, _, err = ftbench(monkeypatch, capsys, "cache", "prune", "cache.json", "--out", "run.json")
    assert code == 2 and "(an ftbench file of kind 'run') with a pruned cache" in err
    argv = ["cache", "prune", "cache.json", "--min-speedup", "1.05", "--out", "run.json", "--force"]
    assert ftbench(monkeypatch, capsys, *argv)[0] == 0
    assert load_cache(files / "run.json").entries


def test_cache_merge_writes_into_one_of_its_inputs(files, monkeypatch, capsys):
    before = load_cache(files / "cache.json").entries
    argv = ["cache", "merge", "cache.json", "cache.json", "other.json"]
    assert ftbench(monkeypatch, capsys, *argv)[0] == 0
    assert load_cache(files / "cache.json").entries == before


def test_a_report_folder_is_renewed_and_another_folder_needs_force(files, monkeypatch, capsys):
    assert ftbench(monkeypatch, capsys, "report", "cache.json", "--out", "site")[0] == 0
    assert ftbench(monkeypatch, capsys, "report", "run.json", "--out", "site")[0] == 0
    assert "run" in (files / "site" / "report.md").read_text()
    code, _, err = ftbench(monkeypatch, capsys, "report", "cache.json", "--out", "ckpt")
    assert code == 2 and "it holds 1 other entry (config.json)" in err
    assert ftbench(monkeypatch, capsys, "report", "cache.json", "--out", "ckpt", "--force")[0] == 0
    assert json.loads((files / "ckpt" / "config.json").read_text()) == TINY_LLAMA


def test_a_dashboard_folder_is_renewed_but_a_report_folder_is_not_a_dashboards(
    files, monkeypatch, capsys
):
    for _ in range(2):
        argv = ["dashboard", "--db", "history.sqlite3", "--out", "site"]
        assert ftbench(monkeypatch, capsys, *argv)[0] == 0
    assert ftbench(monkeypatch, capsys, "report", "cache.json", "--out", "report")[0] == 0
    code, _, err = ftbench(monkeypatch, capsys, "dashboard", "--db", "history.sqlite3", "--out",
                           "report")  # fmt: skip
    assert code == 2 and "refusing to write the ftbench dashboard into report" in err


def test_run_never_replaces_results_nor_writes_its_csv_over_a_file(files, monkeypatch, capsys):
    (files / "mine.csv").write_text("a,b\n")
    before = sha256(files / "mine.csv")
    for out, words in (("run.json", "(an ftbench file of kind 'run') with run results"),
                       ("mine.json", "mine.csv (a file of 4 bytes that ftbench did not write)"),
                       ("mine.csv", "results are JSON")):  # fmt: skip
        code, _, err = ftbench(monkeypatch, capsys, "run", "--profile", "gpt2-124m", "--out", out)
        assert code == 2 and words in err, err
    assert sha256(files / "mine.csv") == before


def test_convert_never_writes_into_its_checkpoint(files, monkeypatch, capsys):
    for out in ("ckpt", "ckpt/tp2", "./ckpt/"):
        code, _, err = ftbench(monkeypatch, capsys, "convert", "ckpt", out, "--tp", "2", "--force")
        assert code == 2 and "write the pre-sharded checkpoint to a folder of its own" in err
    assert sorted(path.name for path in (files / "ckpt").iterdir()) == ["config.json"]


def test_a_dashboard_joins_its_history_in_a_fresh_checkout_of_a_pages_branch(
    files, monkeypatch, capsys
):
    pages = files / "pages"
    (pages / ".git").mkdir(parents=True)
    shutil.copy(files / "history.sqlite3", pages / "history.sqlite3")
    argv = ["dashboard", "--db", pages / "history.sqlite3", "--out", pages]
    assert ftbench(monkeypatch, capsys, *argv)[0] == 0  # the workflow of docs/reports.md
    (pages / "notes.md").write_text("mine")
    (pages / "index.html").unlink()
    code, _, err = ftbench(monkeypatch, capsys, *argv)
    assert code == 2 and "it holds 1 other entry (notes.md)" in err
