"""The report's sections of the kinds with something to plot (`kinds.KINDS`, `plotted`), one
function per kind, each taking a `records.ResultSet` and returning an `html.Section`:

- tune / tuned cache: speed-up of the tuned choice over the cuBLAS default per problem, and the
  winning backends;
- tune-peers: time against the roofline measured in the same run, and the peers re-measured
  side by side (cuBLAS default, torch, torch+TunableOp);
- foundation: each probe's samples per run, with Nsight Compute's time for the cold GEMV;
- gemv: fraction of the HBM read bandwidth per decode shape;
- attention: decode attention's fraction of the HBM read bandwidth, context attention's TFLOP/s;
- allreduce: latency against message size per method and number of ranks;
- run: decode latency and throughput against batch, time to first token against input length,
  ftbench tuned against untuned and peers; with `ftbench run --breakdown`, where a decode step's
  and a prefill's time goes, operation by operation; `ftbench serve-bench`'s records (in-flight
  and static batching over request rates): TTFT and TPOT against output throughput, and a table
  of their latency percentiles, throughputs and goodput.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftbench.modelbench import runs
from ftbench.reports import plots
from ftbench.reports.html import Section, figure_html, section
from ftbench.reports.kinds import TUNED_CACHE
from ftbench.reports.records import ResultSet, case_name


def _us(ms: float | None) -> float | None:
    return None if ms is None else round(ms * 1e3, 2)


def _text(value: object) -> str:
    return "n/a" if value is None else str(value)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _gib(size: int | None) -> float | None:
    return None if size is None else round(size / 2**30, 2)


def _shape(m: int, n: int, k: int) -> str:
    return f"{m}x{n}x{k}"


def _geomean(values) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    return float(np.exp(np.log(values).mean()))


def tune_section(result_set: ResultSet) -> Section:
    outcomes = sorted(result_set.data, key=lambda o: (o.problem.n, o.problem.k, o.problem.m))
    table = pd.DataFrame(
        {
            "problem (m x n x k)": [
                _shape(o.problem.m, o.problem.n, o.problem.k) for o in outcomes
            ],
            "default us": [_us(o.default_ms) for o in outcomes],
            "tuned us": [_us(o.winner_ms) for o in outcomes],
            "speed-up": [round(o.speedup, 3) for o in outcomes],
            "winner": [f"{o.winner_backend}: {o.winner_name}" for o in outcomes],
        }
    )
    plot_table = pd.DataFrame(
        {
            "label": table["problem (m x n x k)"],
            "speedup": [o.speedup for o in outcomes],
            "backend": [o.winner_backend for o in outcomes],
        }
    )
    counts = plot_table["backend"].value_counts()
    summary = (
        f"{len(outcomes)} problems on {result_set.gpu}; geometric-mean speed-up over the cuBLAS "
        f"default {_geomean(plot_table['speedup']):.3f}x; winners: "
        + ", ".join(f"{name} {count}" for name, count in counts.items())
    )
    figures = [
        figure_html(plots.speedup_bars(plot_table), "speed-up per problem"),
        figure_html(plots.backend_counts(counts), "winning backend counts"),
    ]
    kind = "tuned cache" if result_set.kind == TUNED_CACHE else "tune sweep"
    return section(f"GEMM tuning ({kind})", result_set.path, summary, figures, [table])


PEERS = {"default_ms": "cuBLAS default", "torch_ms": "torch", "tunableop_ms": "torch+TunableOp"}


def peers_section(result_set: ResultSet) -> Section:
    peers = result_set.data
    rows = peers.rows
    flops = np.array([2.0 * r["m"] * r["n"] * r["k"] for r in rows])
    # bytes as the benchmark counted them: its HBM fraction times the time times the bandwidth
    chosen_s = np.array([r["chosen_ms"] for r in rows]) / 1e3
    moved = np.array([r["hbm_fraction"] for r in rows]) * chosen_s * peers.read_bytes_per_s
    default_s = np.array([r["default_ms"] for r in rows]) / 1e3
    labels = [f"{r['phase'][:3]} {_shape(r['m'], r['n'], r['k'])}" for r in rows]
    roof = pd.DataFrame(
        {
            "phase": [r["phase"] for r in rows],
            "intensity": flops / moved,
            "chosen_tflops": flops / chosen_s / 1e12,
            "default_tflops": flops / default_s / 1e12,
        }
    )
    ratios = pd.DataFrame({"label": labels})
    for column, name in PEERS.items():
        ratios[name] = [r[column] / r["chosen_ms"] if r.get(column) else None for r in rows]
    table = pd.DataFrame(
        {
            "phase": [r["phase"] for r in rows],
            "problem (m x n x k)": [_shape(r["m"], r["n"], r["k"]) for r in rows],
            "tuned us": [_us(r["chosen_ms"]) for r in rows],
            **{f"{name} us": [_us(r.get(column)) for r in rows] for column, name in PEERS.items()},
            "roofline": [f"{r['roofline_fraction']:.0%} {r['bound']}" for r in rows],
            "winner": [f"{r['chosen']['backend']}: {r['chosen']['name']}" for r in rows],
        }
    )
    geomeans = ", ".join(
        f"{name} {_geomean(ratios[name].dropna()):.3f}x"
        for name in PEERS.values()
        if ratios[name].notna().any()
    )
    summary = (
        f"{len(rows)} problems on {result_set.gpu}; measured ceilings: HBM read "
        f"{peers.read_bytes_per_s / 1e12:.2f} TB/s, GEMM peak {peers.peak_flops_per_s / 1e12:.0f} "
        f"TFLOP/s. Geometric-mean speed-up of the tuned choice over {geomeans}."
    )
    figures = [
        figure_html(
            plots.roofline(roof, peers.peak_flops_per_s, peers.read_bytes_per_s), "roofline"
        ),
        figure_html(plots.peer_speedups(ratios, list(PEERS.values())), "peer speed-ups"),
    ]
    return section("GEMM tuning against peers", result_set.path, summary, figures, [table])


def foundation_section(result_set: ResultSet) -> Section:
    probes = result_set.data.probes
    table = pd.DataFrame(
        {
            "probe": [p.probe for p in probes],
            "run": [p.run for p in probes],
            "median us": [_us(p.timing["median_ms"]) for p in probes],
            "95% CI us": [
                f"{_us(p.timing['ci_low_ms'])} - {_us(p.timing['ci_high_ms'])}" for p in probes
            ],
            "samples": [len(p.timing.get("samples_ms", ())) for p in probes],
            "noise": [f"{p.timing['rel_noise']:.2%}" for p in probes],
            "method": [f"{p.timing['method']}, {p.timing['l2']}" for p in probes],
            "flags": [", ".join(p.timing.get("flags", ())) for p in probes],
        }
    )
    boxes = pd.DataFrame(
        {
            "probe": [p.probe for p in probes],
            "run": [p.run for p in probes],
            "samples_ms": [p.timing.get("samples_ms", [p.timing["median_ms"]]) for p in probes],
        }
    )
    ncu = result_set.data.ncu_gemv_cold_ms
    ncu_ms = {} if ncu is None else {"gemv_cold": ncu}
    summary = f"{len(set(table['run']))} run(s) of {len(set(table['probe']))} probes"
    if ncu is not None:
        summary += f"; Nsight Compute times the cold GEMV at {ncu * 1e3:.2f} us"
    figures = [figure_html(plots.probe_boxes(boxes, ncu_ms), "probe samples per run")]
    return section("Timing core (foundation)", result_set.path, summary, figures, [table])


def gemv_section(result_set: ResultSet) -> Section:
    shapes = result_set.data

    fractions = pd.DataFrame({"label": [s.label.removeprefix("gemv ") for s in shapes]})
    columns = {"best": "best config", "best_pdl": "best + PDL", "cublas": "cuBLAS default"}
    for field, name in columns.items():
        fractions[name] = [
            None
            if getattr(s, field) is None
            else s.bytes / (getattr(s, field)["median_ms"] / 1e3) / (s.read_tb_per_s * 1e12)
            for s in shapes
        ]
    table = pd.DataFrame(
        {
            "shape": fractions["label"],
            "best config": [s.best_name for s in shapes],
            "best us": [_us(s.best["median_ms"]) for s in shapes],
            "best + PDL us": [_us(s.best_pdl["median_ms"]) if s.best_pdl else None for s in shapes],
            "cuBLAS us": [_us(s.cublas["median_ms"]) for s in shapes],
            **{f"{name} of HBM": fractions[name].map("{:.0%}".format) for name in columns.values()},
        }
    )
    summary = f"{len(shapes)} shapes on {result_set.gpu}"
    figure = plots.fraction_bars(fractions, list(columns.values()))
    figures = [figure_html(figure, "fraction of HBM bandwidth")]
    return section("Decode GEMV kernels", result_set.path, summary, figures, [table])


def attention_section(result_set: ResultSet) -> Section:
    measured = result_set.data
    decode = [r for r in measured.records if r["kind"] == "decode"]
    context = [r for r in measured.records if r["kind"] == "context"]

    def median_us(record: dict) -> float | None:
        return None if record["timing"] is None else _us(record["timing"]["median_ms"])

    def timed(record: dict, field: str) -> float | None:  # a wrong case has no rate
        return None if record["timing"] is None else record[field]

    labels = [case_name("attention", r).removeprefix("attention decode ") for r in decode]
    decode_table = pd.DataFrame(
        {
            "decode case": labels,
            "heads q/kv x dim": [
                f"{r['q_heads']}/{r['kv_heads']} x {r['head_dim']}" for r in decode
            ],
            "MB": [round(r["bytes"] / 1e6, 2) for r in decode],
            "us": [median_us(r) for r in decode],
            "of HBM read": [
                None if timed(r, "read_fraction") is None else f"{r['read_fraction']:.0%}"
                for r in decode
            ],
            "rel. error": [f"{r['rel_err']:.1e}" for r in decode],
        }
    )
    context_table = pd.DataFrame(
        {
            "context case": [
                case_name("attention", r).removeprefix("attention context ") for r in context
            ],
            "heads q/kv x dim": [
                f"{r['q_heads']}/{r['kv_heads']} x {r['head_dim']}" for r in context
            ],
            "GFLOP": [round(r["flops"] / 1e9, 2) for r in context],
            "us": [median_us(r) for r in context],
            "TFLOP/s": [_rounded(timed(r, "tflop_per_s"), 1) for r in context],
            "rel. error": [f"{r['rel_err']:.1e}" for r in context],
        }
    )
    wrong = sum(r["timing"] is None for r in measured.records)
    summary = f"{len(decode)} decode and {len(context)} context cases on {result_set.gpu}"
    if measured.ceilings is not None:
        summary += f"; HBM read {measured.ceilings['read_tb_per_s']:.2f} TB/s (read probe)"
    if wrong:
        summary += f"; {wrong} wrong against float64, not timed"
    figures = []
    if decode:
        fractions = pd.DataFrame(
            {"label": labels, "decode attention": [timed(r, "read_fraction") for r in decode]}
        )
        figure = plots.fraction_bars(
            fractions, ["decode attention"], "Decode attention: K/V bytes / time / read bandwidth"
        )
        figures.append(figure_html(figure, "decode attention fraction of HBM bandwidth"))
    tables = [table for table in (decode_table, context_table) if not table.empty]
    return section("Attention kernels", result_set.path, summary, figures, tables)


def allreduce_section(result_set: ResultSet) -> Section:
    records = result_set.data.records

    def ranks(record: dict) -> str:
        return f"{record['world_size']} ranks" + (
            " (emulated on one GPU)" if record["emulated"] else ""
        )

    lines = pd.DataFrame(
        {
            "scenario": ["all-reduce, fp16 in place"] * len(records),
            "method": [f"{r['method']}, {ranks(r)}" for r in records],
            "bytes": [r["bytes"] for r in records],
            "median_us": [r["median_us"] for r in records],
            "median_us_low": [r["timing"]["ci_low_ms"] * 1e3 for r in records],
            "median_us_high": [r["timing"]["ci_high_ms"] * 1e3 for r in records],
        }
    )
    table = pd.DataFrame(
        {
            "method": [r["method"] for r in records],
            "ranks": [ranks(r) for r in records],
            "bytes": [r["bytes"] for r in records],
            "median us": [round(r["median_us"], 2) for r in records],
            "95% CI us": [
                f"{r['timing']['ci_low_ms'] * 1e3:.2f} - {r['timing']['ci_high_ms'] * 1e3:.2f}"
                for r in records
            ],
        }
    )
    summary = f"{len(records)} all-reduces on {result_set.gpu}"
    figures = []
    if records:
        figure = plots.engine_lines(
            lines, "bytes", "median_us", "message size (bytes)", "us per all-reduce",
            "All-reduce latency against message size", series="method",
        )  # fmt: skip
        figures.append(figure_html(figure, "all-reduce latency vs size"))
    return section("All-reduce", result_set.path, summary, figures, [table])


def _scenario(record: dict, *, without: str) -> str:
    parts = {
        "model": record["model"], "dtype": record["dtype"], "tp": f"tp={record['tp']}",
        "pp": f"pp={record['pp']}", "batch": f"batch={record['batch']}",
        "input_len": f"in={record['input_len']}", "output_len": f"out={record['output_len']}",
    }  # fmt: skip
    return " ".join(value for name, value in parts.items() if name != without)


def run_section(result_set: ResultSet) -> Section:
    order = {engine: rank for rank, engine in enumerate(runs.ENGINES)}
    ranked = sorted(result_set.data, key=lambda r: order.get(r["engine"], len(order)))
    measured = [r for r in ranked if runs.measured_ok(r)]
    serving = [r for r in measured if runs.is_serving(r)]
    records = [r for r in measured if not runs.is_serving(r)]
    skipped = [r for r in result_set.data if not runs.measured_ok(r)]
    points = []
    for r in records:
        point = {"engine": r["engine"], "batch": r["batch"], "input_len": r["input_len"]}
        for metric in runs.TIMING_METRICS:
            timing = r[metric]
            point[metric] = timing["median_ms"]
            point[f"{metric}_low"] = timing["ci_low_ms"]
            point[f"{metric}_high"] = timing["ci_high_ms"]
        point["throughput_tok_s"] = r.get("throughput_tok_s")
        point["by_batch"] = _scenario(r, without="batch")
        point["by_input"] = _scenario(r, without="input_len")
        points.append(point)
    frame = pd.DataFrame(points)
    figures = []
    if not frame.empty:
        by_batch = _varying(frame.rename(columns={"by_batch": "scenario"}), "batch")
        by_input = _varying(frame.rename(columns={"by_input": "scenario"}), "input_len")
        if not by_batch.empty:
            figures.append(figure_html(plots.engine_lines(
                by_batch, "batch", "decode_step_ms", "batch", "ms per decode step",
                "Decode latency against batch"), "latency vs batch"))  # fmt: skip
            figures.append(figure_html(plots.engine_lines(
                by_batch, "batch", "throughput_tok_s", "batch", "generated tokens / s",
                "Throughput against batch"), "throughput vs batch"))  # fmt: skip
        if not by_input.empty:
            figures.append(figure_html(plots.engine_lines(
                by_input, "input_len", "ttft_ms", "input length (tokens)",
                "time to first token (ms)", "Time to first token against input length"),
                "ttft vs input length"))  # fmt: skip
        ratios = _engine_ratios(frame)
        if not ratios.empty:
            title = f"ftbench against untuned and peers: decode step\n{ratios.attrs['scenario']}"
            figures.append(figure_html(plots.engine_speedups(ratios, title), "tuned vs peers"))
    table = pd.DataFrame(
        {
            "engine": [r["engine"] for r in records],
            "scenario": [_scenario(r, without="") for r in records],
            "TTFT ms": [round(r["ttft_ms"]["median_ms"], 3) for r in records],
            "decode step ms": [round(r["decode_step_ms"]["median_ms"], 4) for r in records],
            "end-to-end ms": [round(r["end_to_end_ms"]["median_ms"], 2) for r in records],
            "tokens/s": [_rounded(r.get("throughput_tok_s"), 1) for r in records],
            "roofline": [
                None if r.get("roofline_fraction") is None else f"{r['roofline_fraction']:.0%}"
                for r in records
            ],
            "peak GiB": [_gib(r.get("peak_memory_bytes")) for r in records],
            "GEMM cache misses": [_text(r.get("gemm_cache_misses")) for r in records],
            "flags": [", ".join(r.get("flags") or ()) for r in records],
        }
    )
    summary = f"{len(measured)} measured configurations on {result_set.gpu}"
    if skipped:
        summary += "; not run: " + "; ".join(
            f"{runs.run_key(r)} ({r.get('status')}: {r.get('reason')})" for r in skipped
        )
    tables = [table] if records or not serving else []
    steps = _breakdown_steps(records)
    if not steps.empty:
        kinds = steps.groupby(["phase", "step", "operation"], sort=False, as_index=False).agg(
            ms=("ms", "sum"), floor_ms=("step_floor_ms", "first")
        )
        figures.append(figure_html(plots.breakdown_bars(kinds), "time per operation"))
        tables.append(
            steps.drop(columns=["phase", "operation", "step_floor_ms"]).rename(
                columns={"ms": "ms/step", "per_step": "x per step"}
            )
        )
    if serving:
        served = _serving_table(serving)
        figures.append(figure_html(plots.latency_throughput(served), "latency vs throughput"))
        tables.append(_serving_rows(served))
    return section("Model runs", result_set.path, summary, figures, tables)


def _serving_scenario(record: dict) -> str:
    """What a serve-bench record serves, whatever the engine and arrivals."""
    serving = record["serving"]
    stop = serving.get("stop_token")
    return (
        f"{record['model']} {record['dtype']} concurrency={record['batch']} "
        f"in={serving['input_lengths']} out={serving['output_lengths']} "
        f"requests={serving['requests']}{'' if stop is None else f' stop={stop}'}"
    )


def _serving_table(records: list[dict]) -> pd.DataFrame:
    """serve-bench's records (`modelbench.tables.serving_table`) with their scenarios."""
    from ftbench.modelbench.tables import serving_table

    table = serving_table(records)
    table.insert(1, "scenario", [_serving_scenario(r) for r in records])
    return table


