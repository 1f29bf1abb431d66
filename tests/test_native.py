"""The native decode step (armm/native.py, armm/csrc/decode_step.c) against PyTorch: the same logits as a full
forward pass and as PyTorch's cached step for every architecture option, ragged batches, the same tokens, and
a clean fallback wherever it cannot run."""

import copy
import os
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import armm
from armm import native
from armm.linear import Linear, quantize_int8
from tests.conftest import tiny_model

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler: armm decodes in PyTorch here")


@pytest.mark.skipif(not os.environ.get("ARMM_REQUIRE_NATIVE"), reason="ARMM_REQUIRE_NATIVE is not set (CI sets it)")
def test_the_native_step_is_built_where_required():
    assert native.available(), "CI requires the native decode step; see the RuntimeWarning for why it did not build"


def _step_logits(model: armm.Transformer, prompts: list[list[int]], steps: int, mode: str) -> torch.Tensor:
    """Prefill left-padded prompts, then feed ``steps`` fixed tokens one at a time → logits [B, steps, V]."""
    B, P = len(prompts), max(map(len, prompts))
    idx = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    pad = torch.tensor([P - len(p) for p in prompts]) if any(len(p) < P for p in prompts) else None
    feed = torch.arange(B * steps).view(B, steps) % model.config.vocab_size
    model.decode_weights = mode
    model.setup_cache(B, P + steps)
    try:
        assert (model.native_step is not None) == (mode in ("native", "int8"))
        with torch.inference_mode():
            model(idx, start=0, pad=pad)
            return torch.cat([model(feed[:, t:t + 1], start=P + t, pad=pad) for t in range(steps)], dim=1)
    finally:
        model.clear_cache()


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
    fast, slow = _step_logits(model, prompts, steps, "native"), _step_logits(model, prompts, steps, "plain")
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    feed = torch.arange(len(prompts) * steps).view(len(prompts), steps) % 97
    with torch.no_grad():
        for row, prompt in enumerate(prompts):  # each row alone, one full forward over its whole sequence
            full = model(torch.tensor([prompt + feed[row].tolist()]))[0, len(prompt):]
            torch.testing.assert_close(fast[row], full, rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("preset", ["gpt2-10m", "llama-tiny"])
def test_native_greedy_tokens_equal_pytorch_and_a_batch_equals_its_rows(preset):
    torch.manual_seed(0)
    model = tiny_model(preset, max_seq_len=128)
    prompts = [[1, 2, 3, 4, 5], [9], [3, 1, 4, 1, 5, 9, 2, 6]]
    native_batch = armm.generate(model, prompts, max_new_tokens=40)
    model.decode_weights = "plain"
    assert native_batch == armm.generate(model, prompts, max_new_tokens=40)
    model.decode_weights = "native"
    assert native_batch == [armm.generate(model, [p], max_new_tokens=40)[0] for p in prompts]
    sampled = armm.generate(model, prompts, max_new_tokens=20, sampler="temperature=0.9,top_k=50", seed=[1, 2, 3])
    assert sampled == [armm.generate(model, [p], max_new_tokens=20, sampler="temperature=0.9,top_k=50", seed=s)[0]
                       for p, s in zip(prompts, [1, 2, 3])]


@needs_native
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_multi_token_native_forwards_equal_pytorch_including_padding_positions(preset):
    torch.manual_seed(0)
    model = tiny_model(preset)
    prompts = [[5, 6, 7, 8, 9], [3], [1, 2, 3]]  # a short ragged prefill goes native too (native.takes)
    P = 5
    idx = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    pad = torch.tensor([P - len(p) for p in prompts])
    chunks = torch.randint(0, model.config.vocab_size, (3, 7))
    outputs = {}
    for mode in ("native", "plain"):
        model.decode_weights = mode
        model.setup_cache(3, P + 7)
        with torch.inference_mode():
            outputs[mode] = [model(idx, start=0, pad=pad), model(chunks[:, :4], start=P, pad=pad),
                             model(chunks[:, 4:], start=P + 4, pad=pad, logits_to_keep=2)]
        assert (model.native_step is not None) == (mode in ("native", "int8"))
        model.clear_cache()
    assert [o.shape[1] for o in outputs["native"]] == [5, 4, 2]
    for fast, slow in zip(outputs["native"], outputs["plain"]):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_short_prefills_go_native_and_long_ones_run_in_pytorch_with_the_same_logits(preset):
    torch.manual_seed(0)
    model = tiny_model(preset)
    calls = []
    for B, T in ((1, 20), (2, 16), (4, 16)):  # 20 and 32 tokens in all go native; 64 run in PyTorch
        ids = torch.randint(0, model.config.vocab_size, (B, T))
        pad = torch.arange(B) * 3
        outputs = {}
        for mode in ("native", "plain"):
            model.decode_weights = mode
            model.setup_cache(B, T)
            if model.native_step is not None:
                step = model.native_step
                model.native_step = lambda *args, step=step: calls.append(args[0].shape) or step(*args)
            with torch.inference_mode():
                outputs[mode] = model(ids, pad=pad, logits_to_keep=3)
            model.clear_cache()
        torch.testing.assert_close(outputs["native"], outputs["plain"], rtol=1e-4, atol=1e-4)
    assert calls == [(1, 20), (2, 16)]


@needs_native
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_native_int8_steps_equal_a_full_forward_of_the_dequantized_weights(preset):
    torch.manual_seed(0)
    model = tiny_model(preset)
    ids = torch.randint(0, model.config.vocab_size, (5, 12))  # 5 rows: four at a time, then one
    model.decode_weights = "int8"
    model.setup_cache(5, 12)
    assert model.native_step is not None
    with torch.inference_mode():  # one token at a time: every forward is a native int8 step
        steps = torch.cat([model(ids[:, t:t + 1], start=t) for t in range(12)], dim=1)
    model.clear_cache()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for linear in (m for m in reference.modules() if isinstance(m, Linear)):
            quantized, scales = quantize_int8(linear.weight)
            linear.weight = torch.nn.Parameter(quantized.float() * scales.float()[:, None])  # unties the head too
        full = reference(ids)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    model.decode_weights = "native"
    assert not torch.allclose(_step_logits(model, [[1]], 3, "native"), _step_logits(model, [[1]], 3, "int8"))


@needs_native
def test_native_logits_do_not_depend_on_the_thread_count(one_thread):
    model = tiny_model("gpt2-10m")
    prompts = [[1], [4]]  # one-token prompts: the prefill is a native step too (PyTorch's prefill is not invariant)
    one = _step_logits(model, prompts, 5, "native")
    torch.set_num_threads(2)
    assert torch.equal(_step_logits(model, prompts, 5, "native"), one)  # each output is summed by one thread


@needs_native
def test_an_in_place_weight_change_after_setup_cache_is_seen():
    model = tiny_model()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    model.setup_cache(1, 8)
    with torch.inference_mode():
        model(ids[:, :4], start=0)
        with torch.no_grad():  # in place, as an optimizer step; these weights come after the last layer's keys
            model.blocks[-1].mlp.fc.weight.mul_(2)
            model.norm_f.weight.add_(0.5)
        step = model(ids[:, 4:], start=4)[0, -1]
    model.clear_cache()
    with torch.no_grad():
        full = model(ids)[0, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


@needs_native
def test_int32_tokens_and_padding_read_as_int64():
    model = tiny_model()
    prompts = [[5, 6, 7], [8]]
    reference = _step_logits(model, prompts, 3, "native")
    model.setup_cache(2, 6)
    with torch.inference_mode():
        model(torch.tensor([[5, 6, 7], [0, 0, 8]]), start=0, pad=torch.tensor([0, 2]))
        feed, pad = torch.arange(6, dtype=torch.int32).view(2, 3), torch.tensor([0, 2], dtype=torch.int32)
        steps = torch.cat([model(feed[:, t:t + 1], start=3 + t, pad=pad) for t in range(3)], dim=1)
    model.clear_cache()
    torch.testing.assert_close(steps, reference, rtol=0, atol=0)


@needs_native
def test_bad_steps_raise_instead_of_reading_out_of_bounds():
    model = tiny_model()
    model.setup_cache(2, 4)
    with torch.inference_mode():
        with pytest.raises(IndexError, match="outside the vocabulary"):
            model(torch.tensor([[1], [model.config.vocab_size]]), start=0)
        with pytest.raises(IndexError, match="outside the vocabulary"):
            model(torch.tensor([[-1], [1]]), start=0)
        with pytest.raises(ValueError, match="holds 4 positions"):
            model(torch.tensor([[1], [1]]), start=4)
        with pytest.raises(ValueError, match="batch size 2"):
            model(torch.tensor([[1]]), start=0)
    model.clear_cache()
    model.setup_cache(1, model.config.max_seq_len + 2)  # a cache longer than the position table
    with torch.inference_mode(), pytest.raises(ValueError, match="longer than the model's context"):
        model(torch.tensor([[1]]), start=model.config.max_seq_len)
    model.clear_cache()


@needs_native
@pytest.mark.parametrize("change", ["bfloat16", "non-contiguous"])
def test_models_the_step_cannot_read_decode_in_pytorch(change):
    model = tiny_model()
    if change == "bfloat16":
        model.to(torch.bfloat16)
    else:
        weight = model.blocks[0].attn.proj.weight
        weight.data = weight.data.t().contiguous().t()  # same values, column-major
    model.setup_cache(1, 8)
    assert model.native_step is None
    model.clear_cache()
    prompt = [[1, 2, 3]]
    tokens = armm.generate(model, prompt, max_new_tokens=5)
    assert len(tokens[0]) == 5


@needs_native
def test_copies_and_pickles_of_a_model_with_a_cache_decode_in_pytorch():
    model = tiny_model()
    model.setup_cache(1, 8)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.native_step is None and twin.has_cache
        with torch.inference_mode():
            torch.testing.assert_close(twin(torch.tensor([[1, 2]]), start=0), model(torch.tensor([[1, 2]]), start=0))
    model.clear_cache()


@pytest.fixture
def fresh_library(tmp_path, monkeypatch):
    """armm.native with an empty build cache in tmp_path; the module's own cache is restored afterwards."""
    monkeypatch.setenv("ARMM_CACHE_DIR", str(tmp_path))
    native.library.cache_clear()
    yield native
    native.library.cache_clear()


@needs_native
def test_a_fresh_cache_builds_the_library_and_a_damaged_one_is_rebuilt(fresh_library, tmp_path):
    path = fresh_library.library_path(fresh_library._compiler())
    assert path.parent == tmp_path / "native" and not path.exists()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")  # e.g. a disk that filled up under an older armm
    assert fresh_library.library() is not None
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_without_a_compiler_armm_warns_once_and_decodes_in_pytorch(fresh_library, monkeypatch):
    monkeypatch.setattr(fresh_library, "_compiler", lambda: None)
    model = tiny_model()
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        model.setup_cache(1, 8)
    assert model.native_step is None
    assert model.blocks[0].attn.qkv.prepared is not None  # PyTorch with packed weights instead
    model.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(armm.generate(model, [[1, 2]], max_new_tokens=4)[0]) == 4  # the warning came once


@needs_native
def test_a_failed_build_says_why(fresh_library, monkeypatch, tmp_path):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C")
    monkeypatch.setattr(fresh_library, "SOURCE", broken)
    with pytest.warns(RuntimeWarning, match="could not build broken.c"):
        assert fresh_library.library() is None
