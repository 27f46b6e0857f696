"""The sweep: for every problem, verify and time every candidate of every backend; keep the best.

Rules, stated once:
- the "default" is what runs untuned (`gemm.backends.DEFAULT_BACKENDS`): cuBLAS's default
  algorithm (`cublas` backend, algo -1) for fp16/bf16, cuBLASLt's heuristic first choice for
  FP8, the project's untuned weight-only kernel for 8-bit weights; it is timed first for every
  problem, whichever backends are swept;
- every candidate is first run once on fresh random inputs with its output poisoned (NaN) and
  compared with an fp32 reference computed from the dequantised operands
  (`gemm.operands`), within C's tolerance (FP8 with fast accumulation: its looser one); a
  wrong or failing candidate is excluded and listed with its reason;
- timing goes through `bench.timer.time_launch`, cold L2 by default (rotating input copies);
- a candidate replaces the default only when it is faster beyond the noise: its 95% interval
  lies entirely below the default's and it gains at least `min_gain` (1%, the run-to-run drift
  the intervals do not see); otherwise the default is kept;
- the sweep's fastest is the lowest of many noisy medians, so its own median is biased low: the
  candidates that pass that test (the `CONFIRM_FINALISTS` fastest) are timed again, alternating
  with the default for `CONFIRM_ROUNDS` rounds, and one wins only if it beats the default of
  the same round beyond the noise in every round (then the lowest mean wins, and the entry
  keeps the last round's times);
- a candidate whose warm-up shows it `abandon_factor` (3x) slower than the default is recorded
  as "slow" and not timed further;
- the cache and the results file are rewritten atomically after every problem, so an
  interrupted sweep loses at most the problem in progress and resumes where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftbench.bench.timer import (
    L2_MODES,
    TimingPolicy,
    TooSlow,
    cold_input_sets,
    device_facts,
    time_launch,
)
from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.files import check_file_target
from ftbench.gemm.backends import default_candidate, get_backend
from ftbench.gemm.backends.base import Backend, CandidateUnsupported
from ftbench.gemm.cache import (
    KIND,
    CacheHeader,
    TimeSummary,
    TunedCache,
    TunedEntry,
    load_cache,
)
from ftbench.gemm.candidate import BACKEND_NAMES, Candidate
from ftbench.gemm.operands import make_operands, poison, reference, relative_error, tolerance
from ftbench.gemm.problem import GemmProblem

RESULTS_KIND = "tune"  # the kind of the results file: every candidate's timing
# Tuning times many candidates: shorter warm-up and sampling than the timer's defaults.
TUNING_POLICY = TimingPolicy(
    warmup_ms=5.0, sample_ms=0.5, min_samples=10, max_samples=300, target_rel_ci=0.01,
    budget_s=0.5, min_time_s=0.02,
)  # fmt: skip
MAX_OPERAND_BYTES = 4 * 2**30
# Run-to-run drift of one GEMM's median, which the confidence intervals of one run do not
# contain: 1.1-1.8% for a power-capped 2048x4096x4096 GEMM on an H200 across processes
# (benchmarks/results/acceptance/foundation.json). A winner must gain this much over the default.
MIN_GAIN = 0.01
CONFIRM_FINALISTS = 2
CONFIRM_ROUNDS = 2


@dataclass(frozen=True)
class SweepOptions:
    """What to sweep and how to time it."""

    backends: tuple[str, ...] = ("cublas", "cublaslt", "cutlass", "ftbench")
    l2: str = "cold"
    policy: TimingPolicy = TUNING_POLICY
    budget_s: float | None = None
    max_operand_bytes: int = MAX_OPERAND_BYTES
    abandon_factor: float = 3.0
    min_gain: float = MIN_GAIN

    def __post_init__(self) -> None:
        if not self.backends:
            raise InvalidInputError(f"--backends: name at least one of {', '.join(BACKEND_NAMES)}")
        for name in self.backends:
            get_backend(name)  # an unknown name is an error listing the known ones
            if self.backends.count(name) > 1:
                raise InvalidInputError(f"--backends lists {name} twice")
        if self.l2 not in L2_MODES:
            raise InvalidInputError(f"--l2 must be {' or '.join(L2_MODES)}, got {self.l2!r}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise InvalidInputError(f"--budget must be more than zero, got {self.budget_s:g} s")


@dataclass
class ProblemOutcome:
    """One problem's entry and the record of every candidate tried."""

    entry: TunedEntry
    records: list[dict[str, Any]] = field(default_factory=list)


