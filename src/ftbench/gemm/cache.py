"""The tuned-config cache: the contract between `ftbench tune` and the runtime.

One JSON file per GPU kind and library set:

    {"schema": 1, "kind": "ftbench-tuned-cache",
     "header": {gpu_name, compute_capability, driver, cuda_runtime, cublas, cublaslt, cutlass,
                ftbench, created_utc},
     "entries": {problem key: {problem, winner, winner_time, default, default_time,
                               runner_up, runner_up_time, candidates_timed, candidates_failed,
                               measured_utc}}}

`open_tuned_cache` is how a command that runs GEMMs gets its cache, once: it resolves the
default path (`default_cache_path`, where `ftbench tune` writes), checks the header against the
running GPU and libraries and returns the cache with the reason it is not used, if it is not (the
way PyTorch TunableOp's validators work: stale tuning is never applied).
A file that is not a tuned cache, or is corrupt (a missing field, a time that is not a finite
positive number, a timestamp without a time zone, ...), is an InvalidInputError naming the file,
the entry and the field.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ftbench.bench.environment import EnvironmentRecord
from ftbench.errors import InvalidInputError
from ftbench.files import default_cache_dir, positive_number, read_json, write_json_atomic
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.problem import GemmProblem

SCHEMA = 1
KIND = "ftbench-tuned-cache"
# Header fields whose change can change which kernel is fastest (or what a config means).
CHECKED_FIELDS = (
    "gpu_name", "compute_capability", "cuda_runtime", "cublas", "cublaslt", "cutlass", "ftbench",
)  # fmt: skip


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _aware_time(value: Any, where: str) -> str:
    """`value` if it is an ISO 8601 time with a time zone (what `utc_now` writes)."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidInputError(
            f"{where} must be an ISO 8601 time with a time zone (e.g. 2026-11-24T16:44:16+00:00), "
            f"got {value!r}"
        )
    return value


def _object_with(data: Any, names: list[str], where: str) -> dict[str, Any]:
    """`data` if it is a JSON object with exactly the fields `names`."""
    if not isinstance(data, dict) or sorted(data) != sorted(names):
        raise InvalidInputError(f"{where} must be an object with {', '.join(names)}, got {data!r}")
    return data


@dataclass(frozen=True)
class CacheHeader:
    """The GPU and libraries a cache was tuned with."""

    gpu_name: str
    compute_capability: str
    driver: str
    cuda_runtime: str
    cublas: str
    cublaslt: str
    cutlass: str
    ftbench: str
    created_utc: str = field(default_factory=utc_now, compare=False)

    @classmethod
    def from_dict(cls, data: Any) -> CacheHeader:
        """A header as the cache stores it: every field a string, created_utc a time."""
        names = [f.name for f in fields(cls)]
        _object_with(data, names, "header")
        for name in names:
            if not isinstance(data[name], str):
                raise InvalidInputError(f"header.{name} must be a string, got {data[name]!r}")
        _aware_time(data["created_utc"], "header.created_utc")
        return cls(**data)

    @classmethod
    def from_environment(cls, environment: EnvironmentRecord, gpu_index: int = 0) -> CacheHeader:
        if not environment.gpus:
            raise InvalidInputError(f"a tuned cache needs a GPU: {environment.no_gpu_reason}")
        gpu = environment.gpus[gpu_index]
        software = environment.software
        return cls(
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability or "unknown",
            driver=environment.driver_version or "unknown",
            cuda_runtime=software["cuda_runtime"],
            cublas=software["cublas"],
            cublaslt=software["cublaslt"],
            cutlass=software["cutlass"],
            ftbench=environment.ftbench_version,
        )

    def mismatches(
        self, other: CacheHeader, labels: tuple[str, str] = ("file", "running")
    ) -> list[str]:
        """Checked fields that differ, as 'field: file X, running Y' (or other `labels` of this
        header and the other)."""
        mine, theirs = labels
        return [
            f"{name}: {mine} {getattr(self, name)}, {theirs} {getattr(other, name)}"
            for name in CHECKED_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]


@dataclass(frozen=True)
class TimeSummary:
    """A candidate's measured time per launch (ms) and its spread."""

    median_ms: float
    ci_low_ms: float
    ci_high_ms: float
    rel_noise: float

    @classmethod
    def of(cls, timing: Any) -> TimeSummary:
        """From a `bench.timer.Timing`."""
        return cls(timing.median_ms, timing.ci_low_ms, timing.ci_high_ms, timing.rel_noise)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TimeSummary:
        """A summary as the cache stores it: finite times above zero, a noise of zero or more."""
        names = [f.name for f in fields(cls)]
        _object_with(data, names, where)
        return cls(
            *(positive_number(data[name], f"{where}.{name}") for name in names[:3]),
            positive_number(data["rel_noise"], f"{where}.rel_noise", zero_ok=True),
        )

    def faster_beyond_noise(self, other: TimeSummary, min_gain: float = 0.0) -> bool:
        """True when the 95% intervals do not overlap, this one is lower, and it gains at least
        `min_gain` (a fraction of the other's median; drift between runs is not in the CIs)."""
        gained = other.median_ms - self.median_ms >= min_gain * other.median_ms
        return self.ci_high_ms < other.ci_low_ms and gained