def _serving_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The report's table of `_serving_table`: its headers, numbers rounded."""
    from ftbench.modelbench.tables import SERVING_COLUMNS

    return table.round(3).rename(columns=SERVING_COLUMNS)


def _breakdown_steps(records: list[dict]) -> pd.DataFrame:
    """Every operation of the steps `ftbench run --breakdown` took apart: phase, step (engine,
    point, phase), place (its name in the layer pattern), operation (its kind), per_step, ms,
    share of the step, of floor, and the step's floor."""
    rows = []
    for record in records:
        for phase, step in (record.get("breakdown") or {}).items():
            at = f"at length {step['length']}" if phase == "decode" else f"{step['tokens']} tokens"
            name = f"{record['engine']} b={record['batch']} {record['input_len']}/" + (
                f"{record['output_len']}: {phase} {at}"
            )
            for operation in step["operations"]:
                rows.append({
                    "phase": phase, "step": name, "place": operation["name"],
                    "operation": operation["name"].rsplit(" ", 1)[-1],
                    "per_step": operation["per_step"], "ms": round(operation["step_ms"], 4),
                    "share": f"{operation['step_ms'] / step['whole_ms']:.1%}",
                    "of floor": f"{operation['roofline_fraction']:.1%}",
                    "step_floor_ms": step["floor_ms"],
                })  # fmt: skip
    return pd.DataFrame(rows)


