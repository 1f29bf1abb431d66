"""Classifier-free guidance: against its definition ``uncond + s * (cond - uncond)``, computed here with full
forward passes (no KV-cache) of both sequences in float64, and never with the code under test."""

from __future__ import annotations

import copy

import pytest
import torch

import armm
from armm.generation import Guidance, tokens_into_span
from armm.layout import VocabLayout
from armm.tokenizer import ByteTokenizer
from armm_image.pixels import PixelTokenizer
from tests.conftest import tiny_model

BOS, EOS, NULL = 0, 1, 3
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [42], [100, 101, 102]]
UNCONDITIONAL = [[5], [3, 3, 3, 3], [100, 7]]  # lengths differ from their prompts' on purpose


def float64_copy(model: armm.Transformer) -> armm.Transformer:
    return copy.deepcopy(model).double().eval()


@torch.no_grad()
def last_logits(reference: armm.Transformer, ids: list[int]) -> torch.Tensor:
    """Next-token logits after ``ids`` from one full causal pass (no cache, no padding)."""
    return reference(torch.tensor([ids]))[0, -1]


def guided_reference(reference, prompt, unconditional, new, scale) -> torch.Tensor:
    cond, uncond = last_logits(reference, prompt + new), last_logits(reference, unconditional + new)
    return uncond + scale * (cond - uncond)


# --- scale 1 is no guidance ------------------------------------------------------------------------------------
def test_scale_one_gives_the_same_tokens_as_plain_conditional_sampling():
    model = tiny_model(max_seq_len=64)
    kwargs = dict(max_new_tokens=20, sampler="temperature=1.0,top_k=20", seed=[11, 12, 13])
    plain = armm.generate(model, PROMPTS, **kwargs)
    guided = armm.generate(model, PROMPTS, guidance=Guidance(1.0, UNCONDITIONAL), **kwargs)
    assert guided == plain
    stronger = armm.generate(model, PROMPTS, guidance=Guidance(3.0, UNCONDITIONAL), **kwargs)
    assert stronger != plain  # the comparison above is not vacuous: guidance does change the draws


def test_the_guided_logits_follow_the_formula():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 50, generator=g) * 10, torch.randn(3, 50, generator=g) * 10
    logits, tokens = torch.cat([cond, uncond]), torch.zeros(3, 4, dtype=torch.long)
    assert torch.allclose(Guidance(1.0, [[1]] * 3)(logits, tokens, 0), cond, atol=1e-5, rtol=0)
    assert torch.allclose(Guidance(0.0, [[1]] * 3)(logits, tokens, 0), uncond, atol=1e-5, rtol=0)
    expected = (uncond.double() + 2.5 * (cond.double() - uncond.double())).float()
    assert torch.allclose(Guidance(2.5, [[1]] * 3)(logits, tokens, 0), expected, atol=1e-4, rtol=0)
    half = Guidance(2.5, [[1]] * 3)(logits.half(), tokens, 0)  # low-precision logits are guided in float32
    assert half.dtype == torch.float32


# --- the definition -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_greedy_guided_generation_picks_the_argmax_of_the_definition(preset):
    model = tiny_model(preset, max_seq_len=64)
    reference = float64_copy(model)
    scale, steps = 3.0, 10
    outputs = armm.generate(model, PROMPTS, max_new_tokens=steps, guidance=Guidance(scale, UNCONDITIONAL))
    for prompt, unconditional, new in zip(PROMPTS, UNCONDITIONAL, outputs):
        assert len(new) == steps
        for step in range(steps):
            guided = guided_reference(reference, prompt, unconditional, new[:step], scale)
            assert new[step] == int(guided.argmax()), (prompt, step)
    assert outputs != armm.generate(model, PROMPTS, max_new_tokens=steps)  # guidance changed something


def test_a_guided_row_is_the_same_alone_and_inside_a_batch():
    model = tiny_model(max_seq_len=64)
    kwargs = dict(max_new_tokens=16, sampler="temperature=1.0")
    guidance = Guidance(2.0, UNCONDITIONAL)
    batch = armm.generate(model, PROMPTS, seed=[1, 2, 3], guidance=guidance, **kwargs)
    for row, (prompt, unconditional) in enumerate(zip(PROMPTS, UNCONDITIONAL)):
        alone = armm.generate(model, [prompt], seed=row + 1, guidance=Guidance(2.0, [unconditional]), **kwargs)
        assert alone == [batch[row]]


def test_guided_streaming_and_stop_tokens_act_on_the_conditional_rows():
    model = tiny_model(max_seq_len=64)
    guidance = Guidance(2.0, UNCONDITIONAL)
    free = armm.generate(model, PROMPTS, max_new_tokens=10, guidance=guidance)
    stop = free[0][3]
    stopped = armm.generate(model, PROMPTS, max_new_tokens=10, guidance=guidance, stop_tokens=[stop])
    for row, out in zip(free, stopped):
        assert out == row[:row.index(stop) + 1 if stop in row else len(row)]
    steps = list(armm.generate(model, PROMPTS, max_new_tokens=10, guidance=guidance, stream=True))
    assert all(len(step) == len(PROMPTS) for step in steps)
    assert [[step[r] for step in steps] for r in range(len(PROMPTS))] == free


# --- first_tokens ----------------------------------------------------------------------------------------------
def test_tokens_into_span_counts_from_the_last_begin_or_the_generated_tokens():
    tokens = torch.tensor([
        [-1, -1, 0, 4, 9, 9],  # begin 4 at position 3: two tokens after it
        [0, 7, 8, 9, 10, 11],  # no begin: the generated count
        [4, 9, 265, 12, 12, 12],  # the last begin counts (265), not the first
        [0, 9, 9, 9, 9, 265],  # a begin that was just drawn: nothing after it yet
    ])
    assert tokens_into_span(tokens, (4, 265), generated=2).tolist() == [2, 2, 3, 0]
    assert tokens_into_span(tokens, (), generated=5).tolist() == [5, 5, 5, 5]


