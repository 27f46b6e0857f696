"""Every kind of file ftbench writes is read and reported (`reports.kinds`), and a report is not
stopped by a file of a kind it does not know. Attention and all-reduce sections use the real
device results in benchmarks/results; the other files here are made up for the test."""

import gzip
import json
from pathlib import Path

import pytest

from ftbench.bench.environment import EnvironmentRecord
from ftbench.bench.results import write_acceptance, write_results
from ftbench.errors import InvalidInputError
from ftbench.reports import html, records, sections, tables
from ftbench.reports.kinds import FLAT_KINDS, KINDS, TUNED_CACHE
from ftbench.reports.records import load_result_set, metrics
from ftbench.reports.report import write_report

RESULTS = Path(__file__).parent / "data" / "results"
BENCHMARKS = Path(__file__).parents[1] / "benchmarks" / "results"
FOUNDATION = RESULTS / "foundation-20261124T154141Z.json"
ATTENTION = BENCHMARKS / "attention-20261124T182211Z.json"
ALLREDUCE = BENCHMARKS / "parallel-20261124" / "allreduce-20261124T224801Z.json"


def environment() -> EnvironmentRecord:
    return EnvironmentRecord.from_dict(json.loads(FOUNDATION.read_text())["environment"])


def report(tmp_path: Path, *paths) -> str:
    _, markdown = write_report(list(paths), tmp_path / "out")
    return markdown.read_text()


def test_every_kind_has_a_reader_and_plotted_kinds_have_a_section_of_their_own():
    readers = {*records._PARSERS, *FLAT_KINDS, TUNED_CACHE}
    assert readers == set(KINDS)
    assert set(sections.SECTIONS) == {name for name, kind in KINDS.items() if kind.plotted}
    unplotted = {name for name, kind in KINDS.items() if not kind.plotted}
    assert set(tables.TITLES) == unplotted - set(FLAT_KINDS)


def test_a_file_of_an_unknown_kind_is_listed_with_a_note_and_the_report_goes_on(tmp_path):
    mystery = write_results(tmp_path / "mystery.json", "mystery", [{"x": 1.5}], environment())
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"gptj tp1": 3.25, "nested": {"deep": [1, 2]}}))
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps([{"m": 1, "us": 2.0}, {"m": 2, "us": 3.0}]))
    markdown = report(tmp_path, mystery, plain, listed, FOUNDATION)
    assert markdown.count("## Not a kind ftbench reads") == 3
    assert "Note: kind 'mystery' is not one ftbench reads (it reads tune, " in markdown
    assert "| 1 | 1.5 |" in markdown  # record #, x
    assert "Note: no kind: not a file ftbench writes" in markdown
    assert "| gptj tp1 | 3.25 |" in markdown and "| nested.deep | 1, 2 |" in markdown
    assert "| 2 | 2 | 3 |" in markdown  # item #, m, us
    assert "## Timing core (foundation)" in markdown
    # where it was measured: from the unknown file's environment; the others have none
    assert "|  | mystery.json | foundation-20261124T154141Z.json |" in markdown


def test_compare_and_history_still_refuse_a_kind_they_cannot_read(tmp_path):
    mystery = write_results(tmp_path / "mystery.json", "mystery", [], environment())
    with pytest.raises(InvalidInputError, match="result kind 'mystery' is not known"):
        load_result_set(mystery)


def test_a_folder_stands_for_every_json_file_under_it_and_other_files_are_listed(tmp_path):
    folder = tmp_path / "results"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "foundation.json.gz").write_bytes(gzip.compress(FOUNDATION.read_bytes()))
    (folder / "acceptance.json").write_text("[]")
    (folder / "tune.log").write_text("tuned 3 problems\n")
    markdown = report(tmp_path, folder)
    assert f"{folder / 'sub' / 'foundation.json.gz'}\n" in markdown
    assert f"{folder / 'acceptance.json'}\n" in markdown
    not_read = markdown.split("## Not read")[1].split("## Environment")[0]
    assert f"| {folder / 'tune.log'} | not a result file (.json, .json.gz) |" in not_read


def test_an_input_that_does_not_exist_is_an_error_naming_it(tmp_path):
    with pytest.raises(InvalidInputError, match=f"cannot read {tmp_path / 'gone.json'}: no such"):
        write_report([FOUNDATION, tmp_path / "gone.json"], tmp_path / "out")
    with pytest.raises(InvalidInputError, match="no result file to report"):
        write_report([tmp_path], tmp_path / "out")


def test_a_gzip_compressed_result_file_reads_as_the_file_itself(tmp_path):
    packed = tmp_path / "foundation.json.gz"
    packed.write_bytes(gzip.compress(FOUNDATION.read_bytes()))
    assert metrics(load_result_set(packed)) == metrics(load_result_set(FOUNDATION))


