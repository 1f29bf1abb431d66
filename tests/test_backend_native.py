"""The native decode step (armm/backends/native.py, csrc/decode_step.c) against PyTorch: the same logits as a full
forward pass and as PyTorch's cached step for every architecture option, ragged batches, the same tokens, and a
clean fallback wherever it cannot run."""

import copy
import os
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import armm
from armm.backends import library, native, open_decoder
from armm.backends.base import Decoder
from armm.backends.twin import quantize_int8
from armm.backends.native import NativeDecoder, native_weights
from tests.conftest import tiny_model

needs_native = pytest.mark.skipif(not library.available(), reason="no C compiler: armm decodes in PyTorch here")


@pytest.mark.skipif(not os.environ.get("ARMM_REQUIRE_NATIVE"), reason="ARMM_REQUIRE_NATIVE is not set (CI sets it)")
def test_the_native_step_is_built_where_required():
    assert library.available(), "CI requires the native decode step; see the RuntimeWarning for why it did not build"


@pytest.fixture
def native_calls(monkeypatch):
    """The shapes of the forwards that ran the C step, in order."""
    calls = []
    run = NativeDecoder.run

    def spy(self, weights, idx, *args):
        calls.append(tuple(idx.shape))
        return run(self, weights, idx, *args)

    monkeypatch.setattr(NativeDecoder, "run", spy)
    return calls


def _step_logits(model: armm.Transformer, prompts: list[list[int]], steps: int, decoder: type[Decoder] | str,
                 **kwargs) -> torch.Tensor:
    """Prefill left-padded prompts, then feed ``steps`` fixed tokens one at a time → logits [B, steps, V].
    ``decoder``: a backend name, or ``Decoder`` for the model's plain PyTorch forward."""
    B, P = len(prompts), max(map(len, prompts))
    idx = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    pad = torch.tensor([P - len(p) for p in prompts]) if any(len(p) < P for p in prompts) else None
    feed = torch.arange(B * steps).view(B, steps) % model.config.vocab_size
    with torch.inference_mode():
        run = (open_decoder(model, B, P + steps, decoder, **kwargs) if isinstance(decoder, str)
               else decoder(model, B, P + steps))
        run.forward(idx, 0, pad)
        return torch.cat([run.forward(feed[:, t:t + 1], P + t, pad) for t in range(steps)], dim=1)


