"""The static-shape decode step and ``backend="compiled"``: equal to the eager path, compiled once."""

import copy
import gc
import weakref

import pytest
import torch
from torch._dynamo.utils import counters

import armm
from armm.backends.compiled import compiled_step
from armm.generation import Guidance
from tests.conftest import tiny_model

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [42], [100, 101, 102]]


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("ragged", [True, False])
def test_decode_step_equals_the_cached_forward_at_every_step(preset, ragged):
    model = tiny_model(preset)
    prompts = PROMPTS if ragged else [p[:1] + [3, 4] for p in PROMPTS]
    B, P, steps = len(prompts), max(map(len, prompts)), 12
    pad = torch.tensor([P - len(p) for p in prompts]) if ragged else None
    idx = torch.stack([torch.tensor([0] * (P - len(p)) + p) for p in prompts])  # (B, P)
    cache = model.new_caches(B, P + steps)
    static = model.new_caches(B, model.config.max_seq_len)  # the whole context, as the compiled step's cache
    with torch.no_grad():
        model(idx, cache=cache, start=0, pad=pad)
        model(idx, cache=static, start=0, pad=pad)
        for step in range(steps):
            token = torch.randint(0, model.config.vocab_size, (B, 1))  # any continuation, not only greedy
            expected = model(token, cache=cache, start=P + step, pad=pad)[:, -1]
            got = model.decode_step(token, torch.tensor(P + step), pad, static)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=f"step {step}")


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_compiled_generation_equals_eager_and_compiles_once(preset):
    model = tiny_model(preset)
    for sampler, seed in (("greedy", None), ("temperature=0.8,top_k=20", 3)):
        expected = armm.generate(model, PROMPTS, max_new_tokens=20, sampler=sampler, seed=seed, backend="eager")
        assert armm.generate(model, PROMPTS, max_new_tokens=20, sampler=sampler, seed=seed,
                             backend="compiled") == expected
    graphs = counters["stats"]["unique_graphs"]
    other = [[9, 8], [1, 2, 3, 4], [77]]  # other lengths, other budget: the same compiled step
    expected = armm.generate(model, other, max_new_tokens=33, backend="eager")
    assert armm.generate(model, other, max_new_tokens=33, backend="compiled") == expected
    assert counters["stats"]["unique_graphs"] == graphs, "a second generation compiled the step again"


def test_compiled_generation_with_guidance_runs_both_halves_of_the_batch_like_eager():
    model = tiny_model("llama-tiny")
    guidance = Guidance(scale=2.0, unconditional=[[1]] * len(PROMPTS))
    expected = armm.generate(model, PROMPTS, max_new_tokens=10, guidance=guidance, backend="eager")
    assert armm.generate(model, PROMPTS, max_new_tokens=10, guidance=guidance, backend="compiled") == expected


def test_compiled_generation_leaves_the_model_as_it_was():
    model = tiny_model().train()
    armm.generate(model, PROMPTS, max_new_tokens=5, backend="compiled")
    assert model.training
    clone = copy.deepcopy(model)  # nothing compiled is on the model: a copy compiles its own when asked
    assert armm.generate(clone, PROMPTS, max_new_tokens=5, backend="compiled") == armm.generate(
        model, PROMPTS, max_new_tokens=5, backend="compiled")


def test_the_compiled_step_is_kept_per_batch_size_and_rebuilt_when_the_model_moves():
    model = tiny_model()
    step = compiled_step(model, 2)
    assert compiled_step(model, 2) is step and compiled_step(model, 3) is not step
    assert step.cache[0].max_len == model.config.max_seq_len
    model.double()
    moved = compiled_step(model, 2)
    assert moved is not step and moved.cache[0].k.dtype == torch.float64


def test_a_dropped_model_is_freed_with_its_compiled_step():
    model = tiny_model()
    armm.generate(model, [[1, 2]], max_new_tokens=3, backend="compiled")
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
