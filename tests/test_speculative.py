"""Speculative decoding: greedy output identical to the target's, full acceptance with the target as its own
draft, stop tokens, the context limit, the sampled distribution, and input errors."""

import copy
import itertools

import pytest
import torch
from scipy.stats import chisquare

import armm
from armm.speculative import SpeculativeStats, speculative_generate
from tests.conftest import tiny_model

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [42], [100, 101, 102], [7, 7]]


def _pair(preset: str, draft_preset: str | None = None) -> tuple[armm.Transformer, armm.Transformer]:
    """A random target and a smaller random draft (low acceptance: many rejections)."""
    target = tiny_model(preset)
    draft = tiny_model(draft_preset or preset, n_layer=1, d_model=32, n_head=2, n_kv_head=1)
    return target, draft


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])  # llama-tiny: RoPE and grouped-query attention
@pytest.mark.parametrize("k", [1, 4, 7])
def test_greedy_output_is_the_targets_greedy_output(preset, k):
    target, draft = _pair(preset)
    expected = armm.generate(target, PROMPTS, max_new_tokens=24)
    stats = SpeculativeStats()
    assert speculative_generate(target, draft, PROMPTS, max_new_tokens=24, num_draft_tokens=k, stats=stats) == expected
    alone = [speculative_generate(target, draft, [p], max_new_tokens=24, num_draft_tokens=k)[0] for p in PROMPTS]
    assert alone == expected
    assert stats.tokens == stats.row_rounds + stats.accepted == len(PROMPTS) * 24  # one target token a round
    assert 0 <= stats.accepted <= stats.drafted <= k * stats.row_rounds and stats.draft_forwards <= k * stats.rounds


def test_a_draft_of_another_architecture_and_context():
    target = tiny_model("gpt2-tiny")
    draft = tiny_model("llama-tiny", n_layer=1, max_seq_len=512)
    expected = armm.generate(target, PROMPTS, max_new_tokens=20)
    assert speculative_generate(target, draft, PROMPTS, max_new_tokens=20, num_draft_tokens=3) == expected


def test_the_target_as_its_own_draft_accepts_every_proposal():
    target = tiny_model("llama-tiny")
    k, rounds = 4, 6
    stats = SpeculativeStats()
    out = speculative_generate(target, copy.deepcopy(target), PROMPTS[:1], max_new_tokens=rounds * (k + 1),
                               num_draft_tokens=k, stats=stats)
    assert out == armm.generate(target, PROMPTS[:1], max_new_tokens=rounds * (k + 1))
    assert stats.rounds == stats.target_forwards == rounds  # every target forward kept all k proposals
    assert stats.draft_forwards == rounds * k
    assert stats.acceptance_rate == 1.0 and stats.mean_accepted == k and stats.tokens_per_target_forward == k + 1


def test_stats_add_up_over_calls():
    target, draft = _pair("gpt2-tiny")
    stats = SpeculativeStats()
    speculative_generate(target, draft, [[1, 2]], max_new_tokens=10, stats=stats)
    once = copy.copy(stats)
    speculative_generate(target, draft, [[1, 2]], max_new_tokens=10, stats=stats)
    assert stats.rounds == 2 * once.rounds and stats.tokens == 2 * once.tokens == 20


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_rows_stop_at_their_stop_tokens_as_in_generate(preset):
    target, draft = _pair(preset)
    free = armm.generate(target, PROMPTS, max_new_tokens=16)
    shared = [free[0][3]]
    per_row = [[row[i]] for row, i in zip(free, (0, 5, 2, 9))]
    for stop in (shared, per_row):
        expected = armm.generate(target, PROMPTS, max_new_tokens=16, stop_tokens=stop)
        for k in (1, 3):
            assert speculative_generate(target, draft, PROMPTS, max_new_tokens=16, num_draft_tokens=k,
                                        stop_tokens=stop) == expected
            assert [speculative_generate(target, draft, [p], max_new_tokens=16, num_draft_tokens=k, stop_tokens=[s])[0]
                    for p, s in zip(PROMPTS, per_row)] == armm.generate(target, PROMPTS, max_new_tokens=16,
                                                                         stop_tokens=per_row)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_generation_up_to_the_context_limit(preset):
    target, draft = _pair(preset)  # max_seq_len 128
    prompts = [list(range(1, 101)), [3] * 90]
    expected = armm.generate(target, prompts, max_new_tokens=28)
    for k in (1, 7):
        assert speculative_generate(target, draft, prompts, max_new_tokens=28, num_draft_tokens=k) == expected
    assert speculative_generate(target, copy.deepcopy(target), prompts[:1], max_new_tokens=28,
                                num_draft_tokens=7) == expected[:1]


