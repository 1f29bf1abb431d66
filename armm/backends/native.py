"""The ``native`` backend: armm's C decode step (``csrc/decode_step.c``) for short forwards on the CPU.

A decode step on the CPU is bound by how fast it reads the weights, and in PyTorch it also pays the dispatch of
~150 operator calls. The native step does the whole of a short forward (embeddings to logits) in one call, inside
one OpenMP region, reading the model's own float32 weights in place, or weight-only int8 copies. Forwards it does
not take (long prefills), and models it cannot read (another dtype or device), run in PyTorch (``eager``).

Memory safety does not rest on the caller:

- the step points at *aliases* of the model's tensors (``detach()``: the same storage, a tensor of its own), so a
  storage stays alive for as long as the step may read it, whatever happens to the parameter (``.data = …``,
  ``.half()``, a new ``Parameter``);
- before every call it checks that each tensor the model holds now is still the one it was built on (storage
  address, dtype, shape; cost in docs/performance.md); if not, it builds the step again, or runs the forward in
  PyTorch where the step cannot read the new tensors;
- every argument is checked in Python before C sees it (ids in range, ``start >= 0``, ``pad [B]`` with
  ``0 <= pad < start + T``, batch and length within the cache) and the C step checks ids and positions again;
- the KV-cache and the scratch memory belong to one ``NativeDecoder``, so concurrent calls never share them.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from armm.backends import library
from armm.backends.base import Decoder
from armm.backends.eager import EagerDecoder, check_quantize
from armm.backends.twin import twin, version_of
from armm.backends.library import FLOAT_P, INT8_P, MATRICES, LayerStruct, ModelStruct
from armm.kv_cache import KVCache
from armm.model import Transformer, check_pad, rope_frequencies

MAX_ROWS = 64  # forwards of more rows (batch x tokens) always run in PyTorch: its matrix products win there


def takes(batch_size: int, tokens: int) -> bool:
    """The fixed rule of ``backend="native"``: a forward of at most 8 tokens per row, or 32 tokens in all, goes native
    (decode steps, speculative checks, short prefills); ``auto`` measures instead (``armm.backends.auto``)."""
    return (tokens <= 8 and batch_size * tokens <= MAX_ROWS) or batch_size * tokens <= 32


def supports(model: Transformer) -> bool:
    """Whether every tensor the step reads is a contiguous float32 CPU tensor whose storage holds it."""
    return all(_readable(t) for t in (*model.parameters(), *model.buffers()))


def _readable(t: Tensor) -> bool:
    return (t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
            and t.untyped_storage().nbytes() >= (t.storage_offset() + t.numel()) * 4)


def _layer_tensors(block: nn.Module) -> dict[str, Tensor | None]:
    """One block's tensors under the C struct's field names (the cache pointers are set per decoder)."""
    attn, mlp = block.attn, block.mlp
    return {
        "norm_1_weight": block.norm_1.weight, "norm_1_bias": getattr(block.norm_1, "bias", None),
        "qkv_weight": attn.qkv.weight, "qkv_bias": attn.qkv.bias,
        "attn_proj_weight": attn.proj.weight, "attn_proj_bias": attn.proj.bias,
        "norm_2_weight": block.norm_2.weight, "norm_2_bias": getattr(block.norm_2, "bias", None),
        "fc_weight": mlp.fc.weight, "fc_bias": mlp.fc.bias,
        "mlp_proj_weight": mlp.proj.weight, "mlp_proj_bias": mlp.proj.bias,
    }


def _model_tensors(model: Transformer) -> dict[str, Tensor | None]:
    c = model.config
    rope = c.position == "rope"
    return {
        "tok_emb": model.tok_emb.weight, "pos_emb": model.pos_emb.weight if model.pos_emb is not None else None,
        "rope_cos": model.rope_cos if rope else None, "rope_sin": model.rope_sin if rope else None,
        "rope_inv_freq": rope_frequencies(c.head_dim, c.rope_theta, c.rope_scaling) if rope else None,
        "norm_f_weight": model.norm_f.weight, "norm_f_bias": getattr(model.norm_f, "bias", None),
        "lm_head_weight": model.lm_head.weight,
    }


def _linears(model: nn.Module) -> list[nn.Module]:
    """The linear layers an int8 step reads copies of, in the order ``NativeWeights`` stores them (of the model, or
    of its int8 decode twin)."""
    return [m for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj)] + [model.lm_head]


def fingerprint(model: Transformer, int8: bool) -> list:
    """What identifies the tensors the step reads: storage address, dtype and shape of each (and, for int8 copies,
    the weights' versions, since an in-place change makes a copy stale)."""
    tensors = [*model.parameters(), *model.buffers()]
    marks = [(t.data_ptr(), t.dtype, t.shape) for t in tensors]
    if int8:
        marks += [version_of(m.weight) for m in _linears(model)]  # never equal for inference tensors: rebuilt
    return marks


class NativeWeights:
    """The C structs of one model's weights (float32, or int8 copies), pointing at aliases this object keeps."""

    def __init__(self, model: Transformer, lib: ctypes.CDLL, int8: bool) -> None:
        self.lib, self.int8, self.config = lib, int8, model.config
        self.fingerprint = fingerprint(model, int8)
        self.aliases: list[Tensor] = []  # every tensor the structs point at, kept alive here
        copies = [linear.tensors for linear in _linears(twin(model, "int8"))] if int8 else None
        self.layers = (LayerStruct * len(model.blocks))()
        for i, (layer, block) in enumerate(zip(self.layers, model.blocks)):
            for field, tensor in _layer_tensors(block).items():
                setattr(layer, field, self._ptr(tensor))
            if copies is not None:
                for name, (quantized, scales) in zip(MATRICES, copies[4 * i:4 * i + 4]):
                    setattr(layer, f"{name}_q", self._ptr(quantized))
                    setattr(layer, f"{name}_scale", self._ptr(scales.float()))
        c = model.config
        self.struct = ModelStruct(
            n_layer=c.n_layer, d_model=c.d_model, n_head=c.n_head, n_kv_head=c.n_kv_head, head_dim=c.head_dim,
            d_ff=c.d_ff, vocab_size=c.vocab_size, cache_len=0, max_seq_len=c.max_seq_len,
            rmsnorm=c.norm == "rmsnorm", swiglu=c.mlp == "swiglu", num_streams=c.num_streams, norm_eps=c.norm_eps,
            **{field: self._ptr(tensor) for field, tensor in _model_tensors(model).items()},
        )
        if copies is not None:
            quantized, scales = copies[-1]
            self.struct.lm_head_q, self.struct.lm_head_scale = self._ptr(quantized), self._ptr(scales.float())

    def _ptr(self, tensor: Tensor | None):
        if tensor is None:
            return None
        alias = tensor.detach().contiguous()
        self.aliases.append(alias)
        return ctypes.cast(alias.data_ptr(), INT8_P if alias.dtype == torch.int8 else FLOAT_P)


_weights: weakref.WeakKeyDictionary[Transformer, dict[bool, NativeWeights]] = weakref.WeakKeyDictionary()
_weights_lock = threading.Lock()


def native_weights(model: Transformer, int8: bool) -> NativeWeights | None:
    """The model's current ``NativeWeights`` (rebuilt when a tensor changed since), or None where the step cannot
    read the model."""
    lib = library.library()
    if lib is None:
        return None
    with _weights_lock:
        built = _weights.setdefault(model, {})
        found = built.get(int8)
        if found is not None and found.fingerprint == fingerprint(model, int8):
            return found
        built.pop(int8, None)
        if not supports(model):
            return None
        found = built[int8] = NativeWeights(model, lib, int8)
        return found


class NativeDecoder(Decoder):
    """Forwards that ``takes`` allows run the C step; the others (``fallback``) run in PyTorch on the same cache."""

    name = "native"

    def __init__(self, model: Transformer, batch_size: int, max_len: int, quantize: str | None = None,
                 takes: Callable[[int, int], bool] = takes, cache: list[KVCache] | None = None,
                 rolling: bool = False) -> None:
        check_quantize(quantize)
        super().__init__(model, batch_size, max_len, cache, rolling=rolling)
        self.quantize, self.int8, self.takes = quantize, quantize == "int8", takes
        self._eager: EagerDecoder | None = None
        self.work = torch.empty(0)
        self.cache_readable = all(_readable(t) for c in self.cache for t in (c.k, c.v))
        self.cache_shape = self.cache[0].k.shape  # [B, n_kv_head, max_len, head_dim], as made
        self._weights: NativeWeights | None = None
        self._cache_tensors: list[Tensor] = []  # what the struct's cache pointers point at

    def forward(self, idx: Tensor, start: int, pad: Tensor | None = None, logits_to_keep: int = 0) -> Tensor:
        K = self.model.config.num_streams
        B, T = (idx.size(0), idx.size(1) // K) if isinstance(idx, Tensor) and idx.dim() == 2 else (0, 0)  # positions
        whole = B and T and idx.size(1) % K == 0  # the model's forward explains any other shape
        if not (whole and self.cache_readable and self.takes(B, T)) or torch.is_grad_enabled():
            return self.fallback(idx, start, pad, logits_to_keep)
        weights = native_weights(self.model, self.int8)
        if weights is None:
            return self.fallback(idx, start, pad, logits_to_keep)
        return self.run(weights, idx, start, pad, logits_to_keep)

    def fallback(self, idx: Tensor, start: int, pad: Tensor | None, logits_to_keep: int) -> Tensor:
        """A forward the C step does not run: the plain twin's (no packed copy is made for a few long prefills), or
        the int8 twin's."""
        if self.int8:
            return self.eager().forward(idx, start, pad, logits_to_keep)
        return super().forward(idx, start, pad, logits_to_keep)

    def eager(self) -> EagerDecoder:
        """The eager backend on this decoder's cache (packed or int8 copies), made on first use."""
        if self._eager is None:
            self._eager = EagerDecoder(self.model, self.batch_size, self.max_len, self.quantize, cache=self.cache)
        return self._eager

    def run(self, weights: NativeWeights, idx: Tensor, start: int, pad: Tensor | None, logits_to_keep: int) -> Tensor:
        """One call of the C step, after checking every argument it reads."""
        K = weights.config.num_streams
        B, T = idx.size(0), idx.size(1) // K  # T positions of K ids
        struct = self._struct(weights)
        idx, pad, keep = self._checked(idx, start, pad, logits_to_keep)
        work = weights.lib.armm_work_size(ctypes.byref(struct), B * T)  # scratch floats, for this cache's length
        if self.work.numel() < work:
            self.work = torch.empty(work)
        logits = torch.empty(B, keep * K, weights.config.vocab_size)  # (B, keep, K·V) as C writes it
        bad = weights.lib.armm_forward(
            ctypes.byref(struct), idx.data_ptr(), idx.stride(0), B, T, start,
            None if pad is None else pad.data_ptr(), keep, self.work.data_ptr(), logits.data_ptr(),
            torch.get_num_threads(),
        )
        if bad == 1:
            raise IndexError(f"token id outside the vocabulary (0 .. {weights.config.vocab_size - 1}) in "
                             f"{idx.flatten().tolist()}")
        if bad == 2:
            raise weights.config.too_long(start + T)
        return logits

    def _checked(self, idx: Tensor, start: int, pad: Tensor | None,
                 logits_to_keep: int) -> tuple[Tensor, Tensor | None, int]:
        """The arguments as the C step reads them (int64, contiguous, on the CPU), or an error naming the bad one."""
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool or idx.device.type != "cpu":
            raise ValueError(f"idx must be an integer CPU tensor of token ids, got {idx.dtype} on {idx.device}")
        B, T = idx.size(0), idx.size(1) // self.model.config.num_streams  # positions
        self.cache[0].check_write(B, start, T)
        if start + T >= 2**31:
            raise ValueError(f"start + T = {start + T} is past the native step's int32 slots; use backend='eager'")
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an integer >= 0 (0 = every position), got {logits_to_keep!r}")
        idx = idx if idx.dtype == torch.int64 and idx.stride(-1) == 1 else idx.long().contiguous()
        if pad is not None:
            check_pad(pad, B, start + T)
            if pad.device.type != "cpu":
                raise ValueError(f"pad must be on the CPU, as the model is; got a tensor on {pad.device}")
            pad = pad.long().contiguous()
        return idx, pad, min(logits_to_keep, T) or T

    def _struct(self, weights: NativeWeights) -> ModelStruct:
        """The weights' struct with this decoder's cache: its own copy, so the shared one is never written. Rebuilt
        when the weights were, or when the cache's tensors are not the ones it points at (kept alive here)."""
        tensors = [t for layer in self.cache for t in (layer.k, layer.v)]
        if self._weights is not weights or [id(t) for t in tensors] != [id(t) for t in self._cache_tensors]:
            if not all(isinstance(t, Tensor) and _readable(t) and t.shape == self.cache_shape for t in tensors):
                raise ValueError(f"the decoder's KV-cache no longer holds contiguous float32 CPU tensors of shape "
                                 f"{tuple(self.cache_shape)}; open a new decoder")
            layers = (LayerStruct * len(weights.layers))()
            ctypes.memmove(layers, weights.layers, ctypes.sizeof(layers))
            for layer, cache in zip(layers, self.cache):
                layer.k_cache = ctypes.cast(cache.k.data_ptr(), FLOAT_P)
                layer.v_cache = ctypes.cast(cache.v.data_ptr(), FLOAT_P)
            struct = ModelStruct()
            ctypes.memmove(ctypes.byref(struct), ctypes.byref(weights.struct), ctypes.sizeof(struct))
            struct.cache_len = self.cache_shape[2]
            struct.layers = layers
            self._weights, self._own_struct = weights, struct  # the struct keeps its layers array alive
            self._cache_tensors = tensors
        return self._own_struct
