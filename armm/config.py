"""Model configuration: one dataclass for GPT-2-style and Llama-style decoders."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from armm.files import read_json_object

Position = Literal["learned", "rope"]
Norm = Literal["layernorm", "rmsnorm"]
MLPKind = Literal["gelu", "swiglu"]

_CHOICES = {"position": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu")}
_INTEGERS = ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "max_seq_len", "num_streams")
# Far past any model yet built (Llama 3.1 405B: 126 layers, d_model 16384, d_ff 53248, 128k context; the largest
# vocabularies are ~256k); a value above is a typo or a hostile file. n_head and n_kv_head divide d_model.
MAXIMA = {"vocab_size": 2**24, "n_layer": 2**12, "d_model": 2**17, "d_ff": 2**20, "max_seq_len": 2**27,
          "num_streams": 64}
_NUMBERS = ("rope_theta", "norm_eps", "dropout")
_FLAGS = ("bias", "tie_embeddings")
ROPE_SCALINGS = {  # rope_type → its parameters (as Hugging Face names them)
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclass
class ModelConfig:
    """Hyper-parameters of a decoder-only Transformer.

    ``n_kv_head`` < ``n_head`` gives grouped-query attention; ``None`` means ``n_head`` (plain
    multi-head attention). ``d_ff`` defaults to ``4 * d_model`` for GELU and to the Llama rule
    (``2/3 * 4 * d_model`` rounded up to a multiple of 64) for SwiGLU. GELU uses the tanh
    approximation, as GPT-2 does. ``rope_scaling`` rescales RoPE's frequencies for a longer context, as
    Llama 3.1 does: ``{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}`` (``ROPE_SCALINGS`` lists the types and their parameters).

    ``num_streams`` K > 1 reads K parallel streams, as MusicGen reads K codebooks in its delay pattern: a position
    holds K ids (a sequence of ids is read K at a time), its input is the sum of their K embeddings, and the output
    layer predicts the next position's K ids (``K · vocab_size`` outputs, so the embeddings cannot be tied).
    ``max_seq_len`` counts positions.
    """

    vocab_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    d_model: int = 128
    d_ff: int | None = None
    max_seq_len: int = 256
    position: Position = "learned"
    rope_theta: float = 10000.0
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    mlp: MLPKind = "gelu"
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    rope_scaling: dict[str, Any] | None = None
    num_streams: int = 1

    def __post_init__(self) -> None:
        self._check_types()
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else _round_up(int(8 * self.d_model / 3), 64)
        for field, allowed in _CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r} is not one of {allowed}")
        for field in _INTEGERS:
            if getattr(self, field) < 1:
                raise ValueError(f"ModelConfig.{field} must be >= 1, got {getattr(self, field)}")
        for field, most in MAXIMA.items():
            if getattr(self, field) > most:
                raise ValueError(f"ModelConfig.{field} must be <= {most} (past any model built so far), got "
                                 f"{getattr(self, field)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for field in ("rope_theta", "norm_eps"):
            if getattr(self, field) <= 0:
                raise ValueError(f"ModelConfig.{field} must be > 0, got {getattr(self, field)}")
        if self.rope_scaling is not None:
            self._check_rope_scaling()
        if self.num_streams > 1 and self.tie_embeddings:
            raise ValueError(f"ModelConfig.tie_embeddings needs one output per position, but num_streams="
                             f"{self.num_streams} predicts {self.num_streams}; set tie_embeddings to false")

    def _check_rope_scaling(self) -> None:
        """A known ``rope_type`` with exactly its parameters, each a positive number, on a RoPE model."""
        scaling = self.rope_scaling
        kind = scaling.get("rope_type") if isinstance(scaling, dict) else None
        if kind not in ROPE_SCALINGS:
            raise ValueError(f"ModelConfig.rope_scaling must be None or a dict with rope_type in "
                             f"{tuple(ROPE_SCALINGS)}, got {scaling!r}")
        if self.position != "rope":
            raise ValueError(f"ModelConfig.rope_scaling scales RoPE, but position={self.position!r}; set "
                             f"position='rope' or rope_scaling=None")
        expected = {"rope_type", *ROPE_SCALINGS[kind]}
        if set(scaling) != expected:
            raise ValueError(f"ModelConfig.rope_scaling of rope_type {kind!r} takes exactly the keys "
                             f"{sorted(expected)}, got {sorted(scaling)}")
        for key in ROPE_SCALINGS[kind]:
            value = scaling[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"ModelConfig.rope_scaling[{key!r}] must be a finite number > 0, got {value!r}")
        if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
            raise ValueError(f"ModelConfig.rope_scaling needs high_freq_factor > low_freq_factor, got "
                             f"{scaling['high_freq_factor']} <= {scaling['low_freq_factor']}")

    def _check_types(self) -> None:
        """Refuse a value of the wrong JSON type (``"n_layer": "2"``, ``"bias": "no"``), naming the field."""
        for field in _INTEGERS:
            value = getattr(self, field)
            if value is None and field in ("n_kv_head", "d_ff"):  # None means "derive it"
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"ModelConfig.{field} must be an integer, got {value!r}")
        for field in _NUMBERS:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"ModelConfig.{field} must be a finite number, got {value!r}")
        for field in _FLAGS:
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"ModelConfig.{field} must be true or false, got {getattr(self, field)!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def check_one_stream(self, what: str) -> None:
        """Refuse ``what`` (a feature that reads one id a position) for a model of several streams."""
        if self.num_streams > 1:
            raise ValueError(f"{what} reads one id a position, but this model reads num_streams={self.num_streams} "
                             f"(a stream layout such as the delay pattern); use generate, score or armm sample with it")

    def too_long(self, length: int) -> ValueError:
        """The error for a sequence of ``length`` positions that does not fit the context."""
        if self.num_streams > 1:
            return ValueError(f"sequence of {length} positions ({length * self.num_streams} ids, {self.num_streams} "
                              f"a position) is longer than the model's context (max_seq_len={self.max_seq_len} "
                              f"positions); truncate or split it")
        return ValueError(f"sequence of {length} tokens is longer than the model's context "
                          f"(max_seq_len={self.max_seq_len}); truncate or split it")

    # --- presets and serialisation -------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (see ``PRESETS``), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read a ``config.json``; any error names the file."""
        data = read_json_object(path, "a ModelConfig")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}; fix the file or re-save the model with armm.save_model") from None


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


