"""The static-shape decode step and ``generate(compile=True)``: equal to the eager path, compiled once."""

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import armm
from armm.compiled_decode import compiled_decoder
from armm.generation import Guidance
from tests.conftest import tiny_model

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [42], [100, 101, 102]]


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("ragged", [True, False])
def test_decode_step_equals_the_cached_forward_at_every_step(preset, ragged):
    eager = tiny_model(preset)
    eager.decode_weights = "plain"
    static = copy.deepcopy(eager)
    prompts = PROMPTS if ragged else [p[:1] + [3, 4] for p in PROMPTS]
    B, P, steps = len(prompts), max(map(len, prompts)), 12
    pad = torch.tensor([P - len(p) for p in prompts]) if ragged else None
    idx = torch.stack([torch.tensor([0] * (P - len(p)) + p) for p in prompts])  # (B, P)
    eager.setup_cache(B, P + steps)
    static.setup_cache(B, static.config.max_seq_len)  # the whole context, as the compiled decoder's cache
    with torch.no_grad():
        eager(idx, start=0, pad=pad)
        static(idx, start=0, pad=pad)
        for step in range(steps):
            token = torch.randint(0, eager.config.vocab_size, (B, 1))  # any continuation, not only greedy
            expected = eager(token, start=P + step, pad=pad)[:, -1]
            got = static.decode_step(token, torch.tensor(P + step), pad)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=f"step {step}")


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_compiled_generation_equals_eager_and_compiles_once(preset):
    model = tiny_model(preset)
    for sampler, seed in (("greedy", None), ("temperature=0.8,top_k=20", 3)):
        expected = armm.generate(model, PROMPTS, max_new_tokens=20, sampler=sampler, seed=seed)
        assert armm.generate(model, PROMPTS, max_new_tokens=20, sampler=sampler, seed=seed, compile=True) == expected
    graphs = counters["stats"]["unique_graphs"]
    other = [[9, 8], [1, 2, 3, 4], [77]]  # other lengths, other budget: the same compiled step
    expected = armm.generate(model, other, max_new_tokens=33)
    assert armm.generate(model, other, max_new_tokens=33, compile=True) == expected
    assert counters["stats"]["unique_graphs"] == graphs, "a second generation compiled the step again"


def test_compiled_generation_with_guidance_runs_both_halves_of_the_batch_like_eager():
    model = tiny_model("llama-tiny")
    guidance = Guidance(scale=2.0, unconditional=[[1]] * len(PROMPTS))
    expected = armm.generate(model, PROMPTS, max_new_tokens=10, guidance=guidance)
    assert armm.generate(model, PROMPTS, max_new_tokens=10, guidance=guidance, compile=True) == expected


def test_compiled_generation_leaves_the_model_as_it_was():
    model = tiny_model().train()
    armm.generate(model, PROMPTS, max_new_tokens=5, compile=True)
    assert model.training and not model.has_cache
    assert copy.deepcopy(model).compiled_decoders == {}  # a copy compiles its own when asked


def test_the_compiled_decoder_is_kept_per_batch_size_and_rebuilt_when_the_model_moves():
    model = tiny_model()
    decoder = compiled_decoder(model, 2)
    assert compiled_decoder(model, 2) is decoder and compiled_decoder(model, 3) is not decoder
    assert decoder.caches[0].max_len == model.config.max_seq_len
    model.double()
    moved = compiled_decoder(model, 2)
    assert moved is not decoder and moved.caches[0].k.dtype == torch.float64
