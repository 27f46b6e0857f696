"""Pre-sharded checkpoints: each tensor-parallel rank's weights in a file of its own.

Sharding at load time (`sharding.shard`) reads the whole HF checkpoint on every rank. For very
large models `ftbench convert` does that once: `save_sharded` writes, into one directory,

- `rank-<r>-of-<tp>.safetensors`: rank r's arrays under ftbench names (`ModelWeights.
  named_tensors`, docs/runtime/reference.md), exactly `shard(weights, spec, tp, r)`: the
  embedding and LM head as the rank's vocabulary rows (a tied LM head is stored once, as
  "embed"); replicated arrays (learned positions, norms, row-split biases) in every rank's file;
- `ftbench-sharded.json`: schema, the model spec, tp, dtype and the file names.

`load_sharded(directory, rank)` then reads one file per rank. bf16 arrays are stored as their
raw 16-bit patterns (safetensors' NumPy side has no bf16) and viewed back on load. Schema 1
files (before the embedding was split by vocabulary) are refused: convert the checkpoint again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import DTYPE_OF_NUMPY, numpy_dtype, numpy_name
from ftbench.errors import InvalidInputError
from ftbench.files import (
    check_folder_target,
    check_folder_writable,
    prepare_folder,
    read_json,
    write_json_atomic,
)
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import SPEC_LIMITS, ModelSpec
from ftbench.runtime.hf_checkpoint import reading_safetensors
from ftbench.runtime.sharding import shard
from ftbench.runtime.weights import ModelWeights, check_shapes, from_named

SCHEMA = 2
MANIFEST = "ftbench-sharded.json"


def rank_file(rank: int, tp: int) -> str:
    """The file name of rank `rank`'s weights."""
    return f"rank-{rank}-of-{tp}.safetensors"


STORED_DTYPES = ("fp16", "bf16", "fp32")


def _dtype_name(dtype: np.dtype) -> str:
    name = DTYPE_OF_NUMPY.get(numpy_name(dtype))
    if name not in STORED_DTYPES:
        raise InvalidInputError(f"pre-sharded checkpoints hold fp16, bf16 or fp32, not {dtype}")
    return name


def check_output(
    checkpoint: str | Path, directory: str | Path, spec: ModelSpec, tp: int, force: bool = False
) -> None:
    """Check what `ftbench convert` is asked before the checkpoint is read: `tp` must split
    `spec`; the output folder must not be the checkpoint nor inside it (its rank files would
    join the checkpoint's own), must be new, empty or an earlier conversion (renewed), or
    anything else with `force`, and writable."""
    _check_tp(tp)
    rank_shapes(spec, tp, 1)  # a tp the model cannot split names the valid ones
    source, target = Path(checkpoint).resolve(), Path(directory).resolve()
    if target == source or source in target.parents:
        where = (
            "is the checkpoint folder itself"
            if target == source
            else f"is inside the checkpoint folder {checkpoint}"
        )
        raise InvalidInputError(
            f"the output folder {directory} {where}: write the pre-sharded checkpoint to a "
            "folder of its own"
        )
    check_folder_target(
        directory, "a pre-sharded checkpoint", force,
        written_before=lambda path: (Path(path) / MANIFEST).is_file(),
    )  # fmt: skip
    check_folder_writable(directory)


def save_sharded(weights: ModelWeights, spec: ModelSpec, tp: int, directory: str | Path) -> Path:
    """Write every rank's shard of `weights` and the manifest into `directory` (see the module
    docstring); the manifest's path. The manifest is written last, so a directory with one
    holds a complete conversion; the rank files of an earlier conversion there (another tp) are
    removed after it. A write that fails (a full disk, no permission) is an InvalidInputError
    saying why."""
    _check_tp(tp)
    directory = prepare_folder(directory)
    dtype = _dtype_name(weights.dtype)
    check_shapes(weights, spec)
    files = []
    for rank in range(tp):
        part = shard(weights, spec, tp, rank)
        named = part.named_tensors()
        if part.tied_lm_head:
            del named["lm_head.weight"]  # the same array as "embed"
        arrays = {
            name: np.ascontiguousarray(array.view(np.uint16) if dtype == "bf16" else array)
            for name, array in named.items()
        }
        name = rank_file(rank, tp)
        _save_arrays(arrays, directory / name)
        files.append(name)
    earlier = _earlier_rank_files(directory)
    manifest = {"schema": SCHEMA, "tp": tp, "dtype": dtype, "spec": spec.to_dict(), "files": files}
    path = write_json_atomic(directory / MANIFEST, manifest)
    for name in set(earlier) - set(files):  # an earlier conversion's shards, for another tp
        (directory / name).unlink(missing_ok=True)
    return path