def _record(problem: GemmProblem, candidate: Candidate, status: str, **details: Any) -> dict:
    return {
        "problem_key": problem.key(),
        "problem": problem.to_dict(),
        "candidate": candidate.to_dict(),
        "status": status,
        **details,
    }


def _timing_record(timing: Any, keep_samples: bool) -> dict[str, Any]:
    data = timing.to_dict()
    if not keep_samples:
        data.pop("samples_ms")
    return data


class ProblemTuner:
    """Verifies and times candidates of one problem on shared operands."""

    def __init__(self, problem: GemmProblem, options: SweepOptions):
        import cupy

        self.problem, self.options = problem, options
        l2_bytes, _ = device_facts(cupy)
        set_bytes = problem.bytes()
        sets = 1
        if options.l2 == "cold":
            sets = cold_input_sets(set_bytes, l2_bytes)
            if sets * set_bytes > options.max_operand_bytes:
                sets = 1  # the timer flushes L2 before each launch instead
        self.set_bytes = set_bytes
        self.operands = make_operands(problem, sets)
        self.expected = reference(problem, self.operands[0])

    def verify(self, runner: Callable) -> float:
        """Relative error of one run on set 0 (output poisoned first)."""
        import cupy

        operands = self.operands[0]
        poison(operands[2])
        cupy.cuda.get_current_stream().synchronize()
        runner(*operands)
        return relative_error(self.problem, operands, self.expected)

    def time(self, runner: Callable, name: str, abandon_above_ms: float | None) -> Any:
        operands = self.operands
        return time_launch(
            lambda i: runner(*operands[i]),
            name=name,
            l2=self.options.l2,
            input_sets=len(operands),
            set_bytes=self.set_bytes,
            policy=self.options.policy,
            abandon_above_ms=abandon_above_ms,
        )

    def try_candidate(
        self, backend: Backend, candidate: Candidate, abandon_above_ms: float | None = None
    ) -> tuple[dict, Any | None]:
        """(record, timing or None): prepare, verify, then time one candidate."""
        problem = self.problem
        try:
            runner = backend.prepare(candidate, problem)
            error = self.verify(runner)
        except CandidateUnsupported as exc:
            return _record(problem, candidate, "unsupported", reason=str(exc)), None
        except Exception as exc:  # a failing kernel or library call must not end the sweep
            return _record(
                problem, candidate, "failed", reason=f"{type(exc).__name__}: {exc}"
            ), None
        limit = tolerance(problem.c_dtype, candidate.config.get("fast_accum") is True)
        if not error <= limit:
            reason = f"wrong result: relative error {error:.3g} > {limit:g}"
            return _record(problem, candidate, "wrong", reason=reason, rel_err=error), None
        try:
            timing = self.time(runner, f"{problem.key()} {candidate.name}", abandon_above_ms)
        except TooSlow as exc:
            return _record(problem, candidate, "slow", reason=str(exc), rel_err=error), None
        return _record(problem, candidate, "ok", rel_err=error), timing


