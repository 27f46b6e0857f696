"""A decoder's weights in ftbench's own layout, whatever checkpoint they came from.

Layout (docs/runtime/reference.md shows it with shapes):

- Every linear weight is [out_features, in_features] (`torch.nn.functional.linear`'s layout),
  so a linear layer computes y = x @ weight.T + bias.
- `qkv` is one fused projection: rows [q heads | k heads | v heads], each block head by head,
  (num_heads + 2 * num_kv_heads) * head_dim rows in all.
- A gated FFN's `ffn_up` is one fused projection: rows [gate | up], 2 * ffn_hidden_size rows;
  the activation applies to the gate half: act(gate) * up.
- `ln2` is None for a parallel block (GPT-J), whose attention and MLP both read `ln1`'s output.
- A tied LM head is the token embedding itself (`weights.lm_head.weight is weights.embed`).
- Every array has one dtype.

`shard()` cuts these weights the Megatron way for tensor parallelism: QKV by heads and FFN-up by
columns (output rows), attention-out and FFN-down by rows (input columns), the token embedding
and the LM head by vocabulary rows (padded with zero rows up to a multiple of tp; rank r holds
the same rows of both, and a tied LM head is its embedding slice). Norms, learned positions and
the biases of the row-split layers are replicated; a row-split layer's bias is added once, after
the all-reduce of the partial outputs. Each rank embeds only the tokens in its vocabulary rows
(zeros for the others) and the ranks' rows are all-reduced; learned positions are added by one
rank only.

`stage_weights()` keeps what one pipeline stage holds: its layers (renumbered from 0), the
embeddings only on the first stage, the final norm and LM head only on the last (absent arrays
are None).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import numpy_dtype
from ftbench.errors import InvalidInputError
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec

# Buffers some checkpoints store next to the weights: GPT-2/GPT-J causal masks, old LLaMA
# rotary frequencies. They carry no weights and are skipped.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")

_NORMS = ("ln1", "ln2", "final_norm")
_LAYER_PARTS = ("ln1", "qkv", "attn_out", "ln2", "ffn_up", "ffn_down")

# Errors list at most this many names per kind, then say how many more there are.
_MAX_LISTED = 12


@dataclass(frozen=True)
class Linear:
    """A linear layer: y = x @ weight.T + bias, weight [out_features, in_features]."""

    weight: np.ndarray
    bias: np.ndarray | None = None


@dataclass(frozen=True)
class Norm:
    """A LayerNorm (weight and bias) or an RMSNorm (weight only) over the hidden size."""

    weight: np.ndarray
    bias: np.ndarray | None = None


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer: pre-norm attention with fused QKV, then (pre-norm) MLP."""

    ln1: Norm
    qkv: Linear
    attn_out: Linear
    ln2: Norm | None
    ffn_up: Linear
    ffn_down: Linear


@dataclass(frozen=True)
class ModelWeights:
    """A decoder's weights: embeddings, layers, final norm and LM head (see the module doc)."""

    embed: np.ndarray | None
    positions: np.ndarray | None
    layers: tuple[LayerWeights, ...]
    final_norm: Norm | None
    lm_head: Linear | None

    @property
    def dtype(self) -> np.dtype:
        """The dtype of every array."""
        return next(iter(self.named_tensors().values())).dtype

    @property
    def tied_lm_head(self) -> bool:
        """True when the LM head is the token embedding itself (one array, not a copy)."""
        return self.lm_head is not None and self.lm_head.weight is self.embed

    def named_tensors(self) -> dict[str, np.ndarray]:
        """Every array by ftbench name ("embed", "layers.0.qkv.weight", "lm_head.bias", ...).

        A tied LM head appears as "lm_head.weight" too, as the same array as "embed".
        """
        named = {"embed": self.embed, "positions": self.positions}
        named = {name: array for name, array in named.items() if array is not None}
        modules: list[tuple[str, Linear | Norm | None]] = []
        for index, layer in enumerate(self.layers):
            modules += [(f"layers.{index}.{part}", getattr(layer, part)) for part in _LAYER_PARTS]
        modules += [("final_norm", self.final_norm), ("lm_head", self.lm_head)]
        for prefix, module in modules:
            if module is None:
                continue
            named[f"{prefix}.weight"] = module.weight
            if module.bias is not None:
                named[f"{prefix}.bias"] = module.bias
        return named

    def astype(self, dtype: Any) -> ModelWeights:
        """These weights converted to `dtype` (a tied LM head stays tied)."""
        target = numpy_dtype(dtype)
        return self.map(lambda array: array.astype(target, copy=False))

    def map(self, convert: Callable[[Any], Any]) -> ModelWeights:
        """These weights with `convert` applied to every array once (a tied LM head stays
        tied), e.g. `weights.map(cupy.asarray)` to move them to the GPU."""
        converted: dict[int, Any] = {}
        named = {}
        for name, array in self.named_tensors().items():
            if id(array) not in converted:
                converted[id(array)] = convert(array)
            named[name] = converted[id(array)]
        return from_named(named, len(self.layers))


