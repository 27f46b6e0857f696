"""The options several commands share, defined once: model selection, workload grids, dtypes,
--force and --json, the history's options; choices as enums built from the library's own tables.

Model selection is the same in every command that takes a model: `--profile NAME` (a built-in
profile) or `--config PATH` (an HF config.json, the folder holding it, or a profile .toml).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ftbench.bench.timer import L2_MODES
from ftbench.dtypes import EIGHT_BIT_DTYPES, RUNTIME_DTYPES
from ftbench.errors import InvalidInputError
from ftbench.gemm.problem import DATASHEET_PEAKS, SCALINGS
from ftbench.profiles.spec import (
    MAX_SIZE,  # a batch or a length above it is a typo
    WORKLOAD_DTYPES,
)
from ftbench.reports.compare import RENDERERS
from ftbench.runtime.ipc import ALLREDUCE_METHODS
from ftbench.runtime.sharded import STORED_DTYPES


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of `values` (click shows them as the option's choices and refuses others)."""
    return Enum(name, {value: value for value in values}, type=str)


def spelled(values: tuple[str, ...] | type[Enum]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    names = [getattr(value, "value", value) for value in values]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


RuntimeDType = choices("RuntimeDType", RUNTIME_DTYPES)
GemmDType = choices("GemmDType", WORKLOAD_DTYPES)
WeightDType = choices("WeightDType", (*RUNTIME_DTYPES, *EIGHT_BIT_DTYPES))
EightBitWeights = choices("EightBitWeights", EIGHT_BIT_DTYPES)
Scaling = choices("Scaling", tuple(s for s in SCALINGS if s != "none"))
StoredDType = choices("StoredDType", STORED_DTYPES)
L2Mode = choices("L2Mode", L2_MODES)
Allreduce = choices("Allreduce", ALLREDUCE_METHODS)
CompareFormat = choices("CompareFormat", tuple(RENDERERS))
DatasheetGpu = choices("DatasheetGpu", tuple(DATASHEET_PEAKS))

# --- model selection ---
ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Built-in profile name (see `ftbench profiles list`); this or --config is required.",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A local HF config.json (or the folder holding it) or a profile .toml, instead of "
        "--profile.",
    ),
]

# --- the workload grid ---
BatchOption = Annotated[
    str, typer.Option("--batch", help="Batch sizes, comma-separated (e.g. 1,8,32).")
]
InputLenOption = Annotated[
    str, typer.Option("--input-len", help="Input (prompt) lengths in tokens, comma-separated.")
]
OutputLenOption = Annotated[
    str,
    typer.Option(
        "--output-len",
        help="Output (generated) lengths in tokens, comma-separated; 1 means no generation "
        "step (`ftbench run` needs at least 2).",
    ),
]
RunDType = choices("RunDType", (*RUNTIME_DTYPES, "fp8"))
DTypeOption = Annotated[
    RunDType,
    typer.Option(
        "--dtype",
        help="Activation and weight dtype of the model: fp16, bf16, or fp8 (W8A8: the layers' "
        "linears hold fp8 weights, as --weights fp8, and their GEMMs of more than 16 tokens read "
        "E4M3 activations with a scale per token; embeddings, norms, attention, the KV cache and "
        "the LM head stay fp16; needs sm_89+). Its tuned GEMMs come from `ftbench tune --dtype "
        "fp8 --scaling outer` (more than 16 tokens) and `ftbench tune --weights fp8` (decode).",
    ),
]
# The GEMM formats of `tune` and `profiles show` (the shapes an 8-bit deployment issues).
GemmDTypeOption = Annotated[
    GemmDType,
    typer.Option(
        "--dtype",
        help="The linear layers' activations (and weights unless --weights): fp16, bf16, or fp8 "
        "(E4M3 activations and weights with fp32 scales; the outputs, attention and LM head "
        "stay fp16).",
    ),
]
WeightsOption = Annotated[
    WeightDType | None,
    typer.Option(
        "--weights",
        help="The linear layers' weights (default: --dtype): int8 or fp8 with an fp16/bf16 "
        "--dtype is weight-only quantisation, one fp32 scale per output channel.",
    ),
]
ScalingOption = Annotated[
    Scaling | None,
    typer.Option(
        "--scaling",
        help="Scales of the 8-bit linear layers (default: tensor for --dtype fp8, channel for "
        "8-bit --weights): tensor (one per operand) or outer (one per token and one per output "
        "channel) for fp8; channel for weight-only.",
    ),
]
TpOption = Annotated[
    int, typer.Option("--tp", min=1, help="Tensor-parallel size: shapes are per rank.")
]
PpOption = Annotated[
    int,
    typer.Option("--pp", min=1, help="Pipeline-parallel size (layer stages; counts per stage)."),
]

