"""A model's decode twin: a copy of its module tree, in eval mode, that shares every parameter and buffer with it.

Backends run forwards through a twin, never through the user's model: the twin's dropout is off whatever mode the
model is in (so decoding never switches the model to eval mode and back, which two threads could not share), and
its linear layers can multiply prepared copies of their weights (the eager backend's formats):

- ``packed``: the same float32 weights reordered into oneDNN's blocked layout, which its small-batch kernels read
  faster than MKL's read ``[out, in]`` weights (docs/performance.md). Results equal ``F.linear`` up to rounding.
- ``int8``: weight-only int8, symmetric per output channel (``scale = max |w_row| / 127``), a quarter of the bytes,
  multiplied by ``torch.ops.aten._weight_int8pack_mm`` with bfloat16 activations. An approximation: tests bound its
  logit error and its greedy agreement with float32 on a trained model.

Twins live here, keyed weakly by model, never on the model. A twin is rebuilt when the model holds other parameter
objects than it shares (a new ``Parameter``, ``load_state_dict(assign=True)``); each prepared copy remembers the
version of the weight it came from, so a changed weight (an optimizer step, ``load_state_dict``, ``.to()``) is
multiplied directly until the next call prepares it again.
"""

from __future__ import annotations

import copy
import itertools
import threading
import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from armm.model import Transformer

Format = Literal["packed", "int8"]  # None: the plain twin, nn.Linear as the model has it


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``[out, in]`` float weight → (int8 ``[out, in]``, bfloat16 scales ``[out]``), symmetric per output row."""
    scales = weight.detach().abs().amax(dim=1).clamp(min=1e-12) / 127
    quantized = (weight.detach() / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
    return quantized.contiguous(), scales.to(torch.bfloat16)


def supported(fmt: Format, weight: Tensor) -> bool:
    """Whether the format's CPU kernel runs for this weight."""
    if fmt == "packed":
        return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
    return weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)


def version_of(weight: Tensor) -> tuple:
    """Changes whenever the weight does: in place (an optimizer step, ``load_state_dict``) or replaced (``.to()``).

    A weight made under ``torch.inference_mode`` counts no versions, so its version never equals an earlier one:
    such a layer always multiplies its own weight, never a copy that might be stale."""
    return weight.data_ptr(), object() if weight.is_inference() else weight._version, weight.dtype, weight.shape


class PreparedLinear(nn.Module):
    """A linear layer that multiplies a prepared copy of ``source``'s weight (sharing its weight and bias)."""

    def __init__(self, source: nn.Linear, fmt: Format) -> None:
        super().__init__()
        self.source, self.fmt = source, fmt
        self.version: tuple | None = None
        self.tensors: tuple[Tensor, ...] = ()
        self.refresh()

    def refresh(self) -> None:
        """Prepare the copy again if the weight changed since (or drop it where the format cannot run)."""
        weight = self.source.weight
        version = version_of(weight)
        if self.version == version:
            return
        with torch.no_grad():
            if not supported(self.fmt, weight):
                self.tensors = ()
            elif self.fmt == "packed":
                self.tensors = (torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1),)
            else:
                self.tensors = quantize_int8(weight)
        self.version = version

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.source.weight, self.source.bias
        if not self.tensors or torch.is_grad_enabled() or version_of(weight) != self.version:
            return F.linear(x, weight, bias)  # a stale copy is never multiplied
        if self.fmt == "packed":
            return torch.ops.mkldnn._linear_pointwise(x, self.tensors[0], bias, "none", [], "")
        quantized, scales = self.tensors
        rows = x.reshape(-1, x.size(-1)).to(torch.bfloat16)  # (B*T, in)
        y = torch.ops.aten._weight_int8pack_mm(rows, quantized, scales).reshape(*x.shape[:-1], -1).to(x.dtype)
        return y if bias is None else y + bias


class Twin:
    """A model's decode twin for one format (None: plain), and what it was built from (see the module docstring)."""

    def __init__(self, model: Transformer, fmt: Format | None) -> None:
        tensors = list(itertools.chain(model.parameters(), model.buffers()))
        self.slots = _slots(model)
        self.module = copy.deepcopy(model, memo={id(t): t for t in tensors}).eval()  # new modules, the same tensors
        self.linears: list[PreparedLinear] = []
        for parent in list(self.module.modules()) if fmt is not None else []:
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    prepared = PreparedLinear(child, fmt)
                    setattr(parent, name, prepared)
                    self.linears.append(prepared)

    def matches(self, model: Transformer) -> bool:
        """Whether the model still holds the very submodules, parameters and buffers the twin was built from: every
        slot of its tree still holds the same object (a flat pass, ~20x cheaper than walking the tree again)."""
        return all(registry.get(name) is value for registry, name, value in self.slots)

    def refresh(self) -> None:
        for linear in self.linears:
            linear.refresh()


def _slots(model: nn.Module) -> list[tuple[dict[str, object], str, object]]:
    """Every ``(registry, name, object)`` of the model's tree: each module's submodules, parameters and buffers, with
    the dictionary that holds them (replacing any of them, at any depth, replaces an entry of one of these)."""
    return [(registry, name, value) for module in model.modules()
            for registry in (module._modules, module._parameters, module._buffers) for name, value in registry.items()]


_twins: weakref.WeakKeyDictionary[Transformer, dict[str | None, Twin]] = weakref.WeakKeyDictionary()
_twins_lock = threading.Lock()


def twin(model: Transformer, fmt: Format | None = None) -> Transformer:
    """The model's decode twin for ``fmt`` (None: plain), built or refreshed as needed."""
    with _twins_lock:
        twins = _twins.setdefault(model, {})
        found = twins.get(fmt)
        if found is None or not found.matches(model):
            found = twins[fmt] = Twin(model, fmt)
        found.refresh()
        return found.module
