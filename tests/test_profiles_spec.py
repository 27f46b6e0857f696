"""ModelSpec, Workload and the built-in profiles: published sizes, validation, loading."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.catalog import builtin_names, builtin_profiles, load_builtin, load_profile
from ftbench.profiles.spec import SPEC_LIMITS, ModelSpec, Workload

BUILTIN_NAMES = [
    "bert-base",
    "bert-large",
    "gpt2-124m",
    "gpt2-1.5b",
    "gpt3-175b",
    "gptj-6b",
    "kogpt-6b",
    "llama2-13b",
    "llama2-70b",
    "llama2-7b",
    "llama3-70b",
    "llama3-8b",
    "megatron-gpt-1.3b",
    "megatron-gpt-20b",
    "megatron-gpt-345m",
    "megatron-gpt-5b",
    "roberta-base",
    "t5-base",
    "t5-large",
]

# Exact parameter counts published for a concrete model definition.
EXACT_PUBLISHED_PARAMS = {
    "gpt2-124m": 124_439_808,  # HF GPT2LMHeadModel (tied head)
    "gpt2-1.5b": 1_557_611_200,  # HF gpt2-xl
    "gptj-6b": 6_050_882_784,  # HF GPTJForCausalLM (the JAX README says 6,053,381,344)
    "kogpt-6b": 6_166_502_400,  # Kakao Brain model card
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "bert-base": 109_482_240,  # HF BertModel with pooler
    "bert-large": 335_141_888,  # HF BertModel with pooler (the paper rounds to 340M)
    "roberta-base": 124_645_632,  # HF RobertaModel with pooler
    "t5-base": 222_903_552,  # HF T5ForConditionalGeneration, shared embedding counted once
    "t5-large": 737_668_096,
}

# Sizes published only as a rounded label.
NOMINAL_PUBLISHED_PARAMS = {
    "gptj-6b": 6_053_381_344,  # mesh-transformer-jax README
    "megatron-gpt-345m": 355e6,  # GPT-2 medium shape; "345M" was OpenAI's miscount, later 355M
    "megatron-gpt-5b": 5e9,
    "gpt3-175b": 175e9,
}


def test_every_builtin_profile_is_listed_and_loads():
    assert builtin_names() == sorted(BUILTIN_NAMES)
    assert [spec.name for spec in builtin_profiles()] == sorted(BUILTIN_NAMES)


@pytest.mark.parametrize("name", sorted(EXACT_PUBLISHED_PARAMS))
def test_parameter_count_matches_the_published_model_definition(name):
    assert load_builtin(name).parameter_count() == EXACT_PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(NOMINAL_PUBLISHED_PARAMS))
def test_parameter_count_is_within_one_percent_of_the_published_size(name):
    published = NOMINAL_PUBLISHED_PARAMS[name]
    assert load_builtin(name).parameter_count() == pytest.approx(published, rel=0.01)


@pytest.mark.parametrize(
    "name",
    ["megatron-gpt-345m", "megatron-gpt-1.3b", "megatron-gpt-5b", "megatron-gpt-20b", "gpt3-175b"],
)
def test_megatron_counts_follow_the_megatron_lm_formula(name):
    # Narayanan et al. 2021: P = 12 l h^2 (1 + 13 / (12 h) + (V + s) / (12 l h)), plus the
    # final layer norm (2h) that the formula leaves out.
    spec = load_builtin(name)
    layers, hidden = spec.num_layers, spec.hidden_size
    formula = 12 * layers * hidden**2 + 13 * layers * hidden
    formula += (spec.vocab_size + spec.max_positions) * hidden + 2 * hidden
    assert spec.parameter_count() == formula


@pytest.mark.parametrize(
    ("name", "label"), [("megatron-gpt-1.3b", 1.3e9), ("megatron-gpt-20b", 20e9)]
)
def test_two_digit_size_labels_round_to_the_count(name, label):
    # "1.3B" and "20B" are two-significant-digit labels (1.316B and 20.26B exactly), so the
    # count is checked to round to the label rather than to lie within 1% of it.
    count = load_builtin(name).parameter_count()
    assert float(f"{count:.2g}") == label


def test_gptj_published_architecture_numbers():
    spec = load_builtin("gptj-6b")
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.head_dim) == (4096, 28, 16, 256)
    assert (spec.rotary_dim, spec.ffn_hidden_size, spec.vocab_size) == (64, 16384, 50400)
    assert spec.rotary_interleaved and spec.parallel_attn_mlp
    assert not spec.tie_word_embeddings and spec.lm_head_bias


def test_kogpt_shares_gptj_layers_but_not_its_vocabulary():
    gptj, kogpt = load_builtin("gptj-6b"), load_builtin("kogpt-6b")
    assert (
        dataclasses.replace(kogpt, name=gptj.name, vocab_size=gptj.vocab_size, source=gptj.source)
        == gptj
    )
    assert kogpt.vocab_size == 64512


def test_llama3_uses_gqa_and_its_rope_base():
    spec = load_builtin("llama3-8b")
    assert (spec.num_heads, spec.num_kv_heads, spec.rope_theta) == (32, 8, 500000.0)
    assert spec.vocab_size == 128256 and spec.gated_ffn and spec.activation == "silu"


def test_spec_round_trips_through_its_dict():
    spec = load_builtin("t5-base")
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert next(iter(spec.to_dict())) == "schema"


def test_architecture_follows_the_family():
    assert load_builtin("bert-base").architecture == "encoder"
    assert load_builtin("t5-base").architecture == "encoder-decoder"
    assert load_builtin("gptj-6b").architecture == "decoder"


def test_unknown_builtin_name_lists_the_available_ones():
    with pytest.raises(InvalidInputError, match="no built-in profile 'gpt5'") as info:
        load_profile("gpt5")
    assert "gptj-6b" in str(info.value) and "llama2-70b" in str(info.value)


def _llama_fields(**changes):
    fields = load_builtin("llama2-7b").to_dict()
    fields.update(changes)
    return fields


def test_kv_heads_must_divide_heads():
    with pytest.raises(
        InvalidInputError, match=r"num_heads \(32\) must be a multiple of num_kv_heads \(6\)"
    ):
        ModelSpec.from_dict(_llama_fields(num_kv_heads=6))


def test_gpt_style_families_need_heads_times_head_dim_equal_hidden():
    fields = load_builtin("gpt2-124m").to_dict()
    fields["head_dim"] = 128
    with pytest.raises(InvalidInputError, match=r"12 \* 128 != 768"):
        ModelSpec.from_dict(fields)


def test_llama_family_accepts_an_explicit_head_dim():
    spec = ModelSpec.from_dict(_llama_fields(hidden_size=5120, head_dim=128, rotary_dim=128))
    assert spec.q_width == 4096 and spec.hidden_size == 5120


# (profile, the other fields a value at the limit needs, field): every field of SPEC_LIMITS
AT_LIMIT = [
    ("llama2-7b", {}, "hidden_size"),
    ("llama2-7b", {}, "num_layers"),
    ("t5-base", {}, "decoder_layers"),
    ("llama2-7b", {"num_kv_heads": 1}, "num_heads"),
    ("llama2-7b", {"num_heads": 1024}, "num_kv_heads"),
    ("llama2-7b", {}, "head_dim"),
    ("llama2-7b", {"head_dim": 1024}, "rotary_dim"),
    ("llama2-7b", {}, "ffn_hidden_size"),
    ("llama2-7b", {}, "vocab_size"),
    ("llama2-7b", {}, "max_positions"),
]


@pytest.mark.parametrize(("profile", "changes", "name"), AT_LIMIT)
def test_a_number_above_its_documented_limit_is_refused_naming_it(profile, changes, name):
    fields, limit = {**load_builtin(profile).to_dict(), **changes}, SPEC_LIMITS[name]
    assert getattr(ModelSpec.from_dict({**fields, name: limit}), name) == limit
    with pytest.raises(InvalidInputError) as refused:
        ModelSpec.from_dict({**fields, name: limit + 1}, "big.toml")
    assert str(refused.value) == (
        f"big.toml: model '{profile}': {name} {limit + 1:,} is above {limit:,}, the most ftbench "
        "takes (several times any released model's: a typo?)"
    )
    assert sorted(case[2] for case in AT_LIMIT) == sorted(SPEC_LIMITS)


def test_every_limit_is_four_times_the_largest_builtin_or_test_config_at_least():
    from ftbench.profiles.hf import SUPPORTED_MODEL_TYPES, spec_from_hf_config

    configs = Path(__file__).parent / "data" / "hf_configs"
    specs = [*builtin_profiles()]
    for path in sorted(configs.glob("*.json")):
        if json.loads(path.read_text())["model_type"] in SUPPORTED_MODEL_TYPES:
            specs.append(spec_from_hf_config(path))
    assert len(specs) > 30
    for name, limit in SPEC_LIMITS.items():
        assert max(getattr(spec, name) for spec in specs) * 4 <= limit, name


@pytest.mark.parametrize("scaling", ["linear", '"linear"', "{}", '{"type": 1}', "[1]"])
def test_rope_scaling_must_be_a_json_object_naming_its_type(scaling):
    with pytest.raises(InvalidInputError, match="rope_scaling must be empty or a JSON object"):
        ModelSpec.from_dict(_llama_fields(rope_scaling=scaling))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rotary_dim": 0}, "rotary_dim must be even"),
        ({"rotary_dim": 130}, "rotary_dim must be even"),
        ({"activation": "swiglu"}, "activation must be one of"),
        ({"norm": "batchnorm"}, "norm must be one of"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"num_layers": True}, "num_layers must be a positive integer"),
        ({"gated_ffn": "yes"}, "gated_ffn must be true or false"),
        ({"decoder_layers": 12}, "decoder_layers must be > 0 for family t5 and 0 for the others"),
        ({"position_offset": 2}, "position_offset is RoBERTa's \\(family bert\\); it must be 0"),
        ({"position_offset": -1}, "position_offset must be an integer >= 0"),
        ({"num_labels": 2}, "num_labels 2\\) reads the pooled output; it needs an encoder"),
        ({"family": "opt"}, "family must be one of"),
        ({"norm_eps": 0.0}, "norm_eps must be a positive number"),
    ],
)
def test_invalid_fields_name_the_field(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        ModelSpec.from_dict(_llama_fields(**changes), "bad.toml")


def test_a_classification_head_needs_the_pooler_it_reads():
    bert = load_builtin("bert-base")
    labelled = dataclasses.replace(bert, num_labels=3)
    assert labelled.parameter_count() == bert.parameter_count() + 3 * (768 + 1)
    with pytest.raises(InvalidInputError, match="it needs an encoder with a pooler"):
        dataclasses.replace(bert, num_labels=3, pooler=False)


def test_from_dict_names_missing_and_unknown_fields_and_the_file():
    fields = _llama_fields(hiden_size=1)
    with pytest.raises(InvalidInputError, match=r"bad\.toml: unknown field\(s\) hiden_size"):
        ModelSpec.from_dict(fields, "bad.toml")
    fields = _llama_fields()
    del fields["vocab_size"]
    with pytest.raises(InvalidInputError, match=r"bad\.toml: missing field\(s\) vocab_size"):
        ModelSpec.from_dict(fields, "bad.toml")


def test_a_profile_toml_path_loads(tmp_path):
    text = (
        "\n".join(
            f"{key} = {_toml_value(value)}" for key, value in _llama_fields(name="mini").items()
        )
        + "\n"
    )
    path = tmp_path / "mini.toml"
    path.write_text(text.replace("num_layers = 32", "num_layers = 2"))
    spec = load_profile(path)
    assert (spec.name, spec.num_layers) == ("mini", 2)


def test_a_malformed_profile_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(InvalidInputError, match="broken.toml is not valid TOML"):
        load_profile(path)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def test_workload_defaults_and_lists_become_tuples():
    workload = Workload(batch_sizes=[1, 8], input_lens=[128])
    assert workload.batch_sizes == (1, 8) and workload.input_lens == (128,)
    assert (workload.dtype, workload.tp, workload.pp, workload.beam_width) == ("fp16", 1, 1, 1)
    assert workload.to_dict()["batch_sizes"] == [1, 8]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_sizes": ()}, "batch_sizes must not be empty"),
        ({"input_lens": (0,)}, "input_lens must be a positive integer"),
        ({"output_lens": "128"}, "output_lens must be a list"),
        ({"dtype": "fp32"}, "dtype must be one of fp16, bf16, fp8, got 'fp32'"),
        ({"tp": 0}, "tp must be a positive integer"),
        ({"beam_width": 1.5}, "beam_width must be a positive integer"),
    ],
)
def test_workload_rejects_bad_values(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        Workload(**changes)


@pytest.mark.parametrize(
    ("changes", "formats"),
    [
        ({}, ("fp16", "fp16", "fp16", "none")),
        ({"dtype": "bf16"}, ("bf16", "bf16", "bf16", "none")),
        ({"dtype": "fp8"}, ("fp8", "fp8", "fp16", "tensor")),
        ({"dtype": "fp8", "weights": "fp8"}, ("fp8", "fp8", "fp16", "tensor")),
        (
            {"dtype": "fp8", "out_dtype": "bf16", "scaling": "outer"},
            ("fp8", "fp8", "bf16", "outer"),
        ),
        ({"weights": "int8"}, ("fp16", "int8", "fp16", "channel")),
        ({"dtype": "bf16", "weights": "fp8"}, ("bf16", "fp8", "bf16", "channel")),
    ],
)
def test_workload_formats_are_resolved_when_made(changes, formats):
    workload = Workload(**changes)
    assert (workload.dtype, workload.weights, workload.out_dtype, workload.scaling) == formats


def test_workload_record_names_every_format():
    data = Workload(dtype="bf16", weights="int8").to_dict()
    assert (data["dtype"], data["weights"], data["out_dtype"], data["scaling"]) == (
        "bf16", "int8", "bf16", "channel",
    )  # fmt: skip
    assert Workload(**data) == Workload(dtype="bf16", weights="int8")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"dtype": "fp8", "weights": "int8"},
            "dtype fp8 takes fp8 weights, not int8: FP8 tensor cores multiply E4M3 by E4M3",
        ),
        ({"dtype": "fp8", "weights": "fp16"}, "workload: weights must be one of fp8, got 'fp16'"),
        ({"weights": "bf16"}, "workload: weights must be one of fp16, fp8, int8, got 'bf16'"),
        (
            {"dtype": "fp8", "out_dtype": "fp8"},
            "workload: out_dtype must be one of fp16, bf16, got 'fp8'",
        ),
        (
            {"dtype": "bf16", "out_dtype": "fp16"},
            "workload: out_dtype fp16 differs from dtype bf16",
        ),
        (
            {"dtype": "fp8", "scaling": "channel"},
            "workload: fp8 x fp8 GEMMs take scaling tensor or outer, got 'channel'",
        ),
        (
            {"weights": "int8", "scaling": "tensor"},
            "weight-only (fp16 x int8) GEMMs take scaling channel, got 'tensor'",
        ),
        ({"scaling": "tensor"}, "workload: fp16 x fp16 GEMMs take scaling none, got 'tensor'"),
    ],
)
def test_workload_refuses_format_combinations_saying_why(changes, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        Workload(**changes)
