"""Hugging Face checkpoints as ftbench weights: each architecture's tensor names, and the loaders.

`load_hf_weights` reads a safetensors checkpoint (one file, or shards with an index) and
`from_state_dict` a state dict in memory; both map HF names onto ftbench's layout
(`runtime.weights`: fused QKV and gate | up projections, [out, in] weights), check every name
and shape against the spec first and report every problem in one error.

FP8 checkpoints (the common layout of TensorRT Model Optimizer and compressed-tensors exports):
a transformer layer's projection `P.weight` stored in E4M3 comes with `P.weight_scale`, fp32,
one value (per tensor: shape [] or [1]) or one per output row ([rows] or [rows, 1]); the weight
is weight * weight_scale. ftbench reads it as an 8-bit `Linear` (codes and one scale per output
channel: a per-tensor scale is repeated over the projection's rows, so q, k and v, or gate and
up, with scales of their own stack into one fused layer). A static activation scale stored beside
it (`P.input_scale`) is accepted and not used: the runtime computes activation scales on the
device. The embeddings, norms and LM head must be unquantised.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import numpy_dtype
from ftbench.errors import InvalidInputError
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.quantize import QUANTISED_PARTS, quantisable
from ftbench.runtime.weights import (
    ModelWeights,
    check_decoder,
    from_named,
    mismatch_problems,
    raise_mismatch,
    weight_shapes,
)

# Buffers some checkpoints store next to the weights: GPT-2/GPT-J causal masks, old LLaMA
# rotary frequencies, FP8 exports' static activation scales. They carry no weights and are
# skipped.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq", ".input_scale")
_SCALE_SUFFIX = "_scale"  # P.weight_scale: the fp32 scales of an E4M3 P.weight


@dataclass(frozen=True)
class _HfNames:
    """Where one architecture keeps its tensors in a Hugging Face state dict.

    `prefix` is the base model's module ("transformer.", "model."); checkpoints of the base
    model alone (the hub's "gpt2") store names without it. `qkv` and `ffn_up` list the HF
    projections stacked by rows into ftbench's fused ones; `conv1d` means 2-D weights are
    stored [in_features, out_features] (GPT-2's Conv1D) and are transposed.
    """

    prefix: str
    layer: str
    embed: str
    positions: str | None
    final_norm: str
    ln1: str
    ln2: str | None
    qkv: tuple[str, ...]
    attn_out: str
    ffn_up: tuple[str, ...]
    ffn_down: str
    conv1d: bool = False


_HF_NAMES = {
    "gpt2": _HfNames(
        prefix="transformer.",
        layer="h.{}.",
        embed="wte",
        positions="wpe",
        final_norm="ln_f",
        ln1="ln_1",
        ln2="ln_2",
        qkv=("attn.c_attn",),
        attn_out="attn.c_proj",
        ffn_up=("mlp.c_fc",),
        ffn_down="mlp.c_proj",
        conv1d=True,
    ),
    "gptj": _HfNames(
        prefix="transformer.",
        layer="h.{}.",
        embed="wte",
        positions=None,
        final_norm="ln_f",
        ln1="ln_1",
        ln2=None,
        qkv=("attn.q_proj", "attn.k_proj", "attn.v_proj"),
        attn_out="attn.out_proj",
        ffn_up=("mlp.fc_in",),
        ffn_down="mlp.fc_out",
    ),
    "llama": _HfNames(
        prefix="model.",
        layer="layers.{}.",
        embed="embed_tokens",
        positions=None,
        final_norm="norm",
        ln1="input_layernorm",
        ln2="post_attention_layernorm",
        qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attn_out="self_attn.o_proj",
        ffn_up=("mlp.gate_proj", "mlp.up_proj"),
        ffn_down="mlp.down_proj",
    ),
}


@dataclass(frozen=True)
class _Source:
    """The HF tensors one ftbench array is made of (stacked by rows), with their HF shapes."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    transpose: bool


def _hf_names(spec: ModelSpec) -> _HfNames:
    check_decoder(spec)
    names = _HF_NAMES.get(spec.family)
    if names is None:
        raise InvalidInputError(
            f"{spec.name}: no Hugging Face name map for family {spec.family}; ftbench loads "
            f"{', '.join(_HF_NAMES)} checkpoints (use random weights for the others)"
        )
    parallel, gated = names.ln2 is None, len(names.ffn_up) == 2
    if parallel != spec.parallel_attn_mlp or gated != spec.gated_ffn:
        raise InvalidInputError(
            f"{spec.name}: {spec.family} checkpoints have parallel_attn_mlp={parallel} and "
            f"gated_ffn={gated}, but the spec says parallel_attn_mlp={spec.parallel_attn_mlp} "
            f"and gated_ffn={spec.gated_ffn}"
        )
    return names


# LLaMA-layout checkpoints that store q, k, v and gate, up as one tensor each (Phi-3): the
# separate names, and the fused ones that replace them.
_FUSED = {
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"): ("self_attn.qkv_proj",),
    ("mlp.gate_proj", "mlp.up_proj"): ("mlp.gate_up_proj",),
}


def _fused_names(names: _HfNames, shapes: Mapping[str, tuple[int, ...]]) -> _HfNames:
    """`names` with the fused tensors where the checkpoint stores them fused (rows in the
    same order as the separate ones: q | k | v, gate | up)."""
    stored = {name.rsplit(".", 2)[-2] for name in shapes if name.count(".") >= 2}
    fused = {}
    for field_name in ("qkv", "ffn_up"):
        separate = getattr(names, field_name)
        together = _FUSED.get(separate)
        if together and together[0].rsplit(".", 1)[-1] in stored:
            fused[field_name] = together
    return dataclasses.replace(names, **fused) if fused else names


def _hf_sources(spec: ModelSpec, names: _HfNames, prefix: str) -> dict[str, _Source]:
    """ftbench name -> the HF tensors it is made of, for every array of `spec`."""
    qkv_rows = (spec.q_width, spec.kv_width, spec.kv_width)
    layer_parts = {
        "ln1": (names.ln1,),
        "ln2": (names.ln2,),
        "qkv": names.qkv,
        "attn_out": (names.attn_out,),
        "ffn_up": names.ffn_up,
        "ffn_down": (names.ffn_down,),
    }
    sources = {}
    for name, shape in weight_shapes(spec).items():
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue
        *module_path, kind = name.split(".")
        if name == "embed":
            hf_names = (f"{prefix}{names.embed}.weight",)
        elif name == "positions":
            hf_names = (f"{prefix}{names.positions}.weight",)
        elif module_path == ["final_norm"]:
            hf_names = (f"{prefix}{names.final_norm}.{kind}",)
        elif module_path == ["lm_head"]:
            hf_names = (f"lm_head.{kind}",)
        else:
            _, index, part = module_path
            layer = prefix + names.layer.format(index)
            hf_names = tuple(f"{layer}{hf_part}.{kind}" for hf_part in layer_parts[part])
        # Separate q, k, v projections have their own widths; other parts split evenly.
        parts = len(hf_names)
        rows = qkv_rows if parts == 3 else (shape[0] // parts,) * parts
        transpose = names.conv1d and len(shape) == 2 and name.startswith("layers.")
        hf_shapes = tuple(
            (shape[1], part_rows) if transpose else (part_rows, *shape[1:]) for part_rows in rows
        )
        sources[name] = _Source(hf_names, hf_shapes, transpose)
    return sources


def _map_checkpoint(
    spec: ModelSpec,
    shapes: Mapping[str, tuple[int, ...]],
    load: Callable[[str, bool], np.ndarray],
    origin: str,
) -> ModelWeights:
    """Check a checkpoint's names and shapes against `spec`, then build `ModelWeights`.

    `shapes` gives every stored tensor's shape by HF name; `load(name, convert)` reads one
    tensor, in the target dtype when `convert`, else as stored (E4M3 codes, fp32 scales). Every
    problem is reported at once, in one error.
    """
    names = _hf_names(spec)
    prefix = names.prefix if any(key.startswith(names.prefix) for key in shapes) else ""
    names = _fused_names(names, shapes)
    sources = _hf_sources(spec, names, prefix)
    used = {name for source in sources.values() for name in source.names}
    missing, misshaped, problems = [], [], []
    for source in sources.values():
        for name, expected in zip(source.names, source.shapes, strict=True):
            if name not in shapes:
                missing.append(name)
            elif tuple(shapes[name]) != expected:
                misshaped.append(f"{name} (expected {list(expected)}, got {list(shapes[name])})")
    quantised = {}  # ftbench name -> the HF scale tensors of its parts
    for name, source in sources.items():
        scales = [f"{hf}{_SCALE_SUFFIX}" for hf in source.names]
        present = [scale in shapes for scale in scales]
        if not any(present):
            continue
        if not quantisable(name):
            problems.append(f"{name} is stored quantised; ftbench quantises only the layers' "
                            f"linears ({', '.join(QUANTISED_PARTS)})")  # fmt: skip
        elif not all(present):
            missing += [scale for scale, there in zip(scales, present, strict=True) if not there]
        else:
            for scale, expected in zip(scales, source.shapes, strict=True):
                if tuple(shapes[scale]) not in ((), (1,), (expected[0],), (expected[0], 1)):
                    misshaped.append(
                        f"{scale} (expected [], [1], [{expected[0]}] or [{expected[0]}, 1], got "
                        f"{list(shapes[scale])})"
                    )
            quantised[name] = scales
            used.update(scales)
    ignored = {"lm_head.weight"} if spec.tie_word_embeddings else set()
    unexpected = [
        name
        for name in shapes
        if name not in used and name not in ignored and not name.endswith(_IGNORED_SUFFIXES)
    ]
    raise_mismatch(origin, spec, problems + mismatch_problems(missing, misshaped, unexpected))
    named = {}
    for name, source in sources.items():
        scales = quantised.get(name)
        parts = [load(hf_name, scales is None) for hf_name in source.names]
        if source.transpose:
            parts = [part.T for part in parts]
        named[name] = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts))
        if scales is not None:
            named[f"{name.removesuffix('.weight')}.scale"] = np.concatenate([
                np.broadcast_to(load(scale, False).astype(np.float32).reshape(-1), len(part))
                for scale, part in zip(scales, parts, strict=True)
            ])  # fmt: skip
    if spec.tie_word_embeddings:
        named["lm_head.weight"] = named["embed"]
    return from_named(named, spec.num_layers)


def from_state_dict(
    state_dict: Mapping[str, Any], spec: ModelSpec, dtype: Any = None
) -> ModelWeights:
    """`ModelWeights` from a Hugging Face state dict (gpt2, gptj, llama/mistral names).

    Values are NumPy arrays or anything `np.asarray` reads (CPU torch tensors); they are copied.
    `dtype` defaults to the token embedding's dtype. Missing, unexpected or mis-shaped tensors
    are one `InvalidInputError` naming each of them with expected and actual shapes.
    """
    shapes = {name: tuple(np.shape(value)) for name, value in state_dict.items()}
    if dtype is None:
        names = _hf_names(spec)
        embed = [name for name in shapes if name.endswith(f"{names.embed}.weight")]
        dtype = np.asarray(state_dict[embed[0]]).dtype if embed else np.float32
    target = numpy_dtype(dtype)

    def load(name: str, convert: bool) -> np.ndarray:
        value = np.asarray(state_dict[name])
        return value.astype(target) if convert else value.copy()

    return _map_checkpoint(spec, shapes, load, "the state dict")


def _safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's files: those the index names, else every *.safetensors file.

    The index matters where a repository also holds other safetensors files (Mistral's
    `consolidated.safetensors` next to the HF shards).
    """
    if not directory.is_dir():
        raise InvalidInputError(f"{directory}: not a directory (expected an HF checkpoint)")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InvalidInputError(f"{index}: no 'weight_map' object")
        return [directory / name for name in sorted(set(weight_map.values()))]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise InvalidInputError(
            f"{directory}: no *.safetensors files; ftbench reads safetensors checkpoints only "
            "(save the model with save_pretrained() to convert a .bin checkpoint)"
        )
    return files


def _raw(path: Path, name: str, dtype: Any) -> np.ndarray:
    """A tensor's stored bytes as `dtype` elements, in its shape, read through the safetensors
    header (8-byte little-endian length, JSON, data): NumPy has no bf16 or E4M3 type, so
    safetensors' NumPy reader cannot return those. bf16 is then widened to fp32 exactly (its
    top half), E4M3 viewed as ml_dtypes' float8_e4m3fn."""
    with open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        entry = json.loads(file.read(header_size))[name]
    start, end = entry["data_offsets"]
    size = np.dtype(dtype).itemsize
    data = np.fromfile(
        path, dtype=dtype, count=(end - start) // size, offset=8 + header_size + start
    )
    return data.reshape(entry["shape"])


