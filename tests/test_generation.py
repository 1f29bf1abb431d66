"""The autoregressive loop: batch invariance, stop tokens, streaming, reproducibility and input errors."""

import copy

import pytest
import torch

import armm
from tests.conftest import tiny_model

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [42], [100, 101, 102], [7, 7]]


def _greedy_reference(model, prompt, steps):
    """nanoGPT-style greedy decoding without a cache: a full forward over the prefix each step."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_greedy_generation_equals_uncached_decoding(preset):
    model = tiny_model(preset)
    outputs = armm.generate(model, PROMPTS, max_new_tokens=15)
    assert outputs == [_greedy_reference(model, p, 15) for p in PROMPTS]


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("sampler", ["greedy", "temperature=1.0", "temperature=0.8,top_k=20,top_p=0.95",
                                     "repetition_penalty=1.3,min_p=0.02"])
def test_a_batch_equals_its_rows_generated_one_by_one(preset, sampler):
    model = tiny_model(preset)
    batch = armm.generate(model, PROMPTS, max_new_tokens=20, sampler=sampler, seed=1234)
    alone = [armm.generate(model, [p], max_new_tokens=20, sampler=sampler, seed=1234)[0] for p in PROMPTS]
    assert batch == alone


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = tiny_model()
    first = armm.generate(model, [[1, 2]], max_new_tokens=30, sampler="temperature=1", seed=7)
    again = armm.generate(model, [[1, 2]], max_new_tokens=30, sampler="temperature=1", seed=7)
    other = armm.generate(model, [[1, 2]], max_new_tokens=30, sampler="temperature=1", seed=8)
    assert first == again != other
    per_row = armm.generate(model, [[1, 2], [1, 2]], max_new_tokens=30, sampler="temperature=1", seed=[7, 8])
    assert per_row == first + other


def test_a_row_stops_at_its_stop_token_while_the_others_continue():
    model = tiny_model()
    free = armm.generate(model, PROMPTS, max_new_tokens=12)
    stop = free[0][3]  # the 4th token row 0 would generate
    stopped = armm.generate(model, PROMPTS, max_new_tokens=12, stop_tokens=[stop])
    for row, out in zip(free, stopped):
        cut = row.index(stop) + 1 if stop in row else len(row)
        assert out == row[:cut]
    assert stopped[0][-1] == stop and len(stopped[0]) <= 4


def test_per_row_stop_tokens_and_early_exit_when_every_row_stopped():
    model = tiny_model()
    free = armm.generate(model, PROMPTS[:2], max_new_tokens=10)
    stopped = armm.generate(model, PROMPTS[:2], max_new_tokens=10, stop_tokens=[[free[0][0]], [free[1][1]]])
    assert stopped == [free[0][:1], free[1][: free[1].index(free[1][1]) + 1]]
    steps = list(armm.generate(model, PROMPTS[:2], max_new_tokens=10, stop_tokens=[[free[0][0]], [free[1][1]]],
                               stream=True))
    assert len(steps) == max(len(s) for s in stopped) < 10


def test_streaming_yields_the_same_tokens_step_by_step():
    model = tiny_model("llama-tiny")
    kwargs = dict(max_new_tokens=8, sampler="top_k=5", seed=3, stop_tokens=[17])
    whole = armm.generate(model, PROMPTS, **kwargs)
    steps = list(armm.generate(model, PROMPTS, stream=True, **kwargs))
    assert all(len(step) == len(PROMPTS) for step in steps)
    streamed = [[step[row] for step in steps if step[row] is not None] for row in range(len(PROMPTS))]
    assert streamed == whole


@pytest.mark.parametrize("backend", ["eager", "native", "auto"])
def test_a_model_in_training_mode_decodes_without_dropout_and_stays_in_training_mode(backend):
    model = tiny_model(dropout=0.5).train()
    expected = armm.generate(copy.deepcopy(model).eval(), PROMPTS, max_new_tokens=12, backend="eager")
    assert armm.generate(model, PROMPTS, max_new_tokens=12, backend=backend) == expected
    assert all(m.training for m in model.modules())


def test_generation_restores_training_mode_and_leaves_no_state_on_the_model():
    model = tiny_model().train()
    before = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    modules = [name for name, _ in model.named_modules()]
    armm.generate(model, [[1]], max_new_tokens=2)
    assert model.training
    assert {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]} == before
    assert [name for name, _ in model.named_modules()] == modules


@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        ([[1, 2]], dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        ([], dict(max_new_tokens=1), "non-empty list of token-id lists"),
        ("hello", dict(max_new_tokens=1), "non-empty list of token-id lists"),
        ([1, 2, 3], dict(max_new_tokens=1), r"wrap a single prompt as \[ids\]"),
        ([[1], []], dict(max_new_tokens=1), "prompt 1 is empty"),
        ([[1, 999]], dict(max_new_tokens=1), r"prompt 0 has token id 999 at position 1, outside the model's vocabulary \(0 .. 255\)"),
        ([[-1]], dict(max_new_tokens=1), "outside the model's vocabulary"),
        ([[1] * 130], dict(max_new_tokens=10), r"prompt 0 has 130 tokens.*max_seq_len=128.*at most 128 tokens"),
        ([[1]], dict(max_new_tokens=1, sampler="top_p=0"), r"top_p must be in \(0, 1\]"),
        ([[1]], dict(max_new_tokens=1, sampler="top_p=1.5"), r"top_p must be in \(0, 1\]"),
        ([[1]], dict(max_new_tokens=1, sampler="temperature=-1"), "temperature must be a number >= 0"),
        ([[1]], dict(max_new_tokens=1, sampler="top_k=0"), "top_k must be an integer >= 1"),
        ([[1]], dict(max_new_tokens=1, sampler="beam=4"), "unknown sampler 'beam'; available: .*greedy"),
        ([[1]], dict(max_new_tokens=1, stop_tokens=[300]), "stop token 300 is outside the vocabulary"),
        ([[1], [2]], dict(max_new_tokens=1, stop_tokens=[[1], [2], [3]]), "one list per prompt"),
        ([[1], [2]], dict(max_new_tokens=1, sampler="temperature=1", seed=[1]), "one per prompt"),
    ],
)
def test_bad_input_raises_a_clear_value_error(prompts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        armm.generate(tiny_model(), prompts, **kwargs)


def test_streaming_validates_before_the_first_step():
    with pytest.raises(ValueError, match="top_p"):
        armm.generate(tiny_model(), [[1]], max_new_tokens=2, sampler="top_p=2", stream=True)


@pytest.mark.parametrize("stream", [False, True])
def test_nan_logits_off_the_cpu_are_an_error_at_the_next_sync_not_token_zero(stream, monkeypatch):
    """On an accelerator the sampler does not wait for the device to check each step's logits; generation notes the
    step a row's logits turned NaN and raises where it reads the device anyway (here: forced on the CPU)."""
    import armm.generation as generation
    import armm.sampling as sampling

    monkeypatch.setattr(generation, "defers_nan_check", lambda device: True)
    monkeypatch.setattr(sampling, "check_logits", lambda logits, top, tokens: None)  # the device path's sampler
    model = tiny_model()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[0, 0] = float("nan")  # every logit NaN from the first step
    with pytest.raises(ValueError, match=r"the model's logits are NaN at position 4 of row 0"):
        out = armm.generate(model, [[1, 2, 3, 4], [5, 6, 7]], max_new_tokens=4, stream=stream)
        list(out) if stream else out
