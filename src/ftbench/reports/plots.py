"""The figures of reports and the dashboard (matplotlib's object API: no pyplot, no GUI).

Each function takes a pandas table built by `reports.report` or `reports.dashboard` and returns
a Figure; `reports.html` embeds it as a PNG.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from ftbench.modelbench import runs

BACKEND_COLORS = {"cublas": "#1f77b4", "cublaslt": "#ff7f0e", "cutlass": "#2ca02c",
                  "ftbench": "#d62728"}  # fmt: skip
ENGINE_COLORS = dict(
    zip(
        runs.ENGINES + runs.SERVING_ENGINES,
        ("#d62728", "#ff9896", "#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#1f77b4"),
        strict=True,
    )
)
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LINE_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _color(palette: dict[str, str], name: str, index: int) -> str:
    return palette.get(name, OTHER_COLORS[index % len(OTHER_COLORS)])


def speedup_bars(table: pd.DataFrame) -> Figure:
    """Per problem: default time over tuned time, bars coloured by the winning backend.
    Columns: label, speedup, backend."""
    figure = Figure(figsize=(9, 0.32 * len(table) + 1.4), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(table))[::-1]
    backends = list(dict.fromkeys(table["backend"]))
    for index, backend in enumerate(backends):
        rows = (table["backend"] == backend).to_numpy()
        speedups = table["speedup"][rows]
        bars = axes.barh(positions[rows], speedups - 1.0, left=1.0, label=backend,
                         color=_color(BACKEND_COLORS, backend, index))  # fmt: skip
        labels = [f" {s:.2f}x" if s != 1.0 else " default kept" for s in speedups]
        axes.bar_label(bars, labels=labels, fontsize=7)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_yticks(positions, table["label"], fontsize=8)
    axes.set_xlabel("speed-up over the cuBLAS default (x)")
    axes.set_title("Tuned GEMMs: speed-up per problem, by winning backend")
    axes.legend(loc="lower right", fontsize=8)
    return figure


def backend_counts(counts: pd.Series) -> Figure:
    """How many problems each backend won."""
    figure = Figure(figsize=(5, 3), layout="constrained")
    axes = figure.add_subplot()
    colors = [_color(BACKEND_COLORS, name, i) for i, name in enumerate(counts.index)]
    bars = axes.bar(counts.index, counts.to_numpy(), color=colors)
    axes.bar_label(bars)
    axes.set_ylabel("problems won")
    axes.set_title("Winning backends")
    return figure


def roofline(table: pd.DataFrame, peak_flops_per_s: float, bytes_per_s: float) -> Figure:
    """Achieved TFLOP/s against arithmetic intensity under the measured roofline.
    Columns: intensity (FLOP/byte), chosen_tflops, default_tflops, phase."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    low = min(table["intensity"].min() / 2, 0.5)
    high = max(table["intensity"].max() * 2, 4 * peak_flops_per_s / bytes_per_s)
    intensity = np.geomspace(low, high, 200)
    axes.plot(intensity, np.minimum(peak_flops_per_s, bytes_per_s * intensity) / 1e12,
              color="black", label="roofline (measured HBM read and GEMM peak)")  # fmt: skip
    for index, (phase, rows) in enumerate(table.groupby("phase", sort=False)):
        color = OTHER_COLORS[index] if index else "#d62728"
        axes.scatter(rows["intensity"], rows["chosen_tflops"], color=color, zorder=3,
                     label=f"{phase}: tuned")  # fmt: skip
        axes.scatter(rows["intensity"], rows["default_tflops"], facecolors="none",
                     edgecolors=color, zorder=3, label=f"{phase}: cuBLAS default")  # fmt: skip
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("arithmetic intensity (FLOP / byte)")
    axes.set_ylabel("TFLOP/s")
    axes.set_title("Time against the roofline")
    axes.legend(fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    return figure


def peer_speedups(table: pd.DataFrame, peers: list[str]) -> Figure:
    """Per problem: each peer's time over the tuned time. Columns: label and one per peer."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(table))
    for index, peer in enumerate(peers):
        axes.scatter(positions, table[peer], label=peer, color=LINE_COLORS[index], zorder=3)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(positions, table["label"], rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("peer time / tuned time (x)")
    axes.set_title("Tuned choice against peers, re-measured side by side")
    axes.legend(fontsize=8)
    return figure


def probe_boxes(table: pd.DataFrame, ncu_ms: dict[str, float]) -> Figure:
    """Foundation probes: samples per run relative to the probe's median, one panel per probe.
    Columns: probe, run, samples_ms (lists)."""
    probes = list(dict.fromkeys(table["probe"]))
    figure = Figure(figsize=(4 * len(probes), 3.5), layout="constrained")
    for index, probe in enumerate(probes):
        axes = figure.add_subplot(1, len(probes), index + 1)
        rows = table[table["probe"] == probe]
        scale = float(np.median(np.concatenate(rows["samples_ms"].to_list())))
        series = [np.asarray(s) * 1e3 for s in rows["samples_ms"]]
        axes.boxplot(series, showfliers=False)
        axes.set_xticks(range(1, len(rows) + 1), [f"run {r}" for r in rows["run"]])
        if probe in ncu_ms:
            axes.axhline(ncu_ms[probe] * 1e3, color="#d62728", linestyle="--", label="ncu")
            axes.legend(fontsize=8)
        axes.set_title(f"{probe} (median {scale * 1e3:.1f} us)")
        axes.set_ylabel("us per launch")
    return figure


def fraction_bars(
    table: pd.DataFrame,
    columns: list[str],
    title: str = "Decode GEMV: bytes moved / time / read bandwidth",
) -> Figure:
    """Fraction of the measured HBM read bandwidth per case, a bar per column.
    Columns: label and `columns`."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(table))
    width = 0.8 / len(columns)
    for index, column in enumerate(columns):
        axes.bar(positions + index * width, table[column], width, label=column,
                 color=OTHER_COLORS[index])  # fmt: skip
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(positions + 0.4 - width / 2, table["label"], rotation=60, ha="right",
                    fontsize=7)  # fmt: skip
    axes.set_ylabel("fraction of HBM read bandwidth")
    axes.set_title(title)
    axes.legend(fontsize=8)
    return figure


def engine_lines(
    table: pd.DataFrame,
    x: str,
    y: str,
    xlabel: str,
    ylabel: str,
    title: str,
    series: str = "engine",
) -> Figure:
    """One panel per scenario, one line per engine (or other `series`): y (with its interval
    when the table has y_low and y_high) against x, both on log scales.
    Columns: scenario, `series`, x, y."""
    scenarios = list(dict.fromkeys(table["scenario"]))
    figure = Figure(figsize=(6 * min(len(scenarios), 2), 4 * ((len(scenarios) + 1) // 2)),
                    layout="constrained")  # fmt: skip
    engines = list(dict.fromkeys(table[series]))
    for index, scenario in enumerate(scenarios):
        axes = figure.add_subplot((len(scenarios) + 1) // 2, min(len(scenarios), 2), index + 1)
        for number, engine in enumerate(engines):
            rows = table[(table["scenario"] == scenario) & (table[series] == engine)]
            rows = rows.sort_values(x)
            if rows.empty:
                continue
            color = _color(ENGINE_COLORS, engine, number)
            axes.plot(rows[x], rows[y], marker="o", color=color, label=engine)
            if f"{y}_low" in rows:
                axes.fill_between(rows[x], rows[f"{y}_low"], rows[f"{y}_high"], color=color,
                                  alpha=0.2)  # fmt: skip
        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(f"{title}\n{scenario}", fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def latency_throughput(table: pd.DataFrame) -> Figure:
    """Serving latency against the output throughput it was served at: a panel each for TTFT
    (on a log scale) and TPOT, a line per scenario and engine through its arrival processes
    (rates), p50 solid and p99 dashed, each point labelled with its arrivals. Columns:
    scenario, engine, arrivals, output_throughput, ttft_p50_ms, ttft_p99_ms, tpot_p50_ms,
    tpot_p99_ms (`modelbench.tables.serving_table`)."""
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    scenarios = list(dict.fromkeys(table["scenario"]))
    lines = list(dict.fromkeys(zip(table["scenario"], table["engine"], strict=True)))
    for index, (metric, label) in enumerate((("ttft", "time to first token (ms)"),
                                             ("tpot", "time per output token (ms)"))):  # fmt: skip
        axes = figure.add_subplot(1, 2, index + 1)
        for number, (scenario, engine) in enumerate(lines):
            rows = table[(table["scenario"] == scenario) & (table["engine"] == engine)]
            rows = rows.sort_values("output_throughput")
            color = _color(ENGINE_COLORS, engine, number) if len(scenarios) == 1 else (
                LINE_COLORS[number % len(LINE_COLORS)]
            )  # fmt: skip
            name = engine if len(scenarios) == 1 else f"{engine}, {scenario}"
            for q, style in (("p50", "-"), ("p99", "--")):
                axes.plot(rows["output_throughput"], rows[f"{metric}_{q}_ms"], style, marker="o",
                          color=color, label=f"{name} {q}")  # fmt: skip
            for arrivals, x, y in zip(rows["arrivals"], rows["output_throughput"],
                                      rows[f"{metric}_p50_ms"], strict=True):  # fmt: skip
                axes.annotate(arrivals, (x, y), fontsize=6, textcoords="offset points",
                              xytext=(3, 3))  # fmt: skip
        if metric == "ttft":  # queueing takes it over orders of magnitude as the rate rises
            axes.set_yscale("log")
        axes.set_xlabel("output tokens / s (over the run's span)")
        axes.set_ylabel(label)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    title = "Serving latency against throughput, over request rates"
    figure.suptitle(title if len(scenarios) > 1 else f"{title}\n{scenarios[0]}", fontsize=10)
    return figure


def breakdown_bars(table: pd.DataFrame) -> Figure:
    """Where each step's time goes: a panel per phase (decode, prefill: their times differ by
    orders of magnitude), a stacked bar per step, a segment per kind of operation, and a tick
    at the step's floor. Columns: phase, step, operation, ms, floor_ms (the step's)."""
    phases = list(dict.fromkeys(table["phase"]))
    operations = list(dict.fromkeys(table["operation"]))
    colors = dict(zip(operations, itertools.cycle((*LINE_COLORS, *OTHER_COLORS)), strict=False))
    heights = [table[table["phase"] == phase]["step"].nunique() + 1.5 for phase in phases]
    figure = Figure(figsize=(10, 0.45 * sum(heights) + 0.6), layout="constrained")
    panels = figure.subplots(len(phases), 1, squeeze=False, height_ratios=heights)[:, 0]
    for axes, phase in zip(panels, phases, strict=True):
        rows = table[table["phase"] == phase]
        steps = list(dict.fromkeys(rows["step"]))
        positions = np.arange(len(steps))[::-1]
        left = np.zeros(len(steps))
        for operation in operations:
            part = rows[rows["operation"] == operation].set_index("step").reindex(steps)
            widths = part["ms"].fillna(0.0).to_numpy()
            axes.barh(positions, widths, left=left, label=operation, color=colors[operation])
            left += widths
        floors = rows.drop_duplicates("step").set_index("step").reindex(steps)["floor_ms"]
        axes.scatter(floors.to_numpy(), positions, marker="|", s=300, color="black", zorder=3,
                     label="floor (bytes at HBM read or FLOPs at GEMM peak)")  # fmt: skip
        axes.set_yticks(positions, steps, fontsize=8)
        axes.set_title(f"Where a {phase} step's time goes", fontsize=10)
    panels[-1].set_xlabel("ms per step (operations timed one after another in the captured step)")
    panels[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def engine_speedups(table: pd.DataFrame, title: str) -> Figure:
    """Grouped bars: per batch, each other engine's decode step over ftbench's.
    Columns: batch, engine, ratio."""
    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.add_subplot()
    batches = sorted(table["batch"].unique())
    engines = list(dict.fromkeys(table["engine"]))
    width = 0.8 / max(len(engines), 1)
    positions = np.arange(len(batches))
    for index, engine in enumerate(engines):
        rows = table[table["engine"] == engine].set_index("batch").reindex(batches)
        bars = axes.bar(positions + index * width, rows["ratio"], width, label=engine,
                        color=_color(ENGINE_COLORS, engine, index))  # fmt: skip
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(positions + 0.4 - width / 2, [str(b) for b in batches])
    axes.set_xlabel("batch")
    axes.set_ylabel("engine's decode step / ftbench's (x)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def history_lines(table: pd.DataFrame, title: str, highlight: int = 12) -> Figure:
    """A benchmark's metrics over its runs, each relative to its first run; regressions marked.
    Columns: run (0..), label (x tick), name, relative, verdict."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    axes = figure.add_subplot()
    names = list(dict.fromkeys(table["name"]))
    many = len(names) > highlight
    for index, name in enumerate(names):
        rows = table[table["name"] == name]
        if many:
            axes.plot(rows["run"], rows["relative"], color="#999999", linewidth=0.7, alpha=0.6)
        else:
            color = LINE_COLORS[index % len(LINE_COLORS)]
            axes.plot(rows["run"], rows["relative"], marker="o", label=name, color=color)
    if many:
        geomean = table.groupby("run")["relative"].apply(lambda v: float(np.exp(np.log(v).mean())))
        axes.plot(geomean.index, geomean.to_numpy(), color="#1f77b4", linewidth=2.5,
                  marker="o", label=f"geometric mean of {len(names)} metrics")  # fmt: skip
    for verdict, marker, color in (("slower", "^", "#d62728"), ("faster", "v", "#2ca02c")):
        rows = table[table["verdict"] == verdict]
        if not rows.empty:
            axes.scatter(rows["run"], rows["relative"], marker=marker, s=90, color=color,
                         zorder=4, label=f"{verdict} (run before or window)")  # fmt: skip
    labels = table.drop_duplicates("run").sort_values("run")
    axes.set_xticks(labels["run"], labels["label"], rotation=30, ha="right", fontsize=8)
    axes.axhline(1.0, color="black", linewidth=0.6)
    axes.set_ylabel("median time / first run's")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure
