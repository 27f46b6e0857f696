"""ModelSpec from local Hugging Face config.json files (fixtures in tests/data/hf_configs)."""

import dataclasses
import json
from pathlib import Path

import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.catalog import load_builtin, load_profile
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.profiles.problems import gemm_problems
from ftbench.profiles.spec import Workload

CONFIGS = Path(__file__).parent / "data" / "hf_configs"


@pytest.mark.parametrize(
    ("config", "builtin"),
    [
        ("gpt2.json", "gpt2-124m"),
        ("gpt-j-6b.json", "gptj-6b"),
        ("llama-2-7b.json", "llama2-7b"),
        ("llama-2-70b.json", "llama2-70b"),
        ("meta-llama-3-8b.json", "llama3-8b"),
        ("bert-base-uncased.json", "bert-base"),
        ("roberta-base.json", "roberta-base"),
        ("t5-base.json", "t5-base"),
    ],
)
def test_hf_config_gives_the_same_spec_as_the_builtin_profile(config, builtin):
    imported = spec_from_hf_config(CONFIGS / config)
    expected = load_builtin(builtin)
    assert dataclasses.replace(imported, name=expected.name, source=expected.source) == expected


def test_imported_spec_is_named_after_the_file_or_folder(tmp_path):
    assert spec_from_hf_config(CONFIGS / "gpt2.json").name == "gpt2"
    folder = tmp_path / "Llama-2-7b-hf"
    folder.mkdir()
    (folder / "config.json").write_text((CONFIGS / "llama-2-7b.json").read_text())
    assert load_profile(folder).name == "Llama-2-7b-hf"
    assert load_profile(folder / "config.json").source == str(folder / "config.json")


def test_mistral_is_read_as_a_llama_style_gqa_model():
    spec = spec_from_hf_config(CONFIGS / "mistral-7b-v0.1.json")
    assert (spec.family, spec.num_heads, spec.num_kv_heads, spec.rope_theta) == (
        "llama",
        32,
        8,
        10000.0,
    )
    assert spec.parameter_count() == 7_241_732_096  # HF MistralForCausalLM
    assert spec.sliding_window == 4096


def test_roberta_is_bert_with_positions_counted_from_its_padding_id_plus_one(tmp_path):
    spec = spec_from_hf_config(CONFIGS / "roberta-base.json")
    bert = spec_from_hf_config(CONFIGS / "bert-base-uncased.json")
    assert (spec.family, spec.architecture, spec.position_offset, bert.position_offset) == (
        "bert",
        "encoder",
        2,
        0,
    )
    assert (spec.max_positions, spec.token_positions, spec.type_vocab_size) == (514, 512, 1)
    assert (
        spec_from_hf_config(_write(tmp_path, "roberta-base.json", pad_token_id=0)).position_offset
        == 1
    )
    # RobertaConfig's default padding id is 1
    assert (
        spec_from_hf_config(
            _write(tmp_path, "roberta-base.json", pad_token_id=None)
        ).position_offset
        == 2
    )


@pytest.mark.parametrize(
    ("changes", "labels"),
    [
        ({}, 0),  # RobertaForMaskedLM: no classification head
        ({"architectures": ["RobertaForSequenceClassification"]}, 2),  # HF's default two
        ({"architectures": ["RobertaForSequenceClassification"], "num_labels": 5}, 5),
        (
            {
                "architectures": ["RobertaForSequenceClassification"],
                "id2label": {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"},
            },
            3,
        ),
    ],
)
def test_a_sequence_classification_config_gives_its_labels(tmp_path, changes, labels):
    spec = spec_from_hf_config(_write(tmp_path, "roberta-base.json", **changes))
    assert spec.num_labels == labels


def test_rope_scaling_is_carried_so_the_runtime_can_refuse_it():
    config = json.loads((CONFIGS / "meta-llama-3-8b.json").read_text())
    assert spec_from_hf_config(config).rope_scaling == ""
    config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    spec = spec_from_hf_config(config)
    assert json.loads(spec.rope_scaling) == {"rope_type": "llama3", "factor": 8.0}


def test_explicit_head_dim_sets_query_width_independently_of_hidden_size():
    spec = spec_from_hf_config(CONFIGS / "mistral-nemo-base-2407.json")
    assert (spec.hidden_size, spec.head_dim, spec.q_width, spec.rope_theta) == (
        5120,
        128,
        4096,
        1e6,
    )
    uses = gemm_problems(spec, Workload(), fused=True)
    shapes = {u.role: (u.problem.n, u.problem.k) for u in uses if u.phase == "generation"}
    assert shapes["qkv"] == ((32 + 2 * 8) * 128, 5120)
    assert shapes["attn_out"] == (5120, 4096)
    assert round(spec.parameter_count() / 1e9, 1) == 12.2


def test_t5_v1_1_is_gated_gelu_with_an_untied_head():
    spec = spec_from_hf_config(CONFIGS / "t5-v1_1-base.json")
    assert (spec.gated_ffn, spec.activation, spec.tie_word_embeddings) == (True, "gelu_new", False)
    assert spec.parameter_count() == 247_577_856  # HF T5ForConditionalGeneration
    uses = gemm_problems(spec, Workload(), fused=True)
    assert {u.role for u in uses if u.phase == "generation"} >= {"ffn_gate_up", "cross_q"}


def test_hf_defaults_fill_fields_older_configs_lack():
    # Llama-2 configs predate rope_theta and T5 v1.0 configs predate num_decoder_layers.
    assert spec_from_hf_config(CONFIGS / "llama-2-7b.json").rope_theta == 10000.0
    t5 = spec_from_hf_config(CONFIGS / "t5-base.json")
    assert (t5.decoder_layers, t5.relative_attention_max_distance) == (12, 128)


def test_rope_theta_nested_in_rope_parameters_is_read():
    config = json.loads((CONFIGS / "meta-llama-3-8b.json").read_text())
    del config["rope_theta"]
    config["rope_parameters"] = {"rope_theta": 500000.0, "rope_type": "default"}
    assert spec_from_hf_config(config).rope_theta == 500000.0


@pytest.mark.parametrize("scaling", ["linear", ["linear", 2.0], 2.0, {"rope_type": 2}])
def test_a_rope_scaling_that_is_not_an_object_naming_its_type_is_refused(tmp_path, scaling):
    path = _write(tmp_path, "meta-llama-3-8b.json", rope_scaling=scaling)
    with pytest.raises(InvalidInputError) as refused:
        spec_from_hf_config(path)
    assert str(refused.value) == (
        f"{path}: field 'rope_scaling' must be null or an object with its rope_type, such as "
        f'{{"rope_type": "linear", "factor": 2.0}}, got {scaling!r}'
    )


def test_a_rope_scaling_without_a_type_is_the_default_rotary_as_in_hf(tmp_path):
    path = _write(tmp_path, "meta-llama-3-8b.json", rope_scaling={"factor": 2.0})
    assert spec_from_hf_config(path).rope_scaling == ""


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("head_dim", 1_000_000_000, "head_dim 1,000,000,000 is above 1,024"),
        ("num_hidden_layers", 100_000, "num_layers 100,000 is above 1,024"),
        ("hidden_size", 1_048_576, "hidden_size 1,048,576 is above 131,072"),
        ("vocab_size", 100_000_000, "vocab_size 100,000,000 is above 4,194,304"),
    ],
)
def test_a_config_beyond_any_model_is_refused_naming_the_limit(tmp_path, key, value, message):
    path = _write(tmp_path, "mistral-7b-v0.1.json", **{key: value})
    with pytest.raises(InvalidInputError) as refused:
        spec_from_hf_config(path)
    assert str(refused.value).startswith(f"{path}: model '{path.parent.name}': ")
    assert f"{message}, the most ftbench takes" in str(refused.value)


