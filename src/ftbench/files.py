"""Reading and writing the files ftbench produces: JSON, written atomically."""

from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ftbench.errors import InvalidInputError

FILE_MODE = 0o644


def default_cache_dir() -> Path:
    """$FTBENCH_CACHE_DIR, else $XDG_CACHE_HOME/ftbench, else ~/.cache/ftbench."""
    if os.environ.get("FTBENCH_CACHE_DIR"):
        return Path(os.environ["FTBENCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ftbench"


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temp file and a rename.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact.
    A path that cannot be written (a folder, below a file, no permission, a full disk) is an
    InvalidInputError saying why.
    """
    target = Path(path)
    for folder in target.parents:
        if folder.exists() and not folder.is_dir():
            raise InvalidInputError(f"cannot write {target}: {folder} is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_through_temp_file(target, text)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def _write_through_temp_file(target: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp_name, FILE_MODE)  # mkstemp makes 0600; results and pages are for sharing
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically (see `write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, gzip-compressed if its name ends in ".gz" (large result files are kept
    so); a missing, unreadable or malformed file is an InvalidInputError."""
    source = Path(path)
    try:
        data = source.read_bytes()
        text = (gzip.decompress(data) if source.suffix == ".gz" else data).decode("utf-8")
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise InvalidInputError(
            f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{source} is not a text file ({exc.reason} at byte {exc.start})"
        ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc


def is_positive_number(value: Any, zero_ok: bool = False) -> bool:
    """Whether `value` is an int or float (not a bool), finite and above zero (or zero, with
    `zero_ok`); NaN and infinity are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (value >= 0 if zero_ok else value > 0) and value <= sys.float_info.max


def positive_number(value: Any, where: str, zero_ok: bool = False) -> float:
    """`value` read from a file, as a float, if it is a finite number above zero (or zero, with
    `zero_ok`); a string, list, null, bool, NaN or infinity is an InvalidInputError naming
    `where`."""
    if not is_positive_number(value, zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise InvalidInputError(f"{where} must be a finite number {bound}, got {value!r}")
    return float(value)


def positive_numbers(values: Any, where: str) -> list[float]:
    """A list of finite numbers above zero read from a file (see `positive_number`)."""
    if not isinstance(values, list):
        raise InvalidInputError(f"{where} must be a list of numbers, got {values!r}")
    return [positive_number(value, f"{where}[{index}]") for index, value in enumerate(values)]