def _earlier_rank_files(directory: Path) -> list[str]:
    """The rank files of the conversion whose manifest is in `directory`, named from its tp
    (none without a readable manifest), so that no other file is ever named."""
    try:
        tp = read_json(directory / MANIFEST).get("tp")
    except (InvalidInputError, AttributeError):
        return []
    if isinstance(tp, bool) or not isinstance(tp, int) or not 1 <= tp <= SPEC_LIMITS["num_heads"]:
        return []  # a tp splits the heads: no larger one was ever written
    return [rank_file(rank, tp) for rank in range(tp)]


def _check_tp(tp: int) -> None:
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise InvalidInputError(f"--tp must be at least 1, got {tp!r}")


def _save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write `arrays` as the safetensors file `path` through a temporary file and a rename."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    temporary = path.with_name(f".{path.name}.partial")
    try:
        save_file(arrays, str(temporary))
        temporary.replace(path)
    except (OSError, SafetensorError) as exc:
        temporary.unlink(missing_ok=True)
        reason = getattr(exc, "strerror", None) or exc
        raise InvalidInputError(f"cannot write {path}: {reason}") from exc


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a pre-sharded checkpoint, checked."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise InvalidInputError(
            f"{directory}: no {MANIFEST}; not a pre-sharded checkpoint (write one with "
            "`ftbench convert`)"
        )
    manifest = read_json(path)
    if manifest.get("schema") == 1:
        raise InvalidInputError(
            f"{path}: schema 1, written by an older ftbench that stored the whole embedding on "
            "every rank; this ftbench splits it by vocabulary: convert the checkpoint again "
            "with `ftbench convert`"
        )
    if manifest.get("schema") != SCHEMA:
        raise InvalidInputError(
            f"{path}: schema {manifest.get('schema')!r}; this ftbench reads schema {SCHEMA}"
        )
    return manifest


def load_sharded(
    directory: str | Path, rank: int, tp: int, spec: ModelSpec | None = None
) -> tuple[ModelSpec, ModelWeights]:
    """Rank `rank`'s spec and weights from a pre-sharded checkpoint made for `tp` ranks.

    `spec`, when given, must equal the one the checkpoint was converted with.
    """
    from safetensors.numpy import load_file

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest["tp"] != tp:
        raise InvalidInputError(
            f"{directory} was sharded for tp={manifest['tp']}, not tp={tp}; convert it again "
            f"with --tp {tp} (or shard the HF checkpoint at load time)"
        )
    stored = ModelSpec.from_dict(manifest["spec"], origin=str(directory / MANIFEST))
    if spec is not None and spec.to_dict() != stored.to_dict():
        raise InvalidInputError(f"{directory} holds {stored.name}, not the given {spec.name}")
    if not 0 <= rank < tp:
        raise InvalidInputError(f"rank must be in 0..{tp - 1}, got {rank}")
    with reading_safetensors(directory / rank_file(rank, tp)):
        arrays = load_file(str(directory / rank_file(rank, tp)))
    if manifest["dtype"] == "bf16":
        bf16 = numpy_dtype("bf16")
        arrays = {name: array.view(bf16) for name, array in arrays.items()}
    if stored.tie_word_embeddings and "embed" in arrays:
        arrays["lm_head.weight"] = arrays["embed"]
    weights = from_named(arrays, stored.num_layers)
    check_shapes(weights, stored, tp)
    return stored, weights
