"""What every decode backend provides: a ``Decoder``, one generation's KV-cache and the forwards that fill it."""

from __future__ import annotations

from torch import Tensor

from armm.kv_cache import KVCache
from armm.model import Transformer


class Decoder:
    """One generation's decoding state: ``batch_size`` rows of ``max_len`` cache slots for one model.

    A decoder belongs to one call (``generate``, ``score``, …): its cache is never shared, so two generations on one
    model cannot write each other's keys and values. Subclasses choose how a forward runs.
    """

    name = "eager"

    def __init__(self, model: Transformer, batch_size: int, max_len: int, cache: list[KVCache] | None = None) -> None:
        check_sizes(model, batch_size, max_len)
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.cache = cache if cache is not None else model.new_caches(batch_size, max_len)

    def forward(self, idx: Tensor, start: int, pad: Tensor | None = None, logits_to_keep: int = 0) -> Tensor:
        """Logits ``[B, T, V]`` (the last ``logits_to_keep``, if not 0) of tokens ``idx [B, T]`` at cache slots
        ``start .. start+T-1``; ``pad [B]`` = left padding per row (see ``Transformer.forward``)."""
        return self.model(idx, cache=self.cache, start=start, pad=pad, logits_to_keep=logits_to_keep)

    def step(self, idx: Tensor, slot: int, pad: Tensor | None = None) -> Tensor:
        """Logits ``[B, V]`` of one token per row, ``idx [B, 1]``, at cache slot ``slot``."""
        return self.forward(idx, slot, pad, logits_to_keep=1)[:, -1]


def check_sizes(model: Transformer, batch_size: int, max_len: int) -> None:
    for name, value in (("batch_size", batch_size), ("max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if max_len > model.config.max_seq_len:
        raise model.config.too_long(max_len)
