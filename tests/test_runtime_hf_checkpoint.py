"""Hugging Face checkpoints as ftbench weights: name maps, state dicts, safetensors files."""

import json

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.hf_checkpoint import from_state_dict, load_hf_weights
from ftbench.runtime.weights import check_shapes
from tiny_models import GPT2, LLAMA, assert_same_weights, spec_of


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


# --- name maps -------------------------------------------------------------------------------


def test_gpt2_conv1d_weights_are_transposed_and_the_lm_head_is_the_embedding():
    spec = spec_of(GPT2)
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
    spec = spec_of(LLAMA)
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


def test_base_model_checkpoints_without_prefix_and_mask_buffers_load():
    """The hub's `gpt2` stores GPT2Model names ("h.0.attn.c_attn.weight") and mask buffers."""
    spec = spec_of(GPT2)
    state = _gpt2_state_dict(spec)
    bare = {name.removeprefix("transformer."): value for name, value in state.items()}
    bare["h.0.attn.bias"] = np.ones((1, 1, 32, 32))
    bare["h.0.attn.masked_bias"] = np.array(-1e4)
    assert_same_weights(from_state_dict(bare, spec), from_state_dict(state, spec))


def test_tied_checkpoints_may_store_the_lm_head_too():
    spec = spec_of(GPT2)
    state = _gpt2_state_dict(spec)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    assert from_state_dict(state, spec).tied_lm_head


def test_missing_unexpected_and_misshaped_tensors_are_all_named():
    spec = spec_of(LLAMA)
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
    spec = spec_of(LLAMA)
    with pytest.raises(InvalidInputError, match="missing tensors"):
        from_state_dict(_gpt2_state_dict(spec_of(GPT2)), spec)


def test_families_without_a_name_map_are_refused():
    megatron = ModelSpec.from_dict({**spec_of(GPT2).to_dict(), "family": "megatron-gpt"})
    with pytest.raises(InvalidInputError, match="no Hugging Face name map for family megatron"):
        from_state_dict({}, megatron)


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
    assert_same_weights(loaded, from_state_dict(model.state_dict(), spec))
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
    assert_same_weights(loaded, from_state_dict(model.state_dict(), spec, np.float16))


def test_bf16_checkpoint_is_widened_exactly(tmp_path):
    model, spec = _hf_gpt2("bfloat16")
    model.save_pretrained(tmp_path)
    loaded = load_hf_weights(tmp_path, spec, "fp32")
    expected = from_state_dict({k: v.float() for k, v in model.state_dict().items()}, spec)
    assert_same_weights(loaded, expected)


def test_checkpoint_mismatch_names_the_directory(tmp_path):
    model, _ = _hf_gpt2()
    model.save_pretrained(tmp_path)
    with pytest.raises(InvalidInputError, match=f"{tmp_path} does not match"):
        load_hf_weights(tmp_path, spec_of(GPT2, n_layer=3), np.float32)


def test_directory_without_safetensors_is_an_error(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="no \\*.safetensors files"):
        load_hf_weights(tmp_path, spec_of(GPT2), np.float32)