def test_an_acceptance_summary_reads_back_and_shows_its_fields_and_lists(tmp_path):
    summary = {"geomean_vs_default": {"generation": 1.133}, "cases": [{"model": "gptj"}]}
    path = write_acceptance(
        tmp_path / "tune.json", "tune", summary, "nvidia-h200 (H200)", "6eeee45"
    )
    loaded = load_result_set(path)
    assert loaded.kind == "acceptance" and loaded.data["geomean_vs_default"]["generation"] == 1.133
    markdown = report(tmp_path, path)
    assert "## Acceptance: tune\n" in markdown and "nvidia-h200 (H200), commit 6eeee45" in markdown
    assert "| geomean_vs_default.generation | 1.133 |" in markdown
    assert "| cases # | model |\n| --- | --- |\n| 1 | gptj |" in markdown


def test_an_acceptance_summary_without_its_device_is_refused(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"kind": "acceptance", "name": "run", "commit": "abc"}))
    with pytest.raises(InvalidInputError, match=rf"^{path}: acceptance file lacks device$"):
        load_result_set(path)


def test_attention_and_allreduce_results_are_plotted_and_have_metrics(tmp_path):
    page, markdown = write_report([ATTENTION, ALLREDUCE], tmp_path / "out")
    html = page.read_text()
    assert 'alt="decode attention fraction of HBM bandwidth"' in html
    assert 'alt="all-reduce latency vs size"' in html
    text = markdown.read_text()
    assert "10 decode and 6 context cases on NVIDIA H200; HBM read 4.48 TB/s" in text
    assert "16 all-reduces on 2x NVIDIA H200" in text
    attention = metrics(load_result_set(ATTENTION))
    assert len(attention) == 16 and "attention decode gptj-6b B=1 L=256" in attention
    assert "attention context llama-2-7b S=2048" in attention
    allreduce = metrics(load_result_set(ALLREDUCE))
    assert {"allreduce nccl x2 8192 B", "allreduce one-shot x2 1048576 B"} <= set(allreduce)


def test_an_attention_record_of_another_kind_is_refused(tmp_path):
    document = json.loads(ATTENTION.read_text())
    document["records"][1]["kind"] = "prefill"
    bad = tmp_path / "attention.json"
    bad.write_text(json.dumps(document))
    with pytest.raises(
        InvalidInputError, match="record 0: kind 'prefill' is not decode or context"
    ):
        load_result_set(bad)


def test_a_table_kind_shows_a_table_per_record_kind(tmp_path):
    rows = [
        {"kind": "hf-comparison", "model": "gptj", "dtype": "fp16", "max_rel_logit_err": 0.00098,
         "greedy_token_agreement": 1.0, "teacher_forced_agreement": 1.0},
        {"kind": "gptj-speed", "model": "gptj-6b", "dtype": "fp16", "gemm": "tuned", "batch": 1,
         "decode_step_median_ms": 3.425, "floor_decode_step_ms": 2.783,
         "decode_step_samples_ms": [3.4] * 20},
    ]  # fmt: skip
    path = write_results(tmp_path / "runtime.json", "runtime-acceptance", rows, environment())
    markdown = report(tmp_path, path)
    assert "1 hf-comparison records, 1 gptj-speed records on NVIDIA H200" in markdown
    assert "| 1 | hf-comparison | gptj | fp16 | 0.00098 | 1 | 1 |" in markdown
    assert "| 1 | gptj-speed | gptj-6b | fp16 | tuned | 1 | 3.425 | 2.783 | 20 values |" in markdown


def test_every_file_in_benchmarks_results_is_reported(tmp_path, monkeypatch):
    """`ftbench report benchmarks/results/*` on the tree's own files: every JSON file there (in
    subfolders too) gets a section, the others (logs, CSVs) are listed. Its ~70 figures are built
    but not drawn (drawing takes minutes on two cores; every kind of figure is drawn above and in
    test_reports_render.py)."""
    monkeypatch.setattr(html, "png_base64", lambda figure, dpi=100: "")
    inputs = sorted(BENCHMARKS.glob("*"))
    markdown = report(tmp_path, *inputs)
    files = sorted(path for path in BENCHMARKS.rglob("*") if path.is_file())
    for path in files:
        if path.name.endswith((".json", ".json.gz")):
            assert f"\n{path}\n" in markdown, path
        else:
            assert f"| {path} | not a result file (.json, .json.gz) |" in markdown, path
    assert "## Acceptance: tune\n" in markdown and "## Acceptance: run\n" in markdown


def test_docs_list_every_kind():
    table = (Path(__file__).parents[1] / "docs" / "reports.md").read_text()
    for name in KINDS:
        assert f"| `{name}` |" in table or name == TUNED_CACHE, name
