"""ftbench's weight layout: HF name maps, safetensors loading, random weights, TP sharding."""

import dataclasses
import json
import math

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.catalog import load_builtin
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.reference import ReferenceModel, embed
from ftbench.runtime.weights import (
    check_shapes,
    from_state_dict,
    load_hf_weights,
    random_weights,
    shard,
    vocabulary_start,
    weight_shapes,
)

GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 101,
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 32,
}
GPTJ = {
    "model_type": "gptj",
    "vocab_size": 101,
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "rotary_dim": 6,
    "n_positions": 32,
}
LLAMA = {
    "model_type": "llama",
    "vocab_size": 101,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
    "rope_theta": 5000.0,
}


def _spec(config: dict, **overrides) -> ModelSpec:
    return spec_from_hf_config({**config, **overrides})


def _gpt2_state_dict(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """A GPT-2 state dict in HF names and layouts (Conv1D weights stored [in, out])."""
    rng = np.random.default_rng(seed)
    hidden, ffn = spec.hidden_size, spec.ffn_hidden_size
    shapes = {"transformer.wte.weight": (spec.vocab_size, hidden)}
    shapes["transformer.wpe.weight"] = (spec.max_positions, hidden)
    for index in range(spec.num_layers):
        layer = f"transformer.h.{index}."
        for name, shape in {
            "ln_1.weight": (hidden,),
            "ln_1.bias": (hidden,),
            "attn.c_attn.weight": (hidden, 3 * hidden),
            "attn.c_attn.bias": (3 * hidden,),
            "attn.c_proj.weight": (hidden, hidden),
            "attn.c_proj.bias": (hidden,),
            "ln_2.weight": (hidden,),
            "ln_2.bias": (hidden,),
            "mlp.c_fc.weight": (hidden, ffn),
            "mlp.c_fc.bias": (ffn,),
            "mlp.c_proj.weight": (ffn, hidden),
            "mlp.c_proj.bias": (hidden,),
        }.items():
            shapes[layer + name] = shape
    shapes["transformer.ln_f.weight"] = (hidden,)
    shapes["transformer.ln_f.bias"] = (hidden,)
    return {name: rng.standard_normal(shape) for name, shape in shapes.items()}


def _llama_state_dict(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hidden, ffn = spec.hidden_size, spec.ffn_hidden_size
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, hidden)}
    for index in range(spec.num_layers):
        layer = f"model.layers.{index}."
        for name, shape in {
            "input_layernorm.weight": (hidden,),
            "self_attn.q_proj.weight": (spec.q_width, hidden),
            "self_attn.k_proj.weight": (spec.kv_width, hidden),
            "self_attn.v_proj.weight": (spec.kv_width, hidden),
            "self_attn.o_proj.weight": (hidden, spec.q_width),
            "post_attention_layernorm.weight": (hidden,),
            "mlp.gate_proj.weight": (ffn, hidden),
            "mlp.up_proj.weight": (ffn, hidden),
            "mlp.down_proj.weight": (hidden, ffn),
        }.items():
            shapes[layer + name] = shape
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (spec.vocab_size, hidden)
    return {name: rng.standard_normal(shape) for name, shape in shapes.items()}


def _assert_same_weights(actual, expected) -> None:
    actual_named, expected_named = actual.named_tensors(), expected.named_tensors()
    assert actual_named.keys() == expected_named.keys()
    for name, array in expected_named.items():
        np.testing.assert_array_equal(actual_named[name], array, err_msg=name)


# --- name maps -------------------------------------------------------------------------------


