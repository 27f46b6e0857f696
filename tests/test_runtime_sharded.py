"""Pre-sharded checkpoints: each rank reads back exactly its shard."""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.sharded import MANIFEST, load_sharded, rank_file, read_manifest, save_sharded
from ftbench.runtime.sharding import shard

LLAMA = spec_from_hf_config(
    {
        "model_type": "llama", "vocab_size": 101, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 32,
    }
)  # fmt: skip
GPT2 = spec_from_hf_config(
    {"model_type": "gpt2", "vocab_size": 101, "n_embd": 64, "n_layer": 2, "n_head": 4,
     "n_positions": 32}
)  # fmt: skip


def _assert_same(actual, expected):
    a, e = actual.named_tensors(), expected.named_tensors()
    assert a.keys() == e.keys()
    for name in e:
        assert a[name].dtype == e[name].dtype, name
        np.testing.assert_array_equal(a[name], e[name], err_msg=name)


@pytest.mark.parametrize("spec", [LLAMA, GPT2], ids=["llama-gqa", "gpt2-tied"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_every_rank_reads_back_its_shard(tmp_path, spec, tp, dtype):
    weights = random_weights(spec, dtype, seed=7)
    save_sharded(weights, spec, tp, tmp_path)
    assert read_manifest(tmp_path)["files"] == [rank_file(r, tp) for r in range(tp)]
    for rank in range(tp):
        stored_spec, loaded = load_sharded(tmp_path, rank, tp, spec)
        assert stored_spec == spec
        _assert_same(loaded, shard(weights, spec, tp, rank))
        assert loaded.tied_lm_head == spec.tie_word_embeddings


def test_a_tied_lm_head_is_stored_once_as_the_ranks_embedding_rows(tmp_path):
    from safetensors import safe_open

    save_sharded(random_weights(GPT2, "fp16"), GPT2, 4, tmp_path)
    with safe_open(str(tmp_path / rank_file(3, 4)), framework="np") as stored:
        names = stored.keys()
        assert "embed" in names and "lm_head.weight" not in names
        assert stored.get_slice("embed").get_shape() == [26, 64]  # 101 padded to 104, over 4


def test_a_checkpoint_of_the_replicated_embedding_schema_is_refused(tmp_path):
    save_sharded(random_weights(LLAMA, "fp16"), LLAMA, 2, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "schema": 1}))
    with pytest.raises(InvalidInputError, match="convert the checkpoint again"):
        load_sharded(tmp_path, 0, 2)


def test_a_checkpoint_for_another_tp_or_model_is_refused(tmp_path):
    save_sharded(random_weights(LLAMA, "fp16"), LLAMA, 2, tmp_path)
    with pytest.raises(InvalidInputError, match="sharded for tp=2, not tp=4"):
        load_sharded(tmp_path, 0, 4)
    with pytest.raises(InvalidInputError, match="not the given"):
        load_sharded(tmp_path, 0, 2, GPT2)
    with pytest.raises(InvalidInputError, match="rank must be in 0..1"):
        load_sharded(tmp_path, 2, 2)


def test_a_directory_without_manifest_is_not_a_sharded_checkpoint(tmp_path):
    with pytest.raises(InvalidInputError, match=MANIFEST):
        load_sharded(tmp_path, 0, 1)


def test_weights_that_do_not_match_the_spec_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="do not match"):
        save_sharded(random_weights(LLAMA, "fp16"), GPT2, 2, tmp_path)


def test_convert_command_shards_an_hf_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from typer.testing import CliRunner

    from ftbench import cli
    from ftbench.runtime.hf_checkpoint import load_hf_weights

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    result = CliRunner().invoke(
        cli.app, ["convert", str(tmp_path / "hf"), str(tmp_path / "tp2"), "--tp", "2"]
    )
    assert result.exit_code == 0, result.output
    spec = spec_from_hf_config(tmp_path / "hf" / "config.json")
    full = load_hf_weights(tmp_path / "hf", spec, "fp16")
    for rank in range(2):
        _, loaded = load_sharded(tmp_path / "tp2", rank, 2, spec)
        _assert_same(loaded, shard(full, spec, 2, rank))


def test_convert_renews_its_own_output_and_never_writes_into_the_checkpoint(tmp_path):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from typer.testing import CliRunner

    from ftbench import cli

    config = transformers.LlamaConfig(
        vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    checkpoint = {path.name: path.read_bytes() for path in (tmp_path / "hf").iterdir()}
    for tp in ("2", "4"):  # the second writes over the first's folder
        convert = ["convert", str(tmp_path / "hf"), str(tmp_path / "sharded"), "--tp", tp]
        assert CliRunner().invoke(cli.app, convert).exit_code == 0
    assert read_manifest(tmp_path / "sharded")["tp"] == 4
    assert sorted(path.name for path in (tmp_path / "sharded").iterdir()) == [
        MANIFEST,
        *(rank_file(rank, 4) for rank in range(4)),
    ]  # the tp 2 shards it renewed are gone
    refused = CliRunner().invoke(cli.app, ["convert", str(tmp_path / "hf"), str(tmp_path / "hf")])
    assert "is the checkpoint folder itself" in str(refused.exception)
    assert {path.name: path.read_bytes() for path in (tmp_path / "hf").iterdir()} == checkpoint


def test_convert_to_a_read_only_place_fails_before_the_checkpoint_is_read(tmp_path, monkeypatch):
    # Run as root, a chmod'ed folder stays writable and no filesystem can be mounted read-only
    # here: the refusal a read-only filesystem gives is simulated where the first file is made.
    from typer.testing import CliRunner

    from ftbench import cli, files
    from ftbench.runtime import hf_checkpoint

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 101, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32,
    }))  # fmt: skip

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the output folder was checked")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(hf_checkpoint, "load_hf_weights", never)
    result = CliRunner().invoke(cli.app, ["convert", str(tmp_path / "hf"), str(tmp_path / "out")])
    assert isinstance(result.exception, InvalidInputError), result.output
    assert str(result.exception) == f"cannot write in {tmp_path / 'out'}: Read-only file system"


def test_a_failed_shard_write_is_one_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.numpy
    from safetensors import SafetensorError

    def disk_full(arrays, path):
        Path(path).write_bytes(b"half a shard")
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(InvalidInputError) as refused:
        save_sharded(random_weights(LLAMA, "fp16"), LLAMA, 2, tmp_path)
    assert str(refused.value) == (
        f"cannot write {tmp_path / rank_file(0, 2)}: Error while serializing: I/O error: No space "
        "left on device"
    )
    assert list(tmp_path.iterdir()) == []  # no partial shard, and no manifest


@pytest.mark.parametrize("tp", [0, -1, True, 1.0])
def test_a_tensor_parallel_size_below_one_or_not_an_integer_is_refused(tmp_path, tp):
    with pytest.raises(InvalidInputError, match=f"--tp must be at least 1, got {tp!r}"):
        save_sharded(random_weights(LLAMA, "fp16"), LLAMA, tp, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_rank_file_is_an_error_naming_it(tmp_path):
    save_sharded(random_weights(LLAMA, "fp16"), LLAMA, 2, tmp_path)
    (tmp_path / rank_file(1, 2)).write_bytes(b"\xff" * 16)
    with pytest.raises(InvalidInputError, match=f"^cannot read {tmp_path / rank_file(1, 2)} as "):
        load_sharded(tmp_path, 1, 2, LLAMA)
