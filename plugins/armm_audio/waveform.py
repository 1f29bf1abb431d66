"""The audio sample type: a 1-D float32 torch.Tensor in [-1, 1]."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_waveform(sample: Any) -> torch.Tensor:
    """A 1-D float tensor or numpy array → float32 tensor clipped to [-1, 1].

    Raises TypeError for other types and ValueError for other shapes, integer PCM, NaN or infinities.
    """
    if isinstance(sample, np.ndarray):
        sample = torch.from_numpy(sample)
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"an audio sample is a 1-D float torch.Tensor or numpy array, got {type(sample).__name__}")
    if sample.ndim != 1:
        raise ValueError(
            f"an audio sample is a 1-D (mono) waveform, got shape {tuple(sample.shape)}; "
            "mix channels down first (e.g. waveform.mean(0))"
        )
    if not sample.is_floating_point():
        raise ValueError(
            f"an audio sample holds floats in [-1, 1], got dtype {sample.dtype}; "
            "scale integer PCM first (int16 / 32768)"
        )
    finite = torch.isfinite(sample)
    if not finite.all():
        index = int((~finite).nonzero()[0])
        raise ValueError(f"audio sample value {sample[index].item()} at index {index} is not finite")
    return sample.detach().to(torch.float32).clamp(-1.0, 1.0)
