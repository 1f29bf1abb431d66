"""ImageGPT/PixelCNN-style tokens: one per pixel channel value, or one per pixel from a k-means colour palette;
optionally one class token per label for class-conditional generation."""

from __future__ import annotations

import json
import operator
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from armm.files import read_json_object
from armm_image.base import ImageTokenizer

CONFIG_FILE = "image_pixels.json"


def fit_palette(pixels: torch.Tensor, palette_size: int, *, max_pixels: int = 100_000, seed: int = 0) -> torch.Tensor:
    """k-means (scikit-learn, seeded) over uint8 pixels [N, C] → a uint8 palette [palette_size, C].

    At most ``max_pixels`` pixels, drawn with ``seed``, are clustered; centres are rounded to uint8.
    """
    from sklearn.cluster import KMeans

    if len(pixels) > max_pixels:
        pixels = pixels[torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed))[:max_pixels]]
    kmeans = KMeans(n_clusters=palette_size, n_init=4, random_state=seed).fit(pixels.double().numpy())
    return torch.from_numpy(kmeans.cluster_centers_).round().clamp(0, 255).to(torch.uint8)


def nearest_colour(pixels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [N, C] → index of the palette colour at the smallest exact squared distance (first on ties)."""
    distances = (pixels[:, None, :].int() - palette[None, :, :].int()).pow(2).sum(-1)
    return distances.argmin(dim=1)


class PixelTokenizer(ImageTokenizer):
    """Pixels in raster order: row by row, left to right, the channels of each pixel together (R, G, B).

    With ``bits`` = 8 every channel value 0..255 is its own id (lossless; ``unit`` "dim"); fewer bits
    keep ``value >> (8 - bits)`` and decode to the centre of that bin. With ``palette_size`` = K there is
    one id per pixel: the nearest of K colours that ``fit(images)`` finds by k-means (``unit`` "pixel").

    With ``num_classes`` = C the vocabulary gains C class tokens after bos, eos and pad (class ``c`` is id
    ``num_codes + 3 + c``). A labelled sample ``(label, image)`` becomes the training document bos, class
    token, pixel ids, eos; the prompt ``"7"`` becomes class 7's token; ``decode`` skips class tokens.

    With ``augment_shift`` = S, training shifts each image sideways by a random whole number of pixels in -S .. S
    (``augment``), repeating the edge column into the gap (the background of an image on a plain background).
    """

    name = "image-pixels"

    def __init__(
        self,
        size: int | Sequence[int] = 32,
        channels: int = 3,
        bits: int = 8,
        palette_size: int | None = None,
        num_classes: int | None = None,
        augment_shift: int = 0,
    ) -> None:
        super().__init__(size, channels)
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        if palette_size is not None and (palette_size < 1 or bits != 8):
            raise ValueError(
                f"palette_size must be >= 1 and used with bits=8, got palette_size={palette_size}, bits={bits}"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (or None for no classes), got {num_classes}")
        if isinstance(augment_shift, bool) or not isinstance(augment_shift, int) or not 0 <= augment_shift < self.width:
            raise ValueError(f"augment_shift must be a whole number of pixels in 0..{self.width - 1} (0: off), "
                             f"got {augment_shift!r}")
        self.bits = bits
        self.augment_shift = augment_shift
        self.palette_size = palette_size
        self.num_classes = num_classes
        self.palette: torch.Tensor | None = None  # uint8 [palette_size, channels] once fitted

    @property
    def unit(self) -> str:
        return "dim" if self.palette_size is None else "pixel"

    @property
    def num_codes(self) -> int:
        return 2**self.bits if self.palette_size is None else self.palette_size

    @property
    def sequence_length(self) -> int:
        pixels = self.height * self.width
        return pixels * self.channels if self.palette_size is None else pixels

    @property
    def vocab_size(self) -> int:
        return super().vocab_size + (self.num_classes or 0)

    @property
    def needs_fit(self) -> bool:
        """True while a palette tokenizer has no palette (fitted or loaded)."""
        return self.palette_size is not None and self.palette is None

    # --- classes -------------------------------------------------------------------------------------
    def class_id(self, label: Any) -> int:
        """The token of class ``label``, an integer (int, numpy or 0-d tensor) in ``0 .. num_classes - 1``."""
        if self.num_classes is None:
            raise ValueError(f"tokenizer {self.name!r} has no classes; construct it with num_classes=N to use labels")
        try:
            index = operator.index(label)
        except TypeError:
            index = None
        if isinstance(label, bool) or index is None or not 0 <= index < self.num_classes:
            raise ValueError(f"class label {label!r} must be an integer in 0..{self.num_classes - 1}")
        return self.num_codes + len(self.special_tokens) + index

    @staticmethod
    def split_label(sample: Any) -> tuple[Any, torch.Tensor]:
        """A labelled sample ``(label, image)`` → ``(label, image)``; an image alone → ``(None, image)``."""
        if isinstance(sample, tuple):
            if len(sample) != 2:
                raise ValueError(f"a labelled image sample is a pair (label, image), got a tuple of {len(sample)}")
            return sample
        return None, sample

    def encode_document(self, sample: Any) -> list[int]:
        """bos, the class token of a labelled sample ``(label, image)`` (none for an image alone), pixel ids, eos."""
        label, image = self.split_label(sample)
        condition = [] if label is None else [self.class_id(label)]
        return [self.bos_id, *condition, *self.encode(image), self.eos_id]

    def encode_prompt(self, prompt: str) -> list[int]:
        """``""`` → no ids (an unconditional image); a class label such as ``"7"`` → that class's token."""
        if not prompt:
            return []
        if self.num_classes is None:
            raise ValueError(
                f"tokenizer {self.name!r} has no classes, so an image prompt must be empty, got {prompt!r}"
            )
        try:
            label = int(prompt)
        except ValueError:
            raise ValueError(
                f"an image prompt is a class label in 0..{self.num_classes - 1} (or empty), got {prompt!r}"
            ) from None
        return [self.class_id(label)]

    def augment(self, ids: np.ndarray, rng: random.Random) -> np.ndarray:
        """The row's image shifted right by a random ``-augment_shift .. augment_shift`` pixels (left when negative),
        the edge column repeated into the gap; bos, eos, pad and the class token stay. The identity when
        ``augment_shift`` is 0. The row must hold one whole image (``data.layout: samples``)."""
        if not self.augment_shift:
            return ids
        shift = rng.randint(-self.augment_shift, self.augment_shift)
        out = np.array(ids)
        content = out < self.num_codes
        if content.sum() != self.sequence_length:
            raise ValueError(f"augment_shift shifts whole images, but a training row holds {content.sum()} pixel ids "
                             f"of the {self.sequence_length} of an image; train with data.layout: samples")
        pixels = out[content].reshape(self.height, self.width, -1)  # raster order: (h w c), or (h w) with a palette
        columns = np.clip(np.arange(self.width) - shift, 0, self.width - 1)
        out[content] = pixels[:, columns].reshape(-1)
        return out

    # --- pixels --------------------------------------------------------------------------------------
    def fit(self, samples: Iterable[Any], *, max_pixels: int = 100_000, seed: int = 0) -> None:
        """Fit the palette by k-means over the pixels of ``samples`` (images or labelled images; only with
        ``palette_size``)."""
        if self.palette_size is None:
            super().fit(samples)
        images = [self.split_label(sample)[1] for sample in samples]
        pixels = rearrange(self.stack(images), "n c h w -> (n h w) c")
        self.palette = fit_palette(pixels, self.palette_size, max_pixels=max_pixels, seed=seed)

    def _fitted_palette(self) -> torch.Tensor:
        if self.palette is None:
            raise ValueError(
                f"tokenizer {self.name!r} has palette_size={self.palette_size} but no palette; call fit(images)"
            )
        return self.palette

    def encode(self, sample: torch.Tensor) -> list[int]:
        image = self.check_image(sample)  # raster order: one colour (palette) or one channel value a token
        if self.palette_size is not None:
            return nearest_colour(rearrange(image, "c h w -> (h w) c"), self._fitted_palette()).tolist()
        return (rearrange(image, "c h w -> (h w c)").long() >> (8 - self.bits)).tolist()

    def encode_prefix(self, sample: torch.Tensor, units: int) -> list[int]:
        """A prompt of ``sample``'s first ``units`` pixels in raster order (``armm.prompt_ids``): every channel value
        of each, or its palette colour."""
        return self.encode(sample)[: units * (self.channels if self.palette_size is None else 1)]

    def decode(self, ids: Sequence[int]) -> torch.Tensor:
        codes = self.content_ids(ids)
        if self.palette_size is not None:
            pixels = rearrange(self._fitted_palette()[codes], "(h w) c -> c h w", h=self.height, w=self.width)
        else:
            shift = 8 - self.bits
            levels = ((codes << shift) + ((1 << shift) >> 1)).to(torch.uint8)
            pixels = rearrange(levels, "(h w c) -> c h w", h=self.height, w=self.width)
        return pixels.contiguous()

    def token_name(self, token: int) -> str | None:
        """A readable name for ``armm inspect``: ``"level 7/15"`` (a channel value), ``"colour 3 #1f2a80"`` (a palette
        entry) or ``"class 7"``; None for bos, eos and pad."""
        if 0 <= token < self.num_codes:
            if self.palette_size is None:
                return f"level {token}/{self.num_codes - 1}"
            if self.palette is None:
                return f"colour {token}"
            rgb = self.palette[token].tolist() * (3 // self.channels)
            return f"colour {token} #" + "".join(f"{v:02x}" for v in rgb)
        first_class = self.num_codes + len(self.special_tokens)
        if self.num_classes is not None and first_class <= token < first_class + self.num_classes:
            return f"class {token - first_class}"
        return None

    def num_units(self, sample: Any) -> int:
        """Channel values ("dim"), or pixels with a palette, of an image or a labelled image (never the class)."""
        self.check_image(self.split_label(sample)[1])
        return self.sequence_length

    def save(self, directory: str | Path) -> None:
        config = {
            "size": [self.height, self.width],
            "channels": self.channels,
            "bits": self.bits,
            "palette_size": self.palette_size,
            "num_classes": self.num_classes,
            "augment_shift": self.augment_shift,
            "palette": None if self.palette is None else self.palette.tolist(),
        }
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(config) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> PixelTokenizer:
        config = read_json_object(Path(directory) / CONFIG_FILE, "settings written by PixelTokenizer.save")
        palette = config.pop("palette")
        tokenizer = cls(**config)
        if palette is not None:
            tokenizer.palette = torch.tensor(palette, dtype=torch.uint8)
        return tokenizer