def test_first_tokens_guides_only_rows_early_in_their_span():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(3, 20, generator=g), torch.randn(3, 20, generator=g)
    tokens = torch.tensor([[0, 4, 9], [0, 4, 9], [4, 9, 9]])  # counts 1, 1 and 2
    tokens[1, 1] = 7  # row 1 has no begin: it counts generated (= 5)
    out = Guidance(4.0, [[1]] * 3, first_tokens=2, span_begins=(4,))(torch.cat([cond, uncond]), tokens, 5)
    assert torch.allclose(out[0], uncond[0] + 4 * (cond[0] - uncond[0]), atol=1e-5)
    assert torch.equal(out[1], cond[1]) and torch.equal(out[2], cond[2])


def captioned_layout() -> VocabLayout:
    return VocabLayout({"text": ByteTokenizer(), "image": PixelTokenizer(size=2, channels=1, bits=8)})


def test_with_first_tokens_later_span_tokens_follow_the_conditional_logits_alone():
    layout = captioned_layout()  # image spans of 4 content tokens
    model = tiny_model(vocab_size=layout.vocab_size, max_seq_len=64)
    reference = float64_copy(model)
    image_begin = layout.span("image").begin_id
    begins = [span.begin_id for span in layout.spans.values()]
    prompts = [[BOS, *layout.encode_part("text", caption), image_begin] for caption in ("a seven", "1", "two twos")]
    scale, first, steps = 4.0, 2, 14
    guidance = layout.guidance(prompts, scale, first_tokens=first)
    sampler = layout.sampler("greedy")
    outputs = armm.generate(model, prompts, max_new_tokens=steps, sampler=sampler, guidance=guidance)
    full = armm.generate(model, prompts, max_new_tokens=steps, sampler=sampler, guidance=layout.guidance(prompts, scale))
    assert outputs != full  # first_tokens makes a difference here, so the check below can fail
    guided_steps = plain_steps = 0
    for prompt, unconditional, new in zip(prompts, guidance.unconditional, outputs):
        assert unconditional == [BOS, NULL, image_begin]
        for step, token in enumerate(new):
            context = prompt + new[:step]
            last_begin = max(i for i, t in enumerate(context) if t in begins)
            into_span = len(context) - 1 - last_begin
            cond = last_logits(reference, context)
            logits = guided_reference(reference, prompt, unconditional, new[:step], scale) if into_span < first else cond
            allowed = layout.allowed(torch.tensor([context]))[0]  # the constraint itself is tested in test_layout
            expected = int(logits.masked_fill(~allowed, float("-inf")).argmax())
            assert token == expected, (prompt, step)
            guided_steps += into_span < first
            plain_steps += into_span >= first
            if token == EOS:
                break
    assert guided_steps and plain_steps


# --- validation and the layout's unconditional prompts --------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=-0.5), "scale must be a number >= 0"),
    (dict(scale=float("nan")), "scale must be a number >= 0"),
    (dict(scale=True), "scale must be a number"),
    (dict(scale="2"), "scale must be a number"),
    (dict(scale=2.0, first_tokens=0), "first_tokens must be an integer >= 1"),
    (dict(scale=2.0, first_tokens=1.5), "first_tokens must be an integer >= 1"),
    (dict(scale=2.0, first_tokens=True), "first_tokens must be an integer >= 1"),
])
def test_bad_guidance_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Guidance(unconditional=[[1]], **kwargs)


def test_generate_needs_one_valid_unconditional_prompt_per_prompt():
    model = tiny_model(max_seq_len=64)
    with pytest.raises(ValueError, match=r"one unconditional prompt per prompt \(3\), got 2"):
        armm.generate(model, PROMPTS, max_new_tokens=4, guidance=Guidance(2.0, UNCONDITIONAL[:2]))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        armm.generate(model, PROMPTS, max_new_tokens=4, guidance=Guidance(2.0, [[1], [2], [999]]))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        armm.generate(model, PROMPTS, max_new_tokens=4, guidance=Guidance(2.0, [[], [2], [3]]))


def test_layout_guidance_replaces_the_prompt_part_span_with_null():
    layout = captioned_layout()
    text, image = layout.span("text"), layout.span("image")
    caption = layout.encode_part("text", "a seven")
    assert caption[0] == text.begin_id and caption[-1] == text.end_id
    pixels = [image.offset + 7, image.offset + 9]
    prompts = [
        [BOS, *caption],
        [BOS, *caption, image.begin_id, *pixels],
        [BOS, image.begin_id],  # no caption: nothing to leave out
        [BOS, text.begin_id, text.offset + 65, text.offset + 66],  # an open caption: everything from its begin
    ]
    guidance = layout.guidance(prompts, 3.0, first_tokens=5)
    assert isinstance(guidance, Guidance) and guidance.scale == 3.0 and guidance.first_tokens == 5
    assert sorted(guidance.span_begins) == sorted([text.begin_id, image.begin_id])
    assert [list(u) for u in guidance.unconditional] == [
        [BOS, NULL], [BOS, NULL, image.begin_id, *pixels], [BOS, image.begin_id], [BOS, NULL]]
    by_image = layout.guidance([[BOS, *caption, *layout.encode_part("image", torch.zeros(1, 2, 2, dtype=torch.uint8))]],
                               2.0, condition="image")
    assert [list(u) for u in by_image.unconditional] == [[BOS, *caption, NULL]]
    with pytest.raises(ValueError, match="no part 'audio'"):
        layout.guidance(prompts, 2.0, condition="audio")
