"""A built-in image dataset: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), no download."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from armm import Tokenizer
from armm.datasource import caption_part, in_layout_order, label_part, modality_part
from armm_image.base import ImageTokenizer


def load_digits_images(
    size: int = 8, split: str = "train", seed: int = 0, test_fraction: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as uint8 images [N, 1, size, size] (grey levels 0..16 scaled to 0..255) and int64 labels [N].

    ``size`` > 8 upsamples with bicubic interpolation. ``split`` is "train" or "test": a fixed
    ``test_fraction`` of the digits, drawn by a permutation seeded with ``seed``, is held out.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    digits = load_digits()
    images = torch.from_numpy(digits.images).float()[:, None] * (255 / 16)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    num_test = round(len(images) * test_fraction)
    chosen = order[:num_test] if split == "test" else order[num_test:]
    return images[chosen], torch.from_numpy(digits.target)[chosen]


def digits_for(tokenizer: ImageTokenizer) -> tuple[list[torch.Tensor], list[int]]:
    """The train split at the tokenizer's size and channels, with its labels: a square size is upsampled
    bicubically by ``load_digits_images``, any other shape is converted from 8x8 by ``tokenizer.prepare``."""
    square = tokenizer.height if tokenizer.height == tokenizer.width else 8
    images, labels = load_digits_images(size=square, split="train")
    return [tokenizer.prepare(image) for image in images], labels.tolist()


def sklearn_digits(tokenizer: ImageTokenizer) -> list[torch.Tensor]:
    """Dataset ``sklearn-digits``: the 1,438 train-split digits as images (uint8 [C, H, W])."""
    return digits_for(tokenizer)[0]


def sklearn_digits_labelled(tokenizer: ImageTokenizer) -> list[tuple[int, torch.Tensor]]:
    """Dataset ``sklearn-digits-labelled``: the same digits as ``(label, image)`` pairs, label 0..9."""
    images, labels = digits_for(tokenizer)
    return list(zip(labels, images))


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTIONS = ("a handwritten {word}", "the digit {digit}", "a {word}", "number {word}", "{digit}",
            "draw a {word}, please", "the number {digit}", "{word}")


def caption(label: int, index: int) -> str:
    """One of several phrasings of ``label`` ("a handwritten seven", "the digit 7", …), chosen by ``index``."""
    template = random.Random(index).choice(CAPTIONS)
    return template.format(word=DIGIT_WORDS[label], digit=label)


def sklearn_digits_captioned(tokenizer: Tokenizer) -> list[list[tuple[str, Any]]]:
    """Dataset ``sklearn-digits-captioned``: for a mixed layout with a text part (its ``prompt_part``) and an
    image part, each train digit as ``[(text, "a handwritten seven"), (image, the digit)]`` in layout order."""
    image = modality_part(tokenizer, "image", "dataset 'sklearn-digits-captioned'")
    text = caption_part(tokenizer, [image])
    if text != tokenizer.prompt_part:
        raise ValueError("dataset 'sklearn-digits-captioned' needs tokenizer: mixed with a text part as its prompt_part "
                         "(prompts are captions) and an image part")
    digits, labels = digits_for(tokenizer.parts[image])
    return [in_layout_order(tokenizer, {text: caption(label, index), image: digit})
            for index, (label, digit) in enumerate(zip(labels, digits))]


def sklearn_digits_named(tokenizer: Tokenizer) -> list[list[tuple[str, Any]]]:
    """Dataset ``sklearn-digits-named``: for a mixed layout with a ``classes`` part and an image part, each train digit
    labelled by its class's name, in layout order: ``[(label, "seven"), (image, the digit)]`` — what a labelled folder
    of the digits (``seven/0042.png``) reads as."""
    image = modality_part(tokenizer, "image", "dataset 'sklearn-digits-named'")
    label = label_part(tokenizer)
    digits, labels = digits_for(tokenizer.parts[image])
    return [in_layout_order(tokenizer, {label: DIGIT_WORDS[number], image: digit})
            for number, digit in zip(labels, digits)]


def write_digit_folder(root: str | Path, split: str = "train", count: int | None = None,
                       by_class: bool = True) -> list[tuple[Path, int]]:
    """The first ``count`` (all when None) 8x8 digits of ``split`` as 8-bit grey PNGs: ``root/seven/0042.png``, a
    labelled folder (torchvision's ImageFolder convention) as ``recipes/image_folder.yaml`` reads, or flat
    ``root/0042.png``; → each file with its label."""
    from PIL import Image

    images, labels = load_digits_images(8, split)
    written = []
    for index, (image, label) in enumerate(zip(images[:count], labels[:count].tolist())):
        path = Path(root, DIGIT_WORDS[label] if by_class else "", f"{index:04d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(path)
        written.append((path, label))
    return written