def tune_problem(
    problem: GemmProblem,
    backends: Sequence[Backend],
    options: SweepOptions,
    deadline: float = math.inf,
    on_candidate: Callable[[int, int], None] = lambda done, total: None,
) -> ProblemOutcome:
    """Tune one problem; candidates left when `deadline` (time.monotonic) passes are skipped."""
    tuner = ProblemTuner(problem, options)
    default_backend, default = default_candidate(problem)
    record, default_timing = tuner.try_candidate(default_backend, default)
    if default_timing is None:
        raise FtbenchError(
            f"{problem.key()}: the {default_backend.name} default failed ({record['reason']})"
        )
    record["timing"] = _timing_record(default_timing, keep_samples=True)
    records = {default.key(): record}
    timed: list[tuple[Candidate, Any]] = [(default, default_timing)]

    abandon_above_ms = options.abandon_factor * default_timing.median_ms
    work = [(b, c) for b in backends for c in b.candidates(problem) if c.key() != default.key()]
    for index, (backend, candidate) in enumerate(work):
        if time.monotonic() > deadline:
            record, timing = (
                _record(problem, candidate, "skipped", reason="time budget spent"),
                None,
            )
        else:
            record, timing = tuner.try_candidate(backend, candidate, abandon_above_ms)
        if timing is not None:
            record["timing"] = _timing_record(timing, keep_samples=False)
            timed.append((candidate, timing))
        records[candidate.key()] = record
        on_candidate(index + 1, len(work))

    ranked = sorted(timed, key=lambda pair: pair[1].median_ms)
    default_time = TimeSummary.of(default_timing)
    finalists = [
        candidate for candidate, timing in ranked
        if candidate is not default
        and TimeSummary.of(timing).faster_beyond_noise(default_time, options.min_gain)
    ][:CONFIRM_FINALISTS]  # fmt: skip
    best, best_timing = default, default_timing
    if finalists:
        best, best_timing, default_timing = _confirm(tuner, default, finalists, records, options)
        default_time = TimeSummary.of(default_timing)
    runner_up = next(((c, t) for c, t in ranked if c is not best), (None, None))
    records[best.key()]["timing"] = _timing_record(best_timing, keep_samples=True)
    entry = TunedEntry(
        problem=problem,
        winner=best,
        winner_time=TimeSummary.of(best_timing),
        default=default,
        default_time=default_time,
        runner_up=runner_up[0],
        runner_up_time=None if runner_up[1] is None else TimeSummary.of(runner_up[1]),
        candidates_timed=len(timed),
        candidates_failed=sum(r["status"] in ("failed", "wrong") for r in records.values()),
    )
    return ProblemOutcome(entry, list(records.values()))


def _confirm(
    tuner: ProblemTuner, default: Candidate, finalists: list[Candidate], records: dict,
    options: SweepOptions,
) -> tuple[Candidate, Any, Any]:  # fmt: skip
    """(winner, its timing, the default's timing) from fresh timings of the default and the
    finalists, alternating for CONFIRM_ROUNDS rounds (see the module docstring). Each finalist's
    record gets its confirming medians; one that fails to run again is dropped."""
    problem = tuner.problem
    contenders = [default, *finalists]
    runners = {}
    for candidate in contenders:
        try:
            runners[candidate.key()] = get_backend(candidate.backend).prepare(candidate, problem)
        except Exception as exc:  # it ran in the sweep; if it cannot now, it cannot win
            records[candidate.key()]["confirm_error"] = f"{type(exc).__name__}: {exc}"
    rounds: list[dict[str, Any]] = []
    for _ in range(CONFIRM_ROUNDS):
        timings = {}
        for candidate in contenders:
            runner = runners.get(candidate.key())
            if runner is not None:
                timings[candidate.key()] = tuner.time(
                    runner, f"{problem.key()} {candidate.name}", None
                )
        rounds.append(timings)
    default_key = default.key()
    passed = []
    for candidate in finalists:
        key = candidate.key()
        if key not in runners:
            continue
        medians = [timings[key].median_ms for timings in rounds]
        records[key]["confirm_median_ms"] = medians
        if all(
            TimeSummary.of(timings[key]).faster_beyond_noise(
                TimeSummary.of(timings[default_key]), options.min_gain
            )
            for timings in rounds
        ):
            passed.append((sum(medians) / len(medians), candidate))
    records[default_key]["confirm_median_ms"] = [t[default_key].median_ms for t in rounds]
    last = rounds[-1]
    if not passed:
        return default, last[default_key], last[default_key]
    _, winner = min(passed, key=lambda pair: pair[0])
    return winner, last[winner.key()], last[default_key]


def check_sweep_outputs(out: Path, results_path: Path | None, force: bool) -> Path:
    """The results file of a sweep into the cache `out` (default: OUT.results.json), once both
    are checked as targets: the cache may resume a tuned cache, the results replace earlier tune
    results; any other file only with `force` (`files.check_file_target`)."""
    results_path = results_path or out.with_suffix(".results.json")
    if results_path.resolve() == out.resolve():
        raise InvalidInputError(f"--results and --out are both {out}: they need a file each")
    check_file_target(out, "a tuned cache", force, kind=KIND)
    check_file_target(results_path, "tune results", force, kind=RESULTS_KIND)
    return results_path


