"""Generation past the context: ``recompute`` equals a loop over the last window, ``rolling`` equals sliding-window
attention (Mistral's, in ``transformers``), ``chunked`` equals its own definition; on every backend, ragged batches."""

import importlib.util

import pytest
import torch

import armm
from armm.generation import MAX_CONTEXT_IDS
from armm.kv_cache import KVCache
from tests.conftest import tiny_model

CONTEXT = 16
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], list(range(10, 10 + CONTEXT))]  # ragged; the last fills the context
STEPS = 40  # well past the context: the window slides over 2.5 contexts
BACKENDS = ["eager", "native", "auto"]


def window_loop(model, prompt, steps, keep=None):
    """Greedy tokens, each from a full forward (no cache) over the window the definition gives: the last
    ``max_seq_len`` tokens (``keep=None``), or, chunked, the tokens since the last refill, which keeps ``keep``."""
    L, seq, first = model.config.max_seq_len, list(prompt), 0
    with torch.no_grad():
        for _ in range(steps):
            if keep is None:
                first = max(0, len(seq) - L)
            elif len(seq) - first > L:
                first = len(seq) - keep
            seq.append(int(model(torch.tensor([seq[first:]]))[0, -1].argmax()))
    return seq[len(prompt):]


def model_of(preset, **overrides):
    return tiny_model(preset, max_seq_len=CONTEXT, **overrides)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_recompute_equals_a_loop_over_the_last_window(preset, backend):
    model = model_of(preset)
    expected = [window_loop(model, p, STEPS) for p in PROMPTS]
    assert armm.generate(model, PROMPTS, max_new_tokens=STEPS, backend=backend) == expected


@pytest.mark.parametrize("preset, past_context", [("gpt2-tiny", "recompute"), ("gpt2-tiny", "chunked"),
                                                  ("llama-tiny", "recompute"), ("llama-tiny", "rolling")])