def test_gpt2_conv1d_weights_are_transposed_and_the_lm_head_is_the_embedding():
    spec = _spec(GPT2)
    state = _gpt2_state_dict(spec)
    weights = from_state_dict(state, spec)
    layer = weights.layers[1]
    np.testing.assert_array_equal(layer.qkv.weight, state["transformer.h.1.attn.c_attn.weight"].T)
    np.testing.assert_array_equal(layer.qkv.bias, state["transformer.h.1.attn.c_attn.bias"])
    np.testing.assert_array_equal(
        layer.attn_out.weight, state["transformer.h.1.attn.c_proj.weight"].T
    )
    np.testing.assert_array_equal(layer.ffn_up.weight, state["transformer.h.1.mlp.c_fc.weight"].T)
    np.testing.assert_array_equal(
        layer.ffn_down.weight, state["transformer.h.1.mlp.c_proj.weight"].T
    )
    np.testing.assert_array_equal(layer.ln2.bias, state["transformer.h.1.ln_2.bias"])
    np.testing.assert_array_equal(weights.positions, state["transformer.wpe.weight"])
    np.testing.assert_array_equal(weights.final_norm.weight, state["transformer.ln_f.weight"])
    assert weights.tied_lm_head and weights.lm_head.bias is None
    assert weights.dtype == np.float64
    check_shapes(weights, spec)


def test_llama_qkv_rows_are_q_k_v_and_ffn_up_rows_are_gate_then_up():
    spec = _spec(LLAMA)
    state = _llama_state_dict(spec)
    weights = from_state_dict(state, spec, np.float32)
    layer = weights.layers[0]
    expected_qkv = np.concatenate(
        [
            state[f"model.layers.0.self_attn.{name}.weight"]
            for name in ("q_proj", "k_proj", "v_proj")
        ]
    )
    expected_up = np.concatenate(
        [state["model.layers.0.mlp.gate_proj.weight"], state["model.layers.0.mlp.up_proj.weight"]]
    )
    assert layer.qkv.weight.shape == (64 + 2 * 32, 64)
    np.testing.assert_array_equal(layer.qkv.weight, expected_qkv.astype(np.float32))
    np.testing.assert_array_equal(layer.ffn_up.weight, expected_up.astype(np.float32))
    np.testing.assert_array_equal(
        layer.ln2.weight, state["model.layers.0.post_attention_layernorm.weight"].astype(np.float32)
    )
    assert layer.ln1.bias is None and layer.qkv.bias is None
    assert not weights.tied_lm_head
    assert {array.dtype for array in weights.named_tensors().values()} == {np.dtype(np.float32)}


def test_gptj_has_one_norm_per_layer_and_an_lm_head_bias():
    spec = _spec(GPTJ)
    shapes = weight_shapes(spec)
    assert "layers.0.ln2.weight" not in shapes
    assert shapes["lm_head.bias"] == (101,)
    assert "layers.0.qkv.bias" not in shapes and "layers.0.ffn_up.bias" in shapes


def test_base_model_checkpoints_without_prefix_and_mask_buffers_load():
    """The hub's `gpt2` stores GPT2Model names ("h.0.attn.c_attn.weight") and mask buffers."""
    spec = _spec(GPT2)
    state = _gpt2_state_dict(spec)
    bare = {name.removeprefix("transformer."): value for name, value in state.items()}
    bare["h.0.attn.bias"] = np.ones((1, 1, 32, 32))
    bare["h.0.attn.masked_bias"] = np.array(-1e4)
    _assert_same_weights(from_state_dict(bare, spec), from_state_dict(state, spec))


def test_tied_checkpoints_may_store_the_lm_head_too():
    spec = _spec(GPT2)
    state = _gpt2_state_dict(spec)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    assert from_state_dict(state, spec).tied_lm_head


def test_missing_unexpected_and_misshaped_tensors_are_all_named():
    spec = _spec(LLAMA)
    state = _llama_state_dict(spec)
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.k_proj.weight"] = np.zeros((64, 64))
    state["model.layers.2.input_layernorm.weight"] = np.zeros(64)
    with pytest.raises(InvalidInputError) as error:
        from_state_dict(state, spec)
    message = str(error.value)
    assert "missing tensors: model.layers.1.mlp.up_proj.weight" in message
    assert "model.layers.0.self_attn.k_proj.weight (expected [32, 64], got [64, 64])" in message
    assert "unexpected tensors: model.layers.2.input_layernorm.weight" in message