def _check_decoder(spec: ModelSpec) -> None:
    if spec.architecture != "decoder":
        raise InvalidInputError(
            f"{spec.name}: the runtime runs decoder models (gpt2, megatron-gpt, gptj, llama); "
            f"family {spec.family} is an {spec.architecture} model"
        )


def _add(shapes: dict[str, tuple[int, ...]], prefix: str, shape: tuple[int, ...], bias: bool):
    shapes[f"{prefix}.weight"] = shape
    if bias:
        shapes[f"{prefix}.bias"] = shape[:1]


def weight_shapes(
    spec: ModelSpec, tp: int = 1, layers: range | None = None
) -> dict[str, tuple[int, ...]]:
    """The shape of every array one rank holds under tensor parallelism `tp`, by ftbench name;
    with `layers`, only what the pipeline stage of those layers holds (`stage_weights`).

    With tp=1 these are the full weights (the LM head listed even when it is tied); with tp > 1
    the embedding and the LM head have the rank's vocabulary rows (`rank_shapes().lm_head_rows`).
    """
    _check_decoder(spec)
    layers = range(spec.num_layers) if layers is None else layers
    rank = rank_shapes(spec, tp)
    hidden, ffn = spec.hidden_size, rank.ffn_hidden_size
    norm_bias = spec.norm == "layernorm"
    shapes: dict[str, tuple[int, ...]] = {}
    if layers.start == 0:
        shapes["embed"] = (rank.lm_head_rows, hidden)
        if spec.position_embedding == "learned":
            shapes["positions"] = (spec.max_positions, hidden)
    for index in range(len(layers)):
        layer = f"layers.{index}"
        _add(shapes, f"{layer}.ln1", (hidden,), norm_bias)
        _add(shapes, f"{layer}.qkv", (rank.qkv_width, hidden), spec.qkv_bias)
        _add(shapes, f"{layer}.attn_out", (hidden, rank.q_width), spec.attn_out_bias)
        if not spec.parallel_attn_mlp:
            _add(shapes, f"{layer}.ln2", (hidden,), norm_bias)
        _add(shapes, f"{layer}.ffn_up", (rank.ffn_up_rows, hidden), spec.ffn_bias)
        _add(shapes, f"{layer}.ffn_down", (hidden, ffn), spec.ffn_bias)
    if layers.stop == spec.num_layers:
        _add(shapes, "final_norm", (hidden,), norm_bias)
        _add(shapes, "lm_head", (rank.lm_head_rows, hidden), spec.lm_head_bias)
    return shapes


def from_named(named: Mapping[str, np.ndarray], num_layers: int) -> ModelWeights:
    """`ModelWeights` from arrays by ftbench name (the inverse of `named_tensors`)."""

    def module(kind: type[Linear] | type[Norm], prefix: str) -> Any:
        if f"{prefix}.weight" not in named:
            return None
        return kind(named[f"{prefix}.weight"], named.get(f"{prefix}.bias"))

    layers = tuple(
        LayerWeights(
            ln1=module(Norm, f"layers.{index}.ln1"),
            qkv=module(Linear, f"layers.{index}.qkv"),
            attn_out=module(Linear, f"layers.{index}.attn_out"),
            ln2=module(Norm, f"layers.{index}.ln2"),
            ffn_up=module(Linear, f"layers.{index}.ffn_up"),
            ffn_down=module(Linear, f"layers.{index}.ffn_down"),
        )
        for index in range(num_layers)
    )
    return ModelWeights(
        embed=named.get("embed"),
        positions=named.get("positions"),
        layers=layers,
        final_norm=module(Norm, "final_norm"),
        lm_head=module(Linear, "lm_head"),
    )


