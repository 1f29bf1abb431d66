"""A decoder-only Transformer over token ids: GPT-2 style or Llama style, chosen by ``ModelConfig``.

The model is plain PyTorch: its KV-cache is an argument (``cache=``), owned by the caller that decodes.
Ragged batches use left padding: row ``b`` starts with ``pad[b]`` padding slots that no query may
attend to, and its positions count from its first real token, so a row computes the same thing
alone or inside a batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from armm.config import ModelConfig
from armm.kv_cache import KVCache


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def rope_tables(max_len: int, head_dim: int, theta: float,
                scaling: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin tables ``[max_len, head_dim]`` for rotary embeddings (half-rotation layout, as in Llama);
    ``scaling`` is a ``ModelConfig.rope_scaling``."""
    inv_freq = rope_frequencies(head_dim, theta, scaling)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (L, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, hd)
    return angles.cos(), angles.sin()


def rope_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> Tensor:
    """RoPE's inverse frequencies ``[head_dim / 2]``: ``theta ** (-2i / head_dim)``, rescaled by ``scaling`` (a
    ``ModelConfig.rope_scaling``). Llama 3.1's ``llama3`` rule divides the frequencies whose wavelength exceeds
    ``original_max_position_embeddings / low_freq_factor`` by ``factor``, keeps those whose wavelength is below
    ``original_max_position_embeddings / high_freq_factor``, and blends the two linearly in between."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if scaling is None:
        return inv_freq
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    periods = scaling["original_max_position_embeddings"] * inv_freq / (2 * math.pi)  # original context / wavelength
    kept = ((periods - low) / (high - low)).clamp(0, 1)  # 0: divided by factor, 1: kept
    return (1 - kept) * inv_freq / scaling["factor"] + kept * inv_freq


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, H, T, hd]`` by the angles of its positions; ``cos, sin`` are ``[B or 1, T, hd]``."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, hd)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attention_mask(start: int, length: int, pad: Tensor | None, device: torch.device) -> tuple[Tensor | None, bool]:
    """The mask for queries at slots ``start .. start+length-1`` over keys at slots ``0 .. start+length-1``.

    Returns ``(mask, is_causal)`` for ``F.scaled_dot_product_attention``: no mask at all when the
    plain causal rule applies, else a boolean ``[B or 1, 1, length, start+length]`` mask (True = may
    attend). A padding query attends to itself only, so its softmax stays finite.
    """
    if pad is None and start == 0:
        return None, length > 1
    if pad is None and length == 1:
        return None, False  # one new token sees the whole prefix
    query = torch.arange(start, start + length, device=device)[:, None]  # (T, 1)
    key = torch.arange(start + length, device=device)[None, :]  # (1, L)
    visible = key <= query  # (T, L)
    if pad is not None:
        real_key = key[None] >= pad[:, None, None]  # (B, 1, L)
        visible = visible & (real_key | (key == query))  # (B, T, L)
    else:
        visible = visible[None]  # (1, T, L)
    return visible[:, None], False  # (B or 1, 1, T, L)


def cache_attention_mask(slot: int | Tensor, max_len: int, pad: Tensor | None, device: torch.device) -> Tensor:
    """The mask for one query per row at slot ``slot`` over all ``max_len`` slots of a cache, rolling or not.

    Cache slot ``j`` holds the latest slot ``≡ j (mod max_len)`` up to ``slot`` (negative: not written yet), so the
    query sees the last ``max_len`` slots, from each row's first real token ``pad[b]`` on → boolean ``[B or 1, 1, 1,
    max_len]`` (True = may attend). Below ``max_len`` that is plainly the slots ``pad[b] .. slot``. The shape is the
    same at every step, as graph capture needs."""
    key = torch.arange(max_len, device=device)  # (L,)
    held = slot - (slot - key) % max_len  # (L,): the slot each cache slot holds now
    visible = held[None] >= (pad[:, None] if pad is not None else 0)  # (B or 1, L)
    return visible[:, None, None]  # (B or 1, 1, 1, L)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qkv = nn.Linear(config.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=config.bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None, is_causal: bool,
                start: int | Tensor, cache: KVCache | None) -> Tensor:
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        B, T = x.shape[:2]  # plain view/transpose on the decode path: einops adds a cost per call
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(start, k, v)  # (B, nkv, start+T or max_len, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, nh*hd)
        return F.dropout(self.proj(y), self.dropout, self.training)


class MLP(nn.Module):
    """GELU (tanh approximation, as GPT-2) or SwiGLU (gate and up projections fused into ``fc``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = config.d_ff * (2 if self.swiglu else 1)
        self.fc = nn.Linear(config.d_model, hidden, bias=config.bias)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return F.dropout(self.proj(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None, is_causal: bool,
                start: int | Tensor, cache: KVCache | None) -> Tensor:
        x = x + self.attn(self.norm_1(x), rope, mask, is_causal, start, cache)
        return x + self.mlp(self.norm_2(x))


class Transformer(nn.Module):
    """Token ids ``[B, T]`` → next-token logits ``[B, T, vocab_size]``.

    Without a cache, ``forward`` is a full causal pass. With one (``new_caches``), ``forward(idx, cache=c,
    start=s)`` processes tokens at cache slots ``s .. s+T-1`` and attends to everything cached before them.

    With ``config.num_streams`` K > 1, a position holds K ids: ``idx [B, T·K]`` is read as ``[B, T, K]``, and the
    logits ``[B, T·K, V]`` at id ``t·K + k`` predict id ``(t+1)·K + k``, stream k of the next position. Cache slots,
    ``start``, ``pad``, ``max_seq_len`` and ``logits_to_keep`` count positions.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.num_streams * config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if config.position == "rope":
            cos, sin = rope_tables(config.max_seq_len, config.head_dim, config.rope_theta, config.rope_scaling)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; without position and (untied) token embeddings by default, as nanoGPT reports."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.pos_emb.weight.numel() if self.pos_emb is not None else 0
            total -= 0 if self.config.tie_embeddings else self.tok_emb.weight.numel()
        return total

    def new_caches(self, batch_size: int, max_len: int, rolling: bool = False) -> list[KVCache]:
        """One empty KV-cache per layer, ``batch_size`` rows of ``max_len`` slots, in the weights' dtype and device.

        A ``rolling`` cache takes tokens past its length one at a time, each replacing the oldest: attention then
        covers the last ``max_len`` tokens (a sliding window). Only RoPE models can roll one, since their attention
        scores depend on relative positions alone; learned positions must recompute the window instead."""
        weight, c = self.tok_emb.weight, self.config
        if rolling and c.position != "rope":
            raise ValueError("a rolling KV-cache needs RoPE positions: a model with learned positions sees each "
                             "token at its place in the window, so recompute the window instead (generate does)")
        return [KVCache(batch_size, c.n_kv_head, max_len, c.head_dim, dtype=weight.dtype, device=weight.device,
                        rolling=rolling) for _ in self.blocks]

    # --- forward -------------------------------------------------------------------------------
    def forward(self, idx: Tensor, *, cache: list[KVCache] | None = None, start: int = 0, pad: Tensor | None = None,
                logits_to_keep: int = 0) -> Tensor:
        """Logits ``[B, T, V]`` for tokens ``idx [B, T]`` at slots ``start ..``; ``pad [B]`` = left-padding per row
        (with K streams: ``idx [B, T·K]`` → ``[B, T·K, V]``, T positions).

        ``cache`` (from ``new_caches``) receives the keys and values of slots ``start .. start+T-1`` and supplies
        the earlier ones. ``logits_to_keep=n`` computes the logits of the last ``n`` positions only (``[B, n, V]``;
        0 = all), as a prefill needs: the output layer is the largest matrix of a small model."""
        check_forward_args(self.config, idx, cache, start, pad, logits_to_keep, self.tok_emb.weight)
        B, T = idx.size(0), idx.size(1) // self.config.num_streams  # T positions
        slots = torch.arange(start, start + T, device=idx.device)  # (T,)
        positions = (slots[None] - pad[:, None]).clamp(min=0) if pad is not None else slots[None]  # (B or 1, T)
        rolled = cache is not None and start + T > cache[0].max_len  # a rolling cache past its length (checked)
        if pad is None and start + T > self.config.max_seq_len and not rolled:
            raise self.config.too_long(start + T)
        if rolled:
            cache[0].check_write(B, start, T)  # one token at a time, before any layer writes
            mask, is_causal = cache_attention_mask(start, cache[0].max_len, pad, idx.device), False
        else:
            mask, is_causal = attention_mask(start, T, pad, idx.device)
        rope = self.rope_at(positions, computed=start + T > self.config.max_seq_len)
        return self._layers(idx, positions, rope, mask, is_causal, start, cache, logits_to_keep)

    def decode_step(self, idx: Tensor, slot: Tensor, pad: Tensor | None, cache: list[KVCache]) -> Tensor:
        """Logits ``[B, V]`` of one token per row, ``idx [B, 1]``, at cache slot ``slot`` (a 0-dim long tensor);
        with K streams, of one position per row: ``idx [B, K]`` → ``[B, K, V]``.

        The static-shape twin of ``forward(idx, cache=cache, start=slot, pad=pad)``, for graph capture: no Python
        number changes from step to step, the cache is written with ``index_copy_`` and attention covers all its
        slots under a mask. The caller keeps ``slot`` below the cache's length."""
        positions = (slot - pad).clamp(min=0)[:, None] if pad is not None else slot.view(1, 1)  # (B or 1, 1)
        mask = cache_attention_mask(slot, cache[0].max_len, pad, slot.device)
        rope = self.rope_at(positions, computed=cache[0].rolling)  # a rolling cache's positions pass the tables
        return last_position(self._layers(idx, positions, rope, mask, False, slot, cache, 1))

    def rope_at(self, positions: Tensor, computed: bool) -> tuple[Tensor, Tensor] | None:
        """RoPE's cos and sin ``[B or 1, T, head_dim]`` at ``positions`` (None with learned positions): read from the
        tables, or ``computed`` the same way for positions the tables may not reach (a rolling cache)."""
        if self.pos_emb is not None:
            return None
        if not computed:
            return self.rope_cos[positions], self.rope_sin[positions]
        c = self.config
        inv_freq = rope_frequencies(c.head_dim, c.rope_theta, c.rope_scaling).to(positions.device)
        angles = positions[..., None].float() * inv_freq  # (B or 1, T, hd/2)
        angles = torch.cat([angles, angles], dim=-1)  # (B or 1, T, hd)
        return angles.cos(), angles.sin()

    def _layers(self, idx: Tensor, positions: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                is_causal: bool, start: int | Tensor, cache: list[KVCache] | None, logits_to_keep: int) -> Tensor:
        """Embeddings, the blocks, the final norm and the output layer (for the last ``logits_to_keep`` positions,
        0 = all)."""
        x = self.embed(idx)  # (B, T, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = F.dropout(x, self.config.dropout, self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, is_causal, start, cache[i] if cache is not None else None)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # (B, n, d)
        logits = self.lm_head(self.norm_f(x))  # (B, n, K·V)
        return logits.view(logits.size(0), -1, self.config.vocab_size)  # (B, n·K, V)

    def embed(self, idx: Tensor) -> Tensor:
        """Ids ``[B, T·K]`` → ``[B, T, d]``: each position's K token embeddings summed (K = ``num_streams``)."""
        K = self.config.num_streams
        if K == 1:
            return self.tok_emb(idx)
        return self.tok_emb(idx.view(idx.size(0), -1, K)).sum(2)  # (B, T, K, d) → (B, T, d)


def last_position(logits: Tensor) -> Tensor:
    """The logits of one position per row, ``[B, K, V]`` from a forward that kept one: ``[B, V]`` when K = 1."""
    return logits[:, -1] if logits.size(1) == 1 else logits


def check_forward_args(config: ModelConfig, idx: Tensor, cache: list[KVCache] | None, start: int, pad: Tensor | None,
                       logits_to_keep: int, weight: Tensor) -> None:
    """Refuse arguments ``Transformer.forward`` cannot honour, with an error that says what is allowed."""
    if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.dtype.is_floating_point or idx.dtype.is_complex:
        got = f"{idx.dtype} of shape {tuple(idx.shape)}" if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"idx must be an integer tensor of token ids [batch, tokens], got {got}")
    if idx.size(1) % config.num_streams:
        raise ValueError(f"a model of num_streams={config.num_streams} reads {config.num_streams} ids a position, but "
                         f"idx has {idx.size(1)} ids a row; give a multiple of {config.num_streams}")
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an integer >= 0 (0 = every position), got {logits_to_keep!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an integer cache slot >= 0, got {start!r}")
    if cache is None and start:
        raise ValueError("start > 0 needs a KV-cache holding the earlier slots: pass cache=model.new_caches(...)")
    if cache is not None and len(cache) != config.n_layer:
        raise ValueError(f"cache must hold one KVCache per layer ({config.n_layer}), got {len(cache)}")
    if cache is not None and (cache[0].k.dtype, cache[0].k.device) != (weight.dtype, weight.device):
        raise ValueError(f"the KV-cache is {cache[0].k.dtype} on {cache[0].k.device} but the model's weights are "
                         f"{weight.dtype} on {weight.device} (the model was converted after the cache was made); "
                         f"start a new generation")
    if pad is not None:
        check_pad(pad, idx.size(0), start + idx.size(1) // config.num_streams)


def check_pad(pad: Tensor, batch_size: int, end: int) -> None:
    """``pad`` must be an integer tensor ``[batch_size]``; on the CPU (where checking costs no device sync) each row's
    padding must also leave its last token, at slot ``end - 1``, real: ``0 <= pad < end``."""
    if not isinstance(pad, Tensor) or pad.shape != (batch_size,) or pad.dtype.is_floating_point or pad.is_complex():
        got = f"{pad.dtype} of shape {tuple(pad.shape)}" if isinstance(pad, Tensor) else type(pad).__name__
        raise ValueError(f"pad must be an integer tensor [batch] = [{batch_size}] of left-padding counts, got {got}")
    if pad.device.type == "cpu" and batch_size:
        low, high = pad.aminmax()
        if low < 0 or high >= end:
            raise ValueError(f"pad must count padding slots before each row's last token: 0 <= pad < start + T "
                             f"= {end}, got {pad.tolist()}")