def open_cache_for_sweep(path: Path, running: CacheHeader, force: bool) -> TunedCache:
    """The cache to resume, or a new one. A corrupt cache or one tuned with another GPU or
    library set is never overwritten, unless `force` (start over); `check_sweep_outputs` has
    refused any other file."""
    if not path.exists():
        return TunedCache(header=running)
    try:
        cache = load_cache(path)  # corrupt: InvalidInputError names the file and the field
    except InvalidInputError:
        if force:
            return TunedCache(header=running)
        raise
    problems = cache.header.mismatches(running)
    if problems and not force:
        raise InvalidInputError(
            f"{path} was tuned with another GPU or library set ({'; '.join(problems)}); "
            "choose another --out, or pass --force to start it again"
        )
    return TunedCache(header=running) if problems else cache


def available_backends(names: Sequence[str]) -> tuple[list[Backend], dict[str, str]]:
    """The backends that can run here, and why each other one cannot."""
    usable, skipped = [], {}
    for name in names:
        backend = get_backend(name)
        reason = backend.unavailable_reason()
        if reason is None:
            usable.append(backend)
        else:
            skipped[name] = reason
    return usable, skipped


@dataclass
class SweepReport:
    """What a sweep did: the cache, how many problems were resumed or tuned, what was skipped."""

    cache: TunedCache
    results_path: Path
    tuned: int
    resumed: int
    unavailable_backends: dict[str, str] = field(default_factory=dict)


TuneOne = Callable[[GemmProblem, float, Callable[[int, int], None]], ProblemOutcome]


def sweep_problems(
    problems: Sequence[GemmProblem],
    out: Path,
    tune_one: TuneOne,
    environment: Any,
    *,
    results_path: Path | None = None,
    budget_s: float | None = None,
    force: bool = False,
    progress: Any | None = None,
) -> SweepReport:
    """Tune each problem not yet in the cache at `out` with `tune_one(problem, deadline,
    on_candidate)`, saving the cache and the results file after each one.

    The results file defaults to OUT with the suffix .results.json; it replaces an earlier tune
    results file, any other file only with `force`. `progress` is a rich Progress. The time
    budget is shared out so problem i of n ends by start + budget * i / n.
    """
    from ftbench.bench.results import read_results, write_results

    running = CacheHeader.from_environment(environment)
    results_path = check_sweep_outputs(out, results_path, force)
    cache = open_cache_for_sweep(out, running, force)
    records: list[dict[str, Any]] = []
    if cache.entries and results_path.exists():
        records = read_results(results_path)["records"]
    todo = [problem for problem in problems if problem.key() not in cache.entries]
    problems_task = candidates_task = None
    if progress is not None:
        problems_task = progress.add_task("problems", total=len(todo))
        candidates_task = progress.add_task("candidates", total=None)

    def on_candidate(done: int, total: int) -> None:
        if progress is not None:
            progress.update(candidates_task, completed=done, total=total)

    start = time.monotonic()
    for index, problem in enumerate(todo):
        deadline = math.inf
        if budget_s is not None:
            deadline = start + budget_s * (index + 1) / len(todo)
        if progress is not None:
            progress.update(candidates_task, description=problem.key(), completed=0, total=None)
        outcome = tune_one(problem, deadline, on_candidate)
        cache.add(outcome.entry)
        cache.save(out)
        records.extend(outcome.records)
        write_results(results_path, RESULTS_KIND, records, environment)
        if progress is not None:
            progress.advance(problems_task)
    return SweepReport(cache, results_path, tuned=len(todo), resumed=len(problems) - len(todo))


def run_sweep(
    problems: Sequence[GemmProblem],
    out: Path,
    options: SweepOptions,
    *,
    results_path: Path | None = None,
    force: bool = False,
    progress: Any | None = None,
) -> SweepReport:
    """Tune `problems` on this GPU with the backends of `options` (see `sweep_problems`)."""
    from ftbench.bench.environment import capture_environment

    backends, unavailable = available_backends(options.backends)

    def tune_one(problem, deadline, on_candidate):
        return tune_problem(problem, backends, options, deadline, on_candidate)

    report = sweep_problems(
        problems, out, tune_one, capture_environment(), results_path=results_path,
        budget_s=options.budget_s, force=force, progress=progress,
    )  # fmt: skip
    report.unavailable_backends = unavailable
    return report
