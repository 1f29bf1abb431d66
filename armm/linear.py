"""The model's linear layer, with the weight formats decoding can use on the CPU.

A decode step multiplies a few rows by every weight matrix, so its speed is set by how fast the weights are
read. The formats, chosen by ``Transformer.decode_weights`` and prepared when a KV-cache is set up:

- ``"native"`` (the CPU default): short cached forwards (up to 8 tokens per row, or 32 tokens in all) run armm's
  native decode step (``armm.native``), which reads the float32 weights in place; the layers themselves run
  ``"plain"`` (longer prefills). Where the native step cannot run (no C compiler, another dtype or device), the
  layers decode ``"packed"``.
- ``"plain"``: ``F.linear`` on the float weights, as training runs.
- ``"packed"``: the same float32 weights reordered into oneDNN's blocked layout. MKL's
  small-batch kernels read ``[out, in]`` weights at a third to a half of the memory bandwidth; oneDNN's at
  close to all of it (figures in docs/performance.md). Results equal ``"plain"`` up to float rounding.
- ``"int8"``: weight-only int8, symmetric per output channel (``scale = max |w_row| / 127``): a quarter of the
  bytes to read. Short forwards read it in the native step (float32 activations); longer ones multiply by
  ``torch.ops.aten._weight_int8pack_mm`` with bfloat16 activations. An approximation: tests bound its logit error
  and its greedy agreement with float32 on a trained model.

A prepared copy is kept, for the next generation, with the version of the weight it came from: a changed weight
(an optimizer step, ``load_state_dict``, ``.to()``) is never multiplied through a stale copy, and the next
``setup_cache`` rebuilds it. Anything that records gradients uses the float weights, so training never sees one.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DecodeWeights = Literal["native", "plain", "packed", "int8"]
DECODE_WEIGHTS = ("native", "plain", "packed", "int8")


def check_decode_weights(mode: str) -> str:
    if mode not in DECODE_WEIGHTS:
        raise ValueError(f"decode_weights must be one of {', '.join(DECODE_WEIGHTS)}, got {mode!r}")
    return mode


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``[out, in]`` float weight → (int8 ``[out, in]``, bfloat16 scales ``[out]``), symmetric per output row."""
    scales = weight.detach().abs().amax(dim=1).clamp(min=1e-12) / 127
    quantized = (weight.detach() / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
    return quantized.contiguous(), scales.to(torch.bfloat16)


def supported(mode: DecodeWeights, weight: Tensor) -> bool:
    """Whether ``mode`` runs for this weight (CPU kernels only; anything else falls back to ``"plain"``)."""
    if mode == "packed":
        return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
    if mode == "int8":
        return weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
    return True


def version_of(weight: Tensor) -> tuple:
    """Changes whenever the weight does: in place (an optimizer step, ``load_state_dict``) or replaced (``.to()``).

    A weight made under ``torch.inference_mode`` counts no versions, so its version never equals an earlier one:
    such a layer always multiplies its own weight, never a copy that might be stale."""
    return weight.data_ptr(), object() if weight.is_inference() else weight._version, weight.dtype


class Linear(nn.Linear):
    """``nn.Linear`` that decodes with a prepared copy of its weight (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: tuple[str, tuple, tuple[Tensor, ...]] | None = None  # (mode, weight version, tensors)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the prepared copy behind (oneDNN's packed tensors cannot be copied); the next
        ``setup_cache`` rebuilds it."""
        return {**super().__getstate__(), "prepared": None}

    def prepare(self, mode: DecodeWeights) -> None:
        """Build (or keep, when the weight has not changed) the copy ``mode`` needs; ``"plain"`` drops it."""
        weight = self.weight
        version = version_of(weight)
        if mode in ("plain", "native") or not supported(mode, weight):
            self.prepared = None
            return
        if self.prepared is not None and self.prepared[:2] == (mode, version):
            return
        with torch.no_grad():
            if mode == "packed":
                tensors = (torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1),)
            else:
                tensors = quantize_int8(weight)
        self.prepared = (mode, version, tensors)

    def forward(self, x: Tensor) -> Tensor:
        prepared, weight = self.prepared, self.weight
        if (prepared is None or torch.is_grad_enabled() or torch.compiler.is_compiling()  # inductor packs its own
                or prepared[1] != version_of(weight)):
            return F.linear(x, weight, self.bias)
        mode, _, tensors = prepared
        if mode == "packed":
            return torch.ops.mkldnn._linear_pointwise(x, tensors[0], self.bias, "none", [], "")
        quantized, scales = tensors
        rows = x.reshape(-1, x.size(-1)).to(torch.bfloat16)  # (B*T, in)
        y = torch.ops.aten._weight_int8pack_mm(rows, quantized, scales).reshape(*x.shape[:-1], -1).to(x.dtype)
        return y if self.bias is None else y + self.bias
