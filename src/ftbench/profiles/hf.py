"""`ModelSpec` from a local Hugging Face `config.json` (gpt2, gptj, llama, mistral, qwen2, phi3,
bert, roberta, t5).

The fields that fix the shapes (widths, layer and head counts, vocabulary, positions) must be
present; a missing one is an error naming the field and the file. Fields that Hugging Face
itself defaults when absent (`num_key_value_heads`, `head_dim`, `rope_theta`, epsilons, ...)
get the same defaults here, so a config the `transformers` library accepts is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftbench.errors import InvalidInputError
from ftbench.files import is_positive_number, read_json
from ftbench.profiles.spec import ModelSpec

# HF activation names -> ftbench's (gelu_pytorch_tanh and gelu_fast are the tanh approximation).
_ACTIVATIONS = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}

_MISSING = object()


class _Fields:
    """Typed access to one config's fields, with errors that name the field and the file."""

    def __init__(self, data: dict[str, Any], origin: str, model_type: str) -> None:
        self.data = data
        self.origin = origin
        self.model_type = model_type

    def _get(self, key: str, default: Any) -> Any:
        value = self.data.get(key)
        if value is not None:
            return value
        if default is _MISSING:
            raise InvalidInputError(
                f"{self.origin}: missing field {key!r} (needed for model_type {self.model_type!r})"
            )
        return default

    def integer(self, key: str, default: Any = _MISSING, minimum: int = 1) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise InvalidInputError(f"{self.origin}: field {key!r} must be {kind}, got {value!r}")
        return value

    def number(self, key: str, default: Any = _MISSING) -> float:
        value = self._get(key, default)
        if not is_positive_number(value):
            raise InvalidInputError(
                f"{self.origin}: field {key!r} must be a positive number, got {value!r}"
            )
        return float(value)

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise InvalidInputError(f"{self.origin}: field {key!r} must be true or false")
        return value

    def activation(self, key: str, default: str) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or value not in _ACTIVATIONS:
            raise InvalidInputError(
                f"{self.origin}: field {key!r} is {value!r}, which ftbench does not support; "
                f"supported: {', '.join(_ACTIVATIONS)}"
            )
        return _ACTIVATIONS[value]

    def head_dim(self, hidden_key: str, heads_key: str) -> int:
        hidden, heads = self.integer(hidden_key), self.integer(heads_key)
        if hidden % heads:
            raise InvalidInputError(
                f"{self.origin}: field {hidden_key!r} ({hidden}) is not divisible by "
                f"{heads_key!r} ({heads})"
            )
        return hidden // heads


def _gpt2(f: _Fields) -> dict[str, Any]:
    hidden = f.integer("n_embd")
    return {
        "family": "gpt2",
        "hidden_size": hidden,
        "num_layers": f.integer("n_layer"),
        "num_heads": f.integer("n_head"),
        "num_kv_heads": f.integer("n_head"),
        "head_dim": f.head_dim("n_embd", "n_head"),
        "ffn_hidden_size": f.integer("n_inner", 4 * hidden),
        "activation": f.activation("activation_function", "gelu_new"),
        "gated_ffn": False,
        "norm": "layernorm",
        "norm_eps": f.number("layer_norm_epsilon", 1e-5),
        "vocab_size": f.integer("vocab_size"),
        "max_positions": f.integer("n_positions"),
        "position_embedding": "learned",
        "tie_word_embeddings": f.flag("tie_word_embeddings", True),
        "parallel_attn_mlp": False,
        "qkv_bias": True,
        "attn_out_bias": True,
        "ffn_bias": True,
        "lm_head_bias": False,
    }


