"""Statistical comparison of two result files: per metric a change, its interval and a verdict.

Method, stated once (`docs/reports.md` explains it):
- the change of a metric is median(current) / median(baseline) - 1 (times: positive is slower);
- its interval, by the samples each side has:
    MIN_SAMPLES (5) or more a side  the 95% percentile bootstrap of that ratio, each side
                                    resampled on its own (`bench.stats.bootstrap_ratio_ci`,
                                    fixed seed: the same files always give the same answer);
    fewer on a side                 the sample range: from the smallest current sample over the
                                    largest baseline sample to the largest over the smallest.
                                    Every bootstrap ratio lies inside it (at 3 or fewer samples a
                                    side the bootstrap's 2.5% and 97.5% points are its ends), so
                                    it is the honest interval when a bootstrap has too few
                                    samples to resample (`ftbench run` keeps 3 TTFT and
                                    end-to-end samples a point by default);
    the same samples on both sides  [0, 0]: a measurement compared with itself has not changed,
                                    however noisy it is;
- with threshold t (3% by default) the verdict is
    slower             bootstrap: the interval lies above 0 and the change is above +t;
                       sample range: the interval lies above +t (every current sample is above
                       every baseline sample by more than t, whatever the count: 2 against 2,
                       even 1 against 1, where nothing shows the noise);
    faster             the same, below 0 and -t;
    unchanged          the whole interval lies within [-t, +t];
    too noisy to tell  anything else: the interval straddles +t or -t;
  equal distributions separate completely by chance once in 20 at 3 samples against 3 (1 in 6
  at 2 against 2, 1 in 2 at 1 against 1), before the margin t: the output marks the metrics
  with fewer than MIN_SAMPLES samples on a side and says how few limit their verdicts;
- a run fails (exit code 1) when any metric is slower; results from another GPU or library set
  are refused unless the caller allows it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ftbench.bench.environment import EnvironmentRecord
from ftbench.bench.stats import bootstrap_ratio_ci
from ftbench.errors import InvalidInputError
from ftbench.reports.records import (
    ResultSet,
    gpu_label,
    load_result_set,
    metrics,
    unsampled_medians,
)

DEFAULT_THRESHOLD = 0.03
MIN_SAMPLES = 5
SLOWER, FASTER, UNCHANGED, NOISY = "slower", "faster", "unchanged", "too noisy to tell"
VERDICTS = (FASTER, SLOWER, UNCHANGED, NOISY)
# How an interval was found (see the module's docstring).
BOOTSTRAP, SAMPLE_RANGE, IDENTICAL = "95% bootstrap", "sample range", "identical samples"
# Versions whose change can change performance; others (python, numpy, nvml...) cannot.
PERFORMANCE_SOFTWARE = (
    "cuda_runtime", "cuda_driver", "cublas", "cublaslt", "cutlass", "nccl", "cupy", "torch",
    "transformers",
)  # fmt: skip
# What sets a GPU's speed beyond its name (a MIG slice or a variant can share it; the power limit
# caps the clocks); a property one record does not know (None) is not compared.
GPU_PROPERTIES = ("compute_capability", "sm_count", "memory_total_mib", "power_limit_w")


def parse_threshold(text: str) -> float:
    """ "3%" or "0.03" -> 0.03; anything else is an InvalidInputError."""
    value = text.strip()
    try:
        threshold = float(value[:-1]) / 100.0 if value.endswith("%") else float(value)
    except ValueError:
        threshold = float("nan")
    if not 0.0 <= threshold < 1.0:
        raise InvalidInputError(
            f"threshold must be a percentage or a fraction below 1 (e.g. 3% or 0.03), got {text!r}"
        )
    return threshold


@dataclass(frozen=True)
class MetricChange:
    """One metric in both files: medians (ms), the change and its interval (how it was found:
    `interval`), the sample counts, the verdict."""

    name: str
    baseline_ms: float
    current_ms: float
    change: float
    ci_low: float
    ci_high: float
    baseline_samples: int
    current_samples: int
    verdict: str
    interval: str

    @property
    def few_samples(self) -> bool:
        """Fewer than MIN_SAMPLES samples on a side: the verdict rests on the sample range."""
        return self.interval == SAMPLE_RANGE


def judge(
    name: str, baseline_ms: Any, current_ms: Any, threshold: float = DEFAULT_THRESHOLD
) -> MetricChange:
    """Compare the samples of one metric (see the module's docstring for the rules)."""
    base = np.asarray(baseline_ms, dtype=np.float64)
    now = np.asarray(current_ms, dtype=np.float64)
    if np.array_equal(np.sort(base), np.sort(now)):
        interval, low, high = IDENTICAL, 1.0, 1.0
    elif min(base.size, now.size) < MIN_SAMPLES:
        interval, low, high = SAMPLE_RANGE, now.min() / base.max(), now.max() / base.min()
    else:
        interval, (low, high) = BOOTSTRAP, bootstrap_ratio_ci(base, now)
    base_median, now_median = float(np.median(base)), float(np.median(now))
    change, low, high = now_median / base_median - 1.0, float(low) - 1.0, float(high) - 1.0
    return MetricChange(
        name, base_median, now_median, change, low, high, int(base.size), int(now.size),
        _verdict(change, low, high, threshold, interval), interval,
    )  # fmt: skip


def _verdict(change: float, low: float, high: float, threshold: float, interval: str) -> str:
    # A sample range holds every pair of samples, so it must clear the threshold itself; a
    # bootstrap interval must exclude zero, with the change beyond the threshold.
    beyond = threshold if interval == SAMPLE_RANGE else 0.0
    if low > beyond and change > threshold:
        return SLOWER
    if high < -beyond and change < -threshold:
        return FASTER
    if -threshold <= low and high <= threshold:
        return UNCHANGED
    return NOISY


def _first(found: dict[str, Any]) -> str:
    """The first metric name of `found` and how many more, for messages."""
    names = list(found)
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"'{names[0]}'{more}"


def environment_mismatches(baseline: EnvironmentRecord, current: EnvironmentRecord) -> list[str]:
    """What differs between two environments that can change performance, as readable lines."""
    found = []
    if gpu_label(baseline) != gpu_label(current):
        found.append(f"GPU: baseline {gpu_label(baseline)}, current {gpu_label(current)}")
    else:
        for was, now in zip(baseline.gpus, current.gpus, strict=True):
            for name in GPU_PROPERTIES:
                before, after = getattr(was, name), getattr(now, name)
                if None not in (before, after) and before != after:
                    found.append(f"GPU {was.index} {name}: baseline {before}, current {after}")
    if baseline.driver_version != current.driver_version:
        found.append(
            f"driver: baseline {baseline.driver_version}, current {current.driver_version}"
        )
    for name in PERFORMANCE_SOFTWARE:
        was, now = baseline.software.get(name), current.software.get(name)
        if was != now:
            found.append(f"{name}: baseline {was}, current {now}")
    return found


@dataclass
class Comparison:
    """Two result files compared metric by metric."""

    baseline: ResultSet
    current: ResultSet
    threshold: float
    changes: list[MetricChange]
    only_in_baseline: list[str] = field(default_factory=list)
    only_in_current: list[str] = field(default_factory=list)
    # In both files, without samples on a side: (name, change of the medians), not judged.
    without_samples: list[tuple[str, float]] = field(default_factory=list)
    environment_mismatches: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricChange]:
        return [change for change in self.changes if change.verdict == SLOWER]

    @property
    def exit_code(self) -> int:
        """0: nothing slower beyond the threshold; 1: a significant regression."""
        return 1 if self.regressions else 0

    def counts(self) -> dict[str, int]:
        return {verdict: sum(c.verdict == verdict for c in self.changes) for verdict in VERDICTS}


