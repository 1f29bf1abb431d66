"""VQ-VAE codes as tokens: an image becomes its grid of codebook indices in raster order."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from einops import rearrange

from armm.files import read_json_object
from armm_image.base import ImageTokenizer
from armm_image.vqvae import VQVAE

CONFIG_FILE = "image_vq.json"
WEIGHTS_FILE = "image_vq.safetensors"


class VQTokenizer(ImageTokenizer):
    """One id per cell of the VQ-VAE's (H / downsample) x (W / downsample) code grid, row by row.

    Lossy: ``decode`` returns the decoder's reconstruction. A new tokenizer holds a randomly initialised
    model (seeded by ``seed``) and ``needs_fit`` until ``fit(images)`` trains it (for ``fit_steps`` steps
    unless told otherwise) or ``load`` restores a trained one. ``unit`` is "dim" (pixel channel values), so
    bits per dim compare with ``image-pixels``.
    """

    name = "image-vq"
    unit = "dim"

    def __init__(
        self,
        size: int | Sequence[int] = 32,
        channels: int = 3,
        downsample: int = 4,
        codebook_size: int = 512,
        code_dim: int = 64,
        hidden: int = 64,
        res_blocks: int = 2,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 1.0,
        seed: int = 0,
        fit_steps: int = 2000,
    ) -> None:
        super().__init__(size, channels)
        if self.height % downsample or self.width % downsample:
            raise ValueError(f"image size {self.height}x{self.width} must be divisible by downsample={downsample}")
        if codebook_size < 1 or fit_steps < 1:
            raise ValueError(f"codebook_size and fit_steps must be >= 1, got {codebook_size} and {fit_steps}")
        self.config = {
            "size": [self.height, self.width], "channels": channels, "downsample": downsample,
            "codebook_size": codebook_size, "code_dim": code_dim, "hidden": hidden, "res_blocks": res_blocks,
            "ema_decay": ema_decay, "dead_code_threshold": dead_code_threshold, "seed": seed, "fit_steps": fit_steps,
        }  # fmt: skip
        self.grid = (self.height // downsample, self.width // downsample)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = VQVAE(
                channels, codebook_size, code_dim, hidden, downsample, res_blocks, ema_decay, dead_code_threshold
            ).eval()
        self.fitted = False

    @property
    def needs_fit(self) -> bool:
        return not self.fitted

    @property
    def num_codes(self) -> int:
        return self.config["codebook_size"]

    @property
    def sequence_length(self) -> int:
        return self.grid[0] * self.grid[1]

    @torch.no_grad()
    def codes(self, images: Iterable[torch.Tensor]) -> torch.Tensor:
        """Samples (or a uint8 batch [N, C, H, W]) → codes [N, sequence_length] in raster order."""
        pixels = self.stack(images).float() / 127.5 - 1
        return rearrange(self.model.encode(pixels), "n h w -> n (h w)")

    @torch.no_grad()
    def reconstruct(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [N, sequence_length] → uint8 images [N, C, H, W]."""
        pixels = self.model.decode(rearrange(codes, "n (h w) -> n h w", h=self.grid[0], w=self.grid[1]))
        return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def encode(self, sample: torch.Tensor) -> list[int]:
        return self.codes([sample])[0].tolist()

    def encode_prefix(self, sample: torch.Tensor, units: int) -> list[int]:
        """A prompt of the whole rows of codes among ``sample``'s first ``units`` pixels in raster order
        (``armm.prompt_ids``; a row of codes covers ``downsample`` rows of pixels): the first codes of the whole
        image's, so generation continues at the start of a code row."""
        pixels_a_row = self.config["downsample"] * self.width
        rows = units // pixels_a_row
        if rows == 0:
            raise ValueError(f"the first {units} pixels hold no whole row of codes: image-vq prompts continue from "
                             f"whole code rows of {pixels_a_row} pixels ({self.config['downsample']} image rows); "
                             f"keep at least {pixels_a_row}")
        return self.encode(sample)[: rows * self.grid[1]]

    def decode(self, ids: Sequence[int]) -> torch.Tensor:
        return self.reconstruct(self.content_ids(ids)[None])[0]

    def fit(
        self,
        samples: Iterable[torch.Tensor],
        *,
        steps: int | None = None,
        epochs: int | None = None,
        batch_size: int = 64,
        lr: float = 2e-3,
        beta: float = 0.25,
        seed: int = 0,
        accelerator: str = "cpu",
    ) -> None:
        """Train the VQ-VAE on ``samples`` with Lightning for ``steps`` optimizer steps or ``epochs`` (neither:
        the ``fit_steps`` option); ``beta`` weighs the commitment loss."""
        from armm_image.vq_training import train_vqvae

        if steps is None and epochs is None:
            steps = self.config["fit_steps"]
        pixels = self.stack(samples).float() / 127.5 - 1
        train_vqvae(self.model, pixels, steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, beta=beta,
                    seed=seed, accelerator=accelerator)  # fmt: skip
        self.fitted = True

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(self.config) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> VQTokenizer:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        tokenizer = cls(**read_json_object(directory / CONFIG_FILE, "settings written by VQTokenizer.save"))
        try:
            tokenizer.model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        except (SafetensorError, RuntimeError) as err:
            raise ValueError(
                f"{directory / WEIGHTS_FILE} is not a VQ-VAE matching {directory / CONFIG_FILE} ({err})"
            ) from None
        tokenizer.fitted = True
        return tokenizer