@pytest.mark.parametrize("sampler", ["greedy", "temperature=1"])
def test_a_single_new_token_needs_no_draft(sampler):
    target, draft = _pair("gpt2-tiny")
    stats = SpeculativeStats()
    out = speculative_generate(target, draft, PROMPTS, max_new_tokens=1, sampler=sampler, seed=1, stats=stats)
    assert stats.rounds == 1 and stats.draft_forwards == 0 and [len(row) for row in out] == [1] * 4
    if sampler == "greedy":
        assert out == armm.generate(target, PROMPTS, max_new_tokens=1)


@pytest.mark.parametrize("sampler", ["top_k=1", "temperature=0", "repetition_penalty=1.5,greedy"])
def test_other_greedy_samplers_match_generate(sampler):
    target, draft = _pair("llama-tiny")
    expected = armm.generate(target, PROMPTS, max_new_tokens=20, sampler=sampler)
    out = speculative_generate(target, draft, PROMPTS, max_new_tokens=20, num_draft_tokens=3, sampler=sampler)
    assert out == expected


def test_restores_training_mode():
    target, draft = _pair("gpt2-tiny")
    target.train()
    speculative_generate(target, draft, [[1]], max_new_tokens=5)
    assert target.training and not draft.training
    with pytest.raises(ValueError):
        speculative_generate(target, draft, [[1]], max_new_tokens=5, stop_tokens=[999])
    assert target.training


# --- sampling --------------------------------------------------------------------------------------
def _sampling_pair() -> tuple[armm.Transformer, armm.Transformer]:
    """A 4-token target with peaked, context-dependent distributions and a draft that often disagrees."""
    config = armm.ModelConfig.from_name("llama-tiny", vocab_size=4, n_layer=1, d_model=16, n_head=2, n_kv_head=1,
                                        max_seq_len=8)
    target = armm.Transformer(config).eval()
    draft = copy.deepcopy(target)
    with torch.no_grad():
        target.lm_head.weight.mul_(20)
        draft.lm_head.weight.mul_(20).add_(torch.randn_like(draft.lm_head.weight) * 0.3)
    return target, draft


def _target_distribution(target, prompt, steps, sampler) -> dict[tuple[int, ...], float]:
    """Exact probability of every continuation of ``steps`` tokens when the target samples alone."""
    sampler, vocab, probs = armm.build_sampler(sampler), target.config.vocab_size, {(): 1.0}
    with torch.no_grad():
        for _ in range(steps):
            nxt = {}
            for prefix, p in probs.items():
                ids = torch.tensor([prompt + list(prefix)])
                dist = sampler.filter(target(ids)[:, -1], ids).float().softmax(-1)[0]
                nxt.update({prefix + (t,): p * dist[t].item() for t in range(vocab)})
            probs = nxt
    return probs


def _chi_square_p(samples: list[list[int]], expected: dict[tuple[int, ...], float]) -> float:
    counts = {seq: 0 for seq in expected}
    for s in samples:
        counts[tuple(s)] += 1
    n = len(samples)
    big = [seq for seq in expected if expected[seq] * n >= 5]  # pool the rare cells
    small = [seq for seq in expected if expected[seq] * n < 5]
    observed = [counts[s] for s in big] + [sum(counts[s] for s in small)]
    wanted = [expected[s] for s in big] + [sum(expected[s] for s in small)]
    total = sum(wanted)  # float32 probabilities: renormalise so both sides sum to n
    return chisquare(observed, [w * n / total for w in wanted]).pvalue


