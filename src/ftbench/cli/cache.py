"""`ftbench cache show|validate|merge|prune`: inspect and maintain tuned-config caches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ftbench.cli.options import force_option, json_option
from ftbench.cli.output import console
from ftbench.cli.tables import print_tuned
from ftbench.gemm.cache import MAX_AGE_DAYS

app = typer.Typer(
    name="cache", help="Inspect and maintain tuned-config caches.", no_args_is_help=True
)
CachePath = Annotated[Path, typer.Argument(help="A tuned cache file.")]


@app.command("show")
def cache_show_command(
    path: CachePath,
    as_json: Annotated[bool, json_option("the file's content")] = False,
) -> None:
    """Show a cache's header and every tuned problem."""
    from ftbench.gemm.cache import load_cache

    cache = load_cache(path)
    if as_json:
        console.print_json(json.dumps(cache.to_dict()))
        return
    header = cache.header
    console.print(
        f"{path}: {len(cache.entries)} problems, tuned on {header.gpu_name} (sm "
        f"{header.compute_capability}), driver {header.driver}, CUDA {header.cuda_runtime}, "
        f"cuBLAS {header.cublas}, cuBLASLt {header.cublaslt}, CUTLASS {header.cutlass}, "
        f"ftbench {header.ftbench}, created {header.created_utc}"
    )
    print_tuned(cache, [entry.problem for entry in cache.entries.values()], header.gpu_name)


@app.command("validate")
def cache_validate_command(path: CachePath) -> None:
    """Check a cache file; on a GPU machine also check it matches this GPU and its libraries.

    Exit code 0: valid (and matching); 1: valid but tuned elsewhere; 2: not a valid cache.
    """
    from ftbench.bench.environment import capture_environment
    from ftbench.gemm.cache import CacheHeader, load_cache

    cache = load_cache(path)
    environment = capture_environment()
    if not environment.gpus:
        console.print(f"{path}: valid, {len(cache.entries)} problems (no GPU here to match)")
        return
    problems = cache.header.mismatches(CacheHeader.from_environment(environment))
    if problems:
        console.print(f"{path}: valid but tuned elsewhere: {'; '.join(problems)}")
        raise typer.Exit(1)
    console.print(f"{path}: valid, {len(cache.entries)} problems, matches this GPU")


@app.command("merge")
def cache_merge_command(
    out: Annotated[Path, typer.Argument(help="The merged cache to write.")],
    inputs: Annotated[list[Path], typer.Argument(help="Caches of the same GPU and libraries.")],
    force: Annotated[bool, force_option("Replace OUT if it exists and is not one of INPUTS.")] = (
        False
    ),
) -> None:
    """Merge caches tuned on the same GPU and libraries; per problem the faster winner wins.

    OUT may be one of the INPUTS (merged into); any other existing file is replaced only with
    --force.
    """
    from ftbench.files import check_file_target
    from ftbench.gemm.cache import load_cache, merge_caches

    check_file_target(out, "a merged cache", force, inputs=inputs)
    merged = merge_caches({str(path): load_cache(path) for path in inputs})
    merged.save(out)
    console.print(f"{out}: {len(merged.entries)} problems from {len(inputs)} caches")


@app.command("prune")
def cache_prune_command(
    path: Annotated[Path, typer.Argument(help="A tuned cache file (rewritten in place).")],
    min_speedup: Annotated[
        float,
        typer.Option(
            "--min-speedup",
            help="Drop entries whose speed-up is below this ratio: the cuBLAS default's time "
            "over the winner's (1.05 keeps winners at least 5% faster; default 0: keep all). "
            "A ratio above every entry's speed-up is refused: it would empty the cache.",
        ),
    ] = 0.0,
    older_than_days: Annotated[
        float | None,
        typer.Option(
            "--older-than-days",
            help=f"Drop entries measured more than this many days ago (0 to {MAX_AGE_DAYS}).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the result here instead of in place; an existing file only with --force.",
        ),
    ] = None,
    force: Annotated[bool, force_option("Let --out replace an existing file.")] = False,
) -> None:
    """Drop entries that no longer pay (speed-up below a threshold) or are too old."""
    from ftbench.files import check_file_target
    from ftbench.gemm.cache import load_cache, prune_cache

    target = out or path
    check_file_target(target, "a pruned cache", force, inputs=[path])
    pruned, dropped = prune_cache(load_cache(path), min_speedup, older_than_days)
    pruned.save(target)
    console.print(f"{target}: dropped {dropped}, kept {len(pruned.entries)}")