def random_weights(
    spec: ModelSpec,
    dtype: Any,
    seed: int = 0,
    tp: int = 1,
    xp: Any = np,
    layers: range | None = None,
) -> ModelWeights:
    """Random weights for benchmarking without a checkpoint (and for tests).

    Weights, biases and embeddings are uniform with mean 0 and std 0.02 (GPT-2's init scale;
    uniform because it is several times faster to draw than normal, which matters for
    billions of parameters); norm weights are 1 plus the same noise. The same seed gives the
    same weights. With tp > 1 they have one rank's shapes, with `layers` one pipeline stage's
    (`stage_weights`); with xp=cupy they are drawn on the GPU (a 6B model in seconds instead of
    a minute on the host).
    """
    target = numpy_dtype(dtype)
    rng = xp.random.default_rng(seed)
    named = {}
    shapes = weight_shapes(spec, tp, layers)
    for name, shape in shapes.items():
        if name == "lm_head.weight" and spec.tie_word_embeddings and "embed" in named:
            named[name] = named["embed"]
            continue
        values = rng.random(shape, dtype=np.float32)
        values -= 0.5
        values *= 0.02 * math.sqrt(12.0)  # uniform(-a, a) has std a / sqrt(3)
        if name.endswith(".weight") and name.split(".")[-2] in _NORMS:
            values += 1.0
        named[name] = values.astype(target)
    return from_named(named, spec.num_layers if layers is None else len(layers))


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
    _check_decoder(spec)
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


def _listing(items: list[str]) -> str:
    listed = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{listed} and {more} more" if more > 0 else listed


def _map_checkpoint(
    spec: ModelSpec,
    shapes: Mapping[str, tuple[int, ...]],
    load: Callable[[str], np.ndarray],
    origin: str,
) -> ModelWeights:
    """Check a checkpoint's names and shapes against `spec`, then build `ModelWeights`.

    `shapes` gives every stored tensor's shape by HF name; `load` reads one tensor (already in
    the target dtype). Every problem is reported at once, in one error.
    """
    names = _hf_names(spec)
    prefix = names.prefix if any(key.startswith(names.prefix) for key in shapes) else ""
    names = _fused_names(names, shapes)
    sources = _hf_sources(spec, names, prefix)
    used = {name for source in sources.values() for name in source.names}
    missing, misshaped = [], []
    for source in sources.values():
        for name, expected in zip(source.names, source.shapes, strict=True):
            if name not in shapes:
                missing.append(name)
            elif tuple(shapes[name]) != expected:
                misshaped.append(f"{name} (expected {list(expected)}, got {list(shapes[name])})")
    ignored = {"lm_head.weight"} if spec.tie_word_embeddings else set()
    unexpected = [
        name
        for name in shapes
        if name not in used and name not in ignored and not name.endswith(_IGNORED_SUFFIXES)
    ]
    problems = [
        f"{kind}: {_listing(items)}"
        for kind, items in (
            ("missing tensors", missing),
            ("mis-shaped tensors", misshaped),
            ("unexpected tensors", unexpected),
        )
        if items
    ]
    if problems:
        raise InvalidInputError(
            f"{origin} does not match {spec.name} (family {spec.family}, {spec.num_layers} "
            f"layers): {'; '.join(problems)}"
        )
    named = {}
    for name, source in sources.items():
        parts = [load(hf_name) for hf_name in source.names]
        if source.transpose:
            parts = [part.T for part in parts]
        named[name] = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts))
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
    return _map_checkpoint(
        spec, shapes, lambda name: np.asarray(state_dict[name]).astype(target), "the state dict"
    )


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


