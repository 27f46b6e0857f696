"""`ftbench profiles list` and `profiles show`: the built-in models and every GEMM one issues."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from ftbench.cli.options import (
    BatchOption,
    ConfigOption,
    DatasheetGpu,
    GemmDType,
    GemmDTypeOption,
    InputLenOption,
    OutputLenOption,
    PpOption,
    ProfileOption,
    ScalingOption,
    TpOption,
    WeightsOption,
    formats,
    json_option,
    model_spec,
    workload,
)
from ftbench.cli.output import console, print_table, warn
from ftbench.errors import InvalidInputError

app = typer.Typer(
    name="profiles", help="Model profiles and every GEMM problem they issue.", no_args_is_help=True
)


@app.command("list")
def profiles_list_command(
    as_json: Annotated[bool, json_option("the profiles as a list")] = False,
) -> None:
    """List the built-in model profiles with their size and shape numbers."""
    from ftbench.profiles.catalog import builtin_profiles
    from ftbench.profiles.summary import profile_row

    rows = [profile_row(spec) for spec in builtin_profiles()]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="Built-in model profiles", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("name")
    table.add_column("family")
    for header in ("params (B)", "layers", "hidden", "heads/kv", "ffn", "vocab"):
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            row["name"], row["family"], f"{row['parameters'] / 1e9:.3f}", row["layers"],
            str(row["hidden_size"]), f"{row['num_heads']}/{row['num_kv_heads']}",
            str(row["ffn_hidden_size"]), str(row["vocab_size"]),
        )  # fmt: skip
    print_table(table)


@app.command("show")
def profiles_show_command(
    model: Annotated[
        str | None,
        typer.Argument(hidden=True, help="Deprecated: the model, as --profile or --config."),
    ] = None,
    profile: ProfileOption = None,
    config: ConfigOption = None,
    tp: TpOption = 1,
    pp: PpOption = 1,
    batch: BatchOption = "1",
    input_len: InputLenOption = "128",
    output_len: OutputLenOption = "128",
    beam: Annotated[
        int,
        typer.Option(
            "--beam",
            min=1,
            help="Beam width: show the shapes a beam-search runtime would issue (generation "
            "GEMMs of batch x beam rows). ftbench's runtime has no beam search yet.",
        ),
    ] = 1,
    dtype: GemmDTypeOption = GemmDType.fp16,
    weights: WeightsOption = None,
    scaling: ScalingOption = None,
    unfused: Annotated[
        bool,
        typer.Option(
            "--unfused", help="List Q, K, V and gate, up as separate GEMMs instead of fused ones."
        ),
    ] = False,
    gpu: Annotated[
        DatasheetGpu, typer.Option("--gpu", help="Datasheet peaks for the bound column.")
    ] = DatasheetGpu.h100,
    as_json: Annotated[bool, json_option("the problems and their numbers")] = False,
) -> None:
    """Show every GEMM a model issues for a workload: shapes, counts, FLOPs, bytes, bound."""
    from ftbench.gemm.problem import datasheet_peaks
    from ftbench.profiles.catalog import load_profile
    from ftbench.profiles.problems import positions_warning
    from ftbench.profiles.summary import problem_summary

    chosen = workload(
        batch, input_len, output_len, dtype.value, tp, pp, beam, weights=weights, scaling=scaling
    )
    peaks = datasheet_peaks(gpu.value)
    if model is None:
        spec = model_spec(profile, config)
    elif profile is None and config is None:  # the old spelling keeps working, for now
        warn(f"`profiles show {model}` is deprecated: select the model with --profile NAME or "
             "--config PATH, as tune and run do")  # fmt: skip
        spec = load_profile(model)
    else:
        raise InvalidInputError("give the model once: --profile NAME or --config PATH")
    warn(positions_warning(spec, chosen.input_lens, chosen.output_lens))
    summary = problem_summary(spec, chosen, peaks, fused=not unfused)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    rank = summary["rank"]
    table = Table(
        title=f"{spec.name} ({spec.parameter_count() / 1e9:.2f}B parameters), "
        f"tp={tp} pp={pp}, {formats(chosen)}, bound on {peaks.name} ({peaks.source})",
        caption=f"per rank: {rank['q_heads']} query heads, {rank['kv_heads']} KV heads "
        f"(x{rank['kv_replicas']} replicated), FFN {rank['ffn_hidden_size']}, embedding and LM "
        f"head {rank['lm_head_rows']} rows, {rank['layers_per_stage']} layers per stage. "
        "ctx = context phase, gen = generation step, * = inside fused attention, "
        "calls = per step, GFLOP and MB = per call.",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    table.add_column("phase")
    table.add_column("roles", overflow="fold", min_width=12)
    for header in ("m", "n", "k", "batch", "calls", "GFLOP", "MB"):
        table.add_column(header, justify="right")
    table.add_column("bound")
    short_phase = {"context": "ctx", "generation": "gen"}
    for row in summary["problems"]:
        problem = row["problem"]
        roles = dict.fromkeys(role.split(":")[1] for role in row["roles"])
        table.add_row(
            "+".join(short_phase[phase] for phase in row["phases"]),
            ", ".join(roles) + ("*" if row["fused_into_attention"] else ""),
            str(problem["m"]), str(problem["n"]), str(problem["k"]), str(problem["batch_count"]),
            str(row["count"]), f"{row['flops'] / 1e9:.3f}", f"{row['bytes'] / 1e6:.2f}",
            row["bound"],
        )  # fmt: skip
    print_table(table)
