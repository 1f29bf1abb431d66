"""A static, preallocated key/value cache (one per attention layer), in the style of gpt-fast.

A cache belongs to whoever decodes (``armm.backends``), not to the model: ``Transformer.forward(..., cache=...)``
reads and writes the one it is given, so two generations on one model never share one.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of every past position, written in place at explicit slots.

    Buffers are ``[batch, n_kv_head, max_len, head_dim]`` and are allocated once: decoding a
    token writes one slot per layer and never copies or recomputes the prefix. A ``rolling`` cache
    also takes tokens past ``max_len``, one at a time: slot ``s`` is written at ``s % max_len``, over
    the oldest token (a ring buffer, for attention over a sliding window).
    """

    def __init__(
        self, batch_size: int, n_kv_head: int, max_len: int, head_dim: int, *, dtype: torch.dtype,
        device: torch.device, rolling: bool = False,
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.rolling = rolling

    @property
    def batch_size(self) -> int:
        return self.k.size(0)

    @property
    def max_len(self) -> int:
        return self.k.size(2)

    def check_write(self, batch_size: int, start: int, length: int) -> int:
        """Check that ``batch_size`` rows of ``length`` tokens fit at slots ``start ..``; returns the end slot."""
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an integer cache slot >= 0, got {start!r}")
        end = start + length
        if batch_size != self.batch_size:
            raise ValueError(f"KV-cache was set up for batch size {self.batch_size}, got a batch of {batch_size}")
        if end > self.max_len and not (self.rolling and length == 1):
            raise ValueError(f"KV-cache holds {self.max_len} positions; cannot write up to slot {end}"
                             + (" (a rolling cache takes one token at a time past its length)" if self.rolling else ""))
        return end

    def update(self, start: int | Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v`` of shape ``[B, n_kv_head, T, head_dim]`` into slots ``start .. start+T-1``.

        With an int ``start``, returns views of the filled prefix, ``[B, n_kv_head, start+T, head_dim]``, for
        attention. With a 0-dim tensor ``start`` (a static-shape step, ``Transformer.decode_step``), or a rolling
        cache past its length, returns the whole buffers ``[B, n_kv_head, max_len, head_dim]``: shapes and
        addresses stay the same from step to step, as CUDA graphs need, and the attention mask
        (``model.cache_attention_mask``) hides the slots not yet written.
        """
        if isinstance(start, Tensor):
            slots = start + torch.arange(k.size(2), device=start.device)  # (T,)
            if self.rolling:
                slots = slots % self.max_len
            self.k.index_copy_(2, slots, k)
            self.v.index_copy_(2, slots, v)
            return self.k, self.v
        end = self.check_write(k.size(0), start, k.size(2))
        if end > self.max_len:  # rolling: one token, over the oldest
            slot = start % self.max_len
            self.k[:, :, slot:slot + 1] = k
            self.v[:, :, slot:slot + 1] = v
            return self.k, self.v
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        """Zero every slot (a cache reused by another generation starts empty)."""
        self.k.zero_()
        self.v.zero_()