def test_checkpoint_of_another_structure_is_refused():
    spec = _spec(LLAMA)
    with pytest.raises(InvalidInputError, match="missing tensors"):
        from_state_dict(_gpt2_state_dict(_spec(GPT2)), spec)


def test_families_without_a_name_map_or_decoder_are_refused():
    megatron = ModelSpec.from_dict({**_spec(GPT2).to_dict(), "family": "megatron-gpt"})
    with pytest.raises(InvalidInputError, match="no Hugging Face name map for family megatron"):
        from_state_dict({}, megatron)
    bert = spec_from_hf_config(
        {
            "model_type": "bert",
            "vocab_size": 50,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 16,
        }
    )
    with pytest.raises(InvalidInputError, match="decoder models"):
        weight_shapes(bert)


# --- safetensors -----------------------------------------------------------------------------


def _hf_gpt2(dtype_name: str = "float32"):
    """A tiny random HF GPT-2 (tied LM head) and its spec."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=101,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).to(getattr(torch, dtype_name)).eval()
    return model, spec_from_hf_config(model.config.to_dict())


def test_single_file_safetensors_checkpoint_matches_the_state_dict(tmp_path):
    model, spec = _hf_gpt2()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_hf_weights(tmp_path, spec, np.float32)
    _assert_same_weights(loaded, from_state_dict(model.state_dict(), spec))
    assert loaded.tied_lm_head


def test_sharded_checkpoint_is_read_through_its_index(tmp_path):
    from safetensors.numpy import save_file

    model, spec = _hf_gpt2()
    model.save_pretrained(tmp_path, max_shard_size="60KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    # A stray file the index does not name (Mistral repos ship consolidated.safetensors).
    save_file(
        {"tok_embeddings.weight": np.zeros((2, 2), np.float32)}, tmp_path / "extra.safetensors"
    )
    loaded = load_hf_weights(tmp_path, spec, "fp16")
    _assert_same_weights(loaded, from_state_dict(model.state_dict(), spec, np.float16))


def test_bf16_checkpoint_is_widened_exactly(tmp_path):
    model, spec = _hf_gpt2("bfloat16")
    model.save_pretrained(tmp_path)
    loaded = load_hf_weights(tmp_path, spec, "fp32")
    expected = from_state_dict({k: v.float() for k, v in model.state_dict().items()}, spec)
    _assert_same_weights(loaded, expected)


def test_checkpoint_mismatch_names_the_directory(tmp_path):
    model, _ = _hf_gpt2()
    model.save_pretrained(tmp_path)
    with pytest.raises(InvalidInputError, match=f"{tmp_path} does not match"):
        load_hf_weights(tmp_path, _spec(GPT2, n_layer=3), np.float32)


def test_directory_without_safetensors_is_an_error(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="no \\*.safetensors files"):
        load_hf_weights(tmp_path, _spec(GPT2), np.float32)


@pytest.mark.parametrize(
    "content", [b"", b"\x08" + bytes(7) + b"{}", b"\xff" * 16], ids=["empty", "short", "garbage"]
)
def test_a_corrupt_safetensors_file_is_an_error_naming_it(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(InvalidInputError, match=f"^cannot read {tmp_path}/model.safetensors as "):
        load_hf_weights(tmp_path, _spec(GPT2), np.float32)


def test_index_naming_a_missing_shard_is_an_error(tmp_path):
    index = {"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInputError, match="named by the index but missing"):
        load_hf_weights(tmp_path, _spec(GPT2), np.float32)


# --- random weights and dtypes ---------------------------------------------------------------


@pytest.mark.parametrize("config", [GPT2, GPTJ, LLAMA], ids=["gpt2", "gptj", "llama"])
def test_random_weights_have_the_spec_shapes_and_one_dtype(config):
    spec = _spec(config)
    weights = random_weights(spec, "fp16", seed=3)
    named = weights.named_tensors()
    assert {name: array.shape for name, array in named.items()} == weight_shapes(spec)
    assert {array.dtype for array in named.values()} == {np.dtype(np.float16)}
    assert abs(float(np.std(named["layers.0.qkv.weight"])) - 0.02) < 0.002
    np.testing.assert_allclose(named["final_norm.weight"], 1.0, atol=0.1)
    assert weights.tied_lm_head == spec.tie_word_embeddings
    _assert_same_weights(random_weights(spec, "fp16", seed=3), weights)
    assert not np.array_equal(random_weights(spec, "fp16", seed=4).embed, weights.embed)


def test_astype_keeps_a_tied_lm_head_tied():
    weights = random_weights(_spec(GPT2), np.float32).astype("fp64")
    assert weights.dtype == np.float64 and weights.tied_lm_head


# --- tensor parallelism ----------------------------------------------------------------------


@pytest.mark.parametrize("tp", [2, 4])
def test_shards_have_the_rank_shapes(tp):
    spec = _spec(LLAMA)
    weights = random_weights(spec, np.float32)
    shapes = rank_shapes(spec, tp)
    for rank in range(tp):
        part = shard(weights, spec, tp, rank)
        check_shapes(part, spec, tp)
        assert part.layers[0].qkv.weight.shape[0] == (shapes.q_heads + 2 * shapes.kv_heads) * 16
        assert part.lm_head.weight.shape == (shapes.lm_head_rows, 64)


def test_fewer_kv_heads_than_ranks_replicates_each_kv_head_on_its_query_group():
    """4 query heads, 2 KV heads, tp=4: ranks 0-1 hold KV head 0, ranks 2-3 KV head 1."""
    spec = _spec(LLAMA)
    weights = random_weights(spec, np.float32)
    qkv = weights.layers[0].qkv.weight
    head_dim = 16
    k_head = [qkv[64 + head * head_dim : 64 + (head + 1) * head_dim] for head in range(2)]
    v_head = [qkv[96 + head * head_dim : 96 + (head + 1) * head_dim] for head in range(2)]
    for rank in range(4):
        part = shard(weights, spec, 4, rank).layers[0].qkv.weight
        q, k, v = np.split(part, 3)
        np.testing.assert_array_equal(q, qkv[rank * head_dim : (rank + 1) * head_dim])
        np.testing.assert_array_equal(k, k_head[rank // 2])
        np.testing.assert_array_equal(v, v_head[rank // 2])


def test_lm_head_is_padded_with_zero_rows():
    spec = _spec(GPTJ)  # vocabulary 101 over 2 ranks: 51 rows each, one padding row
    weights = random_weights(spec, np.float32)
    last = shard(weights, spec, 2, 1).lm_head
    np.testing.assert_array_equal(last.weight[:50], weights.lm_head.weight[51:])
    assert not last.weight[50].any() and last.bias[50] == 0


@pytest.mark.parametrize(("tp", "rows"), [(1, 50400), (2, 25200), (4, 12600), (8, 6300)])
def test_gptj_6b_embedding_and_lm_head_rows_per_rank(tp, rows):
    spec = load_builtin("gptj-6b")  # 50400 divides by 8: no padding
    shapes = weight_shapes(spec, tp)
    assert shapes["embed"] == shapes["lm_head.weight"] == (rows, 4096)
    assert shapes["lm_head.bias"] == (rows,)
    assert [vocabulary_start(spec, tp, r) for r in range(tp)] == [r * rows for r in range(tp)]


@pytest.mark.parametrize("vocab", [50400, 1003])
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_embedding_is_split_by_the_lm_heads_vocabulary_rows(vocab, tp):
    spec = _spec(GPTJ, vocab_size=vocab, n_head=8)
    weights = random_weights(spec, np.float32)
    rows = {50400: {2: 25200, 4: 12600, 8: 6300}, 1003: {2: 502, 4: 251, 8: 126}}[vocab][tp]
    padding = rows * tp - vocab  # 1003: 1, 1 and 5 zero rows on the last rank
    padded_embed = np.pad(weights.embed, ((0, padding), (0, 0)))
    padded_head = np.pad(weights.lm_head.weight, ((0, padding), (0, 0)))
    for rank in range(tp):
        part = shard(weights, spec, tp, rank)
        check_shapes(part, spec, tp)
        held = slice(rank * rows, (rank + 1) * rows)
        assert vocabulary_start(spec, tp, rank) == held.start
        np.testing.assert_array_equal(part.embed, padded_embed[held])
        np.testing.assert_array_equal(part.lm_head.weight, padded_head[held])
    last = shard(weights, spec, tp, tp - 1)
    assert not last.embed[rows - padding :].any()


@pytest.mark.parametrize("tp", [2, 4])
def test_a_tied_lm_head_is_the_sharded_embedding(tp):
    spec = _spec(GPT2)  # vocabulary 101: one padding row at tp=2, three at tp=4
    weights = random_weights(spec, np.float32)
    for rank in range(tp):
        part = shard(weights, spec, tp, rank)
        assert part.tied_lm_head and part.lm_head.weight is part.embed
        assert part.positions is weights.positions  # learned positions stay replicated
        assert part.embed.shape == (rank_shapes(spec, tp).lm_head_rows, 64)


@pytest.mark.parametrize("tp", [2, 4])
def test_random_weights_of_a_rank_keep_a_tied_lm_head_tied(tp):
    spec = _spec(GPT2)
    part = random_weights(spec, np.float32, tp=tp)
    check_shapes(part, spec, tp)
    assert part.tied_lm_head


def test_the_reference_embeds_only_the_tokens_in_a_ranks_rows():
    table = np.arange(12.0).reshape(4, 3)  # token ids 10..13
    tokens = np.array([[9, 10, 13], [14, 12, 0]])
    got = embed(tokens, table, vocab_start=10)
    np.testing.assert_array_equal(got[0], [[0, 0, 0], [0, 1, 2], [9, 10, 11]])
    np.testing.assert_array_equal(got[1], [[0, 0, 0], [6, 7, 8], [0, 0, 0]])


def test_bad_tp_or_rank_is_refused():
    spec = _spec(LLAMA)
    weights = random_weights(spec, np.float32)
    with pytest.raises(InvalidInputError, match="valid tp sizes"):
        shard(weights, spec, 3, 0)
    with pytest.raises(InvalidInputError, match="rank must be an integer in 0..1"):
        shard(weights, spec, 2, 2)
    with pytest.raises(InvalidInputError, match="weights do not match"):
        shard(shard(weights, spec, 2, 0), spec, 2, 0)


@pytest.mark.parametrize(
    ("config", "overrides", "tp"),
    [
        (LLAMA, {}, 2),
        (LLAMA, {}, 4),
        (LLAMA, {"num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True}, 4),
        (GPTJ, {}, 2),
        (GPT2, {}, 2),
        (GPT2, {}, 4),
    ],
    ids=[
        "llama-tp2", "llama-tp4-kv-replicated", "llama-mqa-bias-tp4", "gptj-tp2", "gpt2-tp2",
        "gpt2-tp4",
    ],
)  # fmt: skip
def test_sharded_forward_equals_unsharded(config, overrides, tp):
    spec = _spec(config, **overrides)
    weights = random_weights(spec, np.float64, seed=1)
    shards = [shard(weights, spec, tp, rank) for rank in range(tp)]
    full, parallel = ReferenceModel(spec, weights), ReferenceModel(spec, shards)
    prompts = np.random.default_rng(2).integers(0, spec.vocab_size, (2, 9))
    # The first and last token id of every rank's vocabulary rows, up to the last id (100).
    rows = rank_shapes(spec, tp).lm_head_rows
    edges = sorted({*range(0, spec.vocab_size, rows), *range(rows - 1, spec.vocab_size, rows)})
    edges = [*edges, spec.vocab_size - 1]
    prompts[0, : len(edges)] = edges
    np.testing.assert_allclose(
        parallel.prefill(prompts), full.prefill(prompts), rtol=1e-10, atol=1e-12
    )
    for token in (5, 77, 100):
        step = np.array([token, 3])
        np.testing.assert_allclose(parallel.decode(step), full.decode(step), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("profile", "tp"),
    [(name, tp) for name in ("gptj-6b", "llama2-70b", "megatron-gpt-345m") for tp in (2, 4, 8)]
    + [("gpt2-124m", 2), ("gpt2-124m", 4)],
)  # fmt: skip
def test_sharding_plan_of_the_builtin_profiles(profile, tp):
    """The Megatron plan with each profile's real heads, KV heads, FFN split and vocabulary
    (head_dim, widths and layers shrunk so the arrays are small; GPT-2 124M's 12 heads do not
    split 8 ways, so Megatron-GPT 345M, the same architecture, stands for GPT-2 at TP 8), derived
    here per head: rank r holds the query heads h with h // (H / tp) == r, the KV heads those
    queries use (h // (H / KV)), the matching attention-out columns, FFN rows and columns
    [r F / tp, (r + 1) F / tp) (of gate and of up), and token ids [r n, (r + 1) n) with
    n = ceil(V / tp), zero rows past the vocabulary."""
    real = load_builtin(profile)
    head_dim = 2
    spec = dataclasses.replace(
        real, num_layers=1, head_dim=head_dim, hidden_size=real.num_heads * head_dim,
        ffn_hidden_size=2 * 8 * tp,
        rotary_dim=head_dim if real.rotary_dim else 0, max_positions=16,
    )  # fmt: skip
    weights = random_weights(spec, np.float64, seed=4)
    heads, kv_heads, ffn, vocab = (
        spec.num_heads,
        spec.num_kv_heads,
        spec.ffn_hidden_size,
        spec.vocab_size,
    )
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    layer = weights.layers[0]
    held_ids = []
    for rank in range(tp):
        part = shard(weights, spec, tp, rank)
        q_heads = [h for h in range(heads) if h // (heads // tp) == rank]
        kv = sorted({h // (heads // kv_heads) for h in q_heads})
        q_rows = [h * head_dim + d for h in q_heads for d in range(head_dim)]
        kv_rows = [g * head_dim + d for g in kv for d in range(head_dim)]
        qkv_rows = (
            q_rows + [q_width + i for i in kv_rows] + [q_width + kv_width + i for i in kv_rows]
        )
        np.testing.assert_array_equal(part.layers[0].qkv.weight, layer.qkv.weight[qkv_rows])
        np.testing.assert_array_equal(
            part.layers[0].attn_out.weight, layer.attn_out.weight[:, q_rows]
        )
        ffn_rows = list(range(rank * ffn // tp, (rank + 1) * ffn // tp))
        up_rows = ffn_rows + [ffn + i for i in ffn_rows] if spec.gated_ffn else ffn_rows
        np.testing.assert_array_equal(part.layers[0].ffn_up.weight, layer.ffn_up.weight[up_rows])
        np.testing.assert_array_equal(
            part.layers[0].ffn_down.weight, layer.ffn_down.weight[:, ffn_rows]
        )
        n = math.ceil(vocab / tp)
        ids = [i for i in range(rank * n, (rank + 1) * n) if i < vocab]
        held_ids += ids
        for got, full in (
            (part.embed, weights.embed),
            (part.lm_head.weight, weights.lm_head.weight),
        ):
            assert got.shape[0] == n
            np.testing.assert_array_equal(got[: len(ids)], full[ids])
            assert not got[len(ids) :].any()
    assert held_ids == list(range(vocab))