@dataclass(frozen=True)
class TunedEntry:
    """The tuning outcome for one problem."""

    problem: GemmProblem
    winner: Candidate
    winner_time: TimeSummary
    default: Candidate
    default_time: TimeSummary
    runner_up: Candidate | None
    runner_up_time: TimeSummary | None
    candidates_timed: int
    candidates_failed: int
    measured_utc: str = field(default_factory=utc_now)

    @property
    def speedup(self) -> float:
        """Default time over winner time (1.0 when the default won)."""
        return self.default_time.median_ms / self.winner_time.median_ms

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["problem"] = self.problem.to_dict()
        for name in ("winner", "default", "runner_up"):
            data[name] = None if data[name] is None else data[name].to_dict()
        for name in ("winner_time", "default_time", "runner_up_time"):
            data[name] = None if data[name] is None else asdict(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Any) -> TunedEntry:
        """An entry as `to_dict` writes it; a missing or malformed field is an error naming it."""
        _object_with(data, [f.name for f in fields(cls)], "the entry")
        runner_up, runner_up_time = data["runner_up"], data["runner_up_time"]
        return cls(
            problem=GemmProblem.from_dict(data["problem"]),
            winner=_candidate(data["winner"], "winner"),
            winner_time=TimeSummary.from_dict(data["winner_time"], "winner_time"),
            default=_candidate(data["default"], "default"),
            default_time=TimeSummary.from_dict(data["default_time"], "default_time"),
            runner_up=None if runner_up is None else _candidate(runner_up, "runner_up"),
            runner_up_time=(
                None if runner_up_time is None
                else TimeSummary.from_dict(runner_up_time, "runner_up_time")
            ),
            candidates_timed=_count(data["candidates_timed"], "candidates_timed"),
            candidates_failed=_count(data["candidates_failed"], "candidates_failed"),
            measured_utc=_aware_time(data["measured_utc"], "measured_utc"),
        )  # fmt: skip


def _candidate(data: Any, where: str) -> Candidate:
    if not isinstance(data, dict):
        raise InvalidInputError(f"{where} must be a candidate object, got {data!r}")
    if not isinstance(data.get("name"), str):
        raise InvalidInputError(f"{where}.name must be a string, got {data.get('name')!r}")
    return Candidate.from_dict(data)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"{where} must be a non-negative integer, got {value!r}")
    return value


@dataclass
class TunedCache:
    """Entries by problem key, with the header they are valid for (hits and misses are counted
    where GEMMs run: `gemm.dispatch.DispatchStats`)."""

    header: CacheHeader
    entries: dict[str, TunedEntry] = field(default_factory=dict)

    def lookup(self, problem: GemmProblem) -> TunedEntry | None:
        """The entry for `problem`, or None."""
        return self.entries.get(problem.key())

    def add(self, entry: TunedEntry) -> None:
        self.entries[entry.problem.key()] = entry

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": KIND,
            "header": asdict(self.header),
            "entries": {key: entry.to_dict() for key, entry in sorted(self.entries.items())},
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: an interrupted save leaves the previous file whole."""
        return write_json_atomic(path, self.to_dict())


def parse_cache(document: Any, source: str) -> TunedCache:
    """A TunedCache from a parsed JSON document; anything malformed names `source`."""
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise InvalidInputError(f"{source} is not an ftbench tuned-config cache")
    if document.get("schema") != SCHEMA:
        raise InvalidInputError(
            f"{source}: cache schema {document.get('schema')!r} is not supported "
            f"(this ftbench reads schema {SCHEMA})"
        )
    try:
        header = CacheHeader.from_dict(document.get("header"))
    except InvalidInputError as exc:
        raise InvalidInputError(f"{source}: {exc}") from exc
    if not isinstance(document.get("entries"), dict):
        raise InvalidInputError(f"{source}: 'entries' must be an object of entries by problem key")
    entries = {}
    for key, value in document["entries"].items():
        try:
            entry = TunedEntry.from_dict(value)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{source}: entry {key}: {exc}") from exc
        except TypeError as exc:  # e.g. a list where GemmProblem expects a dtype name
            raise InvalidInputError(f"{source}: entry {key}: corrupt ({exc})") from exc
        if entry.problem.key() != key:
            raise InvalidInputError(f"{source}: entry {key} holds problem {entry.problem.key()}")
        entries[key] = entry
    return TunedCache(header=header, entries=entries)


def load_cache(path: str | os.PathLike[str]) -> TunedCache:
    """A cache file as it is, for inspection and maintenance on any machine (to run GEMMs with
    one, `open_tuned_cache` checks it against the running GPU)."""
    return parse_cache(read_json(path), str(path))


def default_cache_path(gpu_name: str) -> Path:
    """Where `ftbench tune` writes, and the runtime looks, for a GPU's tuned cache:
    $FTBENCH_CACHE_DIR (or $XDG_CACHE_HOME/ftbench)/tuned/GPU-NAME.json."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return default_cache_dir() / "tuned" / f"{slug}.json"