def test_index_naming_a_missing_shard_is_an_error(tmp_path):
    index = {"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInputError, match="named by the index but missing"):
        load_hf_weights(tmp_path, spec_of(GPT2), np.float32)


@pytest.mark.parametrize(
    "content", [b"", b"\x08" + bytes(7) + b"{}", b"\xff" * 16], ids=["empty", "short", "garbage"]
)
def test_a_corrupt_safetensors_file_is_an_error_naming_it(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(InvalidInputError, match=f"^cannot read {tmp_path}/model.safetensors as "):
        load_hf_weights(tmp_path, spec_of(GPT2), np.float32)


# --- FP8 checkpoints -------------------------------------------------------------------------

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _fp8_llama(spec: ModelSpec, per_tensor: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")):
    """A LLaMA state dict whose projections are E4M3 codes with `weight_scale`s (one per tensor
    for `per_tensor`, one per output row, stored [rows, 1], for the others) and a static
    `input_scale`; and the float64 weight each projection stands for."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    state = {name: value.astype(np.float32) for name, value in _llama_state_dict(spec).items()}
    meant = {}
    for name in list(state):
        projection = name.rsplit(".", 2)[-2]
        if projection not in _PROJECTIONS:
            continue
        weight = state.pop(name)
        absmax = np.abs(weight).max() if projection in per_tensor else np.abs(weight).max(1)
        scale = (absmax / 448).astype(np.float32)
        scale = scale if projection in per_tensor else scale[:, None]
        codes = (weight / scale).astype(ml_dtypes.float8_e4m3fn)
        base = name.removesuffix(".weight")
        state[name] = codes
        state[f"{base}.weight_scale"] = np.asarray(scale, np.float32)
        state[f"{base}.input_scale"] = np.asarray(0.5, np.float32)
        meant[name] = codes.astype(np.float64) * scale.astype(np.float64)
    return state, meant


def _save_torch(state, path):
    """`state` as a safetensors file written by torch (E4M3 as torch.float8_e4m3fn)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    def tensor(value):
        if str(value.dtype) == "float8_e4m3fn":
            return torch.from_numpy(value.view(np.uint8).copy()).view(torch.float8_e4m3fn)
        return torch.from_numpy(np.ascontiguousarray(value))

    save_file({name: tensor(value) for name, value in state.items()}, str(path))


@pytest.mark.parametrize("source", ["safetensors", "state-dict"])
def test_an_fp8_checkpoint_loads_as_8_bit_linears_with_a_scale_per_output_channel(tmp_path, source):
    spec = spec_of(LLAMA)
    state, meant = _fp8_llama(spec)
    if source == "safetensors":
        _save_torch(state, tmp_path / "model.safetensors")
        weights = load_hf_weights(tmp_path, spec, "fp16")
    else:
        weights = from_state_dict(state, spec, "fp16")
    check_shapes(weights, spec)
    for index, layer in enumerate(weights.layers):
        prefix = f"model.layers.{index}."
        stacks = {
            "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "attn_out": ("self_attn.o_proj",),
            "ffn_up": ("mlp.gate_proj", "mlp.up_proj"),
            "ffn_down": ("mlp.down_proj",),
        }
        for part, names in stacks.items():
            linear = getattr(layer, part)
            assert str(linear.weight.dtype) == "float8_e4m3fn"
            assert linear.scale.dtype == np.float32
            expected = np.concatenate([meant[f"{prefix}{name}.weight"] for name in names])
            np.testing.assert_array_equal(linear.dequantized(), expected, err_msg=part)
        assert layer.ln1.weight.dtype == np.float16
    assert weights.embed.dtype == np.float16 and weights.lm_head.scale is None


def test_an_fp8_checkpoint_missing_a_scale_or_quantising_the_lm_head_is_refused(tmp_path):
    spec = spec_of(LLAMA)
    state, _ = _fp8_llama(spec)
    scale = "model.layers.1.self_attn.k_proj.weight_scale"
    without = {name: value for name, value in state.items() if name != scale}
    with pytest.raises(InvalidInputError, match=f"missing tensors: {scale}"):
        from_state_dict(without, spec, "fp16")
    _save_torch(without, tmp_path / "model.safetensors")
    with pytest.raises(InvalidInputError, match=f"missing tensors: {scale}"):
        load_hf_weights(tmp_path, spec, "fp16")
    head = {**state, "lm_head.weight_scale": np.asarray(1.0, np.float32)}
    with pytest.raises(InvalidInputError, match="lm_head.weight is stored quantised"):
        from_state_dict(head, spec, "fp16")
    wrong = {**state, scale: np.ones(3, np.float32)}
    with pytest.raises(InvalidInputError, match=f"{scale} \\(expected \\[\\], \\[1\\]"):
        from_state_dict(wrong, spec, "fp16")
