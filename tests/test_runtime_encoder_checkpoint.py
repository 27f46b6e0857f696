"""HF BERT, RoBERTa and T5 checkpoints as ftbench encoder weights: the name maps, safetensors
files and the one error that lists every problem."""

import dataclasses

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.runtime.encoder_checkpoint import encoder_from_state_dict, load_hf_encoder_weights
from ftbench.runtime.encoder_weights import (
    EncoderWeights,
    T5Weights,
    check_encoder_shapes,
    encoder_weight_shapes,
)
from tiny_models import assert_same_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BERT = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 24,
    "max_position_embeddings": 20,
}
T5 = {
    "vocab_size": 50,
    "d_model": 16,
    "d_kv": 4,
    "d_ff": 24,
    "num_layers": 2,
    "num_heads": 3,
    "num_decoder_layers": 1,
    "relative_attention_num_buckets": 8,
}


def bert_model(cls=None, **overrides):
    torch.manual_seed(0)
    return (cls or transformers.BertModel)(transformers.BertConfig(**BERT, **overrides)).eval()


def roberta_model(cls=None, **overrides):
    torch.manual_seed(0)
    config = transformers.RobertaConfig(**BERT, type_vocab_size=1, **overrides)
    return (cls or transformers.RobertaModel)(config).eval()


def t5_model(**overrides):
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(transformers.T5Config(**T5, **overrides))


def spec_of(model):
    return spec_from_hf_config(model.config.to_dict(), name="tiny")


def test_bert_tensors_map_to_the_fused_layout():
    model = bert_model()
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    weights = encoder_from_state_dict(state, spec_of(model))
    assert isinstance(weights, EncoderWeights) and weights.dtype == np.float32
    layer = "encoder.layer.1.attention.self."
    np.testing.assert_array_equal(
        weights.layers[1].qkv.weight,
        np.concatenate([state[f"{layer}{p}.weight"] for p in ("query", "key", "value")]),
    )
    np.testing.assert_array_equal(
        weights.layers[1].ln1.bias, state["encoder.layer.1.attention.output.LayerNorm.bias"]
    )
    np.testing.assert_array_equal(weights.pooler.weight, state["pooler.dense.weight"])
    assert set(weights.named_tensors()) == set(encoder_weight_shapes(spec_of(model)))


def test_a_task_model_checkpoint_loads_its_bert_and_skips_its_head():
    model = bert_model(transformers.BertForSequenceClassification)
    assert any(name.startswith("classifier.") for name in model.state_dict())
    weights = encoder_from_state_dict(model.state_dict(), spec_of(model))
    np.testing.assert_array_equal(
        weights.embed, model.bert.embeddings.word_embeddings.weight.detach()
    )


@pytest.mark.parametrize("cls", ["RobertaForMaskedLM", "RobertaForTokenClassification"])
def test_a_roberta_task_checkpoint_loads_its_roberta_and_skips_its_head(tmp_path, cls):
    model = roberta_model(getattr(transformers, cls))
    model.save_pretrained(tmp_path)
    # HF builds RoBERTa task models without a pooler
    spec = dataclasses.replace(spec_from_hf_config(tmp_path / "config.json"), pooler=False)
    weights = load_hf_encoder_weights(tmp_path, spec, "fp32")
    expected = encoder_from_state_dict(
        {f"roberta.{name}": value for name, value in model.roberta.state_dict().items()}, spec
    )
    assert_same_weights(weights, expected)
    assert weights.token_types.shape == (1, 16)


def test_sequence_classification_heads_are_read_as_pooler_and_classifier(tmp_path):
    bert = bert_model(transformers.BertForSequenceClassification, num_labels=3)
    roberta = roberta_model(transformers.RobertaForSequenceClassification, num_labels=3)
    heads = {
        "bert": (bert, "bert.pooler.dense", "classifier"),
        "roberta": (roberta, "classifier.dense", "classifier.out_proj"),
    }
    for name, (model, pooler, classifier) in heads.items():
        model.save_pretrained(tmp_path / name)
        spec = spec_from_hf_config(tmp_path / name / "config.json")
        assert spec.num_labels == 3
        assert spec.parameter_count() == model.num_parameters()
        weights = load_hf_encoder_weights(tmp_path / name, spec, "fp32")
        state = model.state_dict()
        for module, linear in ((pooler, weights.pooler), (classifier, weights.classifier)):
            np.testing.assert_array_equal(linear.weight, state[f"{module}.weight"], err_msg=name)
            np.testing.assert_array_equal(linear.bias, state[f"{module}.bias"], err_msg=name)


