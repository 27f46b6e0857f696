"""Result files read by kind, and the timed metrics they hold.

`load_result_set(path)` reads a result file (`bench.results`) or a tuned cache
(`gemm.cache`), checks the records of its kind and returns them parsed; anything malformed is
an InvalidInputError whose message starts with the path. `metrics(result_set)` gives every timed
quantity with its samples, by a stable name, for comparisons and the history, and
`metrics_by_series` the same grouped by series: what one model, dtype and shape measures, the
unit the history judges over time (runs of several models or shapes in one file are several
series):

- tune (every candidate of a sweep): per problem "<problem key> tuned" (the winner) and
  "<problem key> default" (the cuBLAS default); the series is the problem key (its dtypes and
  shape). A pass over one problem starts at the default's record; the winner is the other
  record whose samples were kept (the sweep keeps samples of the default and the winner only),
  or the default itself. A problem tuned twice in one file counts once, by its last pass (the
  one the cache keeps).
- foundation: per probe ("gemm_hot", "gemv_cold", "copy"), the samples of all runs pooled; the
  series is the probe's timer name with its shape ("gemm_hot 2048x4096x4096").
- gemv: per shape "gemv m=.. n=.. k=.. best" (the fastest config), "... cublas" and
  "... best+pdl"; the series is the shape ("gemv m=.. n=.. k=..").
- run: per configuration (`runs.run_key`) and timing metric, "<key> decode_step_ms" etc.; the
  series is the configuration without its engine (`runs.series_key`: model, dtype, tp, pp,
  batch, lengths), so ftbench and its peers on one shape are one series.
- attention: per case "attention decode <model> B=.. L=.." or "attention context <model> S=..";
  allreduce: per case "allreduce <method> x<ranks> <bytes> B" (" emulated" after the ranks
  where one GPU played them); each case is its own series.
- tune-peers, tuned caches and the kinds with nothing to plot (`kinds.KINDS`, `plotted`) keep
  no samples: they can be reported, not compared.

Which kinds there are, who writes them and which fields each record must have: `kinds`.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ftbench.bench.environment import EnvironmentRecord
from ftbench.bench.results import SCHEMA, parse_results
from ftbench.errors import InvalidInputError
from ftbench.files import positive_number, positive_numbers, read_json
from ftbench.gemm.cache import KIND as CACHE_KIND
from ftbench.gemm.cache import TunedCache, parse_cache
from ftbench.gemm.problem import GemmProblem
from ftbench.modelbench import runs
from ftbench.reports.kinds import FLAT_KINDS, KINDS, TUNED_CACHE, UNKNOWN


@dataclass(frozen=True)
class TuneOutcome:
    """One problem's tuning: the cuBLAS default against the winner (ms per launch)."""

    problem: GemmProblem
    winner_backend: str
    winner_name: str
    default_ms: float
    winner_ms: float
    default_samples_ms: tuple[float, ...] = ()
    winner_samples_ms: tuple[float, ...] = ()

    @property
    def speedup(self) -> float:
        return self.default_ms / self.winner_ms


@dataclass(frozen=True)
class Peers:
    """The tune benchmark's re-measured peers and the ceilings measured in the same run."""

    read_bytes_per_s: float
    peak_flops_per_s: float
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class ProbeTiming:
    """One foundation probe's timing in one run (a process)."""

    run: int
    probe: str
    timing: dict[str, Any]


@dataclass(frozen=True)
class Foundation:
    probes: list[ProbeTiming]
    ncu_gemv_cold_ms: float | None


@dataclass(frozen=True)
class GemvShape:
    """One decode GEMV shape: the fastest config, the cuBLAS default, and the best with PDL."""

    m: int
    n: int
    k: int
    bytes: int
    read_tb_per_s: float
    best_name: str
    best: dict[str, Any]
    cublas: dict[str, Any]
    best_pdl: dict[str, Any] | None

    @property
    def label(self) -> str:
        return f"gemv m={self.m} n={self.n} k={self.k}"


