"""Hugging Face checkpoints: logits and greedy generation match ``transformers``; export round-trips; clear errors."""

import dataclasses
import importlib.util
import json

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

import armm
from armm.cli import main
from armm.hf import export_hf, load_hf
from armm.model import rope_frequencies
from tests.conftest import tiny_model

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="parity checks need the `transformers` package (a dev dependency: pip install armm[dev])",
)
VOCAB = 300
TOLERANCE = 1e-4
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A tokenizer turns text into ids and back again.",
             "Hugging Face checkpoints load into armm without transformers.", "Ünïcödé text, too: 東京 ✓"]
SMALL = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=None)
LLAMA_DIMS = dict(SMALL, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
HF_MODELS = {  # name → (config class, keywords)
    "gpt2": ("GPT2Config", dict(SMALL, n_layer=2, n_embd=64, n_head=4, n_positions=64)),
    "gpt2-untied": ("GPT2Config", dict(SMALL, n_layer=2, n_embd=64, n_head=4, n_positions=64,
                                       tie_word_embeddings=False)),
    "llama": ("LlamaConfig", dict(LLAMA_DIMS, rope_theta=500000.0)),
    "llama-tied": ("LlamaConfig", dict(LLAMA_DIMS, tie_word_embeddings=True)),
    "llama-biases": ("LlamaConfig", dict(LLAMA_DIMS, attention_bias=True, mlp_bias=True)),
    "mistral": ("MistralConfig", dict(LLAMA_DIMS, head_dim=16, sliding_window=48)),
    "qwen2": ("Qwen2Config", dict(LLAMA_DIMS)),
}


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Add noise to every parameter, so zero biases and unit norm weights also test their mapping."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))


def hf_model(name: str):
    import transformers

    config_class, keywords = HF_MODELS[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**keywords))
    perturb(model.float().eval())
    return model