@pytest.mark.parametrize("sampler", ["temperature=1", "temperature=0.8,top_k=3"])
def test_sampled_tokens_follow_the_targets_distribution_in_a_batch(sampler):
    target, draft = _sampling_pair()
    prompt, steps, n = [0, 1], 3, 6000
    samples = speculative_generate(target, draft, [prompt] * n, max_new_tokens=steps, num_draft_tokens=2,
                                   sampler=sampler)  # the rows advance together: a kept proposal is often cut
    assert _chi_square_p(samples, _target_distribution(target, prompt, steps, sampler)) > 1e-3


def test_sampled_tokens_follow_the_targets_distribution_one_row_at_a_time():
    target, draft = _sampling_pair()
    prompt, steps, sampler = [0, 1], 3, "temperature=1"
    stats = SpeculativeStats()
    samples = [speculative_generate(target, draft, [prompt], max_new_tokens=steps, num_draft_tokens=2,
                                    sampler=sampler, seed=seed, stats=stats)[0] for seed in range(1000)]
    assert stats.accepted > stats.rounds // 2 and stats.accepted < stats.drafted  # full and partial acceptance
    assert _chi_square_p(samples, _target_distribution(target, prompt, steps, sampler)) > 1e-3


def test_seeded_sampling_is_reproducible():
    target, draft = _pair("llama-tiny")
    kwargs = dict(max_new_tokens=12, sampler="temperature=1", num_draft_tokens=3)
    first = speculative_generate(target, draft, PROMPTS, seed=[1, 2, 3, 4], **kwargs)
    assert speculative_generate(target, draft, PROMPTS, seed=[1, 2, 3, 4], **kwargs) == first
    assert speculative_generate(target, draft, PROMPTS, seed=[5, 6, 7, 8], **kwargs) != first
    assert [len(row) for row in first] == [12] * 4


# --- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        ([[1]], dict(num_draft_tokens=0), "num_draft_tokens must be an integer >= 1, got 0"),
        ([[1]], dict(num_draft_tokens=True), "num_draft_tokens must be an integer >= 1"),
        ([[1]], dict(num_draft_tokens=2.0), "num_draft_tokens must be an integer >= 1"),
        ([[1]], dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        ([[1, 999]], {}, "outside the model's vocabulary"),
        ([[1] * 60], dict(max_new_tokens=10), r"for the draft model: prompt 0 has 60 tokens.*max_seq_len=64"),
        ([[1] * 120], dict(max_new_tokens=10), r"prompt 0 has 120 tokens.*max_seq_len=128"),
        ([[1]], dict(stop_tokens=[300]), "stop token 300 is outside the vocabulary"),
        ([[1], [2]], dict(sampler="temperature=1", seed=[1]), "one per prompt"),
        ([[1]], dict(sampler="top_p=2"), r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_input_raises_a_clear_value_error(prompts, kwargs, message):
    target = tiny_model("gpt2-tiny")
    draft = tiny_model("gpt2-tiny", n_layer=1, max_seq_len=64)
    with pytest.raises(ValueError, match=message):
        speculative_generate(target, draft, prompts, **{"max_new_tokens": 4, **kwargs})


def test_the_draft_must_share_the_vocabulary():
    target = tiny_model("gpt2-tiny")
    with pytest.raises(ValueError, match=r"draft vocab_size \(300\) differs from the target's \(256\)"):
        speculative_generate(target, tiny_model("gpt2-tiny", vocab_size=300), [[1]], max_new_tokens=2)


def test_the_target_can_draft_for_itself_since_each_call_has_its_own_caches():
    target = tiny_model("gpt2-tiny")
    expected = armm.generate(target, [[1, 2, 3]], max_new_tokens=12, backend="eager")
    stats = SpeculativeStats()
    assert speculative_generate(target, target, [[1, 2, 3]], max_new_tokens=12, backend="eager", stats=stats) == expected
    assert stats.acceptance_rate == 1.0


def test_all_vocab_sized_continuations_are_covered():
    """Sanity check of the test helper: the exact distribution sums to one."""
    target, _ = _sampling_pair()
    probs = _target_distribution(target, [0, 1], 2, "temperature=1")
    assert len(probs) == 16 and abs(sum(probs.values()) - 1) < 1e-5
    assert set(probs) == set(itertools.product(range(4), repeat=2))