def test_gated_t5_stacks_wi_0_and_wi_1_and_cross_k_v():
    model = t5_model(feed_forward_proj="gated-gelu")
    state = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    spec = spec_of(model)
    weights = encoder_from_state_dict(state, spec, np.float64)
    assert isinstance(weights, T5Weights) and weights.dtype == np.float64
    ffn = "decoder.block.0.layer.2.DenseReluDense."
    np.testing.assert_array_equal(
        weights.decoder.layers[0].ffn_up.weight,
        np.concatenate([state[f"{ffn}wi_0.weight"], state[f"{ffn}wi_1.weight"]]),
    )
    cross = "decoder.block.0.layer.1.EncDecAttention."
    np.testing.assert_array_equal(
        weights.decoder.layers[0].cross_kv.weight,
        np.concatenate([state[f"{cross}k.weight"], state[f"{cross}v.weight"]]),
    )
    np.testing.assert_array_equal(
        weights.encoder.relative_bias,
        state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
    )
    assert weights.encoder.relative_bias.shape == (8, 3)
    check_encoder_shapes(weights, spec)


def test_tied_t5_head_is_the_shared_embedding():
    model = t5_model()  # T5 v1.0: ReLU FFN, tied head with the d_model ** -0.5 rescale
    spec = spec_of(model)
    assert spec.tie_word_embeddings
    weights = encoder_from_state_dict(model.state_dict(), spec)
    assert weights.tied_lm_head
    assert weights.astype(np.float64).tied_lm_head


def test_safetensors_checkpoints_load_as_their_state_dict(tmp_path):
    for model in (bert_model(), roberta_model(), t5_model(feed_forward_proj="gated-gelu")):
        directory = tmp_path / type(model).__name__
        model.save_pretrained(directory)
        spec = spec_from_hf_config(directory / "config.json")
        loaded = load_hf_encoder_weights(directory, spec, "fp64")
        expected = encoder_from_state_dict(model.state_dict(), spec, np.float64)
        assert loaded.named_tensors().keys() == expected.named_tensors().keys()
        for name, array in expected.named_tensors().items():
            np.testing.assert_array_equal(loaded.named_tensors()[name], array, err_msg=name)


def test_every_problem_is_named_in_one_error():
    model = bert_model()
    state = dict(model.state_dict())
    del state["encoder.layer.1.attention.self.key.weight"]
    state["encoder.layer.0.output.dense.bias"] = torch.zeros(7)
    state["encoder.layer.2.output.dense.bias"] = torch.zeros(16)
    with pytest.raises(InvalidInputError) as error:
        encoder_from_state_dict(state, spec_of(model))
    message = str(error.value)
    assert "missing tensors: encoder.layer.1.attention.self.key.weight" in message
    assert (
        "mis-shaped tensors: encoder.layer.0.output.dense.bias (expected [16], got [7])" in message
    )
    assert "unexpected tensors: encoder.layer.2.output.dense.bias" in message


def test_decoder_specs_and_wrong_weights_are_refused():
    gpt2 = spec_from_hf_config(
        {
            "model_type": "gpt2",
            "vocab_size": 50,
            "n_embd": 16,
            "n_layer": 1,
            "n_head": 2,
            "n_positions": 8,
        }
    )
    with pytest.raises(InvalidInputError, match="is a decoder model"):
        encoder_weight_shapes(gpt2)
    model = bert_model()
    weights = encoder_from_state_dict(model.state_dict(), spec_of(model))
    with pytest.raises(InvalidInputError, match="needs T5Weights"):
        check_encoder_shapes(weights, spec_of(t5_model()))


def test_a_transformers_5_t5_v1_1_config_is_untied_and_its_head_is_a_copy_of_shared(tmp_path):
    # transformers 5 writes tie_word_embeddings: true for every T5 and says v1.1 (no rescale)
    # with scale_decoder_outputs: false; its checkpoints store no lm_head.
    model = t5_model(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model.save_pretrained(tmp_path)
    spec = spec_from_hf_config(tmp_path / "config.json")
    assert not spec.tie_word_embeddings
    weights = load_hf_encoder_weights(tmp_path, spec, "fp32")
    assert not weights.tied_lm_head
    np.testing.assert_array_equal(weights.lm_head.weight, weights.embed)