def random_ids(batch: int = 3, length: int = 20) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def max_logit_diff(hf, model: armm.Transformer, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return (hf(ids).logits - model(ids)).abs().max().item()


def hf_greedy(hf, ids: torch.Tensor, steps: int) -> list[list[int]]:
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
                      do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def byte_level_bpe() -> Backend:
    """A GPT-2-style tokenizer.json: byte-level BPE trained on a few sentences, with <|endoftext|>."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(SENTENCES, trainer)
    return backend


# --- parity with transformers ----------------------------------------------------------------------------
@needs_transformers
@pytest.mark.parametrize("name", list(HF_MODELS))
def test_logits_and_greedy_generation_match_transformers(name, tmp_path):
    hf = hf_model(name)
    hf.save_pretrained(tmp_path)
    model, tokenizer = load_hf(tmp_path)
    ids = random_ids()
    assert tokenizer is None and not model.training
    assert max_logit_diff(hf, model, ids) < TOLERANCE
    assert armm.generate(model, ids.tolist(), max_new_tokens=12) == hf_greedy(hf, ids, 12)


@needs_transformers
def test_the_config_maps_onto_the_core(tmp_path):
    hf_model("mistral").save_pretrained(tmp_path / "mistral")
    hf_model("qwen2").save_pretrained(tmp_path / "qwen2")
    mistral, _ = load_hf(tmp_path / "mistral")
    qwen, _ = load_hf(tmp_path / "qwen2")
    assert mistral.config.max_seq_len == 48  # the sliding window: within it attention is full
    assert (mistral.config.n_kv_head, mistral.config.d_ff, mistral.config.bias) == (2, 128, False)
    assert qwen.config.bias and torch.all(qwen.blocks[0].attn.proj.bias == 0)  # Qwen2: q, k, v biases only
    assert torch.all(qwen.blocks[0].attn.qkv.bias != 0)


@needs_transformers
def test_a_sharded_checkpoint_loads(tmp_path):
    hf = hf_model("llama")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    model, _ = load_hf(tmp_path)
    assert max_logit_diff(hf, model, random_ids()) < TOLERANCE


# --- export ----------------------------------------------------------------------------------------------
def text_bpe() -> armm.Tokenizer:
    tokenizer = armm.get_plugins().tokenizers.get("text-bpe")(vocab_size=VOCAB)
    tokenizer.fit(SENTENCES)
    return tokenizer


@needs_transformers
@pytest.mark.parametrize("preset,overrides", [("gpt2-tiny", {}), ("llama-tiny", {}),
                                               ("llama-tiny", dict(bias=True, tie_embeddings=True))])
def test_export_round_trip_through_transformers(preset, overrides, tmp_path):
    import transformers

    model = tiny_model(preset, vocab_size=VOCAB, **overrides)
    perturb(model)
    tokenizer = text_bpe()
    armm.save_model(tmp_path / "armm", model, tokenizer)
    export_hf(tmp_path / "armm", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert max_logit_diff(hf, model, random_ids()) < TOLERANCE
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer.eos_token == "<|endoftext|>" and hf_tokenizer.bos_token == "<|bos|>"
    for text in SENTENCES:
        assert hf_tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(text)

    reloaded, reloaded_tokenizer = load_hf(tmp_path / "hf")
    assert reloaded.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name
    assert reloaded_tokenizer.special_tokens == tokenizer.special_tokens


def test_export_refuses_a_layout_no_hf_architecture_has(tmp_path):
    armm.save_model(tmp_path / "armm", tiny_model("gpt2-tiny", position="rope"))
    with pytest.raises(ValueError, match="no Hugging Face architecture matches position=rope, norm=layernorm"):
        export_hf(tmp_path / "armm", tmp_path / "hf")


# --- tokenizer -------------------------------------------------------------------------------------------
def test_a_gpt2_tokenizer_loads_and_encodes_like_the_tokenizers_library(tmp_path):
    armm.save_model(tmp_path / "armm", tiny_model("gpt2-tiny", vocab_size=VOCAB))
    export_hf(tmp_path / "armm", tmp_path)  # a GPT-2 checkpoint without tokenizer files
    assert load_hf(tmp_path)[1] is None
    backend = byte_level_bpe()
    backend.save(str(tmp_path / "tokenizer.json"))
    eot = "<|endoftext|>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(dict(bos_token=eot, eos_token=eot, unk_token=eot)))
    _, tokenizer = load_hf(tmp_path)
    assert tokenizer.special_tokens == {"eos": backend.token_to_id(eot)}  # GPT-2: eos only, no bos or pad
    for text in SENTENCES + ["unseen wörds 123"]:
        assert tokenizer.encode(text) == backend.encode(text).ids
        assert tokenizer.decode(tokenizer.encode(text)) == text
    joined = f"{SENTENCES[0]}{eot}{SENTENCES[1]}"
    assert tokenizer.encode(joined, allow_special=True) == backend.encode(joined).ids


def test_special_tokens_fall_back_to_the_ids_in_config_json(tmp_path):
    armm.save_model(tmp_path / "armm", tiny_model("gpt2-tiny", vocab_size=VOCAB))
    export_hf(tmp_path / "armm", tmp_path)
    backend = byte_level_bpe()
    backend.save(str(tmp_path / "tokenizer.json"))
    eot = backend.token_to_id("<|endoftext|>")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, bos_token_id=eot, eos_token_id=[eot])))
    assert load_hf(tmp_path)[1].special_tokens == {"eos": eot}


# --- CLI -------------------------------------------------------------------------------------------------
def test_armm_convert_both_ways(tmp_path):
    model = tiny_model("llama-tiny", vocab_size=VOCAB)
    armm.save_model(tmp_path / "armm", model, text_bpe())
    main(["convert", str(tmp_path / "armm"), str(tmp_path / "hf"), "--to", "hf"])
    main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")])
    back, tokenizer = armm.load_model(tmp_path / "back")
    ids = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), rtol=0, atol=0)
    assert tokenizer.encode(SENTENCES[0]) == text_bpe().encode(SENTENCES[0])
    assert (tmp_path / "back" / "tokenizer" / "tokenizer_config.json").is_file()  # the chat template travels


# --- errors ----------------------------------------------------------------------------------------------
@pytest.fixture
def gpt2_dir(tmp_path):
    armm.save_model(tmp_path / "armm", tiny_model("gpt2-tiny", vocab_size=VOCAB))
    return export_hf(tmp_path / "armm", tmp_path / "hf")


def edit_config(directory, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def test_missing_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf(tmp_path / "nope")


def test_unsupported_architecture_lists_the_supported_ones(gpt2_dir):
    edit_config(gpt2_dir, architectures=["BertForMaskedLM"])
    with pytest.raises(ValueError, match="'BertForMaskedLM'.*supported architectures: GPT2LMHeadModel, "
                                         "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"):
        load_hf(gpt2_dir)


def test_rope_scaling_and_other_inexpressible_features_are_refused(tmp_path):
    armm.save_model(tmp_path / "armm", tiny_model("llama-tiny", vocab_size=VOCAB))
    hf_dir = export_hf(tmp_path / "armm", tmp_path / "hf")
    edit_config(hf_dir, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="unsupported feature: rope_scaling"):
        load_hf(hf_dir)
    edit_config(hf_dir, rope_scaling=None, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
    with pytest.raises(ValueError, match="unsupported feature: RoPE scaling"):
        load_hf(hf_dir)
    edit_config(hf_dir, rope_parameters=None, head_dim=32)
    with pytest.raises(ValueError, match="unsupported feature: head_dim=32"):
        load_hf(hf_dir)


def test_weights_that_do_not_match_the_config(gpt2_dir):
    edit_config(gpt2_dir, n_embd=128)
    with pytest.raises(ValueError, match="has shape .* but config.json implies"):
        load_hf(gpt2_dir)
    edit_config(gpt2_dir, n_embd=64, n_layer=1)
    with pytest.raises(ValueError, match="tensors armm does not know how to map.*transformer.h.1"):
        load_hf(gpt2_dir)
    (gpt2_dir / "model.safetensors").rename(gpt2_dir / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="armm never unpickles"):
        load_hf(gpt2_dir)


# --- Llama 3.1 RoPE scaling ------------------------------------------------------------------------------
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}  # a short original context: the test's positions feel it


def llama3_hf_model():
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**LLAMA_DIMS, rope_parameters={"rope_theta": 10000.0, **LLAMA3_SCALING})
    model = transformers.LlamaForCausalLM(config)
    perturb(model.float().eval())
    return model


@needs_transformers
def test_llama3_rope_frequencies_equal_transformers():
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = dict(LLAMA3_SCALING, original_max_position_embeddings=48)  # wavelengths kept, blended and slowed
    config = transformers.LlamaConfig(**LLAMA_DIMS, rope_parameters={"rope_theta": 10000.0, **scaling})
    want, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config)
    got, plain = rope_frequencies(16, 10000.0, scaling), rope_frequencies(16, 10000.0)
    assert attention_factor == 1.0 and torch.allclose(got, want, rtol=1e-6, atol=0)
    assert (got == plain).any() and (got == plain / 8).any() and ((got < plain) & (got > plain / 8)).any()


@needs_transformers
def test_llama3_rope_scaling_imports_with_logit_parity_and_exports_back(tmp_path):
    import transformers

    hf = llama3_hf_model()
    hf.save_pretrained(tmp_path / "hf")
    model, _ = load_hf(tmp_path / "hf")
    assert model.config.rope_scaling == LLAMA3_SCALING
    ids = random_ids()
    assert max_logit_diff(hf, model, ids) < TOLERANCE
    assert armm.generate(model, ids.tolist(), max_new_tokens=12) == hf_greedy(hf, ids, 12)
    unscaled = armm.Transformer(dataclasses.replace(model.config, rope_scaling=None)).eval()
    unscaled.load_state_dict(model.state_dict())
    assert max_logit_diff(hf, unscaled, ids) > 100 * TOLERANCE  # the scaling matters at these positions

    config = json.loads((tmp_path / "hf" / "config.json").read_text())  # the same, as transformers 4 wrote it
    legacy = {key: value for key, value in LLAMA3_SCALING.items() if key != "rope_type"} | {"type": "llama3"}
    edit_config(tmp_path / "hf", rope_parameters=None, rope_theta=10000.0, rope_scaling=legacy)
    assert load_hf(tmp_path / "hf")[0].config == model.config
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))

    armm.save_model(tmp_path / "armm", model)
    assert armm.load_model(tmp_path / "armm")[0].config == model.config  # config.json keeps it
    export_hf(tmp_path / "armm", tmp_path / "back")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert back.config.rope_parameters["rope_type"] == "llama3"
    assert max_logit_diff(back, model, ids) < TOLERANCE
    assert load_hf(tmp_path / "back")[0].config == model.config


def test_the_native_step_reads_the_scaled_rope_tables():
    """The C step rotates by the model's rope_cos / rope_sin buffers, so a scaled model decodes alike natively."""
    from armm.backends import library

    if not library.available():
        pytest.skip("no C compiler: armm decodes in PyTorch here")
    model = tiny_model("llama-tiny", vocab_size=VOCAB, rope_scaling=LLAMA3_SCALING)
    perturb(model)
    assert not torch.allclose(model.rope_cos, tiny_model("llama-tiny", vocab_size=VOCAB).rope_cos)
    prompts = random_ids(2, 10).tolist()
    logits = {}
    for backend in ("eager", "native"):
        sampler = RecordingSampler()
        tokens = armm.generate(model, prompts, max_new_tokens=20, sampler=sampler, backend=backend)
        logits[backend] = (tokens, torch.stack(sampler.logits))
    assert logits["native"][0] == logits["eager"][0]
    torch.testing.assert_close(logits["native"][1], logits["eager"][1], rtol=0, atol=TOLERANCE)


class RecordingSampler(armm.Sampler):
    """Greedy, keeping each step's logits."""

    def __init__(self) -> None:
        super().__init__(armm.build_sampler("greedy").transforms, "greedy")
        self.logits = []

    def __call__(self, logits, tokens, generators=None):
        self.logits.append(logits.clone())
        return super().__call__(logits, tokens, generators)


def test_rope_types_other_than_llama3_are_still_refused(tmp_path):
    armm.save_model(tmp_path / "armm", tiny_model("llama-tiny", vocab_size=VOCAB))
    hf_dir = export_hf(tmp_path / "armm", tmp_path / "hf")
    edit_config(hf_dir, rope_scaling={"type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match=r"unsupported feature: rope_scaling \(rope_type='dynamic'\); armm "
                                         r"supports rope_type in \('default', 'llama3'\)"):
        load_hf(hf_dir)
    edit_config(hf_dir, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ValueError, match=r"needs \['low_freq_factor', 'high_freq_factor'\]"):
        load_hf(hf_dir)


def test_a_checkpoint_too_large_for_memory_is_refused_before_anything_is_allocated(gpt2_dir, monkeypatch):
    """Sizes in a Hugging Face config.json come from a file: the memory they need is checked before building."""
    import armm.checkpoint

    edit_config(gpt2_dir, n_embd=2**16, n_head=2**8)  # ~2**16 x vocab and 12 x 2**32 weights per layer
    monkeypatch.setattr(armm.checkpoint, "available_memory", lambda: 2**30)
    with pytest.raises(ValueError, match=r"needs .* GiB of memory to load but 1.0 GiB is available"):
        load_hf(gpt2_dir)