@dataclass(frozen=True)
class Measured:
    """The records of a kind with nothing parsed beyond its fields' presence (attention,
    allreduce, the table kinds): the run's ceilings (the record holding "ceilings", if any)
    and every other record, checked."""

    ceilings: dict[str, Any] | None
    records: list[dict[str, Any]]


@dataclass(frozen=True)
class Unknown:
    """A file of a kind ftbench does not read: the document as it is, and why it is not read."""

    document: Any
    note: str


@dataclass(frozen=True)
class ResultSet:
    """One input file, parsed: `data` is a list of TuneOutcome (tune, tuned cache), Peers,
    Foundation, a list of GemvShape, a list of run records, a `Measured` (the other kinds of
    result file), the document itself (a flat kind: an acceptance summary, a parallel step) or
    an `Unknown`, by `kind`."""

    path: str
    kind: str
    environment: EnvironmentRecord | None
    data: Any
    cache: TunedCache | None = field(default=None, repr=False)

    @property
    def gpu(self) -> str:
        """The GPU the results came from, e.g. "NVIDIA H200" or "2x NVIDIA H200"."""
        if self.cache is not None:
            return self.cache.header.gpu_name
        return gpu_label(self.environment)


def gpu_label(environment: EnvironmentRecord | None) -> str:
    if environment is None or not environment.gpus:
        return "no GPU"
    names = sorted({gpu.name for gpu in environment.gpus})
    count = len(environment.gpus)
    return names[0] if count == 1 else f"{count}x {' + '.join(names)}"