# --- the history ---
DbOption = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="History database (default: $FTBENCH_CACHE_DIR/history.sqlite3, else under XDG "
        "cache).",
    ),
]
ThresholdOption = Annotated[
    str,
    typer.Option(
        "--threshold",
        help="Change that marks a regression, as 3% or 0.03 (the rules of `ftbench compare`).",
    ),
]
WindowOption = Annotated[
    int,
    typer.Option(
        "--window",
        help="Runs in the baseline window: each run is also judged against the median run of "
        "the last N runs before it (from 2 runs before on), so that small steps that add up "
        "are flagged.",
    ),
]


def json_option(what: str) -> object:
    """`--json`: print `what` as JSON instead of a table."""
    return typer.Option("--json", help=f"Print {what} as JSON.")


def force_option(what: str) -> object:
    """`--force`, saying what it lets the command replace."""
    return typer.Option("--force", help=what)


def model_spec(profile: str | None, config: Path | None):
    """The model of --profile NAME (a built-in profile) or --config PATH (a file or its folder),
    exactly one of them."""
    from ftbench.profiles.catalog import builtin_names, load_builtin, load_profile

    if (profile is None) == (config is None):
        raise InvalidInputError("give exactly one of --profile NAME or --config PATH")
    if profile is not None and profile not in builtin_names() and _looks_like_a_path(profile):
        raise InvalidInputError(
            f"--profile takes a built-in profile name, not a file: use --config {profile}"
        )
    if profile is not None:
        return load_builtin(profile)
    if not config.exists():
        raise InvalidInputError(
            f"cannot read config file {config}: no such file or folder "
            "(built-in profiles are given with --profile NAME)"
        )
    return load_profile(config)


def _looks_like_a_path(text: str) -> bool:
    return Path(text).suffix in (".json", ".toml") or "/" in text or Path(text).exists()


def int_list(text: str, option: str) -> tuple[int, ...]:
    """Parse a comma-separated list such as "1,8,32" given to `option`: distinct positive
    integers in ASCII digits, none above MAX_SIZE."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() and int(part) > 0 for part in parts):
        raise InvalidInputError(
            f"{option} takes comma-separated positive integers (e.g. 1,8,32), got {text!r}"
        )
    values = [int(part) for part in parts]
    for value in values:
        if value > MAX_SIZE:
            raise InvalidInputError(f"{option}: {value} is above {MAX_SIZE} (2**31)")
    check_unique(values, option)
    return tuple(values)


def names(text: str, option: str, known: tuple[str, ...] | None = None) -> list[str]:
    """Parse a comma-separated list of names given to `option`, each once, each in `known`
    (when given)."""
    values = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in values if known is not None and name not in known]
    if unknown:
        raise InvalidInputError(f"{option}: unknown {unknown}; use {', '.join(known)}")
    check_unique(values, option)
    return values


def check_unique(values: list, option: str) -> None:
    """Refuse a list given to `option` that names a value twice."""
    for value in values:
        if values.count(value) > 1:
            raise InvalidInputError(f"{option} lists {value} twice")


def formats(chosen) -> str:
    """A workload's number formats in a title: "fp16", or e.g. "fp16, int8 weights (channel
    scales)", "fp8 (tensor scales), fp16 out"."""
    if chosen.scaling == "none":
        return chosen.dtype
    if chosen.dtype == "fp8":
        return f"fp8 ({chosen.scaling} scales), {chosen.out_dtype} out"
    return f"{chosen.dtype}, {chosen.weights} weights ({chosen.scaling} scales)"


def workload(batch: str, input_len: str, output_len: str, dtype: str, tp: int, pp: int = 1,
             beam: int = 1, weights: Enum | None = None, scaling: Enum | None = None):  # fmt: skip
    """The `Workload` of the grid options shared by `profiles show` and `tune`; number formats
    that do not go together are an error naming the options given."""
    from ftbench.profiles.spec import Workload

    batch_sizes = int_list(batch, "--batch")
    input_lens, output_lens = (
        int_list(input_len, "--input-len"),
        int_list(output_len, "--output-len"),
    )
    formats = {"--dtype": dtype, "--weights": weights, "--scaling": scaling}
    given = {option: getattr(value, "value", value) for option, value in formats.items() if value}
    try:
        return Workload(
            batch_sizes=batch_sizes, input_lens=input_lens, output_lens=output_lens, dtype=dtype,
            tp=tp, pp=pp, beam_width=beam, weights=given.get("--weights"),
            scaling=given.get("--scaling"),
        )  # fmt: skip
    except InvalidInputError as exc:
        options = " ".join(f"{option} {value}" for option, value in given.items())
        raise InvalidInputError(f"{options}: {str(exc).removeprefix('workload: ')}") from None
