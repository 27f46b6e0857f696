"""Build the curated CUTLASS kernels of one architecture into a cache folder, and report.

    python benchmarks/build_cutlass.py --arch 90 --out-dir .cutlass_build [--jobs N]

The libraries land in <out-dir>/cutlass/sm<arch>-<key>/ (the layout the `cutlass` backend reads),
so another machine with the same GPU architecture uses them with FTBENCH_CACHE_DIR=<out-dir>;
nvcc and nvidia-cutlass are needed only here. Prints each kernel's compile time and library size
(a cached kernel shows the time recorded when it was built) and the whole build's wall time.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from ftbench.kernels.cutlass_build import build_kernels, kernels_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    console = Console()
    names = [spec.name for spec in kernels_for(args.arch)]
    start = time.perf_counter()
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        results = build_kernels(
            names, args.arch, args.jobs, root=args.out_dir / "cutlass", progress=progress
        )
    wall_s = time.perf_counter() - start

    table = Table(title=f"CUTLASS sm{args.arch} kernels ({args.jobs} nvcc jobs)")
    for column in ("kernel", "status", "compile s", "library MiB"):
        table.add_column(
            column,
            justify="left" if column in ("kernel", "status") else "right",
            no_wrap=column == "kernel",
        )
    total_bytes = 0
    for name, result in results.items():
        if result.library is None:
            table.add_row(name, "[red]failed[/red]", f"{result.compile_s:.1f}", "")
            continue
        size = result.library.stat().st_size
        total_bytes += size
        status = "cached" if result.cached else "built"
        table.add_row(name, status, f"{result.compile_s:.1f}", f"{size / 2**20:.2f}")
    console.print(table)
    for name, result in results.items():
        if result.error is not None:
            console.print(f"[red]{name}[/red]: {result.error}")
    built = sum(result.library is not None for result in results.values())
    console.print(
        f"{built}/{len(results)} kernels in {wall_s:.0f} s wall; libraries "
        f"{total_bytes / 2**20:.1f} MiB under {args.out_dir / 'cutlass'}"
    )


if __name__ == "__main__":
    main()