def _bf16_as_float32(path: Path, name: str) -> np.ndarray:
    """Read a bf16 tensor's raw bits and widen them to float32 (exact: bf16 is fp32's top half).

    NumPy has no bf16 type, so safetensors' NumPy reader cannot return one; this reads the
    bytes through the safetensors header (8-byte little-endian length, JSON, data) instead.
    """
    with open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        entry = json.loads(file.read(header_size))[name]
    start, end = entry["data_offsets"]
    bits = np.fromfile(path, dtype="<u2", count=(end - start) // 2, offset=8 + header_size + start)
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


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


def load_hf_weights(directory: str | Path, spec: ModelSpec, dtype: Any) -> ModelWeights:
    """Load an HF safetensors checkpoint (one file or shards with an index) as `ModelWeights`.

    Tensors are read one at a time and converted to `dtype` ("fp16", "bf16", "fp32", "fp64" or
    a NumPy dtype). bf16 tensors are widened to float32 from their raw bits first (see
    `_bf16_as_float32`), so reading bf16 checkpoints does not need ml_dtypes; producing bf16
    arrays does.
    """
    from safetensors import safe_open

    directory = Path(directory)
    target = numpy_dtype(dtype)
    with ExitStack() as stack:
        files: dict[str, tuple[Path, Any]] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for path in _safetensors_files(directory):
            if not path.is_file():
                raise InvalidInputError(f"{path}: named by the index but missing")
            with reading_safetensors(path):
                handle = stack.enter_context(safe_open(str(path), framework="np"))
            stored_names = handle.keys()
            for name in stored_names:
                if name in files:
                    raise InvalidInputError(
                        f"{directory}: tensor {name} is stored twice ({files[name][0].name} and "
                        f"{path.name})"
                    )
                files[name] = (path, handle)
                shapes[name] = tuple(handle.get_slice(name).get_shape())

        def load(name: str) -> np.ndarray:
            path, handle = files[name]
            stored = handle.get_slice(name).get_dtype()
            if stored == "BF16":
                return _bf16_as_float32(path, name).astype(target, copy=False)
            if stored not in ("F16", "F32", "F64"):
                raise InvalidInputError(
                    f"{path}: tensor {name} is {stored}; ftbench reads F16, BF16, F32 and F64"
                )
            with reading_safetensors(path):
                return handle.get_tensor(name).astype(target, copy=False)

        return _map_checkpoint(spec, shapes, load, str(directory))


def _rows(linear: Linear, rows: Iterable[slice]) -> Linear:
    """The layer restricted to some output rows (a column-parallel split)."""
    rows = list(rows)
    weight = np.concatenate([linear.weight[part] for part in rows])
    bias = None if linear.bias is None else np.concatenate([linear.bias[part] for part in rows])
    return Linear(weight, bias)


def _columns(linear: Linear, columns: slice) -> Linear:
    """The layer restricted to some input columns (a row-parallel split); the bias is kept."""
    return Linear(np.ascontiguousarray(linear.weight[:, columns]), linear.bias)


def check_shapes(
    weights: ModelWeights, spec: ModelSpec, tp: int = 1, layers: range | None = None
) -> None:
    """Raise `InvalidInputError` unless `weights` has exactly one rank's arrays for `spec`, `tp`
    (and the pipeline stage of `layers`)."""
    expected = weight_shapes(spec, tp, layers)
    actual = {name: array.shape for name, array in weights.named_tensors().items()}
    if actual == expected:
        return
    wrong = [
        f"{name} (expected {list(expected[name]) if name in expected else 'none'}, got "
        f"{list(actual[name]) if name in actual else 'none'})"
        for name in sorted(expected.keys() | actual.keys())
        if expected.get(name) != actual.get(name)
    ]
    stage = "" if layers is None else f", layers {layers.start}..{layers.stop - 1}"
    raise InvalidInputError(
        f"weights do not match {spec.name} with tp={tp}{stage}: {_listing(wrong)}"
    )


def shard(weights: ModelWeights, spec: ModelSpec, tp: int, rank: int) -> ModelWeights:
    """The part of `weights` that tensor-parallel rank `rank` of `tp` holds (Megatron split).

    Rank r holds query heads [r * q, (r + 1) * q) with q = num_heads / tp, and the KV heads
    those queries use: num_kv_heads / tp of them, or, with fewer KV heads than ranks, the one
    KV head r // (tp / num_kv_heads), replicated on tp / num_kv_heads ranks
    (`profiles.problems.rank_shapes`). Its QKV rows stay grouped [its q | its k | its v]; its
    gate/up rows [its gate | its up]. The token embedding and the LM head are padded with zero
    rows to a multiple of tp and split by rows: rank r holds vocabulary rows [r * n, (r + 1) * n)
    of both, n = `lm_head_rows` (a tied LM head is the rank's embedding slice itself). Learned
    positions, norms and row-split biases are replicated (not copied).
    """
    shapes = rank_shapes(spec, tp)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < tp:
        raise InvalidInputError(f"rank must be an integer in 0..{tp - 1}, got {rank!r}")
    check_shapes(weights, spec)
    rank_q_width, rank_kv_width = shapes.q_width, shapes.kv_width
    kv_start = (rank // shapes.kv_replicas) * rank_kv_width
    q = slice(rank * rank_q_width, (rank + 1) * rank_q_width)
    k_start = spec.q_width + kv_start
    v_start = spec.q_width + spec.kv_width + kv_start
    qkv_rows = [q, slice(k_start, k_start + rank_kv_width), slice(v_start, v_start + rank_kv_width)]
    ffn, rank_ffn = spec.ffn_hidden_size, shapes.ffn_hidden_size
    ffn_part = slice(rank * rank_ffn, (rank + 1) * rank_ffn)
    up_rows = [ffn_part]
    if spec.gated_ffn:
        up_rows.append(slice(ffn + rank * rank_ffn, ffn + (rank + 1) * rank_ffn))
    layers = tuple(
        LayerWeights(
            ln1=layer.ln1,
            qkv=_rows(layer.qkv, qkv_rows),
            attn_out=_columns(layer.attn_out, q),
            ln2=layer.ln2,
            ffn_up=_rows(layer.ffn_up, up_rows),
            ffn_down=_columns(layer.ffn_down, ffn_part),
        )
        for layer in weights.layers
    )
    embed = _vocabulary_rows(weights.embed, spec, tp, rank)
    lm_head = weights.lm_head
    lm_weight = embed if weights.tied_lm_head else _vocabulary_rows(lm_head.weight, spec, tp, rank)
    lm_bias = None if lm_head.bias is None else _vocabulary_rows(lm_head.bias, spec, tp, rank)
    return ModelWeights(
        embed=embed,
        positions=weights.positions,
        layers=layers,
        final_norm=weights.final_norm,
        lm_head=Linear(lm_weight, lm_bias),
    )


def vocabulary_start(spec: ModelSpec, tp: int, rank: int) -> int:
    """The first token id of tensor-parallel rank `rank`'s vocabulary rows (`shard`)."""
    return rank * rank_shapes(spec, tp).lm_head_rows


def _vocabulary_rows(array: np.ndarray, spec: ModelSpec, tp: int, rank: int) -> np.ndarray:
    """Rank `rank`'s rows of a [vocab_size, ...] array, zero rows past the vocabulary (the
    padding up to a multiple of tp); the rows themselves are not copied unless padded."""
    rows = rank_shapes(spec, tp).lm_head_rows
    start = vocabulary_start(spec, tp, rank)
    stop = min(start + rows, spec.vocab_size)
    held = array[min(start, stop) : stop]
    padding = ((0, rows - len(held)),) + ((0, 0),) * (array.ndim - 1)
    return np.pad(held, padding) if padding[0][1] else held


def stage_weights(weights: ModelWeights, spec: ModelSpec, layers: range) -> ModelWeights:
    """The part of `weights` (whole or one tensor-parallel shard) that the pipeline stage of
    `layers` holds (`profiles.problems.stage_layers`): those layers, renumbered from 0; the
    embeddings only on the first stage; the final norm and the LM head only on the last (a
    tied LM head stays the embedding array, a shard's vocabulary rows under tensor
    parallelism). Nothing is copied."""
    if not 0 <= layers.start < layers.stop <= len(weights.layers) or layers.step != 1:
        raise InvalidInputError(
            f"layers {layers} are not a stage of a model with {len(weights.layers)} layers"
        )
    first, last = layers.start == 0, layers.stop == spec.num_layers
    return ModelWeights(
        embed=weights.embed if first else None,
        positions=weights.positions if first else None,
        layers=weights.layers[layers.start : layers.stop],
        final_norm=weights.final_norm if last else None,
        lm_head=weights.lm_head if last else None,
    )
