"""Model directories: safetensors round trip, atomic writes, and clear errors for broken directories."""

import json

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