def compare_result_sets(
    baseline: ResultSet,
    current: ResultSet,
    threshold: float = DEFAULT_THRESHOLD,
    allow_env_mismatch: bool = False,
) -> Comparison:
    """Compare every metric the two sets share; refuse different kinds, environments (unless
    allowed) and sets without samples or without a metric in common."""
    if baseline.kind != current.kind:
        raise InvalidInputError(
            f"cannot compare a {baseline.kind} file ({baseline.path}) with a {current.kind} file "
            f"({current.path})"
        )
    mismatches = []
    if baseline.environment is not None and current.environment is not None:
        mismatches = environment_mismatches(baseline.environment, current.environment)
    if mismatches and not allow_env_mismatch:
        raise InvalidInputError(
            f"{current.path} was measured in another environment than {baseline.path} "
            f"({'; '.join(mismatches)}); pass --allow-env-mismatch to compare anyway"
        )
    before, after = metrics(baseline), metrics(current)
    for result_set, found in ((baseline, before), (current, after)):
        if not found:
            raise InvalidInputError(
                f"{result_set.path}: a {result_set.kind} file keeps no timing samples to compare"
            )
    shared = [name for name in before if name in after]
    if not shared:
        raise InvalidInputError(
            f"{baseline.path} and {current.path} share no metric to compare (another model, "
            f"dtype or shape?): baseline has {_first(before)}, current {_first(after)}"
        )
    medians_before = {**_medians(before), **unsampled_medians(baseline)}
    medians_after = {**_medians(after), **unsampled_medians(current)}
    return Comparison(
        baseline=baseline,
        current=current,
        threshold=threshold,
        changes=[judge(name, before[name], after[name], threshold) for name in shared],
        only_in_baseline=[name for name in medians_before if name not in medians_after],
        only_in_current=[name for name in medians_after if name not in medians_before],
        without_samples=[
            (name, medians_after[name] / median - 1.0)
            for name, median in medians_before.items()
            if name in medians_after and name not in shared
        ],
        environment_mismatches=mismatches,
    )


