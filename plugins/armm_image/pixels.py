"""ImageGPT/PixelCNN-style tokens: one per pixel channel value, or one per pixel from a k-means colour palette."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

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
    """

    name = "image-pixels"

    def __init__(
        self, size: int | Sequence[int] = 32, channels: int = 3, bits: int = 8, palette_size: int | None = None
    ) -> None:
        super().__init__(size, channels)
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        if palette_size is not None and (palette_size < 1 or bits != 8):
            raise ValueError(
                f"palette_size must be >= 1 and used with bits=8, got palette_size={palette_size}, bits={bits}"
            )
        self.bits = bits
        self.palette_size = palette_size
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

    def fit(self, samples: Iterable[torch.Tensor], *, max_pixels: int = 100_000, seed: int = 0) -> None:
        """Fit the palette by k-means over the pixels of ``samples`` (only with ``palette_size``)."""
        if self.palette_size is None:
            super().fit(samples)
        pixels = self.stack(samples).permute(0, 2, 3, 1).reshape(-1, self.channels)
        self.palette = fit_palette(pixels, self.palette_size, max_pixels=max_pixels, seed=seed)

    def _fitted_palette(self) -> torch.Tensor:
        if self.palette is None:
            raise ValueError(
                f"tokenizer {self.name!r} has palette_size={self.palette_size} but no palette; call fit(images)"
            )
        return self.palette

    def encode(self, sample: torch.Tensor) -> list[int]:
        pixels = self.check_image(sample).permute(1, 2, 0).reshape(-1, self.channels)  # raster order
        if self.palette_size is not None:
            return nearest_colour(pixels, self._fitted_palette()).tolist()
        return (pixels.flatten().long() >> (8 - self.bits)).tolist()

    def decode(self, ids: Sequence[int]) -> torch.Tensor:
        codes = self.content_ids(ids)
        if self.palette_size is not None:
            pixels = self._fitted_palette()[codes]
        else:
            shift = 8 - self.bits
            pixels = ((codes << shift) + ((1 << shift) >> 1)).to(torch.uint8)
        return pixels.reshape(self.height, self.width, self.channels).permute(2, 0, 1).contiguous()

    def num_units(self, sample: torch.Tensor) -> int:
        """Channel values ("dim"), or pixels with a palette."""
        self.check_image(sample)
        return self.sequence_length

    def save(self, directory: str | Path) -> None:
        config = {
            "size": [self.height, self.width],
            "channels": self.channels,
            "bits": self.bits,
            "palette_size": self.palette_size,
            "palette": None if self.palette is None else self.palette.tolist(),
        }
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(config) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> PixelTokenizer:
        config = json.loads((Path(directory) / CONFIG_FILE).read_text())
        palette = config.pop("palette")
        tokenizer = cls(**config)
        if palette is not None:
            tokenizer.palette = torch.tensor(palette, dtype=torch.uint8)
        return tokenizer