def _gptj(f: _Fields) -> dict[str, Any]:
    hidden = f.integer("n_embd")
    head_dim = f.head_dim("n_embd", "n_head")
    if "rotary_dim" not in f.data:
        rotary_dim = 64  # the HF default
    elif f.data["rotary_dim"] is None:
        rotary_dim = head_dim  # HF: an explicit null rotates the whole head
    else:
        rotary_dim = f.integer("rotary_dim")
    return {
        "family": "gptj",
        "hidden_size": hidden,
        "num_layers": f.integer("n_layer"),
        "num_heads": f.integer("n_head"),
        "num_kv_heads": f.integer("n_head"),
        "head_dim": head_dim,
        "ffn_hidden_size": f.integer("n_inner", 4 * hidden),
        "activation": f.activation("activation_function", "gelu_new"),
        "gated_ffn": False,
        "norm": "layernorm",
        "norm_eps": f.number("layer_norm_epsilon", 1e-5),
        "vocab_size": f.integer("vocab_size"),
        "max_positions": f.integer("n_positions"),
        "position_embedding": "rotary",
        "rotary_dim": rotary_dim,
        "rope_theta": 10000.0,
        "rotary_interleaved": True,
        "tie_word_embeddings": f.flag("tie_word_embeddings", False),
        "parallel_attn_mlp": True,
        "qkv_bias": False,
        "attn_out_bias": False,
        "ffn_bias": True,
        "lm_head_bias": True,
    }


def _rope_scaling(value: Any, origin: str) -> str:
    """HF's rope_scaling (or the rope_parameters of newer transformers, less their rope_theta)
    as canonical JSON; "" when absent or the default rotary. Older configs name the type "type",
    which HF reads as "rope_type"; anything but an object naming its type is an error, as in
    HF."""
    if value is None:
        return ""
    kind = value.get("rope_type", value.get("type", "default")) if isinstance(value, dict) else None
    if not isinstance(kind, str):
        raise InvalidInputError(
            f"{origin}: field 'rope_scaling' must be null or an object with its rope_type, such "
            f'as {{"rope_type": "linear", "factor": 2.0}}, got {value!r}'
        )
    if kind == "default":
        return ""
    return json.dumps(
        {key: item for key, item in value.items() if key != "rope_theta"}, sort_keys=True
    )