def test_sampling_past_the_context_gives_each_row_what_it_gets_alone(preset, past_context):
    model = model_of(preset)
    options = dict(max_new_tokens=STEPS, sampler="temperature=0.9,top_k=50", seed=5, past_context=past_context)
    batch = armm.generate(model, PROMPTS, **options)
    alone = [armm.generate(model, [p], **options)[0] for p in PROMPTS]
    assert batch == alone and all(len(row) == STEPS for row in batch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rolling_with_one_layer_equals_the_window_loop(backend):
    """With one layer a cached key depends on its token and position alone, so a rolling cache is exact."""
    model = model_of("llama-tiny", n_layer=1)
    expected = [window_loop(model, p, STEPS) for p in PROMPTS]
    assert armm.generate(model, PROMPTS, max_new_tokens=STEPS, backend=backend, past_context="rolling") == expected


def test_rolling_is_the_same_on_every_backend():
    model = model_of("llama-tiny")
    eager = armm.generate(model, PROMPTS, max_new_tokens=STEPS, backend="eager", past_context="rolling")
    assert eager != [window_loop(model, p, STEPS) for p in PROMPTS]  # two layers: older windows leak in
    for backend in ("native", "auto"):
        assert armm.generate(model, PROMPTS, max_new_tokens=STEPS, backend=backend, past_context="rolling") == eager


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers (a dev dependency)")
def test_rolling_equals_mistral_sliding_window_attention_in_transformers(tmp_path):
    import transformers

    from armm.hf import load_hf

    torch.manual_seed(0)
    config = transformers.MistralConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=CONTEXT,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    hf = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.02 * torch.randn(param.shape))  # so that norms and zero-initialised weights matter too
    hf.save_pretrained(tmp_path)
    model, _ = load_hf(tmp_path)
    assert model.config.max_seq_len == CONTEXT  # the window: attention within it is full
    ids = torch.randint(0, 300, (1, 10))
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS, min_new_tokens=STEPS,
                      do_sample=False, pad_token_id=0)
    assert armm.generate(model, ids.tolist(), max_new_tokens=STEPS, past_context="rolling") == out[:, 10:].tolist()
    with torch.no_grad():
        expected = hf(out).logits[0, 9:-1]  # (STEPS, V): the predictions of every generated token
    caches = model.new_caches(1, CONTEXT, rolling=True)
    with torch.no_grad():
        got = [model(out[:, :10], cache=caches)[0, -1]]
        got += [model(out[:, s:s + 1], cache=caches, start=s)[0, -1] for s in range(10, out.size(1) - 1)]
    assert (torch.stack(got) - expected).abs().max() < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_chunked_equals_its_definition(preset, backend):
    model = model_of(preset)
    expected = [window_loop(model, p, STEPS, keep=CONTEXT // 2) for p in PROMPTS]
    assert armm.generate(model, PROMPTS, max_new_tokens=STEPS, backend=backend, past_context="chunked") == expected


def test_a_rolling_cache_takes_one_token_at_a_time_past_its_length():
    cache = KVCache(1, 1, 4, 2, dtype=torch.float32, device=torch.device("cpu"), rolling=True)
    for slot in range(6):
        cache.update(slot, torch.full((1, 1, 1, 2), float(slot)), torch.zeros(1, 1, 1, 2))
    assert cache.k[0, 0, :, 0].tolist() == [4.0, 5.0, 2.0, 3.0]  # slots 4 and 5 replaced slots 0 and 1
    with pytest.raises(ValueError, match="one token at a time"):
        cache.update(6, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    fixed = KVCache(1, 1, 4, 2, dtype=torch.float32, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="cannot write up to slot 5"):
        fixed.update(4, torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))


def test_errors_name_the_limits():
    model = model_of("gpt2-tiny")
    with pytest.raises(ValueError, match=f"shorten it to at most {CONTEXT} tokens"):
        armm.generate(model, [[1] * (CONTEXT + 1)], max_new_tokens=200)
    with pytest.raises(ValueError, match="needs RoPE positions"):
        armm.generate(model, [[1]], max_new_tokens=5, past_context="rolling")
    with pytest.raises(ValueError, match="needs RoPE positions"):
        model.new_caches(1, 4, rolling=True)
    with pytest.raises(ValueError, match="past_context must be one of recompute, rolling, chunked"):
        armm.generate(model, [[1]], max_new_tokens=5, past_context="slide")
    with pytest.raises(ValueError, match="lower max_new_tokens or the batch size"):
        armm.generate(model, [[1]] * 4, max_new_tokens=MAX_CONTEXT_IDS)
    with pytest.raises(ValueError, match="lower max_new_tokens to at most 11"):  # speculative stays in the context
        armm.speculative_generate(model, model, [[1] * 5], max_new_tokens=200)
    with pytest.raises(ValueError, match=f"shorten it to at most {CONTEXT - 1} tokens"):
        armm.speculative_generate(model, model, [[1] * CONTEXT], max_new_tokens=1)


def always_a(directory):
    """A saved byte-level model (128-token context) whose every prediction is "a": the final norm outputs a
    constant vector that only the output row of "a" reads."""
    model = tiny_model("gpt2-tiny", vocab_size=259, tie_embeddings=False)
    with torch.no_grad():
        model.norm_f.weight.zero_()
        model.norm_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[ord("a")] = 1.0
    armm.save_model(directory, model, armm.ByteTokenizer())
    return directory


def test_sample_and_chat_write_outputs_longer_than_the_context(tmp_path, monkeypatch, capsys):
    import io
    import sys

    from armm.cli import main

    model_dir = always_a(tmp_path / "m")
    main(["sample", str(model_dir), "--prompt", "x", "--max-new-tokens", "300"])
    assert "".join(capsys.readouterr().out.split()) == "x" + "a" * 300  # (the console wraps long lines)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    main(["chat", str(model_dir), "--max_new_tokens", "300", "--sampler", "greedy", "--past_context", "chunked"])
    assert "assistant> " + "a" * 300 + "\n" in capsys.readouterr().out


def test_the_native_step_rolls_its_cache_like_pytorch():
    """Logits step by step past the context, rows padded so that the window's real slots wrap round the cache."""
    from armm.backends import decoding, library

    if not library.available():
        pytest.skip("the native library is not built on this machine")
    model = model_of("llama-tiny")
    ids, pad = torch.randint(0, 256, (2, 60)), torch.tensor([0, 3])
    logits = {}
    with torch.inference_mode():
        for backend in ("eager", "native"):
            with decoding(model, 2, CONTEXT, backend, rolling=True) as decoder:
                steps = [decoder.forward(ids[:, :5], 0, pad)[:, -1]]
                steps += [decoder.step(ids[:, s:s + 1], s, pad) for s in range(5, ids.size(1))]
            logits[backend] = torch.stack(steps)
    assert (logits["native"] - logits["eager"]).abs().max() < 1e-5
