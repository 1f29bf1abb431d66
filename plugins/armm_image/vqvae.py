"""A small VQ-VAE (van den Oord et al. 2017): conv encoder → nearest-neighbour codebook → conv decoder.

The codebook is core's ``armm.quantize.VectorQuantizer`` (EMA updates, dead-code restarts).
"""

from __future__ import annotations

import torch
from torch import nn

from armm.quantize import VectorQuantizer


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def halvings(downsample: int) -> int:
    """How many stride-2 layers make ``downsample`` (a power of two)."""
    if downsample < 1 or downsample & (downsample - 1):
        raise ValueError(f"downsample must be a power of two (1, 2, 4, 8…), got {downsample}")
    return downsample.bit_length() - 1


class VQVAE(nn.Module):
    """Images in [-1, 1] [B, C, H, W] → codes [B, H/f, W/f] → reconstructions, f = ``downsample``."""

    def __init__(
        self,
        channels: int,
        codebook_size: int,
        code_dim: int,
        hidden: int,
        downsample: int,
        res_blocks: int,
        ema_decay: float,
        dead_code_threshold: float,
    ) -> None:
        super().__init__()
        steps = halvings(downsample)
        down = [m for _ in range(steps) for m in (nn.ReLU(), nn.Conv2d(hidden, hidden, 4, stride=2, padding=1))]
        up = [m for _ in range(steps) for m in (nn.ReLU(), nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1))]
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), *down,
            *(ResidualBlock(hidden) for _ in range(res_blocks)), nn.ReLU(), nn.Conv2d(hidden, code_dim, 1),
        )  # fmt: skip
        self.quantizer = VectorQuantizer(codebook_size, code_dim, ema_decay, dead_code_threshold)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, hidden, 3, padding=1), *(ResidualBlock(hidden) for _ in range(res_blocks)),
            *up, nn.ReLU(), nn.Conv2d(hidden, channels, 3, padding=1),
        )  # fmt: skip

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer.codes(self.encoder(images))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(codes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (reconstruction, codes, commitment loss)."""
        quantized, codes, commitment = self.quantizer(self.encoder(images))
        return self.decoder(quantized), codes, commitment