def _timing(value: Any, where: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A timer summary at `where`: a median_ms and the `required` fields; its times (samples
    optional: not every record keeps them, but a record that keeps them keeps at least one)
    finite numbers above zero, its noise zero or more. The L2 mode is under "l2"; timings of
    schema 1 (result files written before the rename) called it "cache", read as "l2"."""
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a timing object, got {value!r}")
    if "cache" in value and "l2" not in value:
        value = {("l2" if name == "cache" else name): item for name, item in value.items()}
    missing = [name for name in ("median_ms", *required) if name not in value]
    if missing:
        raise InvalidInputError(f"{where} lacks {', '.join(missing)}")
    for name in ("median_ms", "ci_low_ms", "ci_high_ms"):
        if name in value:
            positive_number(value[name], f"{where}.{name}")
    if "rel_noise" in value:
        positive_number(value["rel_noise"], f"{where}.rel_noise", zero_ok=True)
    if "samples_ms" in value and not positive_numbers(value["samples_ms"], f"{where}.samples_ms"):
        raise InvalidInputError(f"{where}.samples_ms is empty")
    return value


def _samples(timing: dict[str, Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in timing.get("samples_ms", ()))


def _is_default(record: dict[str, Any]) -> bool:
    candidate = record["candidate"]
    return candidate["backend"] == "cublas" and candidate["name"] == "default"


def _tune(records: list[dict[str, Any]]) -> list[TuneOutcome]:
    passes: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if _is_default(record):
            passes[record["problem_key"]] = [record]
        elif record["problem_key"] in passes:
            passes[record["problem_key"]].append(record)
    outcomes = []
    for key, (default, *others) in passes.items():
        problem = GemmProblem.from_dict(default["problem"])
        if problem.key() != key:
            raise ValueError(f"problem_key {key!r} does not match its problem {problem.key()!r}")
        sampled = [r for r in others if r["status"] == "ok" and "samples_ms" in r.get("timing", {})]
        winner = sampled[-1] if sampled else default
        default_timing = _timing(default["timing"], f"{key} default: timing")
        winner_timing = _timing(winner["timing"], f"{key} {winner['candidate']['name']}: timing")
        outcomes.append(
            TuneOutcome(
                problem=problem,
                winner_backend=winner["candidate"]["backend"],
                winner_name=winner["candidate"]["name"],
                default_ms=default_timing["median_ms"],
                winner_ms=winner_timing["median_ms"],
                default_samples_ms=_samples(default_timing),
                winner_samples_ms=_samples(winner_timing),
            )
        )
    if records and not outcomes:
        raise ValueError("no record of the cuBLAS default: not the records of a tune sweep")
    return outcomes


def _peers(records: list[dict[str, Any]]) -> Peers:
    ceilings = [r["ceilings"] for r in records if "ceilings" in r]
    if len(ceilings) != 1:
        raise ValueError(f"expected one ceilings record, found {len(ceilings)}")
    rows = [r for r in records if "ceilings" not in r]
    for row in rows:
        for name in ("phase", "problem", "m", "n", "k", "default_ms", "chosen_ms", "chosen"):
            if name not in row:
                raise ValueError(f"peer row lacks {name!r}")
        for name in ("m", "n", "k", "default_ms", "chosen_ms", "hbm_fraction", "roofline_fraction"):
            positive_number(row.get(name), f"{row['problem']}: {name}")
        for name in ("torch_ms", "tunableop_ms"):
            if row.get(name) is not None:
                positive_number(row[name], f"{row['problem']}: {name}")
    return Peers(
        read_bytes_per_s=positive_number(ceilings[0]["read"]["bytes_per_s"], "read bytes_per_s"),
        peak_flops_per_s=positive_number(ceilings[0]["peak"]["flops_per_s"], "peak flops_per_s"),
        rows=rows,
    )


def _foundation(records: list[dict[str, Any]]) -> Foundation:
    probes, ncu_ms = [], None
    for index, record in enumerate(records):
        if "ncu" in record:
            ncu_ms = record["ncu"].get("median_ms")
            if ncu_ms is not None:
                ncu_ms = positive_number(ncu_ms, f"record {index}: ncu.median_ms")
            continue
        for probe, timing in record["timings"].items():
            where = f"record {index}: timings.{probe}"
            checked = _timing(timing, where, required=("ci_low_ms", "ci_high_ms", "rel_noise"))
            probes.append(ProbeTiming(int(record["run"]), probe, checked))
    if not probes:
        raise ValueError("no probe timings")
    return Foundation(probes, ncu_ms)


def _gemv(records: list[dict[str, Any]]) -> list[GemvShape]:
    shapes = []
    for index, record in enumerate(records):
        if "ceilings" in record:
            continue
        where = f"record {index}"
        for config in record["configs"]:
            _timing(config["timing"], f"{where}: {config['name']}: timing")
        best = min(record["configs"], key=lambda c: c["timing"]["median_ms"])
        pdl = record.get("best_pdl")
        pdl_timing = None if pdl is None else _timing(pdl["timing"], f"{where}: best_pdl: timing")
        shapes.append(
            GemvShape(
                m=int(record["m"]), n=int(record["n"]), k=int(record["k"]),
                bytes=int(positive_number(record["bytes"], f"{where}: bytes")),
                read_tb_per_s=positive_number(record["read_tb_per_s"], f"{where}: read_tb_per_s"),
                best_name=best["name"], best=best["timing"],
                cublas=_timing(record["cublas"]["timing"], f"{where}: cublas: timing"),
                best_pdl=pdl_timing,
            )
        )  # fmt: skip
    return shapes


def _run(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    for index, record in enumerate(records):
        runs.check_run_record(record, f"record {index}")
        key = runs.run_key(record)
        if key in seen:
            raise ValueError(f"record {index}: configuration {key!r} appears twice")
        seen.add(key)
    return records


def _measured(kind: str) -> Callable[[list[dict[str, Any]]], Measured]:
    """The reader of a kind whose records need only their `kinds.KINDS` fields (and valid
    timings where they were timed): one record may hold the run's "ceilings"."""
    schema = KINDS[kind]

    def parse(records: list[dict[str, Any]]) -> Measured:
        ceilings = [r["ceilings"] for r in records if "ceilings" in r]
        if len(ceilings) > 1:
            raise ValueError(f"expected at most one ceilings record, found {len(ceilings)}")
        measured = [r for r in records if "ceilings" not in r]
        for index, record in enumerate(measured):
            required = schema.required
            if schema.variants:
                variant = record.get("kind")
                if variant not in schema.variants:
                    known = " or ".join(schema.variants)
                    raise ValueError(f"record {index}: kind {variant!r} is not {known}")
                required = (*required, *schema.variants[variant])
            missing = [name for name in required if name not in record]
            if missing:
                raise ValueError(f"record {index} lacks {', '.join(missing)}")
            if record.get("timing") is not None:
                _timing(record["timing"], f"record {index}: timing")
        return Measured(ceilings[0] if ceilings else None, measured)

    return parse


_PARSERS: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
    "tune": _tune,
    "tune-peers": _peers,
    "foundation": _foundation,
    "gemv": _gemv,
    runs.KIND: _run,
    **{
        kind: _measured(kind)
        for kind in (
            "attention",
            "allreduce",
            "parallel-emulated",
            "runtime-acceptance",
            "comm-cost",
            "tune-8bit",
            "quantised-check",
        )
    },  # fmt: skip
}


