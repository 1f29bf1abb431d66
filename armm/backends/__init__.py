"""Decode backends: how a generation runs the model's forwards. The model itself is plain PyTorch.

``generate``, ``speculative_generate``, ``score``, ``armm sample`` / ``chat`` / ``serve`` / ``inspect`` take
``backend=`` one of:

- ``auto`` (default): on the CPU, per shape class, the faster of ``native`` and ``eager`` as measured on this
  machine (``armm.backends.auto``); elsewhere ``eager``;
- ``eager``: the model's PyTorch forward (with packed or int8 weights on the CPU: ``armm.backends.eager``);
- ``native``: armm's C decode step for short forwards on the CPU, PyTorch for the rest (``armm.backends.native``);
- ``compiled``: the decode step under ``torch.compile``, CUDA graphs on a GPU (``armm.backends.compiled``).

``quantize="int8"`` decodes from weight-only int8 copies where the backend supports it (``eager``, ``native``,
``auto`` on the CPU). Each backend keeps what it prepares (decode twins with packed or int8 copies, the native
step's structs, compiled graphs) outside the model, keyed weakly by it; every call gets its own KV-cache and runs
an eval-mode twin of the model, never switching the model's own mode. So calls on one model from several threads
run side by side, each as it would alone (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

from armm.backends.base import Decoder
from armm.backends.eager import QUANTIZE, EagerDecoder, check_quantize
from armm.model import Transformer

Backend = Literal["auto", "eager", "native", "compiled"]
Quantize = Literal["int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def open_decoder(model: Transformer, batch_size: int, max_len: int, backend: str = "auto",
                 quantize: str | None = None, rolling: bool = False) -> Decoder:
    """A decoder with its own cache of ``batch_size`` rows and ``max_len`` slots, running ``backend``; a ``rolling``
    cache slides over the last ``max_len`` tokens past its length (RoPE models, ``Transformer.new_caches``)."""
    check_backend(backend)
    check_quantize(quantize)
    cpu = model.tok_emb.weight.device.type == "cpu"
    if backend == "compiled":
        from armm.backends.compiled import CompiledDecoder  # torch.compile's import cost only when asked for

        return CompiledDecoder(model, batch_size, max_len, quantize, rolling)
    if backend == "eager" or not cpu:
        return EagerDecoder(model, batch_size, max_len, quantize, rolling=rolling)
    if backend == "native":
        from armm.backends.native import NativeDecoder

        return NativeDecoder(model, batch_size, max_len, quantize, rolling=rolling)
    from armm.backends.auto import AutoDecoder

    return AutoDecoder(model, batch_size, max_len, quantize, rolling)


@contextmanager
def decoding(model: Transformer, batch_size: int, max_len: int, backend: str = "auto",
             quantize: str | None = None, rolling: bool = False) -> Iterator[Decoder]:
    """A decoder for one call, closed at its end. Run it under ``torch.inference_mode`` (as a decorator on a
    generator, so that the mode is off between its steps)."""
    decoder = open_decoder(model, batch_size, max_len, backend, quantize, rolling)
    try:
        yield decoder
    finally:
        decoder.close()


__all__ = ["BACKENDS", "QUANTIZE", "Backend", "Quantize", "Decoder", "check_backend", "decoding", "open_decoder"]
