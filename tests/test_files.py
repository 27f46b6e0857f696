import gzip
import json

import pytest

from ftbench.bench.environment import capture_environment
from ftbench.bench.results import read_results, write_results
from ftbench.errors import InvalidInputError
from ftbench.files import (
    positive_number,
    positive_numbers,
    read_json,
    write_json_atomic,
    write_text_atomic,
)


def test_atomic_write_then_read(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "a.json", {"x": [1, 2.5, "y"]})
    assert read_json(path) == {"x": [1, 2.5, "y"]}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temp file left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_json_atomic(tmp_path / "a.json", {"old": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert read_json(path) == {"old": True}
    assert len(list(tmp_path.iterdir())) == 1


def test_truncated_json_names_the_file_and_position(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"records": [1, 2')
    with pytest.raises(InvalidInputError, match=r"cut\.json is not valid JSON \(line 1"):
        read_json(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_json(tmp_path / "nope.json")


def test_gzip_compressed_json_is_read_and_a_corrupt_one_refused(tmp_path):
    path = tmp_path / "big.json.gz"
    path.write_bytes(gzip.compress(b'{"records": [1, 2]}'))
    assert read_json(path) == {"records": [1, 2]}
    path.write_bytes(gzip.compress(b'{"records": [1, 2]}')[:-9])  # truncated
    with pytest.raises(InvalidInputError, match="cannot read .*big.json.gz"):
        read_json(path)
    path.write_bytes(b'{"records": []}')  # not compressed at all
    with pytest.raises(InvalidInputError, match="cannot read .*big.json.gz"):
        read_json(path)


def test_results_round_trip(tmp_path):
    environment = capture_environment()
    path = write_results(tmp_path / "r.json", "foundation", [{"median_ms": 1.0}], environment)
    document = read_results(path)
    assert document["kind"] == "foundation"
    assert document["records"] == [{"median_ms": 1.0}]
    assert document["environment"] == environment


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2], "top level is not an object"),
        ({"schema": 1, "kind": "x"}, "missing environment, records"),
        ({"schema": 99, "kind": "x", "environment": {}, "records": []}, "schema 99"),
        ({"schema": 1, "kind": ["x"], "environment": {}, "records": []}, "'kind' must be a string"),
    ],
)
def test_wrong_result_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InvalidInputError, match=message):
        read_results(path)


@pytest.mark.parametrize(
    "value", [0, -1.5, "1.0", None, True, [1.0], float("nan"), float("inf"), 10**400]
)
def test_positive_number_refuses_anything_but_a_finite_number_above_zero(value):
    with pytest.raises(InvalidInputError, match=r"^timing\.median_ms must be a finite number > 0"):
        positive_number(value, "timing.median_ms")


def test_positive_numbers():
    assert positive_number(0, "rel_noise", zero_ok=True) == 0.0
    assert positive_numbers([1, 2.5], "samples_ms") == [1.0, 2.5]
    with pytest.raises(InvalidInputError, match=r"samples_ms\[1\] must be a finite number > 0"):
        positive_numbers([1.0, 0.0], "samples_ms")
    with pytest.raises(InvalidInputError, match="samples_ms must be a list of numbers"):
        positive_numbers("1.0", "samples_ms")


def test_writing_over_a_folder_is_a_clear_error(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidInputError, match=rf"^cannot write {tmp_path}/out: Is a directory"):
        write_json_atomic(tmp_path / "out", {})
    assert list((tmp_path / "out").iterdir()) == []  # no temp file left behind


def test_writing_below_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    target = tmp_path / "notes.txt" / "report.html"
    with pytest.raises(InvalidInputError, match=rf"^cannot write {target}: .*notes.txt is a file"):
        write_text_atomic(target, "<html>")


def test_writing_where_files_cannot_be_made_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="^cannot write /proc/ftbench-test.json: "):
        write_json_atomic("/proc/ftbench-test.json", {})