_GPT2 = dict(position="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)
_LLAMA = dict(position="rope", norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", bias=False, tie_embeddings=False)

PRESETS: dict[str, dict[str, Any]] = {
    # tiny: unit tests; mini: ~1M; small: ~10M (CPU recipes and benchmarks); 124m: GPT-2 small.
    "gpt2-tiny": dict(_GPT2, vocab_size=256, n_layer=2, n_head=4, d_model=64, max_seq_len=128),
    "gpt2-mini": dict(_GPT2, vocab_size=512, n_layer=4, n_head=4, d_model=128, max_seq_len=256),
    "gpt2-10m": dict(_GPT2, vocab_size=4096, n_layer=6, n_head=6, d_model=384, max_seq_len=512),
    "gpt2-124m": dict(_GPT2, vocab_size=50304, n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
    "llama-tiny": dict(_LLAMA, vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=128),
    "llama-mini": dict(_LLAMA, vocab_size=512, n_layer=4, n_head=4, n_kv_head=2, d_model=128, max_seq_len=256),
    "llama-10m": dict(_LLAMA, vocab_size=4096, n_layer=6, n_head=6, n_kv_head=2, d_model=384, d_ff=1024,
                      max_seq_len=512),
    "llama-120m": dict(_LLAMA, vocab_size=32000, n_layer=12, n_head=12, n_kv_head=4, d_model=768, d_ff=2048,
                       max_seq_len=2048),
}