def _llama(f: _Fields) -> dict[str, Any]:
    heads = f.integer("num_attention_heads")
    if f.data.get("head_dim") is not None:
        head_dim = f.integer("head_dim")
    else:
        head_dim = f.head_dim("hidden_size", "num_attention_heads")
    # newer transformers nest rope_theta and the scaling in rope_parameters
    rope_parameters = f.data.get("rope_parameters")
    if f.data.get("rope_theta") is None and isinstance(rope_parameters, dict):
        rope_theta = _Fields(rope_parameters, f"{f.origin} rope_parameters", f.model_type).number(
            "rope_theta", 10000.0
        )
    else:
        rope_theta = f.number("rope_theta", 10000.0)
    rope_scaling = f.data.get("rope_scaling")
    if rope_scaling is None and isinstance(rope_parameters, dict):
        rope_scaling = rope_parameters
    # Phi-3/4 may turn only a fraction of each head (top level, or in rope_parameters)
    partial = f.data.get("partial_rotary_factor")
    if partial is None and isinstance(rope_parameters, dict):
        partial = rope_parameters.get("partial_rotary_factor")
    rotary_dim = head_dim
    if partial is not None:
        factor = _Fields({"partial_rotary_factor": partial}, f.origin, f.model_type).number(
            "partial_rotary_factor"
        )
        rotary_dim = int(head_dim * factor)
        if not 0 < rotary_dim <= head_dim or rotary_dim % 2:
            raise InvalidInputError(
                f"{f.origin}: partial_rotary_factor {partial} turns {rotary_dim} of {head_dim} "
                "dims; it must be an even count from 2 to head_dim"
            )
    attention_bias = f.flag("attention_bias", False)
    return {
        "family": "llama",
        "hidden_size": f.integer("hidden_size"),
        "num_layers": f.integer("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": f.integer("num_key_value_heads", heads),
        "head_dim": head_dim,
        "ffn_hidden_size": f.integer("intermediate_size"),
        "activation": f.activation("hidden_act", "silu"),
        "gated_ffn": True,
        "norm": "rmsnorm",
        "norm_eps": f.number("rms_norm_eps", 1e-6),
        "vocab_size": f.integer("vocab_size"),
        "max_positions": f.integer("max_position_embeddings"),
        "position_embedding": "rotary",
        "rotary_dim": rotary_dim,
        "rope_theta": rope_theta,
        "rotary_interleaved": False,
        "rope_scaling": _rope_scaling(rope_scaling, f.origin),
        "sliding_window": f.data.get("sliding_window") or 0,
        "tie_word_embeddings": f.flag("tie_word_embeddings", False),
        "parallel_attn_mlp": False,
        "qkv_bias": attention_bias,
        "attn_out_bias": attention_bias,
        "ffn_bias": f.flag("mlp_bias", False),
        "lm_head_bias": False,
    }


def _classification_labels(f: _Fields) -> int:
    """The labels of a sequence-classification model (its `architectures` name one), else 0.
    HF counts them as id2label's entries, or takes num_labels, else 2 (written configs omit
    the default two)."""
    architectures = f.data.get("architectures") or []
    if not any(str(name).endswith("ForSequenceClassification") for name in architectures):
        return 0
    id2label = f.data.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    return f.integer("num_labels", 2)


def _bert(f: _Fields) -> dict[str, Any]:
    position_type = f.data.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise InvalidInputError(
            f"{f.origin}: field 'position_embedding_type' is {position_type!r}; ftbench supports "
            "only 'absolute' BERT position embeddings"
        )
    heads = f.integer("num_attention_heads")
    return {
        "family": "bert",
        "hidden_size": f.integer("hidden_size"),
        "num_layers": f.integer("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": f.head_dim("hidden_size", "num_attention_heads"),
        "ffn_hidden_size": f.integer("intermediate_size"),
        "activation": f.activation("hidden_act", "gelu"),
        "gated_ffn": False,
        "norm": "layernorm",
        "norm_eps": f.number("layer_norm_eps", 1e-12),
        "vocab_size": f.integer("vocab_size"),
        "max_positions": f.integer("max_position_embeddings"),
        "position_embedding": "learned",
        "type_vocab_size": f.integer("type_vocab_size", 2),
        "pooler": True,
        "num_labels": _classification_labels(f),
        "tie_word_embeddings": f.flag("tie_word_embeddings", True),
        "parallel_attn_mlp": False,
        "qkv_bias": True,
        "attn_out_bias": True,
        "ffn_bias": True,
        "lm_head_bias": False,
    }


def _roberta(f: _Fields) -> dict[str, Any]:
    """RoBERTa: BERT's layers, with learned positions counted from pad_token_id + 1 (HF's
    RobertaEmbeddings; pad_token_id defaults to 1 as in RobertaConfig)."""
    return {**_bert(f), "position_offset": f.integer("pad_token_id", 1, minimum=0) + 1}


def _t5(f: _Fields) -> dict[str, Any]:
    projection = f.data.get("feed_forward_proj") or "relu"
    gated = isinstance(projection, str) and projection.startswith("gated-")
    act_name = projection[len("gated-") :] if gated else projection
    # HF turns "gated-gelu" into the tanh-approximated gelu_new.
    if act_name == "gelu" and gated:
        act_name = "gelu_new"
    if not isinstance(act_name, str) or act_name not in _ACTIVATIONS:
        raise InvalidInputError(
            f"{f.origin}: field 'feed_forward_proj' is {projection!r}; expected 'relu', 'gelu', "
            "'gated-gelu' or 'gated-silu'"
        )
    heads = f.integer("num_heads")
    layers = f.integer("num_layers")
    # T5 v1.0 ties its LM head to the shared embedding and rescales the decoder output by
    # d_model ** -0.5; v1.1 / Flan have their own head and no rescale. Configs written by
    # transformers 5 always say tie_word_embeddings and carry the distinction in
    # scale_decoder_outputs instead.
    tied = f.flag("scale_decoder_outputs", f.flag("tie_word_embeddings", True))
    return {
        "family": "t5",
        "hidden_size": f.integer("d_model"),
        "num_layers": layers,
        "decoder_layers": f.integer("num_decoder_layers", layers),
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": f.integer("d_kv"),
        "ffn_hidden_size": f.integer("d_ff"),
        "activation": _ACTIVATIONS[act_name],
        "gated_ffn": gated,
        "norm": "rmsnorm",
        "norm_eps": f.number("layer_norm_epsilon", 1e-6),
        "vocab_size": f.integer("vocab_size"),
        "max_positions": f.integer("n_positions", 512),
        "position_embedding": "relative",
        "relative_attention_num_buckets": f.integer("relative_attention_num_buckets", 32),
        "relative_attention_max_distance": f.integer("relative_attention_max_distance", 128),
        "tie_word_embeddings": tied,
        "parallel_attn_mlp": False,
        "qkv_bias": False,
        "attn_out_bias": False,
        "ffn_bias": False,
        "lm_head_bias": False,
    }


def _qwen2(f: _Fields) -> dict[str, Any]:
    """Qwen2 / Qwen2.5: LLaMA with biases on q, k and v only; the sliding window applies only
    with use_sliding_window (off in the released models)."""
    values = _llama(f)
    window = (f.data.get("sliding_window") or 0) if f.flag("use_sliding_window", False) else 0
    return {**values, "qkv_bias": True, "attn_out_bias": False, "ffn_bias": False,
            "sliding_window": window}  # fmt: skip


_BUILDERS: dict[str, Callable[[_Fields], dict[str, Any]]] = {
    "gpt2": _gpt2,
    "gptj": _gptj,
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _qwen2,
    "phi3": _llama,  # LLaMA's layout with fused qkv_proj and gate_up_proj tensors
    "bert": _bert,
    "roberta": _roberta,
    "t5": _t5,
}

SUPPORTED_MODEL_TYPES = tuple(_BUILDERS)

# Defaults of HF config classes that differ from their family's, for keys absent from the file
# (an explicit null keeps its meaning: as many KV heads as heads, no sliding window).
_ABSENT_KEY_DEFAULTS = {"mistral": {"num_key_value_heads": 8, "sliding_window": 4096}}


def spec_from_hf_config(config: str | Path | dict[str, Any], name: str | None = None) -> ModelSpec:
    """Build a `ModelSpec` from an HF `config.json` path (or the already-parsed dict).

    The spec is named `name`, else after the config's folder (`.../Llama-2-7b-hf/config.json`
    gives "Llama-2-7b-hf"), else `hf-<model_type>` for a dict.
    """
    if isinstance(config, dict):
        data, origin, source = config, "HF config", ""
    else:
        path = Path(config)
        data, origin, source = read_json(path), str(path), str(path)
        if name is None:
            name = (
                path.parent.name if path.name == "config.json" and path.parent.name else path.stem
            )
    if not isinstance(data, dict):
        raise InvalidInputError(f"{origin}: an HF config must be a JSON object")
    model_type = data.get("model_type")
    if model_type is None:
        raise InvalidInputError(
            f"{origin}: missing field 'model_type'; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if not isinstance(model_type, str) or model_type not in _BUILDERS:
        raise InvalidInputError(
            f"{origin}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    data = {**_ABSENT_KEY_DEFAULTS.get(model_type, {}), **data}
    values = _BUILDERS[model_type](_Fields(data, origin, model_type))
    values["name"] = name or f"hf-{model_type}"
    values["source"] = source
    return ModelSpec.from_dict(values, origin)