def _write(tmp_path, fixture, **changes):
    config = json.loads((CONFIGS / fixture).read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_missing_required_field_names_the_field_and_the_file(tmp_path):
    path = _write(tmp_path, "gpt2.json", n_layer=None)
    with pytest.raises(InvalidInputError) as info:
        spec_from_hf_config(path)
    message = str(info.value)
    assert "missing field 'n_layer'" in message
    assert str(path) in message and "'gpt2'" in message


def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
    path = _write(tmp_path, "llama-2-7b.json", model_type="mixtral")
    with pytest.raises(InvalidInputError, match="model_type 'mixtral' is not supported") as info:
        spec_from_hf_config(path)
    assert "gpt2, gptj, llama, mistral, qwen2, phi3, bert, roberta, t5" in str(info.value)


def test_missing_model_type_is_named(tmp_path):
    path = _write(tmp_path, "gpt2.json", model_type=None)
    with pytest.raises(InvalidInputError, match="missing field 'model_type'"):
        spec_from_hf_config(path)


@pytest.mark.parametrize(
    ("fixture", "changes", "message"),
    [
        ("llama-2-7b.json", {"hidden_act": "gelu_10"}, "field 'hidden_act' is 'gelu_10'"),
        ("gpt2.json", {"n_layer": "12"}, "field 'n_layer' must be a positive integer"),
        ("gpt2.json", {"n_head": 7}, "field 'n_embd' \\(768\\) is not divisible by 'n_head'"),
        ("t5-base.json", {"feed_forward_proj": "gated-tanh"}, "field 'feed_forward_proj'"),
        ("llama-2-7b.json", {"model_type": ["llama"]}, "model_type \\['llama'\\] is not supported"),
        ("llama-2-7b.json", {"hidden_act": ["silu"]}, "field 'hidden_act' is \\['silu'\\]"),
        (
            "t5-base.json",
            {"feed_forward_proj": ["relu"]},
            "field 'feed_forward_proj' is \\['relu'\\]",
        ),
        (
            "bert-base-uncased.json",
            {"position_embedding_type": "relative_key"},
            "field 'position_embedding_type' is 'relative_key'",
        ),
        ("roberta-base.json", {"pad_token_id": -1}, "field 'pad_token_id' must be an integer >= 0"),
        (
            "roberta-base.json",
            {"pad_token_id": 513},
            "position_offset 514 leaves no position of the 514 \\(max_positions\\) for a token",
        ),
        (
            "llama-2-7b.json",
            {"num_key_value_heads": 6},
            "num_heads \\(32\\) must be a multiple of num_kv_heads \\(6\\)",
        ),
    ],
)
def test_bad_field_values_name_the_field(tmp_path, fixture, changes, message):
    path = _write(tmp_path, fixture, **changes)
    with pytest.raises(InvalidInputError, match=message) as info:
        spec_from_hf_config(path)
    assert str(path) in str(info.value)


def test_unreadable_or_malformed_config_is_an_error(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_profile(tmp_path / "absent" / "config.json")
    broken = tmp_path / "config.json"
    broken.write_text("{not json")
    with pytest.raises(InvalidInputError, match="is not valid JSON"):
        load_profile(broken)