def _flat(source: str, kind: str, document: dict[str, Any]) -> ResultSet:
    """An acceptance summary or a parallel step: one object with the `kinds.KINDS` fields."""
    if "schema" in document and document["schema"] != SCHEMA:
        raise InvalidInputError(
            f"{source}: {kind} schema {document['schema']} is not supported (this ftbench reads "
            f"schema {SCHEMA})"
        )
    missing = [name for name in KINDS[kind].required if name not in document]
    if missing:
        raise InvalidInputError(f"{source}: {kind} file lacks {', '.join(missing)}")
    return ResultSet(source, kind, None, document)


def _unknown(source: str, document: Any) -> ResultSet:
    """A file no reader takes, kept for the report with the reason (and its environment, where
    it has a valid one)."""
    kind = document.get("kind") if isinstance(document, dict) else None
    environment = None
    if isinstance(document, dict) and isinstance(document.get("environment"), dict):
        try:
            environment = EnvironmentRecord.from_dict(document["environment"])
        except (TypeError, AttributeError, ValueError):
            environment = None
    if kind is None:
        note = "no kind: not a file ftbench writes, or written before files had one"
    else:
        note = f"kind {kind!r} is not one ftbench reads (it reads {', '.join(KINDS)})"
    return ResultSet(source, UNKNOWN, environment, Unknown(document, note))


