"""A pretrained model from a folder: an armm model directory or a Hugging Face checkpoint folder, told apart by
their files. Fine-tuning (``model.init_from``) and the data module that tokenises for it start here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from armm.checkpoint import CONFIG_FILE, TOKENIZER_DIR, TOKENIZER_META, load_model, load_tokenizer
from armm.files import read_json_object
from armm.hf import TOKENIZER_FILE, load_hf, load_hf_tokenizer, read_hf_config
from armm.model import Transformer
from armm.tokenizer import Tokenizer

Kind = Literal["armm", "hf"]


def pretrained_kind(path: str | Path) -> Kind:
    """``armm`` for a directory ``save_model`` wrote, ``hf`` for a Hugging Face checkpoint folder; an error naming
    what the folder lacks otherwise."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"pretrained model folder {directory} does not exist")
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{directory} is neither an armm model directory nor a Hugging Face checkpoint folder: it has no "
            f"{CONFIG_FILE} (give an export such as runs/text/export/best, or a folder saved by save_pretrained)"
        )
    config = read_json_object(directory / CONFIG_FILE, "a model config")
    return "hf" if "model_type" in config or "architectures" in config else "armm"


def load_pretrained(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Transformer, Tokenizer]:
    """``(model in eval mode, tokenizer)`` from an armm model directory or a Hugging Face folder (GPT-2, Llama,
    Mistral, Qwen2); a folder without a tokenizer is an error, since fine-tuning and sampling need one."""
    directory = Path(path)
    if pretrained_kind(directory) == "hf":
        model, tokenizer = load_hf(directory, device=device, dtype=dtype)
        missing = TOKENIZER_FILE
    else:
        model, tokenizer = load_model(directory, device=device, dtype=dtype)
        missing = f"{TOKENIZER_DIR}/"
    if tokenizer is None:
        raise ValueError(f"{directory} has no {missing}; a pretrained model needs its tokenizer to be fine-tuned or "
                         f"sampled (save it with the tokenizer it was trained with)")
    return model, tokenizer


def load_pretrained_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a pretrained folder, without reading its weights (what a data module tokenises with)."""
    directory = Path(path)
    if pretrained_kind(directory) == "armm":
        if not (directory / TOKENIZER_DIR / TOKENIZER_META).is_file():
            raise ValueError(f"{directory} has no {TOKENIZER_DIR}/ folder written by save_model; a pretrained model "
                             f"needs its tokenizer")
        return load_tokenizer(directory / TOKENIZER_DIR)
    tokenizer = load_hf_tokenizer(directory, read_hf_config(directory))
    if tokenizer is None:
        raise ValueError(f"{directory} has no {TOKENIZER_FILE}; a pretrained model needs its tokenizer")
    return tokenizer
