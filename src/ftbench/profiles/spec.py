"""`ModelSpec` (the architecture numbers of a model) and `Workload` (what it is asked to run).

The tuner derives its GEMM list from these two values and the runtime builds its model from the
same `ModelSpec`, so the shapes tuned are the shapes run.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from ftbench.dtypes import EIGHT_BIT_DTYPES, RUNTIME_DTYPES
from ftbench.errors import InvalidInputError
from ftbench.files import is_positive_number
from ftbench.gemm.problem import default_out_dtype, default_scaling, scaling_error

SPEC_SCHEMA = 1
WORKLOAD_SCHEMA = 1

FAMILIES = ("gpt2", "megatron-gpt", "gptj", "llama", "bert", "t5")
ACTIVATIONS = ("gelu_new", "gelu", "silu", "relu")
NORMS = ("layernorm", "rmsnorm")
POSITION_EMBEDDINGS = ("learned", "rotary", "relative")
DTYPES = RUNTIME_DTYPES  # the formats the runtime computes in (the CLI's --dtype)
# A workload's dtype: those, and FP8 (E4M3 linear layers).
WORKLOAD_DTYPES = (*RUNTIME_DTYPES, "fp8")
MAX_SIZE = 2**31  # GEMM libraries take 32-bit sizes: a larger width or count is a typo
# The largest value a model's number may take: several times that of any released model (the
# largest have about 126 layers, a hidden size of 16-20k, an FFN of 74k, 128 heads, head_dim
# 256, a vocabulary of 262k and 10M positions). A larger one is a typo or a corrupt file, and
# would make every number derived from it (parameters, bytes, FLOPs) meaningless.
SPEC_LIMITS = {
    "hidden_size": 131072,
    "num_layers": 1024,
    "decoder_layers": 1024,
    "num_heads": 1024,
    "num_kv_heads": 1024,
    "head_dim": 1024,
    "rotary_dim": 1024,
    "ffn_hidden_size": 524288,
    "vocab_size": 4194304,
    "max_positions": 2**26,
}

# Families whose reference implementation derives the head size as hidden_size / num_heads.
_HEAD_DIM_FROM_HIDDEN = ("gpt2", "megatron-gpt", "gptj", "bert")


def _check_int(owner: str, name: str, value: Any, minimum: int, maximum: int = MAX_SIZE) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidInputError(f"{owner}: {name} must be {kind}, got {value!r}")
    if value > MAX_SIZE:
        raise InvalidInputError(f"{owner}: {name} {value} is above {MAX_SIZE} (2**31)")
    if value > maximum:
        raise InvalidInputError(
            f"{owner}: {name} {value:,} is above {maximum:,}, the most ftbench takes (several "
            "times any released model's: a typo?)"
        )


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{owner}: {name} must be true or false, got {value!r}")


def _check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInputError(
            f"{owner}: {name} must be one of {', '.join(choices)}, got {value!r}"
        )


def _check_rope_scaling(owner: str, value: Any) -> None:
    """rope_scaling is "" (none) or a JSON object naming its type, as `profiles.hf` writes it
    from HF's rope_scaling (e.g. '{"factor": 2.0, "rope_type": "linear"}')."""
    if value == "":
        return
    try:
        scaling = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        scaling = None
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if not isinstance(kind, str):
        raise InvalidInputError(
            f"{owner}: rope_scaling must be empty or a JSON object with its rope_type, such as "
            f'\'{{"rope_type": "linear", "factor": 2.0}}\', got {value!r}'
        )


