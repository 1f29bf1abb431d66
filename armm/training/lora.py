"""LoRA (Hu et al., 2021): low-rank adapters trained on the core's linear layers while the pretrained weights stay
frozen; merged into a plain ``Transformer``, or saved and loaded alone.

The adapter layers are peft's (``pip install 'armm[lora]'``): ``inject_adapter_in_model`` wraps each targeted
``nn.Linear`` of the armm ``Transformer`` in place, so the model keeps its class, its ``forward`` and its state-dict
names (``blocks.0.attn.qkv.base_layer.weight``, ``blocks.0.attn.qkv.lora_A.default.weight``, …).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from armm.model import Transformer
from armm.pretrained import load_pretrained
from armm.tokenizer import Tokenizer

# target name → what it adapts (peft matches a target against the end of each module's name)
TARGETS = {
    "attn.qkv": "the fused query, key and value projection of every block (one adapter for the three)",
    "attn.proj": "the attention output projection of every block",
    "mlp.fc": "the MLP input projection of every block (for SwiGLU, gate and up fused)",
    "mlp.proj": "the MLP output projection of every block",
    "lm_head": "the output layer (only when it is not tied to the token embedding)",
}
DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"  # peft's file names


@dataclass
class LoraOptions:
    """``model.lora``: low-rank adapters on the pretrained model of ``model.init_from``.

    Args:
        rank: Rank ``r`` of each adapter ``B @ A`` (``A``: r x in, ``B``: out x r, ``B`` starts at zero).
        alpha: The adapter's output is scaled by ``alpha / rank``.
        dropout: Dropout on each adapter's input (the frozen path has none).
        targets: Which linear layers get an adapter: ``attn.qkv``, ``attn.proj``, ``mlp.fc``, ``mlp.proj``,
            ``lm_head`` (see ``armm.training.lora.TARGETS``).
        export: ``merged``: exports are plain model directories, the adapters added into the weights (every armm
            command loads them). ``adapters``: exports hold the adapters alone (``adapter_model.safetensors`` +
            ``adapter_config.json`` naming the base folder); ``armm.training.lora.load_adapters`` loads base + adapters.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    export: Literal["merged", "adapters"] = "merged"

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"model.lora.rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"model.lora.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"model.lora.targets must name one or more of {', '.join(TARGETS)}; got {self.targets}")
        if self.export not in ("merged", "adapters"):
            raise ValueError(f"model.lora.export must be 'merged' or 'adapters', got {self.export!r}")


def _peft() -> ModuleType:
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA (model.lora) needs the peft package: pip install 'armm[lora]'") from None
    return peft


def add_adapters(model: Transformer, options: LoraOptions) -> Transformer:
    """Wrap ``options.targets`` of ``model`` in LoRA layers, in place, and freeze every other parameter."""
    if "lm_head" in options.targets and model.config.tie_embeddings:
        raise ValueError("model.lora.targets has lm_head, but this model ties its output layer to the token "
                         "embedding: an adapter merged into it would change the embedding too; drop lm_head")
    peft = _peft()
    config = peft.LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                             target_modules=list(options.targets))
    return peft.inject_adapter_in_model(config, model)


def adapter_layers(model: Transformer) -> dict[str, torch.nn.Module]:
    """The LoRA-wrapped layers of ``model`` by module name."""
    layer_class = _peft().tuners.lora.LoraLayer
    return {name: module for name, module in model.named_modules() if isinstance(module, layer_class)}


def merged(model: Transformer) -> Transformer:
    """A copy of ``model`` with each adapter added into the weight it adapts (``W + alpha / rank * B @ A``): a plain
    ``Transformer`` with no LoRA layer left, which every backend and ``save_model`` take. ``model`` is unchanged."""
    plain = copy.deepcopy(model)
    for name, layer in adapter_layers(plain).items():
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent), child, layer.get_base_layer())
    return plain


def save_adapters(directory: str | Path, model: Transformer, base: str | Path) -> Path:
    """Write the adapters of ``model`` alone: ``adapter_model.safetensors`` and peft's ``adapter_config.json``,
    whose ``base_model_name_or_path`` is ``base`` (the pretrained folder they apply to)."""
    peft, directory = _peft(), Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = peft.get_peft_model_state_dict(model, save_embedding_layers=False)
    save_file({name: tensor.detach().contiguous() for name, tensor in weights.items()},
              str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = copy.copy(model.peft_config["default"])
    config.base_model_name_or_path = str(Path(base).resolve())
    config.save_pretrained(str(directory))
    return directory


def load_adapters(
    directory: str | Path, *, base: str | Path | None = None, merge: bool = True,
    device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
) -> tuple[Transformer, Tokenizer]:
    """``(model in eval mode, tokenizer)`` from adapters ``save_adapters`` wrote (``model.lora.export: adapters``)
    and their base: the folder ``adapter_config.json`` names, or ``base`` (the base moved). With ``merge`` (the
    default) the adapters are added into the weights and the model is a plain ``Transformer``."""
    peft, directory = _peft(), Path(directory)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} holds no LoRA adapters: {name} is missing (expected the "
                                    f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} of an export with model.lora.export: "
                                    f"adapters)")
    config = peft.LoraConfig.from_pretrained(str(directory))
    base = base if base is not None else config.base_model_name_or_path
    if base is None:
        raise ValueError(f"{directory / ADAPTER_CONFIG} names no base model; give it: load_adapters(directory, "
                         f"base=...)")
    base = Path(base)
    model, tokenizer = load_pretrained(base)
    peft.inject_adapter_in_model(config, model)
    try:
        weights = load_file(str(directory / ADAPTER_WEIGHTS))
        unexpected = peft.set_peft_model_state_dict(model, weights).unexpected_keys
    except SafetensorError as err:
        raise ValueError(f"{directory / ADAPTER_WEIGHTS} is corrupt or not a safetensors file ({err})") from None
    except RuntimeError as err:  # a shape that differs: adapters of another model
        unexpected = [" ".join(str(err).split())]
    if unexpected:
        raise ValueError(f"the adapters in {directory} do not fit the base model {base} ({unexpected[0]}); give the "
                         f"base they were trained on: load_adapters(directory, base=...)")
    model = merged(model) if merge else model
    return model.to(device=device, dtype=dtype).eval(), tokenizer