@dataclass(frozen=True)
class TunedChoice:
    """The tuned cache a command runs its GEMMs with: `cache` (None: every GEMM untuned), the
    file it came from, and `note`, why no cache is used when none is (printed and recorded)."""

    cache: TunedCache | None
    path: str | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What a result record says of it: the file, its entries, and why it is not used."""
        return {
            "path": self.path,
            "entries": None if self.cache is None else len(self.cache.entries),
            "note": self.note,
        }


UNTUNED = TunedChoice(None, None, "no tuned cache asked for")


def open_tuned_cache(
    path: str | os.PathLike[str] | None, environment: EnvironmentRecord
) -> TunedChoice:
    """The tuned cache for the GPU of `environment`, opened once per command.

    `path` None looks at `default_cache_path` (absent: untuned, with a note saying where it
    looked); a given path must exist. A cache tuned on another GPU or library set is not used,
    and the note says what differs. A corrupt file is an InvalidInputError naming it.
    """
    running = CacheHeader.from_environment(environment)
    if path is None:
        default = default_cache_path(running.gpu_name)
        if not default.is_file():
            return TunedChoice(None, None, f"no tuned cache at {default} (ftbench tune writes it)")
        path = default
    elif not Path(path).is_file():
        raise InvalidInputError(f"tuned cache {path}: no such file")
    cache = parse_cache(read_json(path), str(path))
    problems = cache.header.mismatches(running)
    if problems:
        note = f"{path} was tuned elsewhere and is not used ({'; '.join(problems)})"
        return TunedChoice(None, str(path), note)
    return TunedChoice(cache, str(path))


def merge_caches(caches: dict[str, TunedCache]) -> TunedCache:
    """One cache from several (by file name) of the same GPU and libraries; per problem the
    faster winner."""
    if not caches:
        raise InvalidInputError("nothing to merge")
    (first_name, first), *_ = caches.items()
    merged = TunedCache(header=first.header)
    for name, cache in caches.items():
        problems = first.header.mismatches(cache.header, (first_name, name))
        if problems:
            raise InvalidInputError(f"cannot merge caches tuned apart: {'; '.join(problems)}")
        for key, entry in cache.entries.items():
            current = merged.entries.get(key)
            if current is None or entry.winner_time.median_ms < current.winner_time.median_ms:
                merged.entries[key] = entry
    return merged


MAX_AGE_DAYS = 36500  # a century: any older cache entry is older than CUDA


def prune_cache(
    cache: TunedCache,
    min_speedup: float = 0.0,
    older_than_days: float | None = None,
    now: datetime | None = None,
) -> tuple[TunedCache, int]:
    """A copy of `cache` without the entries that no longer pay (speed-up below
    `min_speedup`) or were measured more than `older_than_days` before `now`, and how many
    were dropped.

    Refused before anything is dropped: a speed-up floor that is not a finite ratio >= 0 or
    that lies above every entry's speed-up (a typo such as 100 for 1.00 would empty the cache),
    and an age outside 0 to MAX_AGE_DAYS.
    """
    if not (math.isfinite(min_speedup) and min_speedup >= 0):
        raise InvalidInputError(
            "--min-speedup takes a ratio >= 0, the cuBLAS default's time over the winner's "
            f"(e.g. 1.05: keep winners at least 5% faster), got {min_speedup}"
        )
    if older_than_days is not None and not 0 <= older_than_days <= MAX_AGE_DAYS:
        raise InvalidInputError(
            f"--older-than-days takes a number of days from 0 to {MAX_AGE_DAYS}, "
            f"got {older_than_days}"
        )
    largest = max((entry.speedup for entry in cache.entries.values()), default=None)
    if largest is not None and min_speedup > largest:
        raise InvalidInputError(
            f"--min-speedup {min_speedup:g} is above every entry's speed-up (the largest is "
            f"{largest:.3f}): it would drop all {len(cache.entries)} entries; nothing written"
        )
    cutoff = None
    if older_than_days is not None:
        cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=older_than_days)

    def keep(entry: TunedEntry) -> bool:
        too_old = cutoff is not None and datetime.fromisoformat(entry.measured_utc) < cutoff
        return entry.speedup >= min_speedup and not too_old

    kept = {key: entry for key, entry in cache.entries.items() if keep(entry)}
    return TunedCache(header=cache.header, entries=kept), len(cache.entries) - len(kept)
