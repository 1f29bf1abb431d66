"""What every decode backend provides: a ``Decoder``, one generation's KV-cache and the forwards that fill it."""

from __future__ import annotations

from torch import Tensor, nn

from armm.backends.twin import Format, twin
from armm.kv_cache import KVCache
from armm.model import Transformer, last_position


class Decoder:
    """One generation's decoding state: ``batch_size`` rows of ``max_len`` cache slots for one model.

    A decoder belongs to one call (``generate``, ``score``, …): its cache is never shared, so two generations on one
    model cannot write each other's keys and values, and it runs the model's decode twin (``armm.backends.twin``),
    in eval mode whatever mode the model is in, so it never changes the model. This base class runs the plain twin;
    subclasses choose how a forward runs.
    """

    name = "plain"

    def __init__(self, model: Transformer, batch_size: int, max_len: int, cache: list[KVCache] | None = None,
                 fmt: Format | None = None, runner: nn.Module | None = None, rolling: bool = False) -> None:
        """``fmt``: the twin's weight format (None: plain); ``runner``: a module to run instead of the twin;
        ``rolling``: the cache takes single tokens past ``max_len`` (a sliding window, ``Transformer.new_caches``)."""
        check_sizes(model, batch_size, max_len)
        self.model, self.batch_size, self.max_len, self.fmt = model, batch_size, max_len, fmt
        self.cache = cache if cache is not None else model.new_caches(batch_size, max_len, rolling)
        self._runner = runner

    @property
    def runner(self) -> nn.Module:
        """What runs the forwards: the model's decode twin as the model is now (a replaced parameter rebuilds it, a
        changed weight refreshes its copy; about 30 µs), or the module given."""
        return self._runner if self._runner is not None else twin(self.model, self.fmt)

    def forward(self, idx: Tensor, start: int, pad: Tensor | None = None, logits_to_keep: int = 0) -> Tensor:
        """Logits ``[B, T, V]`` (the last ``logits_to_keep``, if not 0) of tokens ``idx [B, T]`` at cache slots
        ``start .. start+T-1``; ``pad [B]`` = left padding per row (see ``Transformer.forward``)."""
        return self.runner(idx, cache=self.cache, start=start, pad=pad, logits_to_keep=logits_to_keep)

    def close(self) -> None:
        """Give back what the decoder holds beyond its cache (``decoding`` calls it at the end of a call)."""

    def step(self, idx: Tensor, slot: int, pad: Tensor | None = None) -> Tensor:
        """Logits ``[B, V]`` of one token per row, ``idx [B, 1]``, at cache slot ``slot`` (K streams: ``idx [B, K]``
        → ``[B, K, V]``)."""
        return last_position(self.forward(idx, slot, pad, logits_to_keep=1))


def check_sizes(model: Transformer, batch_size: int, max_len: int) -> None:
    for name, value in (("batch_size", batch_size), ("max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if max_len > model.config.max_seq_len:
        raise model.config.too_long(max_len)
