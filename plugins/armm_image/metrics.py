"""Reconstruction error and codebook usage, for tests and the VQ-VAE report."""

from __future__ import annotations

import math

import torch


def mse(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Mean squared error in 0..255 grey levels over every value."""
    return (actual.double() - expected.double()).pow(2).mean().item()


def psnr(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit images: 10·log10(255² / MSE); inf when equal."""
    error = mse(actual, expected)
    return math.inf if error == 0 else 10 * math.log10(255**2 / error)


def code_usage(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of codes used at least once, perplexity exp(H) of the code frequencies)."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    return (counts > 0).double().mean().item(), math.exp(-(p * p.log()).sum().item())
