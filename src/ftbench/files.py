"""Reading and writing the files ftbench produces: JSON, written atomically, never over a file
of another purpose.

Every command that writes checks its target first, with `check_file_target` or
`check_folder_target`, before it spends any time: an existing file is replaced only when it is
the command's own (the file it reads and rewrites, or one of the same "kind" that an earlier run
of it wrote), and a folder that holds anything is written into only when an earlier run of the
same command wrote it. `--force` lifts the refusal; a folder is never replaced by a file, nor a
file by a folder.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
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
    _refuse_below_a_file(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_through_temp_file(target, text)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def _refuse_below_a_file(target: Path) -> None:
    for folder in target.parents:
        if folder.exists() and not folder.is_dir():
            raise InvalidInputError(f"cannot write {target}: {folder} is a file, not a folder")


def check_file_target(
    path: str | os.PathLike[str],
    writes: str,
    force: bool = False,
    *,
    kind: str | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse (InvalidInputError) to write `writes` (e.g. "an environment record") as the file
    `path` where that would destroy something: a folder, or a path below a file, always; an
    existing file unless it is one of `inputs` (the command rewrites what it reads, as `cache
    prune` does in place), a JSON document of `kind` (an earlier output of the same command,
    which it resumes or renews), or `force` is given. Without `kind` no other file is replaced:
    a measurement costs GPU time."""
    target = Path(path)
    _refuse_below_a_file(target)
    if target.is_dir():
        raise InvalidInputError(f"cannot write {target}: it is a folder, not a file")
    if not target.exists() or force:
        return
    if target.resolve() in {Path(item).resolve() for item in inputs}:
        return
    if kind is not None and json_kind(target) == kind:
        return
    raise InvalidInputError(
        f"refusing to replace {target} ({_describe(target)}) with {writes}: choose another path, "
        "or pass --force to replace it"
    )


def check_folder_target(
    path: str | os.PathLike[str],
    writes: str,
    force: bool = False,
    *,
    written_before: Callable[[Path], bool],
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse (InvalidInputError) to write `writes` (e.g. "a report") into the folder `path`
    where it would mix with or replace what is there: a file, always; a folder that holds
    anything but the command's `inputs` and hidden entries (.git, in a checkout of a pages
    branch) unless `written_before(path)` says an earlier run of the same command wrote it
    (that output is then renewed), or `force` is given."""
    target = Path(path)
    _refuse_below_a_file(target)
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"cannot write {writes}: {target} is a file, not a folder")
    if not target.exists() or force or written_before(target):
        return
    own = {Path(item).resolve() for item in inputs}
    held = sorted(
        entry.name
        for entry in target.iterdir()
        if not entry.name.startswith(".") and entry.resolve() not in own
    )
    if held:
        listed = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise InvalidInputError(
            f"refusing to write {writes} into {target}: it holds {len(held)} other "
            f"entr{'y' if len(held) == 1 else 'ies'} ({listed}); choose a new or empty folder, "
            "or pass --force to write into it"
        )


def json_kind(path: str | os.PathLike[str]) -> str | None:
    """The "kind" of the JSON object in `path` (every file ftbench writes names its kind); None
    for anything else: not JSON, not an object, no string kind, unreadable."""
    try:
        document = read_json(path)
    except InvalidInputError:
        return None
    kind = document.get("kind") if isinstance(document, dict) else None
    return kind if isinstance(kind, str) else None


def _describe(path: Path) -> str:
    kind = json_kind(path)
    if kind is not None:
        return f"an ftbench file of kind {kind!r}"
    size = path.stat().st_size
    return "an empty file" if size == 0 else f"a file of {size} bytes that ftbench did not write"


def check_folder_writable(path: str | os.PathLike[str]) -> None:
    """Make sure files can be written in the folder `path`, or in the nearest folder above it
    that exists, where it would be made, and leave nothing behind: a long job that writes there
    at its end learns of a read-only or unwritable place at its start. A failure is an
    InvalidInputError saying why."""
    target = Path(path)
    _check_folder_path(target)
    existing = next(folder for folder in (target, *target.parents) if folder.exists())
    try:
        fd, probe = tempfile.mkstemp(prefix=".ftbench-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidInputError(f"cannot write in {target}: {exc.strerror or exc}") from exc


def prepare_folder(path: str | os.PathLike[str]) -> Path:
    """Create the folder `path` (and its parents); a failure is an InvalidInputError saying
    why."""
    target = Path(path)
    _check_folder_path(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot write in {target}: {exc.strerror or exc}") from exc
    return target


def _check_folder_path(target: Path) -> None:
    _refuse_below_a_file(target)
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"cannot write in {target}: it is a file, not a folder")


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
