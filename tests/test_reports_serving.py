"""serve-bench's records read by `ftbench report`, `compare` and `history` as any run records
are: the report plots latency against throughput over the rates, compare judges each request
latency, the history keeps a series per stream. The records are made here by serving a stream
through fake engines (tests/serving_fakes.py): made up, not measured."""

import json
import math
from pathlib import Path

import pytest

from ftbench.bench.environment import EnvironmentRecord
from ftbench.bench.results import write_results
from ftbench.modelbench.requests import Uniform
from ftbench.modelbench.serving_bench import ServingConfig, ServingEngines, run_serving_benchmark
from ftbench.modelbench.serving_metrics import Slo
from ftbench.profiles.catalog import load_builtin
from ftbench.reports.compare import UNCHANGED, compare_files
from ftbench.reports.history import add_files, read_history
from ftbench.reports.records import load_result_set, metrics
from ftbench.reports.report import write_report
from serving_fakes import FakeServingEngine, FakeStaticEngine
from test_reports_render import embedded_images, non_white_fraction, synthetic_run_file

FOUNDATION = Path(__file__).parent / "data" / "results" / "foundation-20261124T154141Z.json"
RATES = (50.0, 200.0, math.inf)


def serving_file(path: Path, step_scale: float = 1.0) -> Path:
    """A serve-bench result file of GPT-J at three rates (fake engines; `step_scale` slows
    their steps)."""
    settings = ServingConfig(
        spec=load_builtin("gptj-6b"), dtype="fp16", requests=30, input_lengths=Uniform(16, 256),
        output_lengths=Uniform(2, 64), rates=RATES, max_concurrency=8, max_num_tokens=512,
        slo=Slo(ttft_ms=40.0),
    )  # fmt: skip
    inflight, static = FakeServingEngine(4096), FakeStaticEngine()
    for engine in (inflight, static):
        engine.step_scale = step_scale
    records = []
    run_serving_benchmark(settings, ServingEngines(inflight, static), records.append)
    environment = json.loads(FOUNDATION.read_text())["environment"]
    environment["command_line"] = "MADE-UP serve-bench records for tests (fake engines)"
    return write_results(path, "run", records, EnvironmentRecord.from_dict(environment))


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    return serving_file(tmp_path_factory.mktemp("serving") / "serving.json")


def test_a_serving_file_reads_back_as_run_records(served):
    result_set = load_result_set(served)
    assert result_set.kind == "run" and len(result_set.data) == 6
    names = metrics(result_set)
    assert len(names) == 6 * 3  # ttft, decode step (TPOT) and end-to-end per configuration
    key = ("ftbench-inflight gptj-6b fp16 tp=1 pp=1 batch=8 in=uniform:16,256 "
           "out=uniform:2,64 arrivals=poisson:50 requests=30 ttft_ms")  # fmt: skip
    assert len(names[key]) == 30


def test_the_report_plots_latency_against_throughput_and_tables_the_percentiles(tmp_path, served):
    page, markdown = write_report([served], tmp_path / "report")
    images = embedded_images(page.read_text())
    assert set(images) == {"latency vs throughput"}
    assert non_white_fraction(images["latency vs throughput"]) > 0.02
    text = markdown.read_text()
    assert "6 measured configurations" in text
    assert "| engine | scenario | arrivals | concurrency | req/s | out tok/s |" in text
    assert text.count("| ftbench-inflight | gptj-6b fp16 concurrency=8 in=uniform:16,256 ") == 3
    assert "| poisson:200 |" in text and "| inf |" in text


def test_a_file_of_runs_and_serving_records_shows_both(tmp_path, served):
    runs = json.loads(synthetic_run_file(tmp_path / "runs.json").read_text())
    both = json.loads(served.read_text())
    both["records"] += runs["records"]
    (tmp_path / "both.json").write_text(json.dumps(both))
    page, _ = write_report([tmp_path / "both.json"], tmp_path / "report")
    assert {"latency vs batch", "latency vs throughput"} <= set(embedded_images(page.read_text()))


def test_compare_judges_every_request_latency_of_two_serving_files(tmp_path, served):
    same = compare_files(served, served)
    assert len(same.changes) == 18 and {c.verdict for c in same.changes} == {UNCHANGED}
    slower = serving_file(tmp_path / "slower.json", step_scale=1.25)
    regressed = compare_files(served, slower)
    assert regressed.exit_code == 1
    ttft = next(c for c in regressed.changes if c.name.endswith("arrivals=inf requests=30 ttft_ms"))
    assert ttft.change == pytest.approx(0.25, abs=0.01)


def test_the_history_keeps_a_series_per_engine_stream(tmp_path, served):
    db = tmp_path / "history.sqlite3"
    ((_, added),) = add_files(db, [served])
    assert added.new == 3 and added.metrics == 18  # a run per series
    runs, _ = read_history(db)
    # ftbench-inflight and -static on one stream are one series, as peers on one shape are
    assert sorted(runs["series"].unique()) == sorted(
        f"gptj-6b fp16 tp=1 pp=1 batch=8 in=uniform:16,256 out=uniform:2,64 "
        f"arrivals={name} requests=30"
        for name in ("poisson:50", "poisson:200", "inf")
    )
