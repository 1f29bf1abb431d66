"""The eager backend's weight formats (armm/backends/eager.py; int8 in the native step too): packed float32 equals the model's own forward, int8
stays close to float32 on a trained model, a prepared copy is never used once its weight has changed, and the
model itself is never touched."""

import copy
import pickle

import pytest
import torch
from pydoc_data.topics import topics

import armm
from armm.backends.base import Decoder
from armm.backends.eager import EagerDecoder
from armm.backends.twin import PreparedLinear, quantize_int8, twin
from armm.backends.native import NativeDecoder
from tests.conftest import tiny_model


def _cached_logits(model: armm.Transformer, ids: torch.Tensor, decoder: type[Decoder] = EagerDecoder,
                   **kwargs) -> torch.Tensor:
    """Logits of every position, one token at a time through the KV-cache → [B, T, V]."""
    B, T = ids.shape
    with torch.inference_mode():
        run = decoder(model, B, T, **kwargs)
        return torch.cat([run.forward(ids[:, t:t + 1], t) for t in range(T)], dim=1)


def _formats(decoder: EagerDecoder) -> set[str]:
    return {m.fmt for m in decoder.runner.modules() if isinstance(m, PreparedLinear) and m.tensors}


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_packed_decoding_equals_the_models_own_forward(preset):
    torch.manual_seed(0)
    model = tiny_model(preset)
    ids = torch.randint(0, model.config.vocab_size, (3, 24))
    with torch.no_grad():
        full = model(ids)
    assert _formats(EagerDecoder(model, 1, 4)) == {"packed"}  # the packed path runs
    packed = _cached_logits(model, ids)
    plain = _cached_logits(model, ids, Decoder)
    torch.testing.assert_close(packed, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain, full, rtol=1e-4, atol=1e-4)
    prompts = ids[:, :5].tolist()
    assert armm.generate(model, prompts, max_new_tokens=15, backend="eager") == [
        armm.generate(model, [p], max_new_tokens=15, backend="eager")[0] for p in prompts]


def test_the_model_keeps_its_own_modules_and_the_twin_shares_its_tensors():
    model = tiny_model()
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    decoder = EagerDecoder(model, 1, 4)
    assert [m for m in model.modules() if type(m) is torch.nn.Linear] == linears  # nothing swapped in the model
    assert decoder.runner is not model
    ours = {id(t) for t in (*model.parameters(), *model.buffers())}
    assert {id(t) for t in (*decoder.runner.parameters(), *decoder.runner.buffers())} == ours
    assert twin(model, "packed") is decoder.runner  # kept for the next generation


@pytest.mark.parametrize("fmt", ["packed", "int8"])
def test_a_changed_weight_is_never_multiplied_through_a_stale_copy(fmt):
    torch.manual_seed(0)
    model = tiny_model()
    layer = twin(model, fmt).blocks[0].mlp.fc
    assert layer.tensors
    x = torch.randn(2, layer.source.in_features)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.blocks[0].mlp.fc.weight.grad = torch.ones_like(layer.source.weight)
    optimizer.step()  # an in-place update, as training does
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.source.weight, layer.source.bias))
    stale = layer.tensors
    assert twin(model, fmt).blocks[0].mlp.fc.tensors is not stale  # the next generation prepares it again


@pytest.mark.parametrize("replace", ["parameter", "buffer", "submodule", "assign-state-dict"])
def test_any_replaced_part_of_the_tree_rebuilds_the_twin_and_the_next_step_uses_it(replace):
    """The twin's check runs before every step (a flat pass over the tree's slots): whatever the user swaps in
    between two steps of one generation, at any depth, the next step runs on it."""
    model = tiny_model("llama-tiny")
    decoder = EagerDecoder(model, 1, 8)
    ids = torch.tensor([[1, 2, 3]])
    reference = model.new_caches(1, 8)  # the prefix's keys and values as the model had them, as the decoder's
    with torch.no_grad():
        decoder.forward(ids, 0)
        model(ids, cache=reference, start=0)
        first = decoder.runner
        if replace == "parameter":
            model.blocks[1].mlp.fc.weight = torch.nn.Parameter(model.blocks[1].mlp.fc.weight.detach() * 2)
        elif replace == "buffer":
            model.rope_cos = model.rope_cos * 0.5  # a new tensor in the buffer's slot
        elif replace == "submodule":
            model.blocks[1].mlp = copy.deepcopy(model.blocks[1].mlp).apply(lambda m: torch.nn.init.normal_(m.weight)
                                                                           if hasattr(m, "weight") else None)
        else:
            model.load_state_dict(armm.Transformer(model.config).state_dict(), assign=True)
        assert decoder.runner is not first
        step = decoder.step(torch.tensor([[4]]), 3)
        expected = model(torch.tensor([[4]]), cache=reference, start=3)[:, -1]
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-4)