def _medians(found: dict[str, tuple[float, ...]]) -> dict[str, float]:
    return {name: float(np.median(samples)) for name, samples in found.items()}


def compare_files(
    baseline: str | os.PathLike[str],
    current: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    allow_env_mismatch: bool = False,
) -> Comparison:
    """Load two result files and compare them (see `compare_result_sets`)."""
    return compare_result_sets(
        load_result_set(baseline), load_result_set(current), threshold, allow_env_mismatch
    )


def _origin(result_set: ResultSet) -> str:
    environment = result_set.environment
    if environment is None:
        return f"{result_set.path} ({result_set.gpu})"
    dirty = "+dirty" if environment.git_dirty else ""
    return (
        f"{result_set.path} (commit {environment.git_commit[:12]}{dirty}, "
        f"{environment.utc_time}, {result_set.gpu})"
    )


def summary_line(comparison: Comparison) -> str:
    """One line: the outcome and the verdict counts."""
    counts = ", ".join(f"{n} {verdict}" for verdict, n in comparison.counts().items() if n)
    if comparison.without_samples:
        counts += f", {len(comparison.without_samples)} not judged (no samples)"
    threshold = f"{comparison.threshold:.1%}"
    slower = len(comparison.regressions)
    if slower:
        return f"REGRESSION: {slower} metric(s) slower beyond {threshold} ({counts})"
    return f"no significant regression beyond {threshold} ({counts})"


def _row(change: MetricChange) -> list[str]:
    return [
        change.name,
        f"{change.baseline_ms * 1e3:.2f}",
        f"{change.current_ms * 1e3:.2f}",
        f"{change.change:+.2%}",
        f"[{change.ci_low:+.2%}, {change.ci_high:+.2%}]" + (" range" if change.few_samples else ""),
        f"{change.baseline_samples}/{change.current_samples}",
        change.verdict,
    ]


HEADERS = ["metric", "baseline us", "current us", "change", "interval", "samples", "verdict"]


