"""The benchmark scripts' shared harness (benchmarks/_harness.py): every result file they write is
of a kind `reports.kinds` lists, and every acceptance summary names its device and commit."""

import ast
import json
import sys
from pathlib import Path

import pytest

from ftbench.bench.environment import EnvironmentRecord
from ftbench.reports.kinds import KINDS
from ftbench.reports.records import load_result_set

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import _harness  # noqa: E402

FOUNDATION = Path(__file__).parent / "data" / "results" / "foundation-20261124T154141Z.json"


def scripts() -> list[Path]:
    return sorted(path for path in BENCHMARKS.glob("*.py") if path.name != "_harness.py")


def calls_of(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name
    ]


def test_a_result_kind_without_a_schema_is_refused(tmp_path):
    environment = EnvironmentRecord.from_dict(json.loads(FOUNDATION.read_text())["environment"])
    with pytest.raises(SystemExit, match="result kind 'speed' has no schema"):
        _harness.write(tmp_path / "speed.json", "speed", [], environment)
    assert not (tmp_path / "speed.json").exists()


def test_a_summary_is_an_acceptance_file_with_device_and_commit(tmp_path, capsys):
    path = _harness.write_summary(tmp_path, "tune", {"problems": 57}, "nvidia-h200 (H200)", "6eee")
    assert path == tmp_path / "acceptance" / "tune.json"
    loaded = load_result_set(path)
    assert loaded.kind == "acceptance"
    assert {k: loaded.data[k] for k in ("name", "device", "commit", "problems")} == {
        "name": "tune", "device": "nvidia-h200 (H200)", "commit": "6eee", "problems": 57,
    }  # fmt: skip
    assert f"wrote {path}" in capsys.readouterr().out


def test_every_script_writes_through_the_harness_and_only_kinds_with_a_schema():
    for script in scripts():
        assert not calls_of(script, "write_results"), f"{script.name} writes results itself"
        for call in calls_of(script, "write"):
            kind = call.args[1]
            assert isinstance(kind, ast.Constant) and kind.value in KINDS, script.name


def test_every_script_takes_the_shared_options():
    for script in scripts():
        assert calls_of(script, "parser"), f"{script.name} builds its own command line"


def test_only_scripts_that_write_a_summary_take_a_device_kind():
    for script in scripts():
        summarizes = bool(calls_of(script, "write_summary"))
        (call,) = calls_of(script, "parser")
        asked = any(k.arg == "summary" and k.value.value for k in call.keywords)
        assert asked == summarizes, script.name