def test_a_replaced_parameter_rebuilds_the_twin():
    model = tiny_model()
    first = twin(model, "packed")
    new = torch.nn.Parameter(model.blocks[0].mlp.fc.weight.detach() * 2)
    model.blocks[0].mlp.fc.weight = new
    second = twin(model, "packed")
    assert second is not first and second.blocks[0].mlp.fc.source.weight is new
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(_cached_logits(model, ids), model(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_model_made_under_inference_mode_decodes_and_never_trusts_a_copy(quantize):
    torch.manual_seed(0)
    reference = tiny_model()
    with torch.inference_mode():  # inference tensors count no versions
        model = tiny_model()
        model.load_state_dict(reference.state_dict())
    kwargs = dict(max_new_tokens=8, backend="eager", quantize=quantize)
    assert armm.generate(model, [[1, 2, 3]], **kwargs) == armm.generate(reference, [[1, 2, 3]], **kwargs)
    layer = twin(model, quantize or "packed").blocks[0].mlp.fc
    with torch.inference_mode():
        layer.source.weight.mul_(-1)  # changed in place, where no version counter sees it
        x = torch.randn(2, layer.source.in_features)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.source.weight, layer.source.bias))


def test_training_never_uses_a_prepared_copy():
    torch.manual_seed(0)
    model = tiny_model()
    runner = EagerDecoder(model, 1, 8, quantize="int8").runner
    x = torch.randint(0, model.config.vocab_size, (2, 8))
    loss = runner(x).logsumexp(-1).mean()
    loss.backward()  # the int8 kernel has no gradient: this works only through the float weights
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_models_that_decoded_can_be_copied_and_pickled():
    model = tiny_model()
    expected = armm.generate(model, [[1, 2]], max_new_tokens=5, backend="eager")
    clone = copy.deepcopy(model)  # oneDNN's packed tensors cannot be copied: none is on the model
    assert pickle.loads(pickle.dumps(clone)).config == model.config
    assert armm.generate(clone, [[1, 2]], max_new_tokens=5, backend="eager") == expected


def test_int8_quantisation_is_symmetric_per_output_row():
    weight = torch.randn(6, 10) * torch.arange(1, 7)[:, None]
    quantized, scales = quantize_int8(weight)
    assert quantized.dtype == torch.int8 and quantized.abs().max() == 127
    assert (quantized.abs().amax(1) == 127).all()  # every row uses the full range
    error = (quantized.float() * scales.float()[:, None] - weight).abs()
    assert (error <= scales.float()[:, None] * 0.51 + 1e-2 * weight.abs()).all()  # half a step, plus bf16 scales


def test_unknown_backends_and_formats_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="backend must be one of auto, eager, native, compiled, got 'fast'"):
        armm.generate(model, [[1]], max_new_tokens=2, backend="fast")
    with pytest.raises(ValueError, match="quantize must be None .* or 'int8', got 'fp8'"):
        armm.generate(model, [[1]], max_new_tokens=2, quantize="fp8")
    with pytest.raises(ValueError, match="int8 weights decode on the CPU from float32 or bfloat16"):
        EagerDecoder(model.to(torch.float64), 1, 4, quantize="int8")


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


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_int8_logits_and_greedy_tokens_stay_close_to_float32_on_a_trained_model(trained_model, backend):
    """Stated tolerance: logits within 0.1 (about 3% of their spread) and the same argmax at >= 95% of
    teacher-forced positions; greedy continuations agree on average over >= 90% of their tokens."""
    model, held_out = trained_model
    ids = held_out[:8 * 64].reshape(8, 64)
    reference = _cached_logits(model, ids, Decoder)
    quantized = _cached_logits(model, ids, EagerDecoder if backend == "eager" else NativeDecoder, quantize="int8")
    assert (quantized - reference).abs().max() < 0.1
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95
    assert not torch.equal(quantized, reference)  # the int8 path really ran

    prompts = held_out[4096 - 8 * 16:].reshape(8, 16).tolist()
    int8_tokens = armm.generate(model, prompts, max_new_tokens=24, backend=backend, quantize="int8")
    float_tokens = armm.generate(model, prompts, max_new_tokens=24, backend="eager")
    agreement = [sum(a == b for a, b in zip(x, y)) / 24 for x, y in zip(int8_tokens, float_tokens)]
    assert sum(agreement) / len(agreement) >= 0.9
