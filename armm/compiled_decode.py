"""The decode step under ``torch.compile``: static shapes, a KV-cache kept between generations, CUDA graphs on a GPU.

``armm.generate(..., compile=True)`` decodes through a ``CompiledDecoder``, in the manner of gpt-fast: the prompt is
prefilled eagerly, then every new token runs ``Transformer.decode_step`` compiled with ``fullgraph=True``. The step
reads its slot from a 0-dim tensor, writes the cache in place and attends over all of the cache's slots under a
mask, so one compiled graph serves every position. On a GPU it is compiled with ``mode="reduce-overhead"``, which
records it as a CUDA graph and replays it: one launch per token instead of one per operator. The decoder owns a
cache of ``max_seq_len`` slots that it lends to the model for each generation, so the graph sees the same shapes
and the same buffer addresses every time and compiles once per model, batch size, dtype and device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from armm.model import Transformer


class CompiledDecoder:
    """``model.decode_step`` compiled for batches of ``batch_size`` rows, with the KV-cache it runs on."""

    def __init__(self, model: Transformer, batch_size: int) -> None:
        weight = model.tok_emb.weight
        self.dtype, self.device = weight.dtype, weight.device
        self.caches = model.new_caches(batch_size, model.config.max_seq_len)
        # The step's inputs live in buffers of their own: the same tensors, shapes and strides at every call.
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.slot = torch.zeros((), dtype=torch.long, device=self.device)
        for tensor in (self.tokens, self.slot, *(t for cache in self.caches for t in (cache.k, cache.v))):
            torch._dynamo.mark_static_address(tensor)  # CUDA graphs read and write them in place, never copy them
        mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs exist on CUDA only
        self.step = torch.compile(model.decode_step, mode=mode, fullgraph=True)

    def matches(self, model: Transformer) -> bool:
        """Whether this decoder still fits the model (it may have moved to another device or dtype since)."""
        weight = model.tok_emb.weight
        return (weight.dtype, weight.device) == (self.dtype, self.device)

    def lend_cache(self, model: Transformer) -> None:
        """Attach this decoder's cache, emptied, to the model's layers (``model.clear_cache()`` detaches it)."""
        model.clear_cache()
        for block, cache in zip(model.blocks, self.caches):
            cache.k.zero_()
            cache.v.zero_()
            block.attn.kv_cache = cache

    def __call__(self, idx: Tensor, slot: int, pad: Tensor | None) -> Tensor:
        """Logits ``[B, V]`` for tokens ``idx [B, 1]`` at cache slot ``slot``."""
        self.tokens.copy_(idx)
        self.slot.fill_(slot)  # a kernel on the GPU, not a host-to-device copy that would wait for the queue
        torch.compiler.cudagraph_mark_step_begin()
        # A CUDA graph's output lives in memory its next replay overwrites: the caller gets its own copy.
        return self.step(self.tokens, self.slot, pad).clone()


def compiled_decoder(model: Transformer, batch_size: int) -> CompiledDecoder:
    """The model's compiled decoder for ``batch_size`` rows, built (and compiled on first call) if needed."""
    decoders = model.compiled_decoders
    if batch_size not in decoders or not decoders[batch_size].matches(model):
        decoders[batch_size] = CompiledDecoder(model, batch_size)
    return decoders[batch_size]
