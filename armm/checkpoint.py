"""Model directories: ``config.json`` + ``model.safetensors`` (+ ``tokenizer/``). Loading never unpickles."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_into, save_model as save_safetensors_from

from armm.config import ModelConfig
from armm.files import read_json_object, temporary_beside
from armm.model import Transformer
from armm.plugins import get_plugins
from armm.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_META = "armm_tokenizer.json"


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves a half-written file.
    The file gets the mode ``open`` gives a new file (0666 less the umask), as the tokenizer's files have."""
    tmp = temporary_beside(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what the umask left of 0666
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)  # a writer that replaces the file (safetensors does) leaves it private
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
    check_weights_fit(directory, config)
    model = Transformer(config)
    try:
        load_safetensors_into(model, str(directory / WEIGHTS_FILE), strict=True, device=str(device))
    except SafetensorError as err:
        raise _corrupt(directory, err) from None
    model.to(device=device, dtype=dtype).eval()
    tokenizer = load_tokenizer(directory / TOKENIZER_DIR) if (directory / TOKENIZER_DIR).is_dir() else None
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.name!r} in {directory} has {tokenizer.vocab_size} ids but the model's vocab_size "
            f"is {config.vocab_size}; the tokenizer and the weights come from different models"
        )
    if tokenizer is not None and tokenizer.num_streams != config.num_streams:
        raise ValueError(
            f"tokenizer {tokenizer.name!r} in {directory} lays its ids out in {tokenizer.num_streams} stream(s) but the "
            f"model reads {config.num_streams} ids a position; the tokenizer and the weights come from different models"
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


def check_weights_fit(directory: Path, config: ModelConfig) -> None:
    """Before any tensor is allocated: the weights' header holds exactly the tensors ``config`` describes, with
    their shapes, and the model fits in the memory available. Each error names the config's field at fault."""
    weights = directory / WEIGHTS_FILE
    found = _weights_shapes(directory)
    layers = len({name.split(".")[1] for name in found if name.startswith("blocks.")})
    difference = (f"n_layer={config.n_layer} under the config but {layers} layers in the weights"
                  if layers != config.n_layer else None)
    with torch.device("meta"):  # shapes without memory; n_layer now matches a real file
        model = Transformer(config)
    difference = difference or _tensor_mismatch(model, config, found)
    if difference:
        raise ValueError(f"{weights} does not match {directory / CONFIG_FILE}: {difference}; the weights and the "
                         f"config come from different models: use the config.json saved with these weights")
    _check_memory(directory, model, config)


def _weights_shapes(directory: Path) -> dict[str, list[int]]:
    """Each tensor's shape, from the safetensors header alone (the data is not read)."""
    try:
        with safe_open(str(directory / WEIGHTS_FILE), "pt") as weights:
            return {name: list(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except SafetensorError as err:
        raise _corrupt(directory, err) from None


def _corrupt(directory: Path, err: Exception) -> ValueError:
    return ValueError(f"{directory / WEIGHTS_FILE} is corrupt or not a safetensors file ({err})")


def _tensor_mismatch(model: Transformer, config: ModelConfig, found: dict[str, list[int]]) -> str | None:
    """The first difference, in words, between the tensors ``model`` (on the meta device) holds and those
    ``found`` in the weights: a shape, a missing tensor, a tied one stored twice, an extra one. A tied tensor (one
    tensor under two names) may be stored under either name."""
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    for name, shape in found.items():
        if name in expected and shape != expected[name]:
            fields = _fields_of(config, (size for size, was in zip(expected[name], shape) if size != was))
            return (f"tensor {name} has shape {shape} in the weights but {expected[name]} under the config"
                    + (f" ({fields})" if fields else ""))
    tied: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        tied.setdefault(id(tensor), []).append(name)
    for names in tied.values():
        stored = [name for name in names if name in found]
        if not stored:
            return f"the config has a tensor {names[0]} that the weights lack"
        if len(stored) > 1:
            return f"the weights hold separate tensors {' and '.join(stored)} where this config has one (tied)"
    extra = [name for name in found if name not in expected]
    return f"the weights hold a tensor {extra[0]} that this config has no place for" if extra else None


def _fields_of(config: ModelConfig, sizes: Iterable[int]) -> str:
    """``d_model=1000000``: the config's fields whose value is one of ``sizes``, or ``""``."""
    sizes = set(sizes)
    return ", ".join(f"{field}={value}" for field, value in dataclasses.asdict(config).items()
                     if isinstance(value, int) and not isinstance(value, bool) and value in sizes)


def check_memory(directory: Path, config: ModelConfig) -> None:
    """Before a model of ``config`` is built to load the weights in ``directory``: refuse one that cannot fit in the
    memory available (see ``_check_memory``)."""
    with torch.device("meta"):  # the tensors' sizes without their memory
        model = Transformer(config)
    _check_memory(directory, model, config)


def _check_memory(directory: Path, model: Transformer, config: ModelConfig) -> None:
    """Refuse a model (``model`` on the meta device) whose tensors, twice over, need more memory than is available:
    loading builds the model, reads the weights into memory, then copies them in."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    need = 2 * sum(t.numel() * t.element_size() for t in tensors.values())  # the weights are read, then copied in
    available = available_memory()
    if available is None or need <= available:
        return
    name, largest = max(tensors.items(), key=lambda item: item[1].numel() * item[1].element_size())
    fields = _fields_of(config, largest.shape)
    raise ValueError(
        f"{directory} needs {_size(need)} of memory to load but {_size(available)} is available; its largest tensor, "
        f"{name}, takes {_size(largest.numel() * largest.element_size())}" + (f" ({fields})" if fields else "")
        + f": check the sizes in {CONFIG_FILE}, or free memory"
    )


def _size(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def available_memory() -> int | None:
    """Bytes of memory a process can still allocate: MemAvailable from /proc/meminfo (Linux), else the free
    physical pages (os.sysconf); None where neither can be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
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