@contextmanager
def reading_safetensors(path: Path) -> Iterator[None]:
    """Turn a failure to read the safetensors file `path` (truncated, corrupt, unreadable) into
    an InvalidInputError naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InvalidInputError(f"cannot read {path} as safetensors: {reason}") from exc


@contextmanager
def opened_safetensors(
    directory: str | Path,
) -> Iterator[tuple[dict[str, tuple[Path, Any]], dict[str, tuple[int, ...]]]]:
    """The tensors of a safetensors checkpoint (one file, or shards with an index) while the
    block runs: (name -> (file, open handle), name -> shape). A tensor stored twice, a file the
    index names but lacks, or an unreadable file is an InvalidInputError naming it."""
    from safetensors import safe_open

    directory = Path(directory)
    with ExitStack() as stack:
        files: dict[str, tuple[Path, Any]] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for path in _safetensors_files(directory):
            if not path.is_file():
                raise InvalidInputError(f"{path}: named by the index but missing")
            with reading_safetensors(path):
                handle = stack.enter_context(safe_open(str(path), framework="np"))
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                if name in files:
                    raise InvalidInputError(
                        f"{directory}: tensor {name} is stored twice ({files[name][0].name} and "
                        f"{path.name})"
                    )
                files[name] = (path, handle)
                shapes[name] = tuple(handle.get_slice(name).get_shape())
        yield files, shapes


def read_float_tensor(files: Mapping[str, tuple[Path, Any]], name: str) -> np.ndarray:
    """A float tensor of `opened_safetensors` as stored: F16, F32 or F64 as they are, BF16
    widened to fp32 exactly (see `_raw`); any other type is an InvalidInputError."""
    path, handle = files[name]
    stored = handle.get_slice(name).get_dtype()
    if stored == "BF16":
        return (_raw(path, name, "<u2").astype(np.uint32) << 16).view(np.float32)
    if stored not in ("F16", "F32", "F64"):
        raise InvalidInputError(
            f"{path}: tensor {name} is {stored}; ftbench reads F16, BF16, F32 and F64 tensors "
            f"(and F8_E4M3 decoder-layer weights with their {_SCALE_SUFFIX[1:]})"
        )
    with reading_safetensors(path):
        return handle.get_tensor(name)


def load_hf_weights(directory: str | Path, spec: ModelSpec, dtype: Any) -> ModelWeights:
    """Load an HF safetensors checkpoint (one file or shards with an index) as `ModelWeights`.

    Tensors are read one at a time and converted to `dtype` ("fp16", "bf16", "fp32", "fp64" or
    a NumPy dtype). bf16 tensors are widened to float32 from their raw bits first (see `_raw`),
    so reading bf16 checkpoints does not need ml_dtypes; producing bf16 arrays does, and so do
    FP8 checkpoints (their E4M3 codes stay codes, see the module docstring).
    """
    target = numpy_dtype(dtype)
    with opened_safetensors(directory) as (files, shapes):

        def load(name: str, convert: bool) -> np.ndarray:
            path, handle = files[name]
            if handle.get_slice(name).get_dtype() == "F8_E4M3":
                if convert:
                    raise InvalidInputError(
                        f"{path}: tensor {name} is F8_E4M3 but has no {name}{_SCALE_SUFFIX}"
                    )
                return _raw(path, name, np.uint8).view(numpy_dtype("fp8"))
            values = read_float_tensor(files, name)
            if not convert and name.endswith(_SCALE_SUFFIX):
                return values
            return values.astype(target, copy=False)

        return _map_checkpoint(spec, shapes, load, str(directory))
