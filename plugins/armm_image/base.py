"""What the image tokenizers share: the sample type, specials after the content ids, reading and writing."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from armm.files import find_files
from armm.tokenizer import Tokenizer
from armm_image.image_io import IMAGE_SUFFIXES, convert, read_images, write_grid, write_npy


def parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``32`` or ``(32, 32)`` → (height, width), both positive integers."""
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in pair):
        raise ValueError(f"image size must be a positive integer or [height, width], got {size!r}")
    return pair


class ImageTokenizer(Tokenizer):
    """A sample is one image: a ``torch.uint8`` tensor [channels, height, width] with channels 1 (grey)
    or 3 (RGB) and the tokenizer's own size. ``prepare`` converts any other image to it; ``read`` does so
    for PNG/JPEG files (and an ``.npy`` file named on its own, as ``write`` makes them); ``write`` puts samples into
    one PNG grid (or JPEG, or one lossless ``.npy`` array [N, C, H, W]).

    Ids ``0 .. num_codes - 1`` are content (pixel values, palette entries or VQ codes); bos, eos and
    pad follow. ``decode`` skips specials, then truncates the ids to ``sequence_length`` or pads them
    with id 0, so any id sequence decodes to an image.
    """

    modality = "image"
    file_suffixes = (".png", ".jpg", ".jpeg", ".npy")
    read_suffixes = IMAGE_SUFFIXES  # a folder's images; training data never takes .npy files

    def __init__(self, size: int | Sequence[int], channels: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        self.height, self.width = parse_size(size)
        self.channels = channels

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    @property
    @abstractmethod
    def num_codes(self) -> int:
        """How many content ids there are; the special ids follow them."""

    @property
    @abstractmethod
    def sequence_length(self) -> int:
        """Content ids per image."""

    @property
    def sample_length(self) -> int:
        return self.sequence_length

    @property
    def vocab_size(self) -> int:
        return self.num_codes + 3

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"bos": self.num_codes, "eos": self.num_codes + 1, "pad": self.num_codes + 2}

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """Any uint8 image [C, H, W] → this tokenizer's channels and size (see ``image_io.convert``)."""
        return convert(image, self.channels, (self.height, self.width))

    def check_image(self, sample: torch.Tensor) -> torch.Tensor:
        """``sample`` itself when it is a uint8 tensor of ``shape``, else an error saying how to fix it."""
        if not isinstance(sample, torch.Tensor) or sample.dtype != torch.uint8:
            raise TypeError(
                f"tokenizer {self.name!r} encodes torch.uint8 tensors {list(self.shape)}, got {type(sample).__name__}"
            )
        if tuple(sample.shape) != self.shape:
            raise ValueError(
                f"tokenizer {self.name!r} encodes images of shape {list(self.shape)}, got {list(sample.shape)}; "
                "convert it with tokenizer.prepare(image)"
            )
        return sample

    def stack(self, images: Iterable[torch.Tensor]) -> torch.Tensor:
        """Samples (or a uint8 tensor [N, C, H, W]) → one checked uint8 batch [N, C, H, W]."""
        batch = [self.check_image(image) for image in images]
        if not batch:
            raise ValueError("no images given")
        return torch.stack(batch)

    def content_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Checked ids without specials, truncated or padded with 0 to ``sequence_length`` → int64 tensor."""
        self.check_ids(ids)
        content = [token for token in ids if token < self.num_codes][: self.sequence_length]
        return torch.tensor(content + [0] * (self.sequence_length - len(content)), dtype=torch.long)

    def num_units(self, sample: torch.Tensor) -> int:
        """Pixel channel values ("dims"), as bits per dim counts them."""
        return self.check_image(sample).numel()

    def read(self, source: str | Path) -> list[torch.Tensor]:
        paths = find_files(source, IMAGE_SUFFIXES, what="images")
        return [self.prepare(image) for path in paths for image in read_images(path)]

    def write(self, samples: Sequence[torch.Tensor], path: str | Path, format: str | None = None, *,
              nrow: int | None = None) -> list[Path]:
        """All samples as one PNG grid at ``path`` (``nrow`` tiles a row; a single sample is written as is), or a
        JPEG grid (lossy), or one ``.npy`` array [N, C, H, W] (lossless, for programs), as ``format`` says."""
        images = [self.check_image(sample) for sample in samples]
        suffix = self.write_format(path, format)
        if suffix == ".npy":
            return [write_npy(images, path)]
        return [write_grid(images, path, nrow=nrow, suffix=suffix)]
