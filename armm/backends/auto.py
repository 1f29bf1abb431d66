"""The ``auto`` backend: on each CPU, the faster of the native step and PyTorch, measured, per shape class.

Which path wins, and up to how many rows, depends on the machine (its vectors, its memory) as much as on the
model: a kernel tuned on an AVX-512 CPU once ran at half PyTorch's speed at batch 8 on an AVX2-only one
(docs/performance.md). So ``auto`` does not guess. The first forward of a shape class (the rows of a forward,
batch x tokens, rounded up to a power of two) times both paths on this model, alternating, and keeps the faster
one; the choice is stored in ``$ARMM_CACHE_DIR/native/autotune.json`` under this CPU, the library's build, the
thread count and the model's shape, so later processes reuse it. A measurement takes a few forwards of each path.
Forwards of more than ``native.MAX_ROWS`` rows always run in PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import threading
import time
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from armm.backends import library
from armm.backends.eager import EagerDecoder, default_format
from armm.backends.twin import Twin
from armm.backends.native import MAX_ROWS, NativeDecoder, native_weights
from armm.model import Transformer

ROUNDS = 5  # timed forwards of each path per measurement (after one warm-up each); the median counts
_lock = threading.Lock()
_choices: dict[str, str] | None = None  # "cpu|threads|model|rows" → "native" or "eager", loaded once


def choices_path() -> Path:
    return library.cache_dir() / "autotune.json"


def shape_class(rows: int) -> int:
    """Rows rounded up to a power of two: the unit auto measures."""
    return 1 << max(rows - 1, 0).bit_length()


@cache
def machine() -> str:
    """The CPU (model and flags) and the build of the native library (its source, flags and compiler): a choice
    measured with another build is measured again."""
    lib = library.library()
    build = Path(lib._name).stem if lib is not None else "no library"
    return f"{hashlib.sha256(library.cpu_id().encode()).hexdigest()[:12]} {build}"


def key(model: Transformer, quantize: str | None, rows: int) -> str:
    """What a choice depends on: the machine (CPU and library build), the thread count, the model's shape and
    weights' format, and the shape class."""
    c = model.config
    shape = (f"{c.n_layer}x{c.d_model} heads {c.n_head}/{c.n_kv_head}x{c.head_dim} ff {c.d_ff} vocab {c.vocab_size} "
             f"{c.position} {c.norm} {c.mlp} bias {c.bias} tied {c.tie_embeddings} {quantize or 'float32'}"
             + (f" streams {c.num_streams}" if c.num_streams > 1 else ""))
    return f"{machine()}|{torch.get_num_threads()} threads|{shape}|{shape_class(rows)} rows"


def _load() -> dict[str, str]:
    global _choices
    if _choices is None:
        try:
            _choices = {k: v for k, v in json.loads(choices_path().read_text()).items() if v in ("native", "eager")}
        except (OSError, ValueError, AttributeError):  # none yet, or damaged: measure again
            _choices = {}
    return _choices


def _save(choices: dict[str, str]) -> None:
    """Write the choices atomically (a concurrent process or a crash never leaves half a file); a read-only cache
    folder only costs a measurement in the next process."""
    path = choices_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
            json.dump(choices, file, indent=1, sort_keys=True)
        os.replace(file.name, path)
    except OSError:
        pass


def forget() -> None:
    """Drop the choices loaded in this process (the next forward reads the file again)."""
    global _choices
    with _lock:
        _choices = None


@torch.inference_mode()
def measure(model: Transformer, quantize: str | None, rows: int) -> str:
    """Time a one-token forward of ``shape_class(rows)`` rows on both paths, in turn; the faster one's name (eager
    where the step cannot read the model)."""
    if native_weights(model, quantize == "int8") is None:
        return "eager"
    B, start = shape_class(rows), min(16, model.config.max_seq_len - 1)
    native = NativeDecoder(model, B, start + 1, quantize, takes=lambda b, t: True)
    fmt = default_format(model, quantize)  # a twin of its own, dropped afterwards unless eager wins and builds one
    runner = Twin(model, fmt).module
    eager = EagerDecoder(model, B, start + 1, quantize, cache=native.cache, runner=runner)
    idx = torch.zeros(B, model.config.num_streams, dtype=torch.long)  # one position
    times: dict[str, list[float]] = {"native": [], "eager": []}
    for round_ in range(ROUNDS + 1):
        for name, decoder in (("native", native), ("eager", eager))[::1 if round_ % 2 else -1]:
            began = time.perf_counter()
            decoder.forward(idx, start)
            if round_:  # the first round warms up (the packed copy, the library's pages)
                times[name].append(time.perf_counter() - began)
    return min(times, key=lambda name: statistics.median(times[name]))


def prefers_native(model: Transformer, quantize: str | None, rows: int) -> bool:
    """Whether a forward of ``rows`` rows should run native on this CPU (measured once per shape class)."""
    if rows > MAX_ROWS or not library.available():
        return False
    name = key(model, quantize, rows)
    with _lock:
        choices = _load()
        if name not in choices:
            choices[name] = measure(model, quantize, rows)
            _save(choices)
        return choices[name] == "native"


class AutoDecoder(NativeDecoder):
    """The native decoder, with ``takes`` measured on this machine instead of fixed; a forward of a shape class where
    PyTorch won runs the eager backend (packed or int8 copies), a longer one the model's own forward."""

    name = "auto"

    def __init__(self, model: Transformer, batch_size: int, max_len: int, quantize: str | None = None,
                 rolling: bool = False) -> None:
        super().__init__(model, batch_size, max_len, quantize,
                         takes=lambda b, t: prefers_native(model, quantize, b * t), rolling=rolling)

    def fallback(self, idx: Tensor, start: int, pad: Tensor | None, logits_to_keep: int) -> Tensor:
        if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.numel() > MAX_ROWS * self.model.config.num_streams:
            return super().fallback(idx, start, pad, logits_to_keep)
        return self.eager().forward(idx, start, pad, logits_to_keep)
