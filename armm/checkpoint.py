"""Model directories: ``config.json`` + ``model.safetensors`` (+ ``tokenizer/``). Loading never unpickles."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_into, save_model as save_safetensors_from

from armm.config import ModelConfig
from armm.files import read_json_object
from armm.model import Transformer
from armm.plugins import get_plugins
from armm.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_META = "armm_tokenizer.json"


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(directory: str | Path, model: Transformer, tokenizer: Tokenizer | None = None) -> Path:
    """Save weights (safetensors), config and, if given, the tokenizer into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / WEIGHTS_FILE, lambda p: save_safetensors_from(model, str(p)))
    _atomic_write(directory / CONFIG_FILE, model.config.save)
    if tokenizer is not None:
        tok_dir = directory / TOKENIZER_DIR
        tok_dir.mkdir(exist_ok=True)
        tokenizer.save(tok_dir)
        meta = json.dumps({"name": tokenizer.name, "vocab_size": tokenizer.vocab_size}) + "\n"
        _atomic_write(tok_dir / TOKENIZER_META, lambda p: p.write_text(meta))
    return directory


def load_model(
    directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Transformer, Tokenizer | None]:
    """Load a model directory written by ``save_model`` → ``(model in eval mode, tokenizer or None)``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory} is not an armm model directory: {name} is missing "
                f"(expected {CONFIG_FILE} and {WEIGHTS_FILE}, as written by armm.save_model)"
            )
    config = ModelConfig.load(directory / CONFIG_FILE)
    model = Transformer(config)
    try:
        load_safetensors_into(model, str(directory / WEIGHTS_FILE), strict=True, device=str(device))
    except SafetensorError as err:
        raise ValueError(f"{directory / WEIGHTS_FILE} is corrupt or not a safetensors file ({err})") from None
    except RuntimeError as err:
        difference = _weights_mismatch(directory / WEIGHTS_FILE, model) or " ".join(str(err).split())
        raise ValueError(
            f"{directory / WEIGHTS_FILE} does not match {directory / CONFIG_FILE}: {difference}; the weights and the "
            f"config come from different models: use the config.json saved with these weights"
        ) from None
    model.to(device=device, dtype=dtype).eval()
    tokenizer = load_tokenizer(directory / TOKENIZER_DIR) if (directory / TOKENIZER_DIR).is_dir() else None
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.name!r} in {directory} has {tokenizer.vocab_size} ids but the model's vocab_size "
            f"is {config.vocab_size}; the tokenizer and the weights come from different models"
        )
    return model, tokenizer


def load_model_with_tokenizer(
    directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Transformer, Tokenizer]:
    """``load_model`` for uses that read or write samples (sampling, chat, serving): the tokenizer is required."""
    model, tokenizer = load_model(directory, device=device, dtype=dtype)
    if tokenizer is None:
        raise ValueError(f"{directory} has no {TOKENIZER_DIR}/ folder; save the model with its tokenizer to use it here")
    return model, tokenizer


def _weights_mismatch(path: Path, model: Transformer) -> str | None:
    """The first tensor in the weights at ``path`` that ``model`` has no place for, in words; None if all fit."""
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    with safe_open(str(path), "pt") as weights:
        found = {name: list(weights.get_slice(name).get_shape()) for name in weights.keys()}
    for name, shape in found.items():
        if name not in expected:
            return f"the weights hold a tensor {name} that this config has no place for"
        if shape != expected[name]:
            return f"tensor {name} has shape {shape} in the weights but {expected[name]} under the config"
    return None


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a tokenizer folder written by ``save_model`` through the plugin that registered its name."""
    directory = Path(directory)
    meta_path = directory / TOKENIZER_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} has no {TOKENIZER_META}; it was not written by armm.save_model")
    meta = read_json_object(meta_path, '{"name": ..., "vocab_size": ...} of the tokenizer that reads this folder')
    name = meta.get("name")
    if not isinstance(name, str):
        raise ValueError(f"{meta_path} names no tokenizer (its name is {name!r}); re-save the model with save_model")
    tokenizer_class = get_plugins().tokenizers.get(name)
    try:
        tokenizer = tokenizer_class.load(directory)
    except (KeyError, TypeError) as err:  # a settings file with a missing, unknown or mistyped entry
        raise ValueError(f"the files in {directory} do not fit tokenizer {name!r} ({type(err).__name__}: {err}); "
                         f"re-save the tokenizer with the installed version of its plugin") from None
    if meta.get("vocab_size", tokenizer.vocab_size) != tokenizer.vocab_size:
        raise ValueError(f"{meta_path} says {meta['vocab_size']} ids but the tokenizer files in {directory} make "
                         f"{tokenizer.vocab_size}; the folder mixes files of two tokenizers")
    return tokenizer