def load_result_set(path: str | os.PathLike[str], *, unknown_ok: bool = False) -> ResultSet:
    """Read a result file, an acceptance summary, a parallel step or a tuned cache; errors are
    one line starting with the path. A JSON file of a kind ftbench does not read (or with none)
    is an error, or with `unknown_ok` a ResultSet of kind `kinds.UNKNOWN` (`Unknown`)."""
    source = str(path)
    document = read_json(path)
    kind = document.get("kind") if isinstance(document, dict) else None
    if kind in FLAT_KINDS:
        return _flat(source, kind, document)
    if unknown_ok and kind != CACHE_KIND and kind not in _PARSERS:
        return _unknown(source, document)
    if kind == CACHE_KIND:
        cache = parse_cache(document, source)
        outcomes = [
            TuneOutcome(
                problem=entry.problem,
                winner_backend=entry.winner.backend,
                winner_name=entry.winner.name,
                default_ms=entry.default_time.median_ms,
                winner_ms=entry.winner_time.median_ms,
            )
            for entry in cache.entries.values()
        ]
        return ResultSet(source, TUNED_CACHE, None, outcomes, cache)
    parsed = parse_results(document, source)
    kind = parsed["kind"]
    if kind not in _PARSERS:
        raise InvalidInputError(
            f"{source}: result kind {kind!r} is not known (known: {', '.join(KINDS)})"
        )
    try:
        data = _PARSERS[kind](parsed["records"])
    except InvalidInputError as exc:
        raise InvalidInputError(f"{source}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InvalidInputError(f"{source}: malformed {kind} records ({detail})") from exc
    return ResultSet(source, kind, parsed["environment"], data)


@dataclass
class _Timed:
    """One timed quantity: its series, its samples (pooled over runs; none where the file kept
    none) and its medians (one per run), in ms per launch."""

    series: str
    samples: tuple[float, ...] = ()
    medians: list[float] = field(default_factory=list)


def _timed(result_set: ResultSet) -> dict[str, _Timed]:
    """Every timed quantity of `result_set` by name (see the module's docstring)."""
    found: dict[str, _Timed] = {}

    def add(series: str, name: str, timing: dict[str, Any]) -> None:
        timed = found.setdefault(name, _Timed(series))
        timed.samples += _samples(timing)
        timed.medians.append(float(timing["median_ms"]))

    kind, data = result_set.kind, result_set.data
    if kind == "tune":
        for outcome in data:
            key = outcome.problem.key()
            add(
                key,
                f"{key} tuned",
                {"median_ms": outcome.winner_ms, "samples_ms": outcome.winner_samples_ms},
            )
            add(
                key,
                f"{key} default",
                {"median_ms": outcome.default_ms, "samples_ms": outcome.default_samples_ms},
            )
    elif kind == "foundation":
        for probe in data.probes:
            add(str(probe.timing.get("name", probe.probe)), probe.probe, probe.timing)
    elif kind == "gemv":
        for shape in data:
            add(shape.label, f"{shape.label} best", shape.best)
            add(shape.label, f"{shape.label} cublas", shape.cublas)
            if shape.best_pdl is not None:
                add(shape.label, f"{shape.label} best+pdl", shape.best_pdl)
    elif kind == runs.KIND:
        for record in filter(runs.measured_ok, data):
            for name in runs.TIMING_METRICS:
                add(runs.series_key(record), f"{runs.run_key(record)} {name}", record[name])
    elif kind in ("attention", "allreduce"):
        for record in data.records:
            if record["timing"] is not None:
                case = case_name(kind, record)
                add(case, case, record["timing"])
    return found


def case_name(kind: str, record: dict[str, Any]) -> str:
    """The stable name of an attention or all-reduce case (see the module docstring)."""
    if kind == "allreduce":
        ranks = f"x{record['world_size']}" + (" emulated" if record["emulated"] else "")
        return f"allreduce {record['method']} {ranks} {record['bytes']} B"
    if record["kind"] == "decode":
        return f"attention decode {record['model']} B={record['batch']} L={record['length']}"
    return f"attention context {record['model']} S={record['tokens']}"


def metrics(result_set: ResultSet) -> dict[str, tuple[float, ...]]:
    """Every timed quantity of `result_set` with samples, by name (all in ms per launch)."""
    return {name: timed.samples for name, timed in _timed(result_set).items() if timed.samples}


def metrics_by_series(result_set: ResultSet) -> dict[str, dict[str, tuple[float, ...]]]:
    """`metrics(result_set)` grouped by series (one model, dtype and shape), in file order."""
    grouped: dict[str, dict[str, tuple[float, ...]]] = {}
    for name, timed in _timed(result_set).items():
        if timed.samples:
            grouped.setdefault(timed.series, {})[name] = timed.samples
    return grouped


def unsampled_medians(result_set: ResultSet) -> dict[str, float]:
    """The timed quantities of `result_set` kept without samples (a summary only), by name: the
    median of their medians, in ms per launch."""
    return {
        name: statistics.median(timed.medians)
        for name, timed in _timed(result_set).items()
        if not timed.samples
    }
