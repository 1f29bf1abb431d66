"""Image files ↔ uint8 tensors [channels, height, width]: reading, converting, writing a PNG grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange, repeat

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}  # suffix → PIL format
JPEG_QUALITY = 95


MAX_PIXELS = 2**26  # 8192 x 8192; the tokenizers shrink images to a few thousand pixels anyway


def read_image(path: str | Path) -> torch.Tensor:
    """An 8-bit PNG or JPEG file → uint8 tensor [C, H, W] with its own channels (1 grey … 4 RGBA);
    ValueError naming a corrupt file, or one of more than ``MAX_PIXELS`` pixels (checked before decoding)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise _too_large(path, f"{image.width}x{image.height}", "armm_image.image_io.MAX_PIXELS")
            if image.mode not in ("L", "LA", "RGB", "RGBA"):  # palette, bilevel, CMYK…
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            pixels = np.array(image)
    except Image.DecompressionBombError:  # PIL's own cap, twice PIL.Image.MAX_IMAGE_PIXELS, checked as it opens
        raise _too_large(path, f"over {2 * Image.MAX_IMAGE_PIXELS}",
                         "armm_image.image_io.MAX_PIXELS and PIL.Image.MAX_IMAGE_PIXELS") from None
    except OSError as err:
        raise ValueError(f"{path} is not a readable PNG or JPEG image ({err})") from None
    pixels = pixels.reshape(*pixels.shape[:2], -1)  # grey comes without a channel axis: [H, W] → [H, W, 1]
    return rearrange(torch.from_numpy(pixels), "h w c -> c h w").contiguous()


def _too_large(path: str | Path, size: str, limits: str) -> ValueError:
    return ValueError(f"{path} is {size} pixels, more than the {MAX_PIXELS} armm reads; shrink the image first, "
                      f"or raise {limits}")


def convert(image: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 image [C, H, W] (or [H, W]) → ``channels`` (1 or 3) at ``size`` = (H, W).

    Alpha is dropped, RGB → grey uses ITU-R 601 luma, grey → RGB repeats the channel, and a different
    size is resized with antialiased bilinear interpolation.
    """
    from torchvision.transforms.v2 import functional as F

    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
        kind = f"{type(image).__name__} {getattr(image, 'dtype', '')}"
        raise TypeError(f"images are torch.uint8 tensors [C, H, W], got {kind}")
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"images have shape [C, H, W] with C in 1..4, got {list(image.shape)}")
    if image.shape[0] in (2, 4):
        image = image[:-1]
    if image.shape[0] != channels:
        image = F.rgb_to_grayscale(image) if channels == 1 else repeat(image, "1 h w -> c h w", c=3)
    if tuple(image.shape[1:]) != tuple(size):
        image = F.resize(image, list(size), antialias=True)
    return image.contiguous()


def write_grid(
    images: Sequence[torch.Tensor], path: str | Path, *, nrow: int | None = None, padding: int = 2,
    pad_value: int = 128, suffix: str = ".png",
) -> Path:
    """Samples of one shape → one PNG or JPEG (``suffix``: a key of ``GRID_FORMATS``) at ``path``, its suffix forced to
    ``suffix``: a grid of ``nrow`` tiles a row (default: as square as possible) separated by ``padding`` grey pixels;
    one sample is written as is."""
    from PIL import Image
    from torchvision.utils import make_grid

    if not images:
        raise ValueError("no images to write")
    batch = torch.stack(list(images))
    grid = make_grid(batch, nrow=nrow or math.ceil(math.sqrt(len(batch))), padding=padding, pad_value=pad_value)
    # make_grid repeats grey into RGB; keep the PNG grey
    pixels = grid[0] if batch.shape[1] == 1 else rearrange(grid, "c h w -> h w c")
    path = Path(path).with_suffix(suffix)
    quality = {"quality": JPEG_QUALITY} if GRID_FORMATS[suffix] == "JPEG" else {}
    Image.fromarray(pixels.numpy()).save(path, format=GRID_FORMATS[suffix], **quality)
    return path


def write_npy(images: Sequence[torch.Tensor], path: str | Path) -> Path:
    """Samples of one shape → one NumPy file at ``path`` (suffix forced to .npy): a uint8 array [N, C, H, W]."""
    import numpy as np

    if not images:
        raise ValueError("no images to write")
    path = Path(path).with_suffix(".npy")
    np.save(path, torch.stack(list(images)).numpy(), allow_pickle=False)
    return path


def read_images(path: Path) -> list[torch.Tensor]:
    """The images of one file: an ``.npy`` file's (``read_npy``), else the one image of a PNG or JPEG file."""
    return read_npy(path) if path.name.lower().endswith(".npy") else [read_image(path)]


def read_npy(path: str | Path) -> list[torch.Tensor]:
    """A NumPy file of uint8 images, [C, H, W] or [N, C, H, W] (as ``write_npy`` writes), → uint8 tensors [C, H, W];
    ValueError naming a file that holds anything else, or more than ``MAX_PIXELS`` pixels an image (checked before
    loading)."""
    import numpy as np

    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable NumPy .npy file ({err})") from None
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-3] not in (1, 2, 3, 4):
        raise ValueError(f"{path} holds a {array.dtype} array of shape {list(array.shape)}; image .npy files hold "
                         "uint8 images [C, H, W] or [N, C, H, W] with C in 1..4")
    if array.shape[-1] * array.shape[-2] > MAX_PIXELS:
        raise _too_large(path, f"{array.shape[-1]}x{array.shape[-2]}", "armm_image.image_io.MAX_PIXELS")
    batch = torch.from_numpy(np.array(array)).reshape(-1, *array.shape[-3:])
    return list(batch)
