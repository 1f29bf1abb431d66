"""The image plugin's built-in datasets (sklearn-digits, sklearn-digits-labelled) and image-vq as a tokenizer that
training fits first (needs_fit, fit_steps)."""

import pytest
import torch

import armm
from armm_image import PixelTokenizer, VQTokenizer, load_digits_images
from armm_image import vq_training

VQ_OPTIONS = dict(size=8, channels=1, downsample=2, codebook_size=8, code_dim=4, hidden=8, res_blocks=1)


def dataset(name: str):
    return armm.get_plugins().datasets.get(name)


def test_sklearn_digits_are_the_train_split_at_the_tokenizer_size():
    images = dataset("sklearn-digits")(PixelTokenizer(size=8, channels=1))
    expected, _ = load_digits_images(8, "train")
    assert len(images) == 1438 and torch.equal(torch.stack(images), expected)
    upscaled = dataset("sklearn-digits")(PixelTokenizer(size=16, channels=3))
    assert torch.equal(torch.stack(upscaled), load_digits_images(16, "train")[0].expand(-1, 3, -1, -1))


def test_a_rectangular_tokenizer_gets_digits_converted_from_8x8():
    tokenizer = PixelTokenizer(size=(8, 12), channels=1)
    images = dataset("sklearn-digits")(tokenizer)
    first = load_digits_images(8, "train")[0][0]
    assert images[0].shape == (1, 8, 12) and torch.equal(images[0], tokenizer.prepare(first))


def test_labelled_digits_pair_each_image_with_its_label():
    tokenizer = PixelTokenizer(size=8, channels=1)
    pairs = dataset("sklearn-digits-labelled")(tokenizer)
    images, labels = load_digits_images(8, "train")
    assert [label for label, _ in pairs] == labels.tolist()
    assert all(type(label) is int for label, _ in pairs)
    assert torch.equal(torch.stack([image for _, image in pairs]), images)


def test_a_new_vq_tokenizer_needs_fitting_and_a_fitted_or_loaded_one_does_not(tmp_path):
    images = dataset("sklearn-digits")(VQTokenizer(**VQ_OPTIONS))[:16]
    tokenizer = VQTokenizer(**VQ_OPTIONS, fit_steps=1)
    assert tokenizer.needs_fit
    tokenizer.fit(images, batch_size=8)
    assert not tokenizer.needs_fit
    tokenizer.save(tmp_path)
    loaded = VQTokenizer.load(tmp_path)
    assert not loaded.needs_fit and loaded.config["fit_steps"] == 1


def test_fit_trains_for_fit_steps_unless_given_steps_or_epochs(monkeypatch):
    schedules = []
    monkeypatch.setattr(vq_training, "train_vqvae", lambda model, images, **kw: schedules.append(
        (kw["steps"], kw["epochs"])))
    images = [torch.zeros(1, 8, 8, dtype=torch.uint8)] * 4
    tokenizer = VQTokenizer(**VQ_OPTIONS, fit_steps=7)
    tokenizer.fit(images)
    tokenizer.fit(images, steps=3)
    tokenizer.fit(images, epochs=2)
    assert schedules == [(7, None), (3, None), (None, 2)]
    with pytest.raises(ValueError, match="fit_steps must be >= 1"):
        VQTokenizer(**VQ_OPTIONS, fit_steps=0)
