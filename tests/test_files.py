"""ftbench.files: atomic writes, reads that name the file, number checks, and the check before
every write that keeps a user's file from being replaced."""

import errno
import gzip
import json
import os

import pytest

from ftbench import files
from ftbench.bench.environment import capture_environment
from ftbench.bench.results import read_results, write_results
from ftbench.errors import InvalidInputError
from ftbench.files import (
    check_file_target,
    check_folder_target,
    check_folder_writable,
    positive_number,
    positive_numbers,
    prepare_folder,
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


CACHE_TEXT = '{"schema": 1, "kind": "ftbench-tuned-cache", "header": {}, "entries": {}}'


def test_a_new_path_may_be_written(tmp_path):
    check_file_target(tmp_path / "new" / "out.json", "run results")
    check_folder_target(tmp_path / "site", "a report", written_before=lambda path: False)


@pytest.mark.parametrize(
    ("content", "described"),
    [
        (CACHE_TEXT, "an ftbench file of kind 'ftbench-tuned-cache'"),
        ('{"my": "notes"}', "a file of 15 bytes that ftbench did not write"),
        ("", "an empty file"),
    ],
)
def test_an_existing_file_is_refused_naming_what_it_is(tmp_path, content, described):
    path = tmp_path / "out.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError) as refused:
        check_file_target(path, "an environment record", kind="environment")
    assert str(refused.value) == (
        f"refusing to replace {path} ({described}) with an environment record: choose another "
        "path, or pass --force to replace it"
    )


def test_a_file_of_the_same_kind_or_an_input_may_be_replaced(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text(CACHE_TEXT)
    check_file_target(path, "a tuned cache", kind="ftbench-tuned-cache")
    check_file_target(path, "a pruned cache", inputs=[tmp_path / "." / "cache.json"])
    with pytest.raises(InvalidInputError, match="with a pruned cache"):
        check_file_target(path, "a pruned cache", inputs=[tmp_path / "other.json"])


def test_force_replaces_any_file_but_never_a_folder_nor_below_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    check_file_target(tmp_path / "notes.txt", "run results", force=True)
    with pytest.raises(InvalidInputError, match=r"notes.txt/r.json: .*notes.txt is a file"):
        check_file_target(tmp_path / "notes.txt" / "r.json", "run results", force=True)
    with pytest.raises(InvalidInputError, match=f"^cannot write {tmp_path}: it is a folder"):
        check_file_target(tmp_path, "run results", force=True)


def test_a_folder_is_written_into_when_empty_or_written_before_or_forced(tmp_path):
    (tmp_path / "site").mkdir()
    check_folder_target(tmp_path / "site", "a report", written_before=lambda path: False)
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (tmp_path / "site" / name).write_text("mine")
    check_folder_target(tmp_path / "site", "a report", written_before=lambda path: True)
    check_folder_target(tmp_path / "site", "a report", True, written_before=lambda path: False)
    with pytest.raises(InvalidInputError) as refused:
        check_folder_target(tmp_path / "site", "a report", written_before=lambda path: False)
    assert str(refused.value) == (
        f"refusing to write a report into {tmp_path / 'site'}: it holds 4 other entries (a.txt, "
        "b.txt, c.txt, ...); choose a new or empty folder, or pass --force to write into it"
    )


def test_a_file_is_never_replaced_by_a_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="cannot write a report: .*notes.txt is a file"):
        check_folder_target(tmp_path / "notes.txt", "a report", True, written_before=lambda p: 1)


def test_a_writable_folder_is_checked_without_leaving_anything(tmp_path):
    check_folder_writable(tmp_path / "a" / "b")
    (tmp_path / "c").mkdir()
    check_folder_writable(tmp_path / "c")
    assert [path.name for path in tmp_path.rglob("*")] == ["c"]
    assert prepare_folder(tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize("check", [check_folder_writable, prepare_folder])
def test_a_folder_that_cannot_be_written_is_found_out_at_once(tmp_path, check):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match=r"notes.txt/out: .*notes.txt is a file"):
        check(tmp_path / "notes.txt" / "out")
    with pytest.raises(InvalidInputError, match="notes.txt: it is a file, not a folder"):
        check(tmp_path / "notes.txt")
    with pytest.raises(InvalidInputError, match="^cannot write in /proc/ftbench-test/out: "):
        check("/proc/ftbench-test/out")  # the kernel refuses, root or not


def test_a_read_only_filesystem_is_found_out_at_once(tmp_path, monkeypatch):
    # Tests run as root, whom permissions do not stop, and cannot mount a read-only filesystem:
    # the file system's refusal is simulated where a file is first made.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(InvalidInputError) as refused:
        check_folder_writable(tmp_path / "out")
    assert str(refused.value) == f"cannot write in {tmp_path / 'out'}: Read-only file system"


def test_a_folder_holding_only_hidden_entries_and_the_commands_inputs_is_written_into(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "history.sqlite3").write_bytes(b"")
    check_folder_target(
        tmp_path, "a dashboard", inputs=[tmp_path / "history.sqlite3"], written_before=lambda p: 0
    )
    with pytest.raises(InvalidInputError, match=r"holds 1 other entry \(history.sqlite3\)"):
        check_folder_target(tmp_path, "a dashboard", written_before=lambda path: False)
