"""Model directories: safetensors round trip, atomic writes, and clear errors for broken directories."""

import json
import os
import stat

import pytest
import torch

import armm
from tests.conftest import tiny_model


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_a_saved_model_reloads_with_identical_logits_and_tokenizer(preset, tmp_path):
    model = tiny_model(preset, vocab_size=259)
    armm.save_model(tmp_path / "m", model, armm.ByteTokenizer())
    loaded, tokenizer = armm.load_model(tmp_path / "m")
    ids = torch.randint(0, 259, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert isinstance(tokenizer, armm.ByteTokenizer)
    assert loaded.config == model.config and not loaded.training
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_the_directory_holds_no_pickle_and_no_temporary_files(tmp_path):
    armm.save_model(tmp_path, tiny_model(), armm.ByteTokenizer())
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert names == ["config.json", "model.safetensors", "tokenizer", "tokenizer/armm_tokenizer.json",
                     "tokenizer/bytes.json"]


def test_saving_again_replaces_the_weights(tmp_path):
    first, second = tiny_model(), tiny_model()
    armm.save_model(tmp_path, first)
    armm.save_model(tmp_path, second)
    loaded, tokenizer = armm.load_model(tmp_path)
    assert tokenizer is None
    torch.testing.assert_close(loaded.tok_emb.weight, second.tok_emb.weight)


def test_a_failed_save_keeps_the_previous_good_weights(tmp_path, monkeypatch):
    model = tiny_model()
    armm.save_model(tmp_path, model)
    good = (tmp_path / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("armm.checkpoint.save_safetensors_from", crash)
    with pytest.raises(OSError, match="disk full"):
        armm.save_model(tmp_path, tiny_model())
    assert (tmp_path / "model.safetensors").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_missing_directory_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        armm.load_model(tmp_path / "nope")
    armm.save_model(tmp_path, tiny_model())
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        armm.load_model(tmp_path)


def test_corrupt_weights_are_reported_as_such(tmp_path):
    armm.save_model(tmp_path, tiny_model())
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04 this is a pickle, not safetensors")
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        armm.load_model(tmp_path)


def test_weights_that_do_not_fit_the_config_are_reported(tmp_path):
    armm.save_model(tmp_path, tiny_model())
    config = json.loads((tmp_path / "config.json").read_text())
    config["d_model"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match .*config.json"):
        armm.load_model(tmp_path)


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    armm.save_model(tmp_path, tiny_model(vocab_size=100), armm.ByteTokenizer())
    with pytest.raises(ValueError, match="has 259 ids but the model's vocab_size is 100"):
        armm.load_model(tmp_path)


def test_saved_files_are_world_readable_like_the_tokenizers(tmp_path):
    old = os.umask(0o022)
    try:
        armm.save_model(tmp_path, tiny_model(), armm.ByteTokenizer())
    finally:
        os.umask(old)
    modes = {path.relative_to(tmp_path).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in tmp_path.rglob("*") if path.is_file()}
    assert set(modes.values()) == {0o644}, modes


def changed_config(directory, preset: str = "gpt2-tiny", **changes):
    """A saved ``preset`` model in ``directory`` whose config.json then gets ``changes``."""
    armm.save_model(directory, tiny_model(preset, vocab_size=259))
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))
    return directory


@pytest.fixture
def built_on(monkeypatch) -> list[str]:
    """The default device each Transformer was built under, while a test loads a model."""
    devices = []

    def recording(config):
        devices.append(str(torch.get_default_device()))
        return armm.Transformer(config)

    monkeypatch.setattr("armm.checkpoint.Transformer", recording)
    return devices


@pytest.mark.parametrize("preset, change, says", [
    ("gpt2-tiny", dict(n_layer=3), "n_layer=3 under the config but 2 layers in the weights"),
    ("gpt2-tiny", dict(n_layer=1), "n_layer=1 under the config but 2 layers in the weights"),
    ("gpt2-tiny", dict(d_model=96), r"tensor blocks.0.attn.proj.bias has shape \[64\] in the weights but \[96\] "
                                    r"under the config \(d_model=96\)"),
    ("gpt2-tiny", dict(vocab_size=100000), r"tensor lm_head.weight has shape \[259, 64\] in the weights but "
                                           r"\[100000, 64\] under the config \(vocab_size=100000\)"),
    ("gpt2-tiny", dict(max_seq_len=4096), r"tensor pos_emb.weight has shape \[128, 64\] in the weights but "
                                          r"\[4096, 64\] under the config \(max_seq_len=4096\)"),
    ("llama-tiny", dict(tie_embeddings=True), "the weights hold separate tensors tok_emb.weight and lm_head.weight "
                                              r"where this config has one \(tied\)"),
    ("llama-tiny", dict(position="learned"), "the config has a tensor pos_emb.weight that the weights lack"),
])
def test_config_sizes_are_checked_against_the_weights_header_before_any_tensor_is_built(
        tmp_path, built_on, preset, change, says):
    directory = changed_config(tmp_path / "m", preset, **change)
    with pytest.raises(ValueError, match=rf"model.safetensors does not match .*config.json: {says}.*; the weights and "
                                         r"the config come from different models: use the config.json saved with"):
        armm.load_model(directory)
    assert set(built_on) <= {"meta"}


def test_a_model_larger_than_the_memory_available_is_refused_before_it_is_built(tmp_path, built_on, monkeypatch):
    """RoPE tables have no weights to check against: max_seq_len shows only in memory."""
    directory = changed_config(tmp_path / "m", "llama-tiny", max_seq_len=2**20)  # 2 x 64 MiB of tables
    monkeypatch.setattr("armm.checkpoint.available_memory", lambda: 2**27)
    with pytest.raises(ValueError, match=r"needs 257.\d MiB of memory to load but 128.0 MiB is available; its "
                                         r"largest tensor, rope_\w+, takes 64.0 MiB \(max_seq_len=1048576\): check "
                                         r"the sizes in config.json, or free memory"):
        armm.load_model(directory)
    assert built_on == ["meta"]
    monkeypatch.setattr("armm.checkpoint.available_memory", lambda: None)  # where memory cannot be read: no check
    assert armm.load_model(changed_config(tmp_path / "small", "llama-tiny"))[0].config.max_seq_len == 128


def test_available_memory_is_read_from_the_system():
    assert 0 < armm.checkpoint.available_memory() < 2**50


def test_a_header_whose_byte_counts_disagree_with_its_shapes_is_corrupt(tmp_path):
    armm.save_model(tmp_path, tiny_model())
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    name = next(key for key in header if key != "__metadata__")
    header[name]["shape"] = [dim * 2 for dim in header[name]["shape"]]  # its bytes stay those of the old shape
    encoded = json.dumps(header).encode().ljust(length)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + length:])
    with pytest.raises(ValueError, match="model.safetensors is corrupt or not a safetensors file"):
        armm.load_model(tmp_path)
