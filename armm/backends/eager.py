"""The ``eager`` backend: the model's PyTorch forward, with weight formats that read faster on the CPU.

A decode step multiplies a few rows by every weight matrix, so its speed is set by how fast the weights are read.
The eager decoder runs the model's decode twin (``armm.backends.twin``) with oneDNN-``packed`` float32 copies of
its linear weights on the CPU, or weight-only ``int8`` copies with ``quantize="int8"``; elsewhere (another device
or dtype) the plain twin.
"""

from __future__ import annotations

from torch import nn

from armm.backends.base import Decoder
from armm.backends.twin import Format, supported
from armm.kv_cache import KVCache
from armm.model import Transformer

QUANTIZE = (None, "int8")


def check_quantize(quantize: str | None) -> None:
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be None (the model's own weights) or 'int8', got {quantize!r}")


def default_format(model: Transformer, quantize: str | None) -> Format | None:
    """The format the eager backend decodes with: int8 when asked, packed for float32 on the CPU, else none."""
    check_quantize(quantize)
    weight = model.tok_emb.weight
    if quantize == "int8":
        if not supported("int8", weight):
            raise ValueError(f"int8 weights decode on the CPU from float32 or bfloat16 weights; this model is "
                             f"{weight.dtype} on {weight.device}: decode without quantize, or move it to the CPU")
        return "int8"
    return "packed" if supported("packed", weight) else None


class EagerDecoder(Decoder):
    """Every forward through PyTorch: the model's decode twin, with packed or int8 weights where they run."""

    name = "eager"

    def __init__(self, model: Transformer, batch_size: int, max_len: int, quantize: str | None = None,
                 cache: list[KVCache] | None = None, runner: nn.Module | None = None, rolling: bool = False) -> None:
        """``runner``: a module to run instead of the model's decode twin."""
        super().__init__(model, batch_size, max_len, cache, default_format(model, quantize), runner, rolling)