def few_samples_note(changes: list[MetricChange], threshold: float) -> str | None:
    """How few samples limited the verdicts of `changes` (None when none had too few)."""
    few = [change for change in changes if change.few_samples]
    if not few:
        return None
    single = any(min(c.baseline_samples, c.current_samples) == 1 for c in few)
    return (
        f"{len(few)} metric(s) with fewer than {MIN_SAMPLES} samples on a side (interval marked "
        "range): the interval is the sample range (every current sample over every baseline "
        "sample), not a bootstrap; "
        f"slower or faster there means every pair of samples differs by more than "
        f"{threshold:.1%}, unchanged that every pair is within it"
        + ("; with 1 sample on a side nothing shows the noise" if single else "")
    )


def _notes(comparison: Comparison) -> list[str]:
    notes = []
    if comparison.environment_mismatches:
        notes.append("environments differ: " + "; ".join(comparison.environment_mismatches))
    if comparison.only_in_baseline:
        notes.append(f"only in baseline: {', '.join(comparison.only_in_baseline)}")
    if comparison.only_in_current:
        notes.append(f"only in current: {', '.join(comparison.only_in_current)}")
    if comparison.without_samples:
        changes = ", ".join(f"{name} {change:+.2%}" for name, change in comparison.without_samples)
        notes.append(f"not judged, no samples on a side (change of the medians): {changes}")
    few = few_samples_note(comparison.changes, comparison.threshold)
    return notes if few is None else [*notes, few]


def render_text(comparison: Comparison) -> str:
    rows = [HEADERS, *(_row(change) for change in comparison.changes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines = [
        f"baseline: {_origin(comparison.baseline)}",
        f"current:  {_origin(comparison.current)}",
        "",
        *(line.rstrip() for line in table),
        "",
        *_notes(comparison),
        summary_line(comparison),
    ]
    return "\n".join(lines)


def render_markdown(comparison: Comparison) -> str:
    mark = {
        SLOWER: "🔴 **slower**", FASTER: "🟢 faster", UNCHANGED: "unchanged", NOISY: "❔ too noisy",
    }  # fmt: skip
    lines = [
        f"### ftbench compare: {summary_line(comparison)}",
        "",
        f"- baseline: `{_origin(comparison.baseline)}`",
        f"- current: `{_origin(comparison.current)}`",
        f"- change = current / baseline median - 1; interval: 95% bootstrap with "
        f"{MIN_SAMPLES} or more samples a side, else the sample range; threshold "
        f"{comparison.threshold:.1%}",
        *(f"- {note}" for note in _notes(comparison)),
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * 5 + [" --- "]) + "|",
    ]
    for change in comparison.changes:
        cells = _row(change)
        cells[0] = f"`{cells[0]}`"
        cells[-1] = mark[change.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_json(comparison: Comparison) -> str:
    document = {
        "baseline": comparison.baseline.path,
        "current": comparison.current.path,
        "kind": comparison.baseline.kind,
        "threshold": comparison.threshold,
        "exit_code": comparison.exit_code,
        "summary": summary_line(comparison),
        "counts": comparison.counts(),
        "changes": [asdict(change) for change in comparison.changes],
        "only_in_baseline": comparison.only_in_baseline,
        "only_in_current": comparison.only_in_current,
        "without_samples": [
            {"name": name, "change": change} for name, change in comparison.without_samples
        ],
        "environment_mismatches": comparison.environment_mismatches,
        "notes": _notes(comparison),
    }
    return json.dumps(document, indent=2)


RENDERERS = {"text": render_text, "md": render_markdown, "json": render_json}


def render(comparison: Comparison, fmt: str) -> str:
    """The comparison as text, Markdown ("md") or JSON."""
    if fmt not in RENDERERS:
        raise InvalidInputError(f"--format must be one of {', '.join(RENDERERS)}, got {fmt!r}")
    return RENDERERS[fmt](comparison)
