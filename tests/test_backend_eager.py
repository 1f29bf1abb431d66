"""Decode-time weight formats (armm/linear.py): packed float32 equals plain, int8 stays close to float32 on a
trained model, and a prepared copy is never used once its weight has changed."""

import copy
import pickle

import pytest
import torch
from pydoc_data.topics import topics

import armm
from armm.linear import Linear, quantize_int8, version_of
from tests.conftest import tiny_model


def _cached_logits(model: armm.Transformer, ids: torch.Tensor) -> torch.Tensor:
    """Logits of every position, one token at a time through the KV-cache → [B, T, V]."""
    B, T = ids.shape
    model.setup_cache(B, T)
    try:
        with torch.inference_mode():
            return torch.cat([model(ids[:, t:t + 1], start=t) for t in range(T)], dim=1)
    finally:
        model.clear_cache()


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_packed_decoding_equals_plain_decoding_and_a_full_forward(preset):
    torch.manual_seed(0)
    model = tiny_model(preset)
    ids = torch.randint(0, model.config.vocab_size, (3, 24))
    with torch.no_grad():
        full = model(ids)
    model.decode_weights = "packed"
    packed = _cached_logits(model, ids)
    assert any(isinstance(m, Linear) and m.prepared is not None for m in model.modules())  # the packed path ran
    model.decode_weights = "plain"
    plain = _cached_logits(model, ids)
    torch.testing.assert_close(packed, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain, full, rtol=1e-4, atol=1e-4)
    prompts = ids[:, :5].tolist()
    model.decode_weights = "packed"
    greedy_packed = armm.generate(model, prompts, max_new_tokens=15)
    model.decode_weights = "plain"
    assert greedy_packed == armm.generate(model, prompts, max_new_tokens=15)


@pytest.mark.parametrize("mode", ["packed", "int8"])
def test_a_changed_weight_is_never_multiplied_through_a_stale_copy(mode):
    torch.manual_seed(0)
    model = tiny_model()
    model.decode_weights = mode
    model.setup_cache(1, 8)
    model.clear_cache()
    layer = model.blocks[0].mlp.fc
    assert layer.prepared is not None
    x = torch.randn(2, layer.in_features)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    layer.weight.grad = torch.ones_like(layer.weight)
    optimizer.step()  # an in-place update, as training does
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    model.setup_cache(1, 8)  # the next generation rebuilds the copy from the new weight
    assert layer.prepared[1] == version_of(layer.weight)


@pytest.mark.parametrize("mode", ["native", "packed", "int8"])
def test_a_model_made_under_inference_mode_decodes_and_never_trusts_a_copy(mode):
    torch.manual_seed(0)
    reference = tiny_model()
    reference.decode_weights = mode
    with torch.inference_mode():  # inference tensors count no versions
        model = tiny_model()
        model.load_state_dict(reference.state_dict())
        model.decode_weights = mode
        assert armm.generate(model, [[1, 2, 3]], max_new_tokens=8) == armm.generate(reference, [[1, 2, 3]],
                                                                                      max_new_tokens=8)
        layer = model.blocks[0].mlp.fc
        layer.weight.mul_(-1)  # changed in place, where no version counter sees it
        x = torch.randn(2, layer.in_features)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_training_never_uses_a_prepared_copy():
    torch.manual_seed(0)
    model = tiny_model()
    model.decode_weights = "int8"
    model.setup_cache(1, 8)
    model.clear_cache()
    x = torch.randint(0, model.config.vocab_size, (2, 8))
    loss = model(x).logsumexp(-1).mean()
    loss.backward()  # the int8 kernel has no gradient: this works only through the float weights
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_models_with_prepared_copies_can_be_copied_and_pickled():
    model = tiny_model()
    model.setup_cache(1, 8)  # packed oneDNN tensors cannot be copied themselves
    clone = copy.deepcopy(model)
    assert all(m.prepared is None for m in clone.modules() if isinstance(m, Linear))
    assert pickle.loads(pickle.dumps(clone)).config == model.config
    model.clear_cache()


def test_int8_quantisation_is_symmetric_per_output_row():
    weight = torch.randn(6, 10) * torch.arange(1, 7)[:, None]
    quantized, scales = quantize_int8(weight)
    assert quantized.dtype == torch.int8 and quantized.abs().max() == 127
    assert (quantized.abs().amax(1) == 127).all()  # every row uses the full range
    error = (quantized.float() * scales.float()[:, None] - weight).abs()
    assert (error <= scales.float()[:, None] * 0.51 + 1e-2 * weight.abs()).all()  # half a step, plus bf16 scales


def test_an_unknown_decode_weights_mode_is_refused():
    model = tiny_model()
    model.decode_weights = "fp8"
    with pytest.raises(ValueError, match="decode_weights must be one of native, plain, packed, int8"):
        model.setup_cache(1, 8)


@pytest.fixture(scope="module")
def trained_model() -> tuple[armm.Transformer, torch.Tensor]:
    """A byte-level model trained briefly on English (pydoc topics), and held-out bytes."""
    torch.manual_seed(0)
    data = torch.tensor(list(" ".join(topics.values())[:300_000].encode()), dtype=torch.long)
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=259, max_seq_len=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train = data[:-4096]
    for _ in range(150):
        starts = torch.randint(0, len(train) - 65, (8,))
        window = torch.stack([train[s:s + 65] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(window[:, :-1]).flatten(0, 1), window[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 3.2  # it learned something: uniform over 259 ids would be 5.56
    return model.eval(), data[-4096:]


def test_int8_logits_and_greedy_tokens_stay_close_to_float32_on_a_trained_model(trained_model):
    """Stated tolerance: logits within 0.1 (about 3% of their spread) and the same argmax at >= 95% of
    teacher-forced positions; greedy continuations agree on average over >= 90% of their tokens."""
    model, held_out = trained_model
    ids = held_out[:8 * 64].reshape(8, 64)
    model.decode_weights = "plain"
    reference = _cached_logits(model, ids)
    model.decode_weights = "int8"
    quantized = _cached_logits(model, ids)
    assert (quantized - reference).abs().max() < 0.1
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95
    assert not torch.equal(quantized, reference)  # the int8 path really ran

    prompts = held_out[4096 - 8 * 16:].reshape(8, 16).tolist()
    model.decode_weights = "int8"
    int8_tokens = armm.generate(model, prompts, max_new_tokens=24)
    model.decode_weights = "plain"
    float_tokens = armm.generate(model, prompts, max_new_tokens=24)
    agreement = [sum(a == b for a, b in zip(x, y)) / 24 for x, y in zip(int8_tokens, float_tokens)]
    assert sum(agreement) / len(agreement) >= 0.9
