"""The Transformer: causality, KV-cache parity with a full forward pass, and batch invariance."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import armm
from tests.conftest import tiny_model

PRESETS = ["gpt2-tiny", "llama-tiny"]


@settings(max_examples=25, deadline=None)
@given(
    n_layer=st.integers(1, 2),
    n_head=st.sampled_from([1, 2, 4]),
    kv_divisor=st.sampled_from([1, 2, 4]),
    position=st.sampled_from(["learned", "rope"]),
    norm=st.sampled_from(["layernorm", "rmsnorm"]),
    mlp=st.sampled_from(["gelu", "swiglu"]),
    length=st.integers(2, 24),
    cut=st.data(),
)
def test_changing_later_tokens_never_changes_earlier_logits(n_layer, n_head, kv_divisor, position, norm, mlp, length, cut):
    n_kv_head = max(1, n_head // kv_divisor)
    config = armm.ModelConfig(vocab_size=50, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, d_model=8 * n_head,
                              max_seq_len=32, position=position, norm=norm, mlp=mlp)
    model = armm.Transformer(config).eval()
    t = cut.draw(st.integers(0, length - 2))
    ids = torch.randint(0, 50, (1, length))
    changed = ids.clone()
    changed[0, t + 1:] = (changed[0, t + 1:] + 1 + torch.randint(0, 48, (length - t - 1,))) % 50
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])


def _full_forward_logits(model, rows):
    """Reference: each row alone, a full forward over its whole prefix, without a cache."""
    with torch.no_grad():
        return [model(torch.tensor([row]))[0, -1] for row in rows]


@pytest.mark.parametrize("preset", PRESETS)
def test_cached_logits_equal_a_full_forward_at_every_step_for_ragged_prompts(preset):
    model = tiny_model(preset)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [42], [100, 101, 102]]
    B, P, steps = len(prompts), max(map(len, prompts)), 12
    pad = torch.tensor([P - len(p) for p in prompts])
    idx = torch.stack([torch.tensor([0] * (P - len(p)) + p) for p in prompts])
    rows = [list(p) for p in prompts]
    cache = model.new_caches(B, P + steps)
    with torch.no_grad():
        logits = model(idx, cache=cache, start=0, pad=pad)[:, -1]
        for step in range(steps):
            reference = torch.stack(_full_forward_logits(model, rows))
            assert (logits - reference).abs().max() < 1e-4, f"step {step}"
            token = torch.randint(0, model.config.vocab_size, (B,))  # any continuation, not only greedy
            for row, t in zip(rows, token.tolist()):
                row.append(t)
            logits = model(token[:, None], cache=cache, start=P + step, pad=pad)[:, -1]


@pytest.mark.parametrize("preset", PRESETS)
def test_logits_to_keep_gives_the_last_positions_logits(preset):
    model = tiny_model(preset)
    ids = torch.randint(0, 256, (2, 9))
    pad = torch.tensor([0, 3])
    with torch.no_grad():
        full = model(ids, pad=pad)
        for n in (1, 4, 9):
            torch.testing.assert_close(model(ids, pad=pad, logits_to_keep=n), full[:, -n:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_chunked_prefill_equals_one_pass(preset):
    model = tiny_model(preset)
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_caches(2, 20)
        first, second = model(ids[:, :13], cache=cache), model(ids[:, 13:], cache=cache, start=13)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=0, atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_padded_batch_forward_equals_rows_alone(preset):
    model = tiny_model(preset)
    prompts = [[1, 2, 3, 4, 5], [9, 8], [7, 7, 7]]
    P = 5
    idx = torch.stack([torch.tensor([0] * (P - len(p)) + p) for p in prompts])
    pad = torch.tensor([P - len(p) for p in prompts])
    with torch.no_grad():
        batch = model(idx, pad=pad)
    for row, prompt in enumerate(prompts):
        alone = model(torch.tensor([prompt]))[0]
        torch.testing.assert_close(batch[row, P - len(prompt):], alone, rtol=0, atol=1e-4)
        assert torch.isfinite(batch[row]).all()


def test_forward_rejects_sequences_longer_than_the_context():
    model = tiny_model(max_seq_len=16)
    with pytest.raises(ValueError, match="longer than the model's context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_start_without_a_cache_is_an_error():
    with pytest.raises(ValueError, match="needs a KV-cache"):
        tiny_model()(torch.zeros(1, 1, dtype=torch.long), start=3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(start=-1), "start must be an integer cache slot >= 0, got -1"),
    (dict(start=1.5), "start must be an integer cache slot >= 0"),
    (dict(pad=torch.tensor([0, 1])), r"pad must be an integer tensor \[batch\] = \[1\]"),
    (dict(pad=torch.tensor([0.5])), "pad must be an integer tensor"),
    (dict(pad=torch.tensor([-1])), r"0 <= pad < start \+ T = 1, got \[-1\]"),
    (dict(logits_to_keep=-1), "logits_to_keep must be an integer >= 0"),
])
def test_forward_refuses_bad_arguments_with_a_cache(kwargs, message):
    model = tiny_model()
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        model(torch.tensor([[1]]), cache=model.new_caches(1, 4), **kwargs)


def test_forward_refuses_float_ids_and_a_cache_of_another_depth():
    model = tiny_model()
    with pytest.raises(ValueError, match="idx must be an integer tensor"):
        model(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="one KVCache per layer"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=model.new_caches(1, 4)[:1])


def test_tied_embeddings_share_one_tensor_and_llama_unties():
    gpt2, llama = tiny_model("gpt2-tiny"), tiny_model("llama-tiny")
    assert gpt2.lm_head.weight is gpt2.tok_emb.weight
    assert llama.lm_head.weight is not llama.tok_emb.weight


def test_grouped_query_attention_shrinks_the_kv_projection_and_cache():
    model = tiny_model("llama-tiny")  # 4 heads, 2 kv heads, head_dim 16
    c = model.config
    assert model.blocks[0].attn.qkv.out_features == (c.n_head + 2 * c.n_kv_head) * c.head_dim
    assert model.new_caches(3, 10)[0].k.shape == (3, c.n_kv_head, 10, c.head_dim)
