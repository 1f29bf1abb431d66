"""Vector quantisation for learned tokenizers: a codebook of vectors, and residual stacks of them.

``VectorQuantizer`` maps each vector of a channel-first tensor ``[B, D, *]`` (an image grid ``[B, D, h, w]``,
an audio frame sequence ``[B, D, T]``) to its nearest code. The codebook learns by exponential moving averages of
the vectors assigned to each code (van den Oord et al. 2017; Razavi et al. 2019), and a code whose moving-average
usage falls below ``dead_code_threshold`` restarts at a random vector of the current batch.
``ResidualVectorQuantizer`` (SoundStream, EnCodec) quantises what the codebooks before it left over, so K
codebooks of N codes describe a vector with K·log2(N) bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    """Maps vectors ``[B, D, *]`` to their nearest of ``codebook_size`` codes, updating the codebook in training mode."""

    def __init__(
        self, codebook_size: int, dim: int, decay: float = 0.99, dead_code_threshold: float = 1.0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.decay, self.dead_code_threshold, self.eps = decay, dead_code_threshold, eps
        codebook = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("usage", torch.ones(codebook_size))  # EMA of vectors assigned per batch
        self.register_buffer("code_sum", codebook.clone())  # EMA of their sum
        # Set by the first training batch, or by loading a state dict; not saved (older weight files lack it).
        self.register_buffer("initialized", torch.tensor(False), persistent=False)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, D, *]`` → nearest code per position ``[B, *]`` (squared Euclidean distance)."""
        flat = z.movedim(1, -1).reshape(-1, z.shape[1])  # (B·*, D)
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + self.codebook.pow(2).sum(1)
        return distances.argmin(1).view(z.shape[0], *z.shape[2:])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, *]`` → code vectors ``[B, D, *]``."""
        return self.codebook[codes].movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (quantised z with straight-through gradients, codes ``[B, *]``, commitment loss ||z - sg(e)||²)."""
        if self.training and not self.initialized:
            self._initialize(z.detach())
        codes = self.codes(z)
        quantized = self.lookup(codes)
        if self.training:
            self._update(z.detach(), codes)
        commitment = F.mse_loss(z, quantized.detach())
        return z + (quantized - z).detach(), codes, commitment

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.initialized.fill_(True)  # trained codes: never re-drawn from a batch

    @torch.no_grad()
    def _initialize(self, z: torch.Tensor, iterations: int = 10) -> None:
        """Codes start at the k-means centroids of the first batch's vectors (EnCodec's data-dependent init): random
        vectors of the batch, then ``iterations`` Lloyd steps; a centroid left without vectors keeps its start."""
        flat = z.movedim(1, -1).reshape(-1, z.shape[1])  # (B·*, D)
        centroids = flat[torch.randint(len(flat), (len(self.codebook),), device=flat.device)]
        for _ in range(iterations):
            self.codebook.copy_(centroids)
            assigned = F.one_hot(self.codes(z).reshape(-1), len(centroids)).type_as(flat)  # (B·*, N)
            counts = assigned.sum(0)
            means = assigned.T @ flat / counts.clamp(min=1)[:, None]
            centroids = torch.where(counts[:, None] > 0, means, centroids)
        self.codebook.copy_(centroids)
        self.code_sum.copy_(centroids)
        self.usage.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat = z.movedim(1, -1).reshape(-1, z.shape[1])  # (B·*, D)
        assigned = F.one_hot(codes.reshape(-1), len(self.codebook)).type_as(flat)  # (B·*, N)
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


class ResidualVectorQuantizer(nn.Module):
    """``num_quantizers`` codebooks in turn, each quantising the residual the ones before it left: codes ``[B, K, *]``.

    Decoding with only the first k codebooks gives the coarser reconstruction they describe.
    """

    def __init__(self, num_quantizers: int, codebook_size: int, dim: int, decay: float = 0.99,
                 dead_code_threshold: float = 1.0) -> None:
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        self.layers = nn.ModuleList(
            VectorQuantizer(codebook_size, dim, decay, dead_code_threshold) for _ in range(num_quantizers)
        )

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, D, *]`` → codes ``[B, K, *]``."""
        residual, codes = z, []
        for layer in self.layers:
            codes.append(layer.codes(residual))
            residual = residual - layer.lookup(codes[-1])
        return torch.stack(codes, 1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, k, *]`` (the first k ≤ K codebooks) → the sum of their vectors ``[B, D, *]``."""
        return sum(layer.lookup(codes[:, i]) for i, layer in enumerate(self.layers[: codes.shape[1]]))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (quantised z with straight-through gradients, codes ``[B, K, *]``, summed commitment loss)."""
        residual, quantized, codes, commitment = z, torch.zeros_like(z), [], z.new_zeros(())
        for layer in self.layers:
            step, layer_codes, layer_commitment = layer(residual)
            residual = residual - step.detach()
            quantized = quantized + step
            codes.append(layer_codes)
            commitment = commitment + layer_commitment
        return z + (quantized - z).detach(), torch.stack(codes, 1), commitment