def _check_positive_number(owner: str, name: str, value: Any) -> None:
    if not is_positive_number(value):
        raise InvalidInputError(f"{owner}: {name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """The architecture numbers of one transformer model.

    `num_layers` counts the encoder layers of T5 (its decoder has `decoder_layers`) and the only
    stack of the other families. Widths may differ from `hidden_size`: queries are
    `num_heads * head_dim` wide and keys/values `num_kv_heads * head_dim`.
    Some structure follows from `family` rather than from a field: BERT is post-norm with an
    embedding norm and no LM head (encoder only); T5 is an encoder-decoder whose decoder layers
    add cross-attention; the others are pre-norm decoders with a final norm.

    `position_offset` is RoBERTa's difference from BERT: the position of a sequence's first
    token, padding_idx + 1. As in HF's create_position_ids_from_input_ids, the tokens count on
    from there, except padding tokens (id padding_idx = position_offset - 1), which take
    position padding_idx and are not counted. It is 0 for BERT (every token counted from 0) and
    for every other family. `num_labels` > 0 gives an encoder a sequence-classification head
    (HF's BertFor- and RobertaForSequenceClassification): logits = classifier(pooled output).
    """

    name: str
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    activation: str
    gated_ffn: bool
    norm: str
    norm_eps: float
    vocab_size: int
    max_positions: int
    position_embedding: str
    tie_word_embeddings: bool
    parallel_attn_mlp: bool
    qkv_bias: bool
    attn_out_bias: bool
    ffn_bias: bool
    lm_head_bias: bool
    rotary_dim: int = 0
    rope_theta: float = 10000.0
    rotary_interleaved: bool = False
    rope_scaling: str = ""
    sliding_window: int = 0
    decoder_layers: int = 0
    relative_attention_num_buckets: int = 0
    relative_attention_max_distance: int = 0
    type_vocab_size: int = 0
    pooler: bool = False
    position_offset: int = 0
    num_labels: int = 0
    source: str = ""
    schema: int = SPEC_SCHEMA

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(
                f"model spec: name must be a non-empty string, got {self.name!r}"
            )
        owner = f"model {self.name!r}"
        if self.schema != SPEC_SCHEMA:
            raise InvalidInputError(
                f"{owner}: schema {self.schema!r} is not supported "
                f"(this ftbench reads {SPEC_SCHEMA})"
            )
        _check_choice(owner, "family", self.family, FAMILIES)
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "ffn_hidden_size",
            "vocab_size",
            "max_positions",
        ):
            _check_int(owner, name, getattr(self, name), 1, SPEC_LIMITS.get(name, MAX_SIZE))
        for name in (
            "rotary_dim",
            "sliding_window",
            "decoder_layers",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
            "type_vocab_size",
            "position_offset",
            "num_labels",
        ):
            _check_int(owner, name, getattr(self, name), 0, SPEC_LIMITS.get(name, MAX_SIZE))
        _check_rope_scaling(owner, self.rope_scaling)
        for name in (
            "gated_ffn",
            "tie_word_embeddings",
            "parallel_attn_mlp",
            "qkv_bias",
            "attn_out_bias",
            "ffn_bias",
            "lm_head_bias",
            "rotary_interleaved",
            "pooler",
        ):
            _check_bool(owner, name, getattr(self, name))
        _check_choice(owner, "activation", self.activation, ACTIVATIONS)
        _check_choice(owner, "norm", self.norm, NORMS)
        _check_choice(owner, "position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
        _check_positive_number(owner, "norm_eps", self.norm_eps)
        _check_positive_number(owner, "rope_theta", self.rope_theta)
        if not isinstance(self.source, str):
            raise InvalidInputError(f"{owner}: source must be a string, got {self.source!r}")
        self._check_consistency(owner)

    def _check_consistency(self, owner: str) -> None:
        if self.num_heads % self.num_kv_heads:
            raise InvalidInputError(
                f"{owner}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.family in _HEAD_DIM_FROM_HIDDEN and self.q_width != self.hidden_size:
            raise InvalidInputError(
                f"{owner}: {self.family} needs num_heads * head_dim == hidden_size, got "
                f"{self.num_heads} * {self.head_dim} != {self.hidden_size}"
            )
        if self.position_embedding == "rotary":
            if self.rotary_dim == 0 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
                raise InvalidInputError(
                    f"{owner}: rotary_dim must be even and in 2..head_dim ({self.head_dim}) for "
                    f"rotary position embeddings, got {self.rotary_dim}"
                )
        elif self.rotary_dim:
            raise InvalidInputError(
                f"{owner}: rotary_dim is {self.rotary_dim} but position_embedding is "
                f"{self.position_embedding!r}; set rotary_dim = 0 or use 'rotary'"
            )
        relative = self.relative_attention_num_buckets, self.relative_attention_max_distance
        if self.position_embedding == "relative" and 0 in relative:
            raise InvalidInputError(
                f"{owner}: relative position embeddings need relative_attention_num_buckets and "
                "relative_attention_max_distance > 0"
            )
        if self.position_embedding != "relative" and any(relative):
            raise InvalidInputError(
                f"{owner}: relative_attention_* fields are set but position_embedding is "
                f"{self.position_embedding!r}"
            )
        if self.position_offset and self.family != "bert":
            raise InvalidInputError(
                f"{owner}: position_offset is RoBERTa's (family bert); it must be 0 for family "
                f"{self.family}, got {self.position_offset}"
            )
        if self.position_offset >= self.max_positions:
            raise InvalidInputError(
                f"{owner}: position_offset {self.position_offset} leaves no position of the "
                f"{self.max_positions} (max_positions) for a token"
            )
        if self.num_labels and not (self.architecture == "encoder" and self.pooler):
            raise InvalidInputError(
                f"{owner}: a classification head (num_labels {self.num_labels}) reads the pooled "
                "output; it needs an encoder with a pooler"
            )
        if (self.family == "t5") != (self.decoder_layers > 0):
            raise InvalidInputError(
                f"{owner}: decoder_layers must be > 0 for family t5 and 0 for the others, got "
                f"{self.decoder_layers} for family {self.family}"
            )

    @property
    def architecture(self) -> str:
        """ "decoder" (GPT-style), "encoder" (BERT) or "encoder-decoder" (T5)."""
        if self.family == "bert":
            return "encoder"
        if self.family == "t5":
            return "encoder-decoder"
        return "decoder"

    @property
    def token_positions(self) -> int:
        """How many tokens a sequence may have under learned positions: max_positions less
        position_offset (RoBERTa's rows below it are never a token's)."""
        return self.max_positions - self.position_offset

    @property
    def q_width(self) -> int:
        """Width of the query projection output: num_heads * head_dim."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of each of the key and value projection outputs: num_kv_heads * head_dim."""
        return self.num_kv_heads * self.head_dim

    def parameter_count(self) -> int:
        """Exact number of parameters: embeddings, every weight, bias and norm, the LM head.

        A tied LM head shares the token embedding and adds nothing. BERT counts as `BertModel`
        (with its pooler, without an LM head) or, with `num_labels`, as
        `BertForSequenceClassification`; T5 counts its shared embedding once and one
        relative-position bias table per stack.
        """
        hidden = self.hidden_size
        norm = 2 * hidden if self.norm == "layernorm" else hidden
        total = self.vocab_size * hidden
        if self.position_embedding == "learned":
            total += self.max_positions * hidden
        total += self.type_vocab_size * hidden
        if self.architecture == "encoder":
            total += norm  # BERT is post-norm: one norm on the embeddings, none at the end
            total += self.num_layers * self._layer_parameters(cross_attention=False)
            if self.pooler:
                total += hidden * hidden + hidden
            return total + self.num_labels * (hidden + 1)
        relative_bias_table = self.relative_attention_num_buckets * self.num_heads
        total += self.num_layers * self._layer_parameters(cross_attention=False)
        total += relative_bias_table + norm
        if self.architecture == "encoder-decoder":
            total += self.decoder_layers * self._layer_parameters(cross_attention=True)
            total += relative_bias_table + norm
        if not self.tie_word_embeddings:
            total += self.vocab_size * hidden + (self.vocab_size if self.lm_head_bias else 0)
        return total

    def _attention_parameters(self) -> int:
        hidden = self.hidden_size
        weights = hidden * (self.q_width + 2 * self.kv_width) + self.q_width * hidden
        biases = (self.q_width + 2 * self.kv_width) * self.qkv_bias + hidden * self.attn_out_bias
        return weights + biases

    def _layer_parameters(self, *, cross_attention: bool) -> int:
        hidden, ffn = self.hidden_size, self.ffn_hidden_size
        up_projections = 2 if self.gated_ffn else 1
        mlp = up_projections * hidden * ffn + ffn * hidden
        if self.ffn_bias:
            mlp += up_projections * ffn + hidden
        norms = 1 if self.parallel_attn_mlp else 2
        attention = self._attention_parameters()
        if cross_attention:
            attention += self._attention_parameters()
            norms += 1
        norm = 2 * hidden if self.norm == "layernorm" else hidden
        return attention + mlp + norms * norm

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready record (schema first)."""
        data = asdict(self)
        return {"schema": data.pop("schema"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "model spec") -> ModelSpec:
        """Build from a mapping (a profile file); missing or unknown fields are named in errors.

        `origin` (a file name) prefixes every error message.
        """
        if not isinstance(data, dict):
            raise InvalidInputError(f"{origin}: expected a table of model fields")
        known = {field.name: field for field in fields(cls)}
        unknown = sorted(data.keys() - known.keys())
        if unknown:
            raise InvalidInputError(
                f"{origin}: unknown field(s) {', '.join(unknown)}; known fields are "
                f"{', '.join(known)}"
            )
        required = [
            name for name, field in known.items() if field.default is MISSING and name not in data
        ]
        if required:
            raise InvalidInputError(f"{origin}: missing field(s) {', '.join(required)}")
        values = dict(data)
        if isinstance(values.get("norm_eps"), int) and not isinstance(values["norm_eps"], bool):
            values["norm_eps"] = float(values["norm_eps"])
        if isinstance(values.get("rope_theta"), int) and not isinstance(values["rope_theta"], bool):
            values["rope_theta"] = float(values["rope_theta"])
        try:
            return cls(**values)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{origin}: {exc}") from None


@dataclass(frozen=True)
class Workload:
    """The grid a model is asked to run: every batch size with every input length.

    `output_lens` only decides whether a generation phase exists (shapes do not depend on it);
    `tp` and `pp` are the tensor- and pipeline-parallel sizes; `beam_width` multiplies the rows
    of every generation-phase GEMM.

    Number formats, each resolved when the workload is made (a record names all of them):
    - `dtype`: the linear layers' activations, "fp16", "bf16" or "fp8" (E4M3 activations and
      weights with fp32 scales: an FP8 deployment);
    - `weights`: the linear layers' weights, default `dtype`; "fp8" or "int8" with an fp16 or
      bf16 `dtype` is weight-only quantisation (one scale per output channel). An fp8 workload
      takes fp8 weights only: FP8 tensor cores multiply E4M3 by E4M3;
    - `out_dtype`: the fp16/bf16 format of the GEMM outputs and of everything that is not a
      quantised linear layer (attention, the LM head); default `dtype`, fp16 for fp8. Only an
      fp8 workload chooses it;
    - `scaling`: the linear layers' scaling scheme (`gemm.problem.SCALINGS`): default "tensor"
      for fp8 ("outer" is the other choice), "channel" for weight-only, "none" otherwise.
    """

    batch_sizes: tuple[int, ...] = (1,)
    input_lens: tuple[int, ...] = (128,)
    output_lens: tuple[int, ...] = (128,)
    dtype: str = "fp16"
    tp: int = 1
    pp: int = 1
    beam_width: int = 1
    weights: str | None = None
    out_dtype: str | None = None
    scaling: str | None = None
    schema: int = WORKLOAD_SCHEMA

    def __post_init__(self) -> None:
        owner = "workload"
        if self.schema != WORKLOAD_SCHEMA:
            raise InvalidInputError(
                f"{owner}: schema {self.schema!r} is not supported (this ftbench reads "
                f"{WORKLOAD_SCHEMA})"
            )
        for name in ("batch_sizes", "input_lens", "output_lens"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise InvalidInputError(f"{owner}: {name} must be a list of positive integers")
            values = tuple(values)
            if not values:
                raise InvalidInputError(f"{owner}: {name} must not be empty")
            for value in values:
                _check_int(owner, name, value, 1)
            object.__setattr__(self, name, values)
        _check_choice(owner, "dtype", self.dtype, WORKLOAD_DTYPES)
        for name in ("tp", "pp", "beam_width"):
            _check_int(owner, name, getattr(self, name), 1)
        self._resolve_formats(owner)

    def _resolve_formats(self, owner: str) -> None:
        """Check `weights`, `out_dtype` and `scaling` against `dtype` and fill in defaults."""
        dtype = self.dtype
        weights = dtype if self.weights is None else self.weights
        if dtype == "fp8" and weights == "int8":
            raise InvalidInputError(
                f"{owner}: dtype fp8 takes fp8 weights, not int8: FP8 tensor cores multiply E4M3 "
                "by E4M3, so int8 weights would need a dequantising pass; for int8 weights use "
                "dtype fp16 or bf16 (weight-only)"
            )
        choices = ("fp8",) if dtype == "fp8" else (dtype, *EIGHT_BIT_DTYPES)
        _check_choice(owner, "weights", weights, choices)
        out_dtype = default_out_dtype(dtype) if self.out_dtype is None else self.out_dtype
        _check_choice(owner, "out_dtype", out_dtype, RUNTIME_DTYPES)
        if dtype != "fp8" and out_dtype != dtype:
            raise InvalidInputError(
                f"{owner}: out_dtype {out_dtype} differs from dtype {dtype}: out_dtype is the "
                f"output format of an fp8 workload; dtype {dtype} writes {dtype}"
            )
        scaling = default_scaling(dtype, weights) if self.scaling is None else self.scaling
        error = scaling_error(dtype, weights, scaling)
        if error is not None:
            raise InvalidInputError(f"{owner}: {error}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "out_dtype", out_dtype)
        object.__setattr__(self, "scaling", scaling)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (schema first)."""
        data = asdict(self)
        schema = data.pop("schema")
        lists = {
            name: list(value) if isinstance(value, tuple) else value for name, value in data.items()
        }
        return {"schema": schema, **lists}
