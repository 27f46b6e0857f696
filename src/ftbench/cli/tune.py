"""`ftbench tune` (every GEMM of a model swept over the backends) and `ftbench build-cutlass`
(its CUTLASS kernels compiled ahead, on any machine with nvcc)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from ftbench.cli.options import (
    BatchOption,
    ConfigOption,
    GemmDType,
    GemmDTypeOption,
    InputLenOption,
    L2Mode,
    OutputLenOption,
    ProfileOption,
    ScalingOption,
    TpOption,
    WeightsOption,
    force_option,
    formats,
    model_spec,
    names,
    workload,
)
from ftbench.cli.output import PROGRESS_COLUMNS, console, print_table, warn
from ftbench.cli.tables import print_tuned
from ftbench.errors import FtbenchError, InvalidInputError


def tune_command(
    profile: ProfileOption = None,
    config: ConfigOption = None,
    dtype: GemmDTypeOption = GemmDType.fp16,
    weights: WeightsOption = None,
    scaling: ScalingOption = None,
    tp: TpOption = 1,
    batch: BatchOption = "1",
    input_len: InputLenOption = "128",
    output_len: OutputLenOption = "128",
    backends: Annotated[
        str,
        typer.Option(
            "--backends",
            help="Backends to sweep, comma-separated: cublas, cublaslt, cutlass, ftbench.",
        ),
    ] = "cublas,cublaslt,cutlass,ftbench",
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="Time budget for the whole sweep, e.g. 900s, 15m, 1h (default: none, every "
            "candidate is timed). It is shared out evenly over the problems left to tune; when "
            "a problem's share runs out, its candidates not yet timed are skipped (recorded as "
            "such) and the best of those timed so far, always including the cuBLAS default, "
            "wins. Every problem gets an entry; the confirming re-timings can overrun the "
            "budget a little.",
        ),
    ] = None,
    l2: Annotated[L2Mode, typer.Option("--l2", help="L2 cache during timing.")] = L2Mode.cold,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Tuned cache to write or resume (default: $FTBENCH_CACHE_DIR/tuned/GPU-NAME.json "
            "(e.g. tuned/nvidia-h200.json), the file the runtime reads). A file that is not a "
            "tuned cache of this GPU and libraries is never replaced without --force.",
        ),
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option(
            "--results",
            help="Every candidate's timing (default: OUT.results.json); it replaces an earlier "
            "tune results file, any other file only with --force.",
        ),
    ] = None,
    attention: Annotated[
        bool, typer.Option("--attention-gemms", help="Also tune the batched attention GEMMs.")
    ] = False,
    unfused: Annotated[
        bool, typer.Option("--unfused", help="Tune separate Q/K/V and gate/up GEMMs.")
    ] = False,
    force: Annotated[
        bool,
        force_option(
            "Start --out over where it is a cache tuned on another GPU or library set, a "
            "corrupt cache or another file; let --results replace a file of another kind."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List problems and candidate counts; no GPU needed.")
    ] = False,
) -> None:
    """Sweep every GEMM of a model over cuBLAS, cuBLASLt, CUTLASS and ftbench's own kernels.

    Each candidate is verified against an fp32 reference from the dequantised operands, then
    timed (cold L2 by default); a candidate replaces the default (cuBLAS's; for fp8, cuBLASLt's
    heuristic first choice; for 8-bit weights, ftbench's untuned weight-only kernel) only when
    faster beyond the noise. The cache is saved
    after every problem: an interrupted sweep resumes where it stopped when run again. Shapes are
    per tensor-parallel rank; every pipeline stage runs the same shapes, so one cache serves any
    `run --pp`.
    """
    from ftbench.autotune.plan import parse_duration, tuning_problems
    from ftbench.autotune.sweep import SweepOptions, check_sweep_outputs, run_sweep
    from ftbench.bench.environment import capture_environment
    from ftbench.gemm.cache import default_cache_path
    from ftbench.profiles.problems import positions_warning

    spec = model_spec(profile, config)
    chosen = workload(
        batch, input_len, output_len, dtype.value, tp, weights=weights, scaling=scaling
    )
    warn(positions_warning(spec, chosen.input_lens, chosen.output_lens))
    options = SweepOptions(
        backends=tuple(names(backends, "--backends")), l2=l2.value,
        budget_s=None if budget is None else parse_duration(budget),
    )  # fmt: skip
    counted = tuning_problems(spec, chosen, fused=not unfused, attention=attention)
    if dry_run:
        _print_plan(f"{spec.name} ({formats(chosen)})", counted, list(options.backends))
        return
    if out is not None:  # the default --out is named after the GPU
        check_sweep_outputs(out, results, force)
    environment = capture_environment()
    if not environment.gpus:
        raise InvalidInputError(f"tuning needs a GPU: {environment.no_gpu_reason}")
    out = out or default_cache_path(environment.gpus[0].name)
    with Progress(*PROGRESS_COLUMNS, console=console) as progress:
        if "cutlass" in options.backends:
            _prebuild_cutlass(progress, chosen.out_dtype)  # CUTLASS: fp16/bf16 GEMMs
        report = run_sweep(
            [item.problem for item in counted], out, options, results_path=results,
            force=force, progress=progress,
        )  # fmt: skip
    for name, reason in report.unavailable_backends.items():
        console.print(f"[yellow]backend {name} skipped:[/] {reason}")
    print_tuned(report.cache, [item.problem for item in counted], environment.gpus[0].name)
    console.print(
        f"tuned {report.tuned} problems, resumed {report.resumed}; cache: {out}; "
        f"every candidate: {report.results_path}"
    )


def _print_plan(model: str, counted, backends: list[str]) -> None:
    """`tune --dry-run`: the problems and each backend's candidate count."""
    from ftbench.autotune.plan import candidate_counts

    table = Table(title=f"{model}: {len(counted)} problems to tune", box=box.SIMPLE_HEAD)
    for header in ("problem", "calls/step", "roles", *backends):
        table.add_column(header)
    reasons: dict[str, str] = {}
    for item in counted:
        counts = candidate_counts(item.problem, backends, reasons)
        roles = ", ".join(dict.fromkeys(role.split(":")[1] for role in item.roles))
        cells = ["n/a" if count is None else str(count) for count in counts.values()]
        table.add_row(item.problem.key(), str(item.count), roles, *cells)
    print_table(table)
    for name, reason in reasons.items():
        console.print(f"{name}: n/a here: {reason}")


def _prebuild_cutlass(progress, dtype: str) -> None:
    """Compile (or find cached) this GPU's CUTLASS kernels for `dtype` before any timing."""
    from ftbench.gemm.backends.cutlass import prebuild

    try:
        built = prebuild(progress=progress, elements=(dtype,))
    except FtbenchError as exc:
        console.print(f"[yellow]CUTLASS kernels not built:[/] {exc}")
        return
    failed = [name for name, result in built.items() if result.error is not None]
    if failed:
        console.print(
            f"[yellow]{len(failed)} CUTLASS kernels failed to compile[/] (logs beside them)"
        )


def build_cutlass_command(
    arch: Annotated[
        int | None,
        typer.Option(
            "--arch", help="Build for sm90 (Hopper) or sm80 (Ampere, Ada); default: this GPU's."
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Kernel dtypes, comma-separated: fp16, bf16.")
    ] = "fp16,bf16",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Build under OUT/cutlass/ (use it with FTBENCH_CACHE_DIR=OUT) instead of the "
            "cache folder `ftbench tune` reads ($FTBENCH_CACHE_DIR/cutlass).",
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", help="nvcc processes at once (default: one per core).", min=1),
    ] = None,
) -> None:
    """Compile the curated CUTLASS kernels ahead of tuning: nvcc and nvidia-cutlass are needed
    only here, so a machine without the GPU can build for it.

    Kernels already built are kept; one that fails to compile is listed with its log and the
    others still build.
    """
    from ftbench.errors import NoGpuError
    from ftbench.files import check_folder_writable
    from ftbench.gemm.backends.cutlass import gpu_build_arch, prebuild
    from ftbench.kernels.cutlass_build import cache_root

    try:
        arch = arch or gpu_build_arch()
    except NoGpuError as exc:
        raise InvalidInputError(
            f"{exc}; to build for a GPU elsewhere give --arch 90 or 80"
        ) from exc
    if arch is None:
        raise InvalidInputError("no CUTLASS kernel set for this GPU; give --arch 90 or 80")
    root = cache_root() if out is None else out / "cutlass"
    check_folder_writable(root)  # kernels already there are its own: kept, not replaced
    start = time.perf_counter()
    with Progress(*PROGRESS_COLUMNS, console=console) as progress:
        results = prebuild(arch, jobs, progress, tuple(names(dtype, "--dtype")), root=root)
    table = Table(title="CUTLASS kernels", box=box.SIMPLE_HEAD)
    for header in ("kernel", "status", "compile s", "library MiB"):
        table.add_column(header, justify="left" if header in ("kernel", "status") else "right")
    for name, result in results.items():
        size = "" if result.library is None else f"{result.library.stat().st_size / 2**20:.2f}"
        status = "failed" if result.library is None else "cached" if result.cached else "built"
        table.add_row(name, status, f"{result.compile_s:.1f}", size)
    print_table(table)
    for name, result in results.items():
        if result.error is not None:
            console.print(f"[red]{name}[/red]: {escape(result.error)}")
    built = sum(result.library is not None for result in results.values())
    console.print(
        f"{built}/{len(results)} kernels in {time.perf_counter() - start:.0f} s under {root}"
    )
