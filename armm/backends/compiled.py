"""The ``compiled`` backend: the decode step under ``torch.compile``, replayed as a CUDA graph on a GPU.

In the manner of gpt-fast, the prompt is prefilled eagerly, then every new token runs ``Transformer.decode_step``
compiled with ``fullgraph=True``. The step reads its slot from a 0-dim tensor, writes the cache in place and attends
over all of the cache's slots under a mask, so one compiled graph serves every position. On a GPU it is compiled
with ``mode="reduce-overhead"``, which records it as a CUDA graph and replays it: one launch per token instead of
one per operator. The compiled step owns a cache of ``max_seq_len`` slots that each generation empties and reuses,
so the graph sees the same shapes and the same buffer addresses every time and compiles once per model, batch size,
dtype and device. It pays on a GPU; on the CPU the native step is faster (docs/performance.md).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor

from armm.backends.base import Decoder
from armm.kv_cache import KVCache
from armm.model import Transformer


def _decode_step(model: Transformer, idx: Tensor, slot: Tensor, pad: Tensor | None, cache: list[KVCache]) -> Tensor:
    return model.decode_step(idx, slot, pad, cache)


class CompiledStep:
    """``Transformer.decode_step`` compiled for batches of ``batch_size`` rows, with the cache and inputs it runs on.

    It holds no reference to the model (its decode twin is an argument of each call), so a dropped model is freed.
    """

    def __init__(self, model: Transformer, batch_size: int) -> None:
        weight = model.tok_emb.weight
        self.dtype, self.device = weight.dtype, weight.device
        self.cache = model.new_caches(batch_size, model.config.max_seq_len)
        # The step's inputs live in buffers of their own: the same tensors, shapes and strides at every call.
        self.tokens = torch.zeros(batch_size, model.config.num_streams, dtype=torch.long, device=self.device)
        self.slot = torch.zeros((), dtype=torch.long, device=self.device)
        for tensor in (self.tokens, self.slot, *(t for c in self.cache for t in (c.k, c.v))):
            torch._dynamo.mark_static_address(tensor)  # CUDA graphs read and write them in place, never copy them
        mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs exist on CUDA only
        self.step = torch.compile(_decode_step, mode=mode, fullgraph=True, dynamic=False)
        self.lock = threading.Lock()  # held by the decoder using the cache (any thread may give it back)

    def matches(self, model: Transformer) -> bool:
        """Whether this step still fits the model (it may have moved to another device or dtype since)."""
        weight = model.tok_emb.weight
        return (weight.dtype, weight.device) == (self.dtype, self.device)

    def __call__(self, model: Transformer, idx: Tensor, slot: int, pad: Tensor | None) -> Tensor:
        """Logits ``[B, V]`` for tokens ``idx [B, 1]`` at cache slot ``slot`` (K streams: ``[B, K]`` →
        ``[B, K, V]``)."""
        self.tokens.copy_(idx)
        self.slot.fill_(slot)  # a kernel on the GPU, not a host-to-device copy that would wait for the queue
        torch.compiler.cudagraph_mark_step_begin()
        # A CUDA graph's output lives in memory its next replay overwrites: the caller gets its own copy.
        return self.step(model, self.tokens, self.slot, pad, self.cache).clone()  # model: a decode twin


_steps: weakref.WeakKeyDictionary[Transformer, dict[int, CompiledStep]] = weakref.WeakKeyDictionary()
_steps_lock = threading.Lock()


def compiled_step(model: Transformer, batch_size: int) -> CompiledStep:
    """The model's compiled step for ``batch_size`` rows, built (and compiled on its first call) if needed."""
    with _steps_lock:
        steps = _steps.setdefault(model, {})
        if batch_size not in steps or not steps[batch_size].matches(model):
            steps[batch_size] = CompiledStep(model, batch_size)
        return steps[batch_size]


class CompiledDecoder(Decoder):
    """Prefill (and any forward of several tokens) in PyTorch, every single-token step through the compiled graph,
    both on the compiled step's own cache, emptied for each decoder and held by it until ``close``. A generation
    that finds the step busy (another thread's, or a stream not yet closed) compiles a step of its own."""

    name = "compiled"

    def __init__(self, model: Transformer, batch_size: int, max_len: int, quantize: str | None = None,
                 rolling: bool = False) -> None:
        if quantize is not None:
            raise ValueError("the compiled backend decodes the model's own weights; quantize=None, or use "
                             "backend='native' or 'eager' for int8")
        self.compiled = compiled_step(model, batch_size)
        if not self.compiled.lock.acquire(blocking=False):
            self.compiled = CompiledStep(model, batch_size)  # correct, at the cost of compiling again
            self.compiled.lock.acquire()
        super().__init__(model, batch_size, max_len, cache=self.compiled.cache)
        if rolling and (max_len != self.compiled.cache[0].max_len or model.config.position != "rope"):
            raise ValueError(f"the compiled step rolls its cache of max_seq_len={model.config.max_seq_len} slots "
                             f"(not {max_len}), for RoPE models only (Transformer.new_caches)")
        for layer in self.cache:
            layer.reset()
            layer.rolling = rolling

    def step(self, idx: Tensor, slot: int, pad: Tensor | None = None) -> Tensor:
        self.cache[0].check_write(idx.size(0), slot, 1)
        if slot + 1 > self.max_len and not self.cache[0].rolling:
            raise ValueError(f"this decoder holds {self.max_len} slots; cannot write slot {slot}")
        return self.compiled(self.runner, idx, slot, pad)

    def close(self) -> None:
        if self.compiled.lock.locked():
            self.compiled.lock.release()

