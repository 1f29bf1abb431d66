"""A small VQ-VAE (van den Oord et al. 2017): conv encoder → nearest-neighbour codebook → conv decoder.

The codebook learns by exponential moving averages of the encoder outputs assigned to each code
(Razavi et al. 2019), and a code whose moving-average usage falls below ``dead_code_threshold``
restarts at a random encoder output of the current batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class VectorQuantizer(nn.Module):
    """Maps vectors [B, D, h, w] to their nearest of ``codebook_size`` codes, updating the codebook in training mode."""

    def __init__(
        self, codebook_size: int, dim: int, decay: float = 0.99, dead_code_threshold: float = 1.0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.decay, self.dead_code_threshold, self.eps = decay, dead_code_threshold, eps
        codebook = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("usage", torch.ones(codebook_size))  # EMA of vectors assigned per batch
        self.register_buffer("code_sum", codebook.clone())  # EMA of their sum

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] → nearest code per position [B, h, w] (squared Euclidean distance)."""
        flat = rearrange(z, "b d h w -> (b h w) d")
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + self.codebook.pow(2).sum(1)
        return rearrange(distances.argmin(1), "(b h w) -> b h w", b=z.shape[0], h=z.shape[2])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] → code vectors [B, D, h, w]."""
        return rearrange(self.codebook[codes], "b h w d -> b d h w")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (quantised z with straight-through gradients, codes [B, h, w], commitment loss ||z - sg(e)||²)."""
        codes = self.codes(z)
        quantized = self.lookup(codes)
        if self.training:
            self._update(z.detach(), codes)
        commitment = F.mse_loss(z, quantized.detach())
        return z + (quantized - z).detach(), codes, commitment

    @torch.no_grad()
    def _update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat = rearrange(z, "b d h w -> (b h w) d")
        assigned = F.one_hot(rearrange(codes, "b h w -> (b h w)"), len(self.codebook)).type_as(flat)  # [(b h w), K]
        self.usage.lerp_(assigned.sum(0), 1 - self.decay)
        self.code_sum.lerp_(assigned.T @ flat, 1 - self.decay)
        total = self.usage.sum()
        smoothed = (self.usage + self.eps) / (total + len(self.usage) * self.eps) * total  # Laplace smoothing
        self.codebook.copy_(self.code_sum / smoothed[:, None])
        dead = self.usage < self.dead_code_threshold
        if dead.any():
            restart = flat[torch.randint(len(flat), (int(dead.sum()),), device=flat.device)]
            self.codebook[dead] = restart
            self.code_sum[dead] = restart
            self.usage[dead] = 1.0


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