@needs_native
@settings(max_examples=30, deadline=None)
@given(
    n_head=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([16, 24, 64]),  # the step's unrolled attention for 16/32/64/128, its loop for others
    kv_divisor=st.sampled_from([1, 2, 4]),
    position=st.sampled_from(["learned", "rope"]),
    norm=st.sampled_from(["layernorm", "rmsnorm"]),
    mlp=st.sampled_from(["gelu", "swiglu"]),
    bias=st.booleans(),
    tie=st.booleans(),
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
)
def test_native_steps_equal_pytorch_steps_and_a_full_forward(n_head, head_dim, kv_divisor, position, norm, mlp, bias,
                                                           tie, lengths):
    torch.manual_seed(0)
    config = armm.ModelConfig(vocab_size=97, n_layer=2, n_head=n_head, n_kv_head=max(1, n_head // kv_divisor),
                              d_model=head_dim * n_head, d_ff=40, max_seq_len=32, position=position, norm=norm, mlp=mlp,
                              bias=bias, tie_embeddings=tie)
    model = armm.Transformer(config).eval()
    with torch.no_grad():  # non-zero biases and norm weights, so that a missed one shows
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
    prompts = [[(7 * i + j) % 97 for j in range(n)] for i, n in enumerate(lengths)]
    steps = 6
    fast, slow = _step_logits(model, prompts, steps, "native"), _step_logits(model, prompts, steps, Decoder)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    feed = torch.arange(len(prompts) * steps).view(len(prompts), steps) % 97
    with torch.no_grad():
        for row, prompt in enumerate(prompts):  # each row alone, one full forward over its whole sequence
            full = model(torch.tensor([prompt + feed[row].tolist()]))[0, len(prompt):]
            torch.testing.assert_close(fast[row], full, rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("preset", ["gpt2-10m", "llama-tiny"])
def test_native_greedy_tokens_equal_pytorch_and_a_batch_equals_its_rows(preset, native_calls):
    torch.manual_seed(0)
    model = tiny_model(preset, max_seq_len=128)
    prompts = [[1, 2, 3, 4, 5], [9], [3, 1, 4, 1, 5, 9, 2, 6]]
    native_batch = armm.generate(model, prompts, max_new_tokens=40, backend="native")
    assert native_calls
    assert native_batch == armm.generate(model, prompts, max_new_tokens=40, backend="eager")
    assert native_batch == [armm.generate(model, [p], max_new_tokens=40, backend="native")[0] for p in prompts]
    kwargs = dict(max_new_tokens=20, sampler="temperature=0.9,top_k=50", backend="native")
    sampled = armm.generate(model, prompts, seed=[1, 2, 3], **kwargs)
    assert sampled == [armm.generate(model, [p], seed=s, **kwargs)[0] for p, s in zip(prompts, [1, 2, 3])]


@needs_native
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_multi_token_native_forwards_equal_pytorch_including_padding_positions(preset, native_calls):
    torch.manual_seed(0)
    model = tiny_model(preset)
    prompts = [[5, 6, 7, 8, 9], [3], [1, 2, 3]]  # a short ragged prefill goes native too (native.takes)
    P = 5
    idx = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    pad = torch.tensor([P - len(p) for p in prompts])
    chunks = torch.randint(0, model.config.vocab_size, (3, 7))
    outputs = {}
    with torch.inference_mode():
        for name, decoder in (("native", NativeDecoder(model, 3, P + 7)), ("plain", Decoder(model, 3, P + 7))):
            outputs[name] = [decoder.forward(idx, 0, pad), decoder.forward(chunks[:, :4], P, pad),
                             decoder.forward(chunks[:, 4:], P + 4, pad, logits_to_keep=2)]
    assert native_calls == [(3, 5), (3, 4), (3, 3)]
    assert [o.shape[1] for o in outputs["native"]] == [5, 4, 2]
    for fast, slow in zip(outputs["native"], outputs["plain"]):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_short_prefills_go_native_and_long_ones_run_in_pytorch_with_the_same_logits(preset, native_calls):
    torch.manual_seed(0)
    model = tiny_model(preset)
    for B, T in ((1, 20), (2, 16), (4, 16)):  # 20 and 32 tokens in all go native; 64 run in PyTorch
        ids = torch.randint(0, model.config.vocab_size, (B, T))
        pad = torch.arange(B) * 3
        with torch.inference_mode():
            fast = NativeDecoder(model, B, T).forward(ids, 0, pad, logits_to_keep=3)
            slow = Decoder(model, B, T).forward(ids, 0, pad, logits_to_keep=3)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    assert native_calls == [(1, 20), (2, 16)]


@needs_native
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_native_int8_steps_equal_a_full_forward_of_the_dequantized_weights(preset, native_calls):
    torch.manual_seed(0)
    model = tiny_model(preset)
    ids = torch.randint(0, model.config.vocab_size, (5, 12))  # 5 rows: four at a time, then one
    with torch.inference_mode():  # one token at a time: every forward is a native int8 step
        decoder = NativeDecoder(model, 5, 12, quantize="int8")
        steps = torch.cat([decoder.forward(ids[:, t:t + 1], t) for t in range(12)], dim=1)
    assert len(native_calls) == 12
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for linear in (m for m in reference.modules() if isinstance(m, torch.nn.Linear)):
            quantized, scales = quantize_int8(linear.weight)
            linear.weight = torch.nn.Parameter(quantized.float() * scales.float()[:, None])  # unties the head too
        full = reference(ids)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_step_logits(model, [[1]], 3, "native"),
                              _step_logits(model, [[1]], 3, "native", quantize="int8"))


@needs_native
def test_native_logits_do_not_depend_on_the_thread_count(one_thread):
    model = tiny_model("gpt2-10m")
    prompts = [[1], [4]]  # one-token prompts: the prefill is a native step too (PyTorch's prefill is not invariant)
    one = _step_logits(model, prompts, 5, "native")
    torch.set_num_threads(2)
    assert torch.equal(_step_logits(model, prompts, 5, "native"), one)  # each output is summed by one thread


@needs_native
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_an_in_place_weight_change_after_the_first_step_is_seen(quantize):
    model = tiny_model()
    ids = torch.tensor([[3, 1, 4, 1, 5]])

    def last_step(decoder: Decoder, change=lambda: None) -> torch.Tensor:
        with torch.inference_mode():
            decoder.forward(ids[:, :4], 0)
            change()
            return decoder.forward(ids[:, 4:], 4)[0, -1]

    def change():  # in place, as an optimizer step; these weights come after the last layer's keys
        with torch.no_grad():
            model.blocks[-1].mlp.fc.weight.mul_(2)
            model.norm_f.weight.add_(0.5)

    step = last_step(NativeDecoder(model, 1, 8, quantize), change)
    if quantize is None:
        with torch.no_grad():
            torch.testing.assert_close(step, model(ids)[0, -1], rtol=1e-4, atol=1e-4)
    else:  # int8 copies made afresh from the changed weights
        torch.testing.assert_close(step, last_step(NativeDecoder(model, 1, 8, quantize)), rtol=0, atol=1e-5)


@needs_native
def test_int32_tokens_and_padding_read_as_int64():
    model = tiny_model()
    prompts = [[5, 6, 7], [8]]
    reference = _step_logits(model, prompts, 3, "native")
    with torch.inference_mode():
        decoder = NativeDecoder(model, 2, 6)
        decoder.forward(torch.tensor([[5, 6, 7], [0, 0, 8]]), 0, torch.tensor([0, 2]))
        feed, pad = torch.arange(6, dtype=torch.int32).view(2, 3), torch.tensor([0, 2], dtype=torch.int32)
        steps = torch.cat([decoder.forward(feed[:, t:t + 1], 3 + t, pad) for t in range(3)], dim=1)
    torch.testing.assert_close(steps, reference, rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("args, error, message", [
    ((torch.tensor([[1], [300]]), 0), IndexError, "outside the vocabulary"),
    ((torch.tensor([[-1], [1]]), 0), IndexError, "outside the vocabulary"),
    ((torch.tensor([[1], [1]]), 4), ValueError, "holds 4 positions"),
    ((torch.tensor([[1]]), 0), ValueError, "batch size 2"),
    ((torch.tensor([[1], [1]]), -1), ValueError, "start must be an integer cache slot >= 0, got -1"),
    ((torch.tensor([[1], [1]]), 2, torch.tensor([-5, 0])), ValueError, r"0 <= pad < start \+ T = 3, got \[-5, 0\]"),
    ((torch.tensor([[1], [1]]), 2, torch.tensor([0, 3])), ValueError, r"0 <= pad < start \+ T"),
    ((torch.tensor([[1], [1]]), 2, torch.tensor([0])), ValueError, r"pad must be an integer tensor \[batch\] = \[2\]"),
    ((torch.tensor([[1], [1]]), 2, torch.tensor([0.0, 1.0])), ValueError, "pad must be an integer tensor"),
    ((torch.tensor([[1.0], [1.0]]), 0), ValueError, "idx must be an integer"),
])
def test_bad_steps_raise_instead_of_reading_out_of_bounds(args, error, message, native_calls):
    model = tiny_model()
    with torch.inference_mode(), pytest.raises(error, match=message):
        NativeDecoder(model, 2, 4).run(native_weights(model, False), *args, *[None] * (3 - len(args)), 0)


@needs_native
def test_a_replaced_cache_tensor_is_never_read_through_a_stale_pointer():
    model = tiny_model()
    with torch.inference_mode():
        decoder = NativeDecoder(model, 1, 8)
        decoder.forward(torch.tensor([[1, 2]]), 0)
        decoder.cache[0].k = torch.zeros(1)  # the old buffer is freed unless the step keeps it
        with pytest.raises(ValueError, match="KV-cache no longer holds contiguous float32 CPU tensors"):
            decoder.forward(torch.tensor([[3]]), 2)
        decoder.cache[0].k = torch.zeros_like(decoder.cache[0].v)  # a readable replacement is pointed at anew
        expected = Decoder(model, 1, 8, cache=decoder.cache).forward(torch.tensor([[3]]), 2)
        torch.testing.assert_close(decoder.forward(torch.tensor([[3]]), 2), expected, rtol=1e-4, atol=1e-4)


@needs_native
def test_positions_past_the_position_table_raise():
    model = tiny_model(max_seq_len=8)
    with pytest.raises(ValueError, match="longer than the model's context"):
        NativeDecoder(model, 1, 9)
    with torch.inference_mode(), pytest.raises(ValueError, match="holds 8 positions; cannot write up to slot 9"):
        NativeDecoder(model, 1, 8).forward(torch.tensor([[1]]), 8)


@needs_native
@pytest.mark.parametrize("change", ["bfloat16", "non-contiguous"])
def test_models_the_step_cannot_read_decode_in_pytorch(change, native_calls):
    model = tiny_model()
    if change == "bfloat16":
        model.to(torch.bfloat16)
    else:
        weight = model.blocks[0].attn.proj.weight
        weight.data = weight.data.t().contiguous().t()  # same values, column-major
    assert native_weights(model, False) is None
    tokens = armm.generate(model, [[1, 2, 3]], max_new_tokens=5, backend="native")
    assert len(tokens[0]) == 5 and not native_calls


@needs_native
def test_copies_and_pickles_of_a_model_that_decoded_decode_alike():
    model = tiny_model()
    expected = armm.generate(model, [[1, 2]], max_new_tokens=6, backend="native")
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert armm.generate(twin, [[1, 2]], max_new_tokens=6, backend="native") == expected


@pytest.fixture
def fresh_library(tmp_path, monkeypatch):
    """armm.backends.library with an empty build cache in tmp_path; its cache is restored afterwards."""
    monkeypatch.setenv("ARMM_CACHE_DIR", str(tmp_path))
    library.library.cache_clear()
    yield library
    library.library.cache_clear()


@needs_native
def test_a_fresh_cache_builds_the_library_and_a_damaged_one_is_rebuilt(fresh_library, tmp_path):
    path = fresh_library.library_path(fresh_library._compiler())
    assert path.parent == tmp_path / "native" and not path.exists()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")  # e.g. a disk that filled up under an older armm
    assert fresh_library.library() is not None
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_without_a_compiler_armm_warns_once_and_decodes_in_pytorch(fresh_library, monkeypatch, native_calls):
    monkeypatch.setattr(fresh_library, "_compiler", lambda: None)
    model = tiny_model()
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert native_weights(model, False) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(armm.generate(model, [[1, 2]], max_new_tokens=4, backend="native")[0]) == 4  # warned once
    assert not native_calls


@needs_native
def test_a_failed_build_says_why(fresh_library, monkeypatch, tmp_path):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C")
    monkeypatch.setattr(fresh_library, "SOURCE", broken)
    with pytest.warns(RuntimeWarning, match="could not build broken.c"):
        assert fresh_library.library() is None


def test_the_fixed_rule_takes_decode_steps_and_short_prefills():
    assert native.takes(1, 1) and native.takes(8, 8) and native.takes(2, 16) and native.takes(64, 1)
    assert not native.takes(1, 33) and not native.takes(4, 16) and not native.takes(65, 1)


@needs_native
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("K", [2, 3])
def test_native_steps_of_k_streams_equal_a_full_forward(preset, K, native_calls):
    """A model of K streams (``num_streams``): the C step sums a position's K embeddings and writes its K·V logits."""
    torch.manual_seed(0)
    model = armm.Transformer(armm.ModelConfig.from_name(preset, vocab_size=40, max_seq_len=16, num_streams=K,
                                                        tie_embeddings=False)).eval()  # fmt: skip
    idx = torch.randint(0, 40, (3, 7 * K))
    pad = torch.tensor([0, 2, 1])
    with torch.inference_mode():
        full = model(idx, pad=pad)  # (3, 7K, V)
        decoder = NativeDecoder(model, 3, 16)
        pieces = [decoder.forward(idx[:, :3 * K], 0, pad)]
        pieces += [decoder.forward(idx[:, p * K:(p + 1) * K], p, pad) for p in range(3, 7)]
        out_of_vocabulary = torch.tensor([[1] * (K - 1) + [40]] * 3)  # the last stream's id
        with pytest.raises(IndexError, match="outside the vocabulary"):
            decoder.run(native_weights(model, False), out_of_vocabulary, 7, pad, 0)
    assert native_calls[:2] == [(3, 3 * K), (3, K)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():  # int8 copies of the K·V-row output layer too
        native_int8 = NativeDecoder(model, 3, 16, quantize="int8").forward(idx[:, :3 * K], 0, pad)
    with torch.no_grad():
        for linear in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
            quantized, scales = quantize_int8(linear.weight)
            linear.weight = torch.nn.Parameter(quantized.float() * scales.float()[:, None])
        dequantized = model(idx[:, :3 * K], pad=pad)
    torch.testing.assert_close(native_int8, dequantized, atol=1e-4, rtol=1e-4)