def _varying(frame: pd.DataFrame, x: str, panels: int = 4) -> pd.DataFrame:
    """The rows of the (at most `panels`) scenarios in which `x` takes two values or more."""
    values = frame.groupby("scenario", sort=False)[x].nunique()
    keep = list(values[values >= 2].index[:panels])
    return frame[frame["scenario"].isin(keep)]


def _engine_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """Each other engine's decode step over ftbench's, per batch, in the scenario with the most
    batches where ftbench ran."""
    ours = frame[frame["engine"] == "ftbench"]
    if ours.empty or frame["engine"].nunique() < 2:
        return pd.DataFrame()
    scenario = ours["by_batch"].value_counts().index[0]
    rows = frame[frame["by_batch"] == scenario]
    base = rows[rows["engine"] == "ftbench"].set_index("batch")["decode_step_ms"]
    others = rows[rows["engine"] != "ftbench"]
    ratios = pd.DataFrame(
        {
            "batch": others["batch"],
            "engine": others["engine"],
            "ratio": others["decode_step_ms"].to_numpy() / base.reindex(others["batch"]).to_numpy(),
        }
    ).dropna()
    ratios.attrs["scenario"] = scenario
    return ratios


SECTIONS = {
    "tune": tune_section,
    TUNED_CACHE: tune_section,
    "tune-peers": peers_section,
    "foundation": foundation_section,
    "gemv": gemv_section,
    "attention": attention_section,
    "allreduce": allreduce_section,
    runs.KIND: run_section,
}
