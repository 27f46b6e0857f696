"""Real Hugging Face config.json files (tests/data/hf_configs): the GEMMs of the models ftbench
supports match their architecture and size; every other config is refused in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftbench.cli import app
from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.profiles.problems import gemm_problems
from ftbench.profiles.spec import Workload

runner = CliRunner()
CONFIGS = Path(__file__).parent / "data" / "hf_configs"

# What HF's num_parameters() reports for the model class each config names (BertModel for BERT).
PARAMETERS = {
    "gpt2-medium.json": 354_823_168,
    "llama-3.1-8b.json": 8_030_261_248,
    "llama-3.2-1b.json": 1_235_814_400,
    "tinyllama-1.1b-chat-v1.0.json": 1_100_048_384,
    "codellama-7b-hf.json": 6_738_546_688,
    "deepseek-coder-6.7b-base.json": 6_740_512_768,
    "mistral-7b-v0.1.json": 7_241_732_096,
    "qwen2-7b.json": 7_615_616_512,
    "qwen2.5-0.5b.json": 494_032_768,
    "phi-3-mini-4k-instruct.json": 3_821_079_552,
    "t5-small.json": 60_506_624,
    "flan-t5-base.json": 247_577_856,
    "bert-large-uncased.json": 335_141_888,
    "roberta-base.json": 124_645_632,  # RobertaModel with its pooler
}

UNSUPPORTED = {
    "mixtral-8x7b-v0.1.json": "mixtral",
    "gemma-2b.json": "gemma",
    "gemma-7b.json": "gemma",
    "falcon-7b.json": "falcon",
    "gpt-neox-20b.json": "gpt_neox",
    "pythia-1b.json": "gpt_neox",
    "opt-1.3b.json": "opt",
    "bloom-560m.json": "bloom",
}


def _show_and_tune(path, *options):
    """`profiles show` and `tune --dry-run` of one config with the same options."""
    return [
        runner.invoke(app, ["profiles", "show", "--config", str(path), *options]),
        runner.invoke(app, ["tune", "--config", str(path), *options, "--dry-run"]),
    ]


def _weights(uses, spec):
    """Weight elements implied by one grid point's linear GEMMs: the decoder's generation step,
    BERT's context phase, T5's encoder (context) plus decoder (generation)."""
    phases = {
        "decoder": ("generation",),
        "encoder": ("context",),
        "encoder-decoder": ("context", "generation"),
    }[spec.architecture]
    return sum(
        use.problem.n * use.problem.k * use.calls_per_step
        for use in uses
        if use.phase in phases and not use.fused_into_attention
    )


@pytest.mark.parametrize("config", sorted(PARAMETERS))
def test_parameter_count_is_the_hf_count(config):
    assert spec_from_hf_config(CONFIGS / config).parameter_count() == PARAMETERS[config]


@pytest.mark.parametrize("config", sorted(PARAMETERS))
def test_gemm_weights_and_embedding_add_up_to_the_model(config):
    spec = spec_from_hf_config(CONFIGS / config)
    weights = _weights(gemm_problems(spec, Workload()), spec)
    has_lm_head = spec.architecture != "encoder"
    embedding = (
        0 if spec.tie_word_embeddings and has_lm_head else spec.vocab_size * spec.hidden_size
    )
    # what is left is norms, biases and position tables: under 1 %
    assert 0.99 < (weights + embedding) / PARAMETERS[config] <= 1


@pytest.mark.parametrize(
    ("config", "tp"),
    [("llama-3.1-8b.json", 8), ("codellama-7b-hf.json", 4), ("t5-small.json", 8)],
)
def test_tensor_parallel_ranks_hold_an_equal_share_of_the_weights(config, tp):
    spec = spec_from_hf_config(CONFIGS / config)
    whole = _weights(gemm_problems(spec, Workload()), spec)
    assert _weights(gemm_problems(spec, Workload(tp=tp)), spec) * tp == whole


def _generation_shapes(config, tp, fused=True):
    spec = spec_from_hf_config(CONFIGS / config)
    uses = gemm_problems(spec, Workload(tp=tp), fused=fused)
    return {use.role: (use.problem.n, use.problem.k) for use in uses if use.phase == "generation"}


@pytest.mark.parametrize(
    ("config", "tp", "expected"),
    [
        # GQA: 32 query and 8 KV heads of 128; SwiGLU 14336; untied 128256-row head
        (
            "llama-3.1-8b.json",
            1,
            {
                "qkv": (6144, 4096),
                "attn_out": (4096, 4096),
                "ffn_gate_up": (28672, 4096),
                "ffn_down": (4096, 14336),
                "lm_head": (128256, 4096),
            },
        ),
        (
            "llama-3.1-8b.json",
            8,
            {
                "qkv": (768, 4096),
                "attn_out": (4096, 512),
                "ffn_gate_up": (3584, 4096),
                "ffn_down": (4096, 1792),
                "lm_head": (16032, 4096),
            },
        ),
        # 4 KV heads over 8 ranks: each rank holds 4 query heads and one (replicated) KV head
        (
            "tinyllama-1.1b-chat-v1.0.json",
            8,
            {
                "qkv": (384, 2048),
                "attn_out": (2048, 256),
                "ffn_gate_up": (1408, 2048),
                "ffn_down": (2048, 704),
                "lm_head": (4000, 2048),
            },
        ),
        # n_inner null is 4 x n_embd; not gated; the 50257-row vocabulary padded to 50264
        (
            "gpt2-medium.json",
            8,
            {
                "qkv": (384, 1024),
                "attn_out": (1024, 128),
                "ffn_up": (512, 1024),
                "ffn_down": (1024, 512),
                "lm_head": (6283, 1024),
            },
        ),
        # CodeLlama's 32016-row vocabulary splits evenly over 8 ranks
        ("codellama-7b-hf.json", 8, {"qkv": (1536, 4096), "lm_head": (4002, 4096)}),
    ],
)
def test_generation_gemm_shapes(config, tp, expected):
    shapes = _generation_shapes(config, tp)
    assert {role: shapes[role] for role in expected} == expected


def test_unfused_shapes_split_the_fused_ones():
    shapes = _generation_shapes("llama-3.2-1b.json", 2, fused=False)
    assert (shapes["q"], shapes["k"], shapes["v"]) == ((1024, 2048), (256, 2048), (256, 2048))
    assert (shapes["ffn_gate"], shapes["ffn_up"]) == ((4096, 2048), (4096, 2048))


def test_t5_decoder_gemms_per_rank():
    # flan-t5-base: 12 heads of 64, gated-gelu FFN 2048, untied head; at tp=4, 3 heads per rank
    spec = spec_from_hf_config(CONFIGS / "flan-t5-base.json")
    uses = gemm_problems(spec, Workload(tp=4))
    shapes = {(use.phase, use.role): (use.problem.n, use.problem.k) for use in uses}
    assert shapes[("context", "cross_kv")] == (384, 768)
    assert shapes[("generation", "cross_q")] == (192, 768)
    assert shapes[("generation", "ffn_gate_up")] == (1024, 768)
    assert shapes[("generation", "lm_head")] == (8032, 768)


@pytest.mark.parametrize(
    ("config", "tp", "message"),
    [
        ("bert-large-uncased.json", 3, "16 attention heads cannot be split evenly over tp=3"),
        ("flan-t5-base.json", 8, "12 attention heads cannot be split evenly over tp=8"),
        ("gpt2-medium.json", 32, "16 attention heads cannot be split evenly over tp=32"),
        ("tinyllama-1.1b-chat-v1.0.json", 64, "32 attention heads cannot be split evenly"),
    ],
)
def test_a_tp_the_model_cannot_split_is_refused_by_show_and_tune(config, tp, message):
    for result in _show_and_tune(CONFIGS / config, "--tp", str(tp)):
        assert isinstance(result.exception, InvalidInputError)
        assert message in str(result.exception)


@pytest.mark.parametrize("config", sorted(UNSUPPORTED))
def test_unsupported_architectures_are_refused_naming_the_model_type(config):
    expected = f"model_type {UNSUPPORTED[config]!r} is not supported"
    for result in _show_and_tune(CONFIGS / config):
        assert isinstance(result.exception, InvalidInputError)
        assert expected in str(result.exception)


@pytest.mark.parametrize(
    "args",
    [
        ["profiles", "show", "--config", str(CONFIGS / "mixtral-8x7b-v0.1.json")],
        ["tune", "--config", str(CONFIGS / "mixtral-8x7b-v0.1.json"), "--dry-run"],
        ["run", "--config", str(CONFIGS / "mixtral-8x7b-v0.1.json"), "--out", "unused.json"],
    ],
)
def test_refusal_is_one_line_and_exit_code_2(args):
    result = subprocess.run(
        [sys.executable, "-m", "ftbench", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {CONFIGS / 'mixtral-8x7b-v0.1.json'}: model_type 'mixtral' is not supported; "
        "supported: gpt2, gptj, llama, mistral, qwen2, phi3, bert, roberta, t5"
    ]


@pytest.mark.parametrize("config", sorted(PARAMETERS))
def test_show_and_tune_dry_run_list_the_same_problems(config):
    options = ["--tp", "2", "--batch", "1,8", "--input-len", "128,512", "--dtype", "bf16"]
    shown = runner.invoke(
        app, ["profiles", "show", "--config", str(CONFIGS / config), *options, "--json"]
    )
    tuned = runner.invoke(app, ["tune", "--config", str(CONFIGS / config), *options, "--dry-run"])
    assert shown.exit_code == 0 and tuned.exit_code == 0
    keys = [
        row["key"]
        for row in json.loads(shown.stdout)["problems"]
        if not row["fused_into_attention"]
    ]
    assert [line.split()[0] for line in tuned.stdout.splitlines() if "gemm:" in line] == keys


def _variant(tmp_path, fixture, **changes):
    config = json.loads((CONFIGS / fixture).read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_old_style_rope_scaling_type_is_carried_so_the_runtime_can_refuse_it():
    # deepseek-coder writes {"factor": 4.0, "type": "linear"}; HF reads "type" as "rope_type"
    spec = spec_from_hf_config(CONFIGS / "deepseek-coder-6.7b-base.json")
    assert json.loads(spec.rope_scaling) == {"factor": 4.0, "type": "linear"}


def test_rope_scaling_nested_in_rope_parameters_is_carried(tmp_path):
    scaling = json.loads((CONFIGS / "llama-3.1-8b.json").read_text())["rope_scaling"]
    path = _variant(
        tmp_path,
        "llama-3.1-8b.json",
        rope_scaling=None,
        rope_theta=None,
        rope_parameters={**scaling, "rope_theta": 500000.0},
    )
    spec = spec_from_hf_config(path)
    assert (json.loads(spec.rope_scaling), spec.rope_theta) == (scaling, 500000.0)


def test_default_rope_parameters_mean_no_scaling(tmp_path):
    path = _variant(
        tmp_path,
        "tinyllama-1.1b-chat-v1.0.json",
        rope_scaling=None,
        rope_theta=None,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
    )
    assert spec_from_hf_config(path).rope_scaling == ""


def test_mistral_keys_absent_get_mistral_config_defaults(tmp_path):
    # MistralConfig defaults num_key_value_heads to 8 and sliding_window to 4096; null means
    # as many KV heads as heads and no window
    absent = _variant(
        tmp_path, "mistral-7b-v0.1.json", num_key_value_heads=None, sliding_window=None
    )
    spec = spec_from_hf_config(absent)
    assert (spec.num_kv_heads, spec.sliding_window) == (8, 4096)
    config = json.loads(absent.read_text())
    config.update(num_key_value_heads=None, sliding_window=None)
    spec = spec_from_hf_config(config)
    assert (spec.num_kv_heads, spec.sliding_window) == (32, 0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rms_norm_eps": float("nan")}, "field 'rms_norm_eps' must be a positive number, got nan"),
        ({"rope_theta": float("inf")}, "field 'rope_theta' must be a positive number, got inf"),
        ({"rope_theta": 10**400}, "field 'rope_theta' must be a positive number"),
        ({"hidden_size": 2**40}, "hidden_size 1099511627776 is above 2147483648"),
        ({"vocab_size": 10**30}, "vocab_size 1000000000000000000000000000000 is above"),
        ({"num_hidden_layers": 0}, "field 'num_hidden_layers' must be a positive integer, got 0"),
        ({"intermediate_size": -5632}, "field 'intermediate_size' must be a positive integer"),
        ({"num_key_value_heads": 0}, "field 'num_key_value_heads' must be a positive integer"),
    ],
)
def test_sizes_and_numbers_out_of_range_are_refused(tmp_path, changes, message):
    path = _variant(tmp_path, "tinyllama-1.1b-chat-v1.0.json", **changes)
    for result in _show_and_tune(path):
        assert isinstance(result.exception, InvalidInputError)
        assert message in str(result.exception)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is not valid JSON"),
        ("[1, 2]", "an HF config must be a JSON object"),
        ("model_type: llama", "is not valid JSON"),
    ],
)
def test_a_file_that_is_not_a_config_is_refused_by_show_and_tune(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    for result in _show_and_tune(path) + _show_and_tune(tmp_path):
        assert isinstance(result.exception, InvalidInputError)
        assert message in str(result.exception)


def test_a_folder_without_config_json_is_refused_by_show_and_tune(tmp_path):
    for result in _show_and_tune(tmp_path):
        assert isinstance(result.exception, InvalidInputError)
        assert f"cannot read {tmp_path / 'config.json'}" in str(result.exception)
