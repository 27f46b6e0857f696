"""`ftbench serve-bench` past its checks: on a machine with a GPU but without the paged GPU
engine it refuses in one honest line and writes nothing; with engines (fakes here, of exact
step times: tests/serving_fakes.py) it writes run records and their CSV, and never replaces
them without --force."""

import json
from pathlib import Path

import pytest

from ftbench.bench import environment
from ftbench.bench.environment import EnvironmentRecord
from ftbench.modelbench import serving_bench
from ftbench.reports.records import load_result_set
from serving_fakes import FakeServingEngine, FakeStaticEngine
from test_cli_overwrite import ftbench

FOUNDATION = Path(__file__).parent / "data" / "results" / "foundation-20261124T154141Z.json"
SERVE = ["serve-bench", "--profile", "gptj-6b", "--requests", "24", "--input-len",
         "uniform:16,128", "--output-len", "normal:32,8", "--rate", "inf,100",
         "--max-concurrency", "4", "--max-num-tokens", "256"]  # fmt: skip


@pytest.fixture
def on_a_gpu(tmp_path, monkeypatch):
    """A folder to run in, on a machine whose environment record lists an H200."""
    record = EnvironmentRecord.from_dict(json.loads(FOUNDATION.read_text())["environment"])
    monkeypatch.setattr(environment, "capture_environment", lambda: record)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def with_engines(on_a_gpu, monkeypatch):
    def engines(config):
        return serving_bench.ServingEngines(
            FakeServingEngine(4096, config.block_size), FakeStaticEngine()
        )

    monkeypatch.setattr(serving_bench, "open_gpu_engines", engines)
    return on_a_gpu


def test_without_the_paged_engine_it_says_so_and_writes_nothing(on_a_gpu, monkeypatch, capsys):
    code, _, err = ftbench(monkeypatch, capsys, *SERVE, "--out", "serve.json")
    assert code == 2 and err.count("\n") == 1
    assert "needs the paged GPU engine" in err and "nothing was measured" in err
    assert list(on_a_gpu.iterdir()) == []


def test_with_engines_it_writes_a_record_per_engine_and_rate(with_engines, monkeypatch, capsys):
    code, out, err = ftbench(monkeypatch, capsys, *SERVE, "--out", "serve.json")
    assert code == 0, err
    result_set = load_result_set(with_engines / "serve.json")
    assert [(r["engine"], r["serving"]["arrivals"]) for r in result_set.data] == [
        ("ftbench-inflight", "inf"), ("ftbench-static", "inf"),
        ("ftbench-inflight", "poisson:100"), ("ftbench-static", "poisson:100"),
    ]  # fmt: skip
    assert result_set.gpu == "NVIDIA H200"
    csv = (with_engines / "serve.csv").read_text().splitlines()
    assert csv[0].startswith("engine,arrivals,batch,request_throughput,output_throughput")
    assert len(csv) == 5
    assert "TTFT p99 ms" in out and "results: serve.json (and serve.csv)" in out


def test_results_are_replaced_only_with_force(with_engines, monkeypatch, capsys):
    assert ftbench(monkeypatch, capsys, *SERVE, "--out", "serve.json")[0] == 0
    before = (with_engines / "serve.json").read_bytes()
    code, _, err = ftbench(monkeypatch, capsys, *SERVE, "--out", "serve.json")
    assert code == 2 and "refusing to replace serve.json" in err
    assert (with_engines / "serve.json").read_bytes() == before
    code, _, _ = ftbench(monkeypatch, capsys, *SERVE, "--out", "serve.json", "--seed", "1",
                         "--force")  # fmt: skip
    assert code == 0 and (with_engines / "serve.json").read_bytes() != before


def test_a_sharegpt_dataset_gives_the_prompts_and_says_its_tokens_are_estimated(
    with_engines, monkeypatch, capsys
):
    conversations = [
        {"conversations": [{"from": "human", "value": "q" * (40 * i)},
                           {"from": "gpt", "value": "a" * (8 * i + 8)}]}
        for i in range(1, 6)
    ]  # fmt: skip
    (with_engines / "sg.json").write_text(json.dumps(conversations))
    argv = ["serve-bench", "--profile", "gptj-6b", "--requests", "10", "--dataset", "sg.json",
            "--max-concurrency", "4", "--out", "serve.json"]  # fmt: skip
    code, _, err = ftbench(monkeypatch, capsys, *argv)
    assert code == 0, err
    assert "token counts estimated as ceil(characters / 4)" in err
    record = load_result_set(with_engines / "serve.json").data[0]
    assert record["serving"]["input_lengths"] == "sharegpt:sg.json"
    assert record["serving"]["output_lengths"] == "sharegpt:sg.json"
    assert record["input_len"] == 30 and record["output_len"] == 8  # means of 10 .. 50, 4 .. 12
