"""Hugging Face checkpoints: load GPT-2 and Llama-family folders into the core ``Transformer``, and export back.

Only ``json`` and ``safetensors`` are read at run time: never ``transformers``, never a pickle. Every HF tensor
maps onto one core parameter through a ``Rule``; the same rules run forwards (load) and backwards (export).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from armm.checkpoint import TOKENIZER_DIR, check_memory, load_model, save_model
from armm.config import ROPE_SCALINGS, ModelConfig
from armm.files import read_json_object
from armm.model import Transformer
from armm.outputs import write_new
from armm.plugins import get_plugins
from armm.tokenizer import Tokenizer

Family = Literal["gpt2", "llama"]
SUPPORTED_ARCHITECTURES: dict[str, Family] = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
}
MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "qwen2": "Qwen2ForCausalLM"}
CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
TOKENIZER_FILE, TOKENIZER_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ATTENTION, MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # buffers some old checkpoints hold
ROLES = ("eos", "bos", "pad")  # a role whose token an earlier role already names is dropped (GPT-2: bos == eos)


@dataclass(frozen=True)
class Rule:
    """Core parameter ``core`` = the HF tensors ``hf`` concatenated along rows, each transposed if ``transpose``
    (GPT-2's Conv1D stores ``[in, out]``). ``hf == ()`` is a bias the checkpoint lacks: zeros. ``split`` gives the
    rows of each part, to cut the fused parameter apart again on export."""

    core: str
    hf: tuple[str, ...]
    transpose: bool = False
    split: tuple[int, ...] = ()


# --- config.json ↔ ModelConfig ---------------------------------------------------------------------------
def read_hf_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"Hugging Face checkpoint folder {directory} does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a Hugging Face checkpoint: {CONFIG_FILE} is missing (expected {CONFIG_FILE}, "
            f"{WEIGHTS_FILE} or {INDEX_FILE} with its shards, and optionally {TOKENIZER_FILE})"
        )
    return read_json_object(path, "a Hugging Face model config")


def architecture_of(hf: dict[str, Any], source: Path) -> str:
    """The ``architectures[0]`` entry (or the class ``model_type`` implies), if armm supports it."""
    architectures = hf.get("architectures") or [MODEL_TYPES.get(hf.get("model_type"), hf.get("model_type"))]
    architecture = architectures[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{source} holds a {architecture!r} model, which armm cannot load; supported architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return architecture


def _need(hf: dict[str, Any], key: str, allowed: tuple[Any, ...], default: Any, feature: str) -> None:
    """Refuse a config value the core cannot express exactly, naming the feature."""
    value = hf.get(key, default)
    if value not in allowed:
        raise ValueError(f"unsupported feature: {feature} ({key}={value!r}); armm supports {key} in {allowed}")


def _dim(hf: dict[str, Any], key: str) -> int:
    if key not in hf:
        raise ValueError(f"{CONFIG_FILE} has no {key!r}, which armm needs to build the model")
    return int(hf[key])


def gpt2_config(hf: dict[str, Any]) -> ModelConfig:
    _need(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new", "a GELU other than tanh GELU")
    _need(hf, "scale_attn_weights", (True,), True, "unscaled attention")
    _need(hf, "scale_attn_by_inverse_layer_idx", (False,), False, "attention scaled by layer index")
    _need(hf, "add_cross_attention", (False,), False, "cross-attention")
    d_model = _dim(hf, "n_embd")
    return ModelConfig(
        vocab_size=_dim(hf, "vocab_size"), n_layer=_dim(hf, "n_layer"), n_head=_dim(hf, "n_head"), d_model=d_model,
        d_ff=hf.get("n_inner") or 4 * d_model, max_seq_len=_dim(hf, "n_positions"), position="learned",
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu", bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def llama_biases(hf: dict[str, Any], architecture: str) -> frozenset[str]:
    """The projections that carry a bias: Llama's attention_bias / mlp_bias, Qwen2's q, k, v."""
    if architecture == "Qwen2ForCausalLM":
        return frozenset(ATTENTION[:3])
    if architecture == "MistralForCausalLM":
        return frozenset()
    return frozenset((ATTENTION if hf.get("attention_bias") else ()) + (MLP if hf.get("mlp_bias") else ()))


def sliding_window(hf: dict[str, Any]) -> int | None:
    """The attention window, if any layer uses one (Mistral: ``sliding_window``; Qwen2: only when switched on)."""
    if hf.get("model_type") == "qwen2" and not (
        hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or [])
    ):
        return None
    return hf.get("sliding_window")


def llama_config(hf: dict[str, Any], architecture: str) -> ModelConfig:
    """The core config of a Llama-family config.json. RoPE parameters sit in ``rope_parameters`` (transformers 5)
    or ``rope_scaling`` and a top-level ``rope_theta`` (earlier); ``rope_scaling`` wins when both are set, as in
    transformers. Plain and ``llama3`` RoPE load; other RoPE types are refused."""
    legacy = bool(hf.get("rope_scaling"))
    rope = dict(hf["rope_scaling"] if legacy else hf.get("rope_parameters") or {})
    rope.setdefault("rope_type", rope.get("type", "default"))  # the oldest files say "type"
    _need(rope, "rope_type", ("default", *ROPE_SCALINGS), "default",
          "rope_scaling" if legacy else "RoPE scaling (rope_parameters.rope_type)")
    max_seq_len = hf.get("max_position_embeddings", 2048)
    kind, scaling = rope["rope_type"], None
    if kind != "default":
        original = "original_max_position_embeddings"  # as in transformers: a top-level value wins, else the context
        rope[original] = hf.get(original, rope.get(original, max_seq_len))
        missing = [key for key in ROPE_SCALINGS[kind] if key not in rope]
        if missing:
            raise ValueError(f"{CONFIG_FILE}: RoPE scaling of rope_type {kind!r} needs {missing}, which "
                             f"{'rope_scaling' if legacy else 'rope_parameters'} lacks")
        scaling = {"rope_type": kind, **{key: rope[key] for key in ROPE_SCALINGS[kind]}}
    _need(hf, "hidden_act", ("silu",), "silu", "an MLP activation other than SiLU (SwiGLU)")
    _need(hf, "partial_rotary_factor", (1, 1.0), 1.0, "partial rotary embeddings")
    d_model, n_head = _dim(hf, "hidden_size"), _dim(hf, "num_attention_heads")
    if hf.get("head_dim") and hf["head_dim"] * n_head != d_model:
        raise ValueError(
            f"unsupported feature: head_dim={hf['head_dim']} while hidden_size / num_attention_heads = "
            f"{d_model / n_head:g}; the core's head_dim is always d_model / n_head"
        )
    window = sliding_window(hf)
    return ModelConfig(
        vocab_size=_dim(hf, "vocab_size"), n_layer=_dim(hf, "num_hidden_layers"), n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head, d_model=d_model, d_ff=_dim(hf, "intermediate_size"),
        max_seq_len=min(max_seq_len, window) if window else max_seq_len,  # within the window attention is full
        position="rope", rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", bias=bool(llama_biases(hf, architecture)),
        tie_embeddings=hf.get("tie_word_embeddings", False), rope_scaling=scaling,
    )


def family_of(config: ModelConfig) -> Family:
    """Which HF family an armm config exports to, or a ValueError saying what does not fit."""
    config.check_one_stream("a Hugging Face GPT-2 or Llama")
    layout = (config.position, config.norm, config.mlp)
    if layout == ("learned", "layernorm", "gelu"):
        if not config.bias or config.n_kv_head != config.n_head:
            raise ValueError(
                f"GPT-2 has biases and no grouped-query attention; this model has bias={config.bias}, "
                f"n_kv_head={config.n_kv_head} (n_head={config.n_head}), so it cannot be exported"
            )
        return "gpt2"
    if layout == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    raise ValueError(
        f"no Hugging Face architecture matches position={config.position}, norm={config.norm}, mlp={config.mlp}; "
        "exportable: GPT-2 (learned, layernorm, gelu, bias=True) and Llama (rope, rmsnorm, swiglu)"
    )


def hf_config(config: ModelConfig, family: Family, special_ids: dict[str, int]) -> dict[str, Any]:
    """config.json for ``transformers``: special-token ids always written (GPT-2's defaults assume 50257 ids)."""
    ids = {f"{role}_token_id": special_ids.get(role) for role in ("bos", "eos", "pad")}
    common = dict(vocab_size=config.vocab_size, tie_word_embeddings=config.tie_embeddings, dtype="float32", **ids)
    if family == "gpt2":
        return dict(
            architectures=["GPT2LMHeadModel"], model_type="gpt2", n_layer=config.n_layer, n_head=config.n_head,
            n_embd=config.d_model, n_inner=config.d_ff, n_positions=config.max_seq_len,
            activation_function="gelu_new", layer_norm_epsilon=config.norm_eps,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
    return dict(
        architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head, hidden_size=config.d_model,
        head_dim=config.head_dim, intermediate_size=config.d_ff, max_position_embeddings=config.max_seq_len,
        hidden_act="silu", rms_norm_eps=config.norm_eps, attention_bias=config.bias, mlp_bias=config.bias,
        rope_theta=config.rope_theta, rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta,
                                                       **(config.rope_scaling or {})},
        **({"rope_scaling": config.rope_scaling} if config.rope_scaling else {}),  # what transformers < 5 reads
        **common,
    )


# --- tensor names ----------------------------------------------------------------------------------------
def gpt2_rules(config: ModelConfig) -> list[Rule]:
    pairs = [("norm_1", "ln_1", False), ("attn.qkv", "attn.c_attn", True), ("attn.proj", "attn.c_proj", True),
             ("norm_2", "ln_2", False), ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True)]
    rules = [Rule("tok_emb.weight", ("transformer.wte.weight",)), Rule("pos_emb.weight", ("transformer.wpe.weight",)),
             Rule("norm_f.weight", ("transformer.ln_f.weight",)), Rule("norm_f.bias", ("transformer.ln_f.bias",))]
    for i in range(config.n_layer):
        for core, hf, conv1d in pairs:
            rules.append(Rule(f"blocks.{i}.{core}.weight", (f"transformer.h.{i}.{hf}.weight",), transpose=conv1d))
            rules.append(Rule(f"blocks.{i}.{core}.bias", (f"transformer.h.{i}.{hf}.bias",)))
    return rules + _lm_head_rule(config)


def llama_rules(config: ModelConfig, biases: frozenset[str]) -> list[Rule]:
    """``biases``: the projections whose bias the checkpoint holds; the core's other biases load as zeros."""
    q_rows, kv_rows = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    fused = [("attn.qkv", [f"self_attn.{p}" for p in ATTENTION[:3]], (q_rows, kv_rows, kv_rows)),
             ("attn.proj", ["self_attn.o_proj"], ()),
             ("mlp.fc", ["mlp.gate_proj", "mlp.up_proj"], (config.d_ff, config.d_ff)),
             ("mlp.proj", ["mlp.down_proj"], ())]
    rules = [Rule("tok_emb.weight", ("model.embed_tokens.weight",)), Rule("norm_f.weight", ("model.norm.weight",))]
    for i in range(config.n_layer):
        layer = f"model.layers.{i}"
        rules.append(Rule(f"blocks.{i}.norm_1.weight", (f"{layer}.input_layernorm.weight",)))
        rules.append(Rule(f"blocks.{i}.norm_2.weight", (f"{layer}.post_attention_layernorm.weight",)))
        for core, parts, split in fused:
            rules.append(Rule(f"blocks.{i}.{core}.weight", tuple(f"{layer}.{p}.weight" for p in parts), split=split))
            if config.bias:
                held = tuple(f"{layer}.{p}.bias" for p in parts if p.split(".")[-1] in biases)
                rules.append(Rule(f"blocks.{i}.{core}.bias", held, split=split))
    return rules + _lm_head_rule(config)


def _lm_head_rule(config: ModelConfig) -> list[Rule]:
    return [] if config.tie_embeddings else [Rule("lm_head.weight", ("lm_head.weight",))]


# --- loading ---------------------------------------------------------------------------------------------
def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors``, or of every shard ``model.safetensors.index.json`` names."""
    if (directory / WEIGHTS_FILE).is_file():
        files = [directory / WEIGHTS_FILE]
    elif (directory / INDEX_FILE).is_file():
        weight_map = read_json_object(directory / INDEX_FILE, "a safetensors shard index").get("weight_map", {})
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        pickled = sorted(p.name for p in directory.glob("*.bin"))
        raise FileNotFoundError(
            f"{directory} has neither {WEIGHTS_FILE} nor {INDEX_FILE}"
            + (f" (only {', '.join(pickled)}: armm never unpickles; re-save with save_pretrained"
               "(safe_serialization=True))" if pickled else "")
        )
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, FileNotFoundError, OSError) as err:
            raise ValueError(f"cannot read the safetensors file {path} ({err})") from None
    return tensors


def core_state(tensors: dict[str, torch.Tensor], rules: list[Rule], model: Transformer, source: Path) -> dict:
    """The core's state dict from HF tensors, checking every shape and that no tensor is left over."""
    expected = model.state_dict()
    unused = {name for name in tensors if not name.endswith(IGNORED_SUFFIXES)}
    if model.config.tie_embeddings:
        unused.discard("lm_head.weight")  # some tied checkpoints store the copy anyway
    state = {}
    for rule in rules:
        missing = [name for name in rule.hf if name not in tensors]
        if missing:
            raise ValueError(f"{source} lacks tensor(s) {missing}, which {CONFIG_FILE} implies")
        unused -= set(rule.hf)
        target = expected[rule.core]
        parts = [tensors[name].T if rule.transpose else tensors[name] for name in rule.hf]
        value = torch.cat(parts) if parts else torch.zeros_like(target)
        if value.shape != target.shape:
            raise ValueError(
                f"{source}: {' + '.join(rule.hf)} has shape {tuple(value.shape)}, but {CONFIG_FILE} implies "
                f"{tuple(target.shape)} for {rule.core}"
            )
        state[rule.core] = value.to(target.dtype)
    if unused:
        raise ValueError(f"{source} holds tensors armm does not know how to map: {sorted(unused)[:8]}")
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def load_hf(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, tokenizer: bool = True
) -> tuple[Transformer, Tokenizer | None]:
    """Load a Hugging Face checkpoint folder → ``(model in eval mode, text-bpe tokenizer or None)``.

    The tokenizer is loaded (through the registered "text-bpe" plugin) when the folder has a tokenizer.json and
    ``tokenizer`` is true; a folder without one loads the model alone.
    """
    directory = Path(path)
    hf = read_hf_config(directory)
    architecture = architecture_of(hf, directory)
    if SUPPORTED_ARCHITECTURES[architecture] == "gpt2":
        config = gpt2_config(hf)
        rules = gpt2_rules(config)
    else:
        config = llama_config(hf, architecture)
        rules = llama_rules(config, llama_biases(hf, architecture))
    check_memory(directory, config)  # sizes from a file: checked before any tensor is allocated
    tensors = gpt2_names(read_weights(directory))
    model = Transformer(config)
    model.load_state_dict(core_state(tensors, rules, model, directory))
    model.to(device=device, dtype=dtype).eval()
    text = load_hf_tokenizer(directory, hf) if tokenizer else None
    if text is not None and text.vocab_size > config.vocab_size:
        raise ValueError(
            f"{directory / TOKENIZER_FILE} has {text.vocab_size} ids, more than vocab_size={config.vocab_size}"
        )
    return model, text


def gpt2_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved from ``GPT2Model`` (the original "gpt2" upload) lack the ``transformer.`` prefix."""
    if "wte.weight" in tensors and "transformer.wte.weight" not in tensors:
        return {f"transformer.{name}": value for name, value in tensors.items()}
    return tensors


# --- tokenizer -------------------------------------------------------------------------------------------
def load_hf_tokenizer(directory: Path, hf: dict[str, Any]) -> Tokenizer | None:
    """tokenizer.json wrapped by the text plugin's BPETokenizer; None if the folder has no tokenizer.json.

    The roles bos/eos/pad come from tokenizer_config.json (or the ids in config.json), more roles from its
    ``extra_special_tokens`` mapping (how armm exports them). The tokenizer.json's added tokens marked special are
    special anyway; so are the vocabulary's tokens the config marks special (``added_tokens_decoder`` entries
    with ``"special": true``, ``additional_special_tokens``, ``unk_token``…), as ``transformers`` makes them.
    """
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        return None
    settings = directory / TOKENIZER_CONFIG_FILE
    tokenizer_config = read_json_object(settings, "tokenizer settings") if settings.is_file() else {}
    tokenizer_json = read_json_object(path, "a Hugging Face tokenizer")
    text_of = _token_texts(tokenizer_json)
    roles: dict[str, str | None] = {}
    for role in ROLES:
        token = _token_text(tokenizer_config.get(f"{role}_token"))
        if token is None:
            token_id = hf.get(f"{role}_token_id")
            token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
            token = text_of.get(token_id) if isinstance(token_id, int) else None
        roles[role] = token if token not in roles.values() else None
    vocabulary = set(text_of.values())
    taken = {token for token in roles.values() if token is not None}
    extra: dict[str, str] = {}
    for name, token in _named_special_tokens(tokenizer_config).items():
        if name not in ROLES and token in vocabulary and token not in taken:
            extra[name] = token
            taken.add(token)
    taken |= {added.get("content") for added in tokenizer_json.get("added_tokens", []) if added.get("special")}
    unnamed = [token for token in dict.fromkeys(_config_special_tokens(tokenizer_config))
               if token in vocabulary and token not in taken]
    return get_plugins().tokenizers.get("text-bpe").from_file(
        path, **roles, extra_special_tokens=extra, unnamed_special_tokens=unnamed)


def _named_special_tokens(tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """Name → token of ``extra_special_tokens`` given as a mapping (transformers 5; ``model_specific_special_tokens``
    when transformers saved the config)."""
    named: dict[str, str] = {}
    for key in ("extra_special_tokens", "model_specific_special_tokens"):
        value = tokenizer_config.get(key)
        if isinstance(value, dict):
            named.update({name: token for name, entry in value.items() if (token := _token_text(entry)) is not None})
    return named


def _config_special_tokens(tokenizer_config: dict[str, Any]) -> list[str]:
    """The tokens tokenizer_config.json marks special without a role armm names."""
    entries = [added for added in (tokenizer_config.get("added_tokens_decoder") or {}).values()
               if isinstance(added, dict) and added.get("special")]
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if isinstance(tokenizer_config.get(key), list):
            entries += tokenizer_config[key]
    entries += [tokenizer_config.get(f"{name}_token") for name in ("unk", "sep", "cls", "mask")]
    return [token for entry in entries if (token := _token_text(entry)) is not None]


def _token_text(token: Any) -> str | None:
    """A tokenizer_config.json special token: a string, or an AddedToken dict with ``content``."""
    token = token.get("content") if isinstance(token, dict) else token
    return token if isinstance(token, str) else None


def _token_texts(tokenizer_json: dict[str, Any]) -> dict[int, str]:
    vocab = (tokenizer_json.get("model") or {}).get("vocab")
    texts = {i: token for token, i in vocab.items()} if isinstance(vocab, dict) else {}
    texts.update({added["id"]: added["content"] for added in tokenizer_json.get("added_tokens", [])})
    return texts


# --- import and export -----------------------------------------------------------------------------------
def check_apart(source: Path, output: Path) -> None:
    """Refuse to convert into the source folder itself or a folder inside it (a ValueError): that would replace
    or mix with the very files being converted."""
    source, output = source.resolve(), output.resolve()
    if output == source or source in output.parents:
        where = "the source folder" if output == source else f"inside the source folder {source}"
        raise ValueError(f"{output} is {where}: convert into a folder outside it")


def import_hf(source: str | Path, output: str | Path) -> Path:
    """Convert a HF checkpoint folder into an armm model directory, keeping its chat template. Files of the same
    names already in ``output`` are replaced, as ``armm.save_model`` does; ``output`` may not be in ``source``."""
    source, output = Path(source), Path(output)
    check_apart(source, output)
    model, tokenizer = load_hf(source)
    save_model(output, model, tokenizer)
    copy_chat_files(source, output)
    return output


def copy_chat_files(source: Path, output: Path, settings: str = TOKENIZER_CONFIG_FILE) -> None:
    """Copy the chat template and the tokenizer settings (at ``settings`` in ``source``: a Hugging Face folder keeps
    them at its root, an armm model directory in ``tokenizer/``) to where armm model directory ``output`` keeps them;
    the settings only when ``output`` has a tokenizer."""
    kept = Path(TOKENIZER_DIR) / TOKENIZER_CONFIG_FILE
    for name, target in ((settings, kept), (CHAT_TEMPLATE_FILE, Path(CHAT_TEMPLATE_FILE))):
        if (source / name).is_file() and (output / target).parent.is_dir():
            shutil.copyfile(source / name, output / target)


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write an armm model directory as a HF checkpoint folder (GPT2LMHeadModel or LlamaForCausalLM) that
    ``transformers`` loads: config.json, model.safetensors, and tokenizer.json + tokenizer_config.json when the
    tokenizer is a BPE over a tokenizers backend (other tokenizers are not exported). Files of the same names
    already in ``out_dir`` are replaced; ``out_dir`` may not be in ``model_dir``."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_apart(model_dir, out_dir)
    model, tokenizer = load_model(model_dir)
    config = model.config
    family = family_of(config)
    rules = gpt2_rules(config) if family == "gpt2" else llama_rules(config, frozenset(ATTENTION + MLP))
    state = model.state_dict()
    tensors = {}
    for rule in rules:
        for name, part in zip(rule.hf, state[rule.core].split(rule.split or state[rule.core].shape[0])):
            tensors[name] = (part.T if rule.transpose else part).contiguous().clone()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    backend = getattr(tokenizer, "backend", None)
    special_ids = tokenizer.special_tokens if backend is not None else {}
    write_json(out_dir / CONFIG_FILE, hf_config(config, family, special_ids))
    if backend is not None:
        backend.save(str(out_dir / TOKENIZER_FILE))
        write_json(out_dir / TOKENIZER_CONFIG_FILE, hf_tokenizer_config(model_dir, config, backend, special_ids))
    if (model_dir / CHAT_TEMPLATE_FILE).is_file():
        shutil.copyfile(model_dir / CHAT_TEMPLATE_FILE, out_dir / CHAT_TEMPLATE_FILE)
    return out_dir


def hf_tokenizer_config(model_dir: Path, config: ModelConfig, backend: Any, special_ids: dict[str, int]) -> dict:
    """The imported tokenizer_config.json (chat template and all) if there is one, with armm's special tokens: the
    roles bos/eos/pad, and any other role by name in ``extra_special_tokens``."""
    kept = model_dir / TOKENIZER_DIR / TOKENIZER_CONFIG_FILE
    settings = read_json_object(kept, "tokenizer settings") if kept.is_file() else {}
    settings.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=config.max_seq_len)
    for role in ROLES:
        token_id = special_ids.get(role)
        settings[f"{role}_token"] = backend.id_to_token(token_id) if token_id is not None else None
    extra = {role: backend.id_to_token(token_id) for role, token_id in special_ids.items() if role not in ROLES}
    if extra:  # transformers 5 names them so; the other special tokens are marked special in tokenizer.json
        settings["extra_special_tokens"] = extra
    return settings


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(source: Path, output: Path, to: Literal["armm", "hf"] = "armm", overwrite: bool = False) -> None:
    """Convert between a Hugging Face checkpoint folder and an armm model directory (offline, safetensors only).

    Args:
        source: A HF folder (config.json, model.safetensors or sharded, tokenizer.json) with --to armm; an armm
            model directory with --to hf.
        output: The folder to write: a new or empty one, outside SOURCE.
        to: "armm" imports a GPT-2 / Llama / Mistral / Qwen2 checkpoint; "hf" exports to GPT2LMHeadModel or
            LlamaForCausalLM, loadable by transformers.
        overwrite: Write into a folder that is not empty, replacing the files of the same names (the other files
            there stay).
    """
    check_apart(source, output)
    check_empty(output, overwrite)
    write = import_hf if to == "armm" else export_hf
    write_new(output, lambda staged: files_under(write(source, staged)), overwrite=True)
    print(f"wrote {output}")


def check_empty(folder: Path, overwrite: bool) -> None:
    """Refuse a file, and a folder that is not empty unless ``overwrite`` (FileExistsError)."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder: choose another OUTPUT")
    if not overwrite and folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty: pass --overwrite to replace the files convert writes there, "
                              "or choose a new folder")


def files_under(folder: Path) -> list[Path]:
    """Every file in ``folder`` and its subfolders."""
    return [path for path in folder.rglob("*") if path.is_file()]
