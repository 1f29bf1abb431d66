"""Every sampler against its mathematical definition.

The definitions are written out here a second time, in float64 numpy and plain Python loops over one row
at a time, and the code under test is only ever compared with them, never with itself.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

import armm
from armm.sampling import (
    FrequencyPenalty,
    Greedy,
    MinP,
    NoRepeatNGram,
    PresencePenalty,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    Typical,
    build_sampler,
    draw,
    parse_spec,
)
from tests.conftest import tiny_model

NEG_INF = -math.inf
BUILTIN_NAMES = ["greedy", "temperature", "top_k", "top_p", "min_p", "typical", "repetition_penalty",
                 "frequency_penalty", "presence_penalty", "no_repeat_ngram"]


# --- inputs ----------------------------------------------------------------------------------------
def random_logits(batch: int, vocab: int, seed: int, scale: float = 2.0, masked: float = 0.0) -> torch.Tensor:
    """``[B, V]`` float32 normal logits; a fraction ``masked`` of them set to -inf (never a row's maximum)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * scale
    mask = torch.rand(batch, vocab, generator=g) < masked
    mask.scatter_(1, logits.argmax(1, keepdim=True), False)
    return logits.masked_fill(mask, NEG_INF)


def random_context(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """``[B, T]`` token ids, each row left-padded with -1 by a random amount (0 .. T, so some rows are all padding)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, length), generator=g)
    pad = torch.randint(0, length + 1, (batch, 1), generator=g)
    return tokens.masked_fill(torch.arange(length)[None] < pad, -1)


def no_context(batch: int) -> torch.Tensor:
    return torch.empty(batch, 0, dtype=torch.long)


# --- the definitions, one row at a time in float64 -------------------------------------------------
def softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def keep_only(row: np.ndarray, keep) -> np.ndarray:
    out = np.full_like(row, NEG_INF)
    idx = list(keep)
    out[idx] = row[idx]
    return out


def keep_prefix_reaching(row: np.ndarray, order, p: float) -> np.ndarray:
    """Keep the shortest prefix of ``order`` whose probability reaches ``p``."""
    probs, kept, mass = softmax(row), [], 0.0
    for i in order:
        if mass >= p:
            break
        kept.append(i)
        mass += probs[i]
    return keep_only(row, kept)


def ref_greedy(row, ctx, _=None):
    return keep_only(row, [int(np.argmax(row))])  # np.argmax: first maximum on ties


def ref_temperature(row, ctx, t):
    return ref_greedy(row, ctx) if t == 0 else row / t


def ref_top_k(row, ctx, k):
    return keep_only(row, np.argsort(-row, kind="stable")[:k])


def ref_top_p(row, ctx, p):
    return keep_prefix_reaching(row, np.argsort(-row, kind="stable"), p)


def ref_min_p(row, ctx, m):
    probs = softmax(row)
    return keep_only(row, np.flatnonzero(probs >= m * probs.max()))


def ref_typical(row, ctx, p):
    """Meister et al. (2022): order tokens by |surprise - entropy|, keep the shortest prefix reaching mass p."""
    finite = np.flatnonzero(np.isfinite(row))
    log_probs = row[finite] - (row.max() + math.log(np.exp(row - row.max()).sum()))
    entropy = -(np.exp(log_probs) * log_probs).sum()
    order = finite[np.argsort(np.abs(-log_probs - entropy), kind="stable")]
    return keep_prefix_reaching(row, order, p)


def ref_repetition_penalty(row, ctx, penalty):
    out = row.copy()
    for token in {t for t in ctx if t >= 0}:
        out[token] = row[token] / penalty if row[token] > 0 else row[token] * penalty
    return out


def ref_frequency_penalty(row, ctx, penalty):
    out = row.copy()
    for token, count in Counter(t for t in ctx if t >= 0).items():
        out[token] -= penalty * count
    return out


def ref_presence_penalty(row, ctx, penalty):
    out = row.copy()
    for token in {t for t in ctx if t >= 0}:
        out[token] -= penalty
    return out


def ref_no_repeat_ngram(row, ctx, n):
    """Ban every token that ends an n-gram of real tokens whose first n-1 equal the context's last n-1."""
    tail = ctx[len(ctx) - n + 1:]
    banned = {ctx[i + n - 1] for i in range(len(ctx) - n + 1)
              if min(ctx[i:i + n]) >= 0 and ctx[i:i + n - 1] == tail}
    return keep_only(row, [v for v in range(len(row)) if v not in banned])


REFERENCE = {
    "greedy": ref_greedy,
    "temperature": ref_temperature,
    "top_k": ref_top_k,
    "top_p": ref_top_p,
    "min_p": ref_min_p,
    "typical": ref_typical,
    "repetition_penalty": ref_repetition_penalty,
    "frequency_penalty": ref_frequency_penalty,
    "presence_penalty": ref_presence_penalty,
    "no_repeat_ngram": ref_no_repeat_ngram,
}


def reference(chain, logits: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    """Apply ``[(name, value), ...]`` left to right to every row, by the definitions above."""
    rows = []
    for row, ctx in zip(logits.double().numpy(), tokens.tolist()):
        for name, value in chain:
            row = REFERENCE[name](row, ctx, value)
        rows.append(row)
    return np.stack(rows)


def spec_of(chain) -> str:
    return ",".join(name if value is None else f"{name}={value}" for name, value in chain)


def assert_same_filter(actual: torch.Tensor, expected: np.ndarray) -> None:
    """Same kept set (exactly) and the same values on it."""
    actual = actual.double().numpy()
    np.testing.assert_array_equal(np.isfinite(actual), np.isfinite(expected), err_msg="kept sets differ")
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-5, atol=1e-5)


# --- filters ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch, vocab, k", [(1, 1, 1), (3, 10, 1), (4, 50, 7), (2, 30, 29), (2, 30, 30), (3, 20, 25)])
def test_top_k_keeps_exactly_the_k_largest(batch, vocab, k):
    logits = random_logits(batch, vocab, seed=k * 100 + vocab)
    out = TopK(k)(logits, no_context(batch))
    assert out.isfinite().sum(-1).tolist() == [min(k, vocab)] * batch
    assert_same_filter(out, reference([("top_k", k)], logits, no_context(batch)))


@pytest.mark.parametrize("vocab", [2, 17, 300, 5000])  # 5000: past NUCLEUS_CANDIDATES, ranked by topk first
def test_top_p_keeps_the_smallest_prefix_of_the_sorted_distribution_reaching_p(vocab):
    eps = 1e-5  # float32 (code) vs float64 (here) probability mass
    rng = np.random.default_rng(vocab)
    p_values = [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 0.999, *rng.uniform(0.001, 1.0, size=11)]
    for seed, p in enumerate(p_values):
        scales = torch.linspace(0.1, 8.0, 16)[:, None]  # from nearly uniform to very peaked
        logits = random_logits(16, vocab, seed=seed) * scales
        out = TopP(float(p))(logits, no_context(16))
        for x, y in zip(logits.double().numpy(), out.double().numpy()):
            probs, kept = softmax(x), np.isfinite(y)
            np.testing.assert_array_equal(y[kept], x[kept])
            assert kept.all() or probs[kept].min() >= probs[~kept].max(), "kept set is not the most likely tokens"
            mass = probs[kept].sum()
            assert mass >= p - eps, f"kept mass {mass} < p={p}"
            without_last = mass - probs[kept].min()
            assert without_last < p + eps, f"not minimal: {without_last} >= p={p} without the least likely kept"


@pytest.mark.parametrize("scale, masked", [(0.05, 0.0), (1.0, 0.0), (4.0, 0.3), (12.0, 0.0)])
def test_top_p_over_a_large_vocabulary_equals_the_full_sort_whether_or_not_the_candidates_hold_p(scale, masked,
                                                                                                monkeypatch):
    """On the CPU a large vocabulary's nucleus is found among the likeliest NUCLEUS_CANDIDATES when they hold p, and
    by a full sort when they do not (nearly flat rows): the same tokens either way (here: against the full sort)."""
    import armm.sampling as sampling

    logits = random_logits(12, 6000, seed=int(scale * 10), scale=scale, masked=masked)
    for p in (0.1, 0.5, 0.9, 0.99):
        fast = TopP(p)(logits, no_context(12))
        monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", 10**9)  # no candidates: always the full sort
        full = TopP(p)(logits, no_context(12))
        monkeypatch.undo()
        torch.testing.assert_close(fast, full, rtol=0, atol=0)


@pytest.mark.parametrize("p, size", [(0.2, 1), (0.25, 1), (0.3, 2), (0.5, 2), (0.75, 3), (0.76, 4)])
@pytest.mark.parametrize("mass_filter", [TopP, Typical])
def test_mass_that_reaches_p_exactly_is_enough(mass_filter, p, size):
    """Four equally likely tokens (0.25 each, exact in binary): k tokens hold mass k/4."""
    out = mass_filter(p)(torch.zeros(1, 4), no_context(1))
    assert out.isfinite().sum().item() == size


@pytest.mark.parametrize("scale, masked", [(1.0, 0.0), (3.0, 0.0), (20.0, 0.0), (5.0, 0.5)])
@pytest.mark.parametrize("transform", [TopP(1.0), Typical(1.0)], ids=["top_p=1", "typical=1"])
def test_mass_one_keeps_every_finite_logit(transform, scale, masked):
    """Even tokens whose float32 probability is tiny (or underflows to 0) are kept: p=1 is "off"."""
    logits = random_logits(8, 1000, seed=1, scale=scale, masked=masked)
    out = transform(logits, no_context(8))
    torch.testing.assert_close(out, logits, rtol=0, atol=0)


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("masked", [0.0, 0.3])
def test_min_p_keeps_tokens_at_least_min_p_times_the_top_probability(min_p, masked):
    logits = random_logits(32, 40, seed=7, masked=masked)
    out = MinP(min_p)(logits, no_context(32))
    assert_same_filter(out, reference([("min_p", min_p)], logits, no_context(32)))


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("masked", [0.0, 0.3])
def test_typical_matches_meister_et_al(p, masked):
    logits = random_logits(32, 50, seed=11, masked=masked)
    out = Typical(p)(logits, no_context(32))
    assert_same_filter(out, reference([("typical", p)], logits, no_context(32)))


def test_typical_is_not_top_p():
    """p = (0.3, 0.007 x 100): the entropy (3.8 nats) is near the rare tokens' surprise (5.0), far from the
    likely one's (1.2), so typical sampling drops the most likely token where top-p would keep it first."""
    logits = torch.tensor([[math.log(0.3 / 0.007)] + [0.0] * 100])
    kept = Typical(0.2)(logits, no_context(1)).isfinite()[0]
    assert not kept[0] and kept[1:].sum() == 29


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature_softmax_is_softmax_of_logits_over_t(t):
    logits = random_logits(6, 30, seed=3, masked=0.2)
    out = Temperature(t)(logits, no_context(6))
    expected = np.stack([softmax(row / t) for row in logits.double().numpy()])
    np.testing.assert_allclose(out.double().softmax(-1).numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("transform", [Greedy(), Temperature(0), TopK(1)], ids=["greedy", "temperature=0", "top_k=1"])
def test_deterministic_transforms_keep_only_the_argmax(transform):
    logits = random_logits(16, 40, seed=5, masked=0.3)
    out = transform(logits, no_context(16))
    assert_same_filter(out, reference([("greedy", None)], logits, no_context(16)))


def test_greedy_keeps_the_first_maximum_on_ties():
    out = Greedy()(torch.tensor([[0.0, 3.0, 3.0, 1.0]]), no_context(1))
    assert out.isfinite().tolist() == [[False, True, False, False]]


@pytest.mark.parametrize("spec, greedy", [
    ("greedy", True), ("temperature=0", True), ("top_k=1", True), ("top_p=0.9,top_k=1", True),
    ("temperature=0.5", False), ("top_k=2", False), ("top_p=0.9", False), ("min_p=1", False),
])
def test_sampler_is_greedy_exactly_for_one_token_chains(spec, greedy):
    sampler = build_sampler(spec)
    assert sampler.is_greedy is greedy
    if greedy:
        logits = random_logits(16, 40, seed=6)
        assert sampler(logits, no_context(16)).tolist() == logits.argmax(-1).tolist()


def test_tiny_temperature_draw_is_greedy():
    logits = random_logits(256, 40, seed=8)
    logits.scatter_add_(1, logits.argmax(1, keepdim=True), torch.ones(256, 1))  # a clear winner per row
    sampler = build_sampler("temperature=1e-3")
    assert not sampler.is_greedy
    draws = sampler(logits, no_context(256), [torch.Generator().manual_seed(i) for i in range(256)])
    assert draws.tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [1e-300, 1e-40, 1e-6])
def test_a_temperature_whose_logits_overflow_draws_greedy(t, dtype):
    """t -> 0 is greedy; the logits over t overflow (t may even round to 0), so the draw must take that limit."""
    logits = random_logits(256, 40, seed=9, scale=8.0, masked=0.2)
    logits[:32] = -logits[:32].abs() - 1  # every logit negative: all of them overflow to -inf
    logits.scatter_add_(1, logits.argmax(1, keepdim=True), torch.ones(256, 1))  # no ties, even in bfloat16
    logits[32:64] -= logits[32:64].amax(-1, keepdim=True)  # the largest logit is 0: 0 / 0 where t rounds to 0
    logits = logits.to(dtype)
    draws = build_sampler(f"temperature={t}")(logits, no_context(256), seeded(range(256)))
    assert draws.tolist() == logits.argmax(-1).tolist()


# A penalty this strong is its limit: the reference, in float64, does not overflow at these values.
EXTREME = [("temperature", 1e-300), ("repetition_penalty", 1e-300), ("repetition_penalty", 1e300),
           ("frequency_penalty", 100), ("presence_penalty", -100)]


@pytest.mark.parametrize("name, value", EXTREME)
def test_extreme_values_draw_from_the_float64_definition(name, value):
    logits, tokens = random_logits(128, 8, seed=73, masked=0.2), random_context(128, 12, 8, seed=74)
    logits[:32] = -logits[:32].abs() - 1  # all negative: every seen token overflows to -inf under a huge penalty
    expected = np.stack([softmax(row) for row in reference([(name, value)], logits, tokens)])
    draws = build_sampler(f"{name}={value}")(logits, tokens, seeded(range(128))).numpy()
    assert (expected[np.arange(128), draws] > 0).all(), "a token outside the limit's support was drawn"
    single = (expected == 1).any(-1)
    assert single.sum() >= 4, "the case is not vacuous: rows with one token left"
    np.testing.assert_array_equal(draws[single], expected[single].argmax(-1))


def test_a_row_the_chain_empties_takes_the_argmax_of_its_raw_logits():
    logits = torch.tensor([[0.5, 1.0, 3.0, 2.0], [4.0, 0.0, 1.0, -1.0]])
    every_token = torch.tensor([[0, 1, 2, 3], [-1, -1, -1, 2]])  # row 0 has seen every token
    sampler = build_sampler("no_repeat_ngram=1")
    assert sampler.filter(logits, every_token)[0].isneginf().all()
    assert sampler(logits, every_token, seeded([0, 1])).tolist() == [2, 0]


@pytest.mark.parametrize("spec", ["greedy", "temperature=0.7,top_p=0.9"])
def test_nan_logits_from_the_model_are_an_error_naming_the_row_and_position(spec):
    logits = random_logits(3, 10, seed=75)
    logits[1, 4] = math.nan
    tokens = torch.tensor([[1, 2, 3], [-1, 5, 6], [7, 8, 9]])
    with pytest.raises(ValueError, match="the model's logits are NaN at position 2 of row 1"):
        build_sampler(spec)(logits, tokens)


# --- chains ----------------------------------------------------------------------------------------
CHAINS = [
    [("top_k", 5), ("top_p", 0.5)],
    [("top_p", 0.5), ("top_k", 5)],
    [("temperature", 2.0), ("top_p", 0.5)],
    [("top_p", 0.5), ("temperature", 2.0)],
    [("temperature", 0.7), ("min_p", 0.2), ("typical", 0.8)],
    [("repetition_penalty", 1.5), ("top_k", 3)],
    [("top_k", 3), ("repetition_penalty", 1.5)],
    [("no_repeat_ngram", 2), ("frequency_penalty", 0.5), ("presence_penalty", 0.3), ("top_p", 0.9)],
]


@pytest.mark.parametrize("chain", CHAINS, ids=spec_of)
def test_chain_applies_transforms_in_spec_order(chain):
    logits, tokens = random_logits(32, 12, seed=21, scale=1.0), random_context(32, 10, 12, seed=22)
    out = build_sampler(spec_of(chain)).filter(logits, tokens)
    assert_same_filter(out, reference(chain, logits, tokens))


@pytest.mark.parametrize("first, second", [(("top_k", 5), ("top_p", 0.5)), (("temperature", 2.0), ("top_p", 0.5))])
def test_chain_order_changes_the_kept_set(first, second):
    logits = random_logits(32, 12, seed=21, scale=1.0)
    one_way = build_sampler(spec_of([first, second])).filter(logits, no_context(32))
    other_way = build_sampler(spec_of([second, first])).filter(logits, no_context(32))
    assert (one_way.isfinite() != other_way.isfinite()).any()


# --- penalties -------------------------------------------------------------------------------------
PENALTIES = [("repetition_penalty", 1.3), ("repetition_penalty", 0.7), ("frequency_penalty", 0.5),
             ("frequency_penalty", -0.4), ("presence_penalty", 0.8), ("presence_penalty", -1.0),
             ("no_repeat_ngram", 1), ("no_repeat_ngram", 2), ("no_repeat_ngram", 3)]


@pytest.mark.parametrize("name, value", PENALTIES)
@pytest.mark.parametrize("length", [0, 2, 12])
def test_penalty_matches_its_brute_force_definition(name, value, length):
    vocab = 8  # small, so the contexts repeat tokens and n-grams
    logits, tokens = random_logits(64, vocab, seed=31), random_context(64, length, vocab, seed=32)
    out = build_sampler(f"{name}={value}").filter(logits, tokens)
    expected = reference([(name, value)], logits, tokens)
    assert_same_filter(out, expected)
    if length >= (value if name == "no_repeat_ngram" else 1):  # the case is not vacuous: something changed
        assert not np.array_equal(expected, logits.double().numpy())


@pytest.mark.parametrize("name, value", PENALTIES)
def test_padding_is_never_a_token(name, value):
    """-1 padding must not count as token V-1 (or any token)."""
    logits = random_logits(2, 5, seed=33)
    out = build_sampler(f"{name}={value}").filter(logits, torch.full((2, 6), -1))
    torch.testing.assert_close(out, logits, rtol=0, atol=0)


# --- the draw --------------------------------------------------------------------------------------
DRAW_CHAINS = [[], [("temperature", 0.8), ("top_k", 10)], [("top_p", 0.9)], [("min_p", 0.1)]]


def draw_many(chain, logits_row: torch.Tensor, n: int, rng: str) -> np.ndarray:
    """``n`` ids drawn from one row of logits: through ``draw`` (empty chain) or a ``Sampler`` from the chain."""
    logits = logits_row.expand(n, -1)
    generators = [torch.Generator().manual_seed(1000 + i) for i in range(n)] if rng == "generators" else None
    if rng == "global":
        torch.manual_seed(1234)
    if chain:
        return build_sampler(spec_of(chain))(logits, no_context(n), generators).numpy()
    return draw(logits, generators).numpy()


@pytest.mark.parametrize("rng", ["global", "generators"])
@pytest.mark.parametrize("chain", DRAW_CHAINS, ids=lambda chain: spec_of(chain) or "draw")
def test_draws_follow_the_filtered_softmax(chain, rng):
    n, logits = 20_000, random_logits(1, 16, seed=41, scale=1.0)
    expected = softmax(reference(chain, logits, no_context(1))[0])
    counts = np.bincount(draw_many(chain, logits[0], n, rng), minlength=16)
    if chain:
        assert (expected == 0).any(), "the chain should filter something out"
    assert counts[expected == 0].sum() == 0, "a filtered-out token was drawn"
    support = expected > 0
    assert chisquare(counts[support], n * expected[support]).pvalue > 1e-3


SAMPLE_FNS = {
    "draw": lambda logits, generators: draw(logits, generators),
    "sampler": lambda logits, generators: build_sampler("temperature=0.8,top_k=10")(
        logits, no_context(len(logits)), generators),
}


def seeded(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("sample", SAMPLE_FNS.values(), ids=SAMPLE_FNS.keys())
def test_the_same_generators_give_the_same_draws(sample):
    logits = random_logits(64, 50, seed=51, scale=0.5)
    first, again = sample(logits, seeded(range(64))), sample(logits, seeded(range(64)))
    other = sample(logits, seeded(range(100, 164)))
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


@pytest.mark.parametrize("sample", SAMPLE_FNS.values(), ids=SAMPLE_FNS.keys())
def test_a_rows_draw_depends_only_on_its_own_generator(sample):
    logits, seeds = random_logits(8, 50, seed=52, scale=0.5), list(range(200, 208))
    batched = sample(logits, seeded(seeds)).tolist()
    alone = [sample(logits[r:r + 1], seeded([seeds[r]])).item() for r in range(8)]
    assert batched == alone
    for row in range(8):  # everything else changes: the other rows' logits and seeds
        others = random_logits(8, 50, seed=60 + row, scale=0.5)
        others[row] = logits[row]
        other_seeds = [seed if r == row else seed + 1000 for r, seed in enumerate(seeds)]
        assert sample(others, seeded(other_seeds))[row].item() == batched[row]


# --- specs and errors ------------------------------------------------------------------------------
def test_build_sampler_builds_the_chain_in_spec_order():
    sampler = build_sampler("temperature=0.7,top_p=0.9")
    assert [type(t) for t in sampler.transforms] == [Temperature, TopP]
    assert (sampler.transforms[0].t, sampler.transforms[1].p) == (0.7, 0.9)
    assert sampler.spec == "temperature=0.7,top_p=0.9"
    assert build_sampler(sampler) is sampler


def test_parse_spec_reads_names_numbers_and_bare_names():
    assert parse_spec(" temperature = 0.7 ,top_k=5, greedy") == [("temperature", 0.7), ("top_k", 5), ("greedy", None)]
    assert isinstance(parse_spec("top_k=5")[0][1], int)


def test_every_builtin_is_registered():
    for name in BUILTIN_NAMES:
        spec = name if name == "greedy" else f"{name}=1"
        assert len(build_sampler(spec).transforms) == 1


@pytest.mark.parametrize("spec, name, allowed", [
    ("top_p=0", "top_p", "in (0, 1]"), ("top_p=-0.1", "top_p", "in (0, 1]"), ("top_p=1.01", "top_p", "in (0, 1]"),
    ("top_p=nan", "top_p", "in (0, 1]"),
    ("min_p=0", "min_p", "in (0, 1]"), ("min_p=1.5", "min_p", "in (0, 1]"),
    ("typical=0", "typical", "in (0, 1]"), ("typical=2", "typical", "in (0, 1]"),
    ("temperature=-0.1", "temperature", ">= 0"), ("temperature=inf", "temperature", ">= 0"),
    ("top_k=0", "top_k", "integer >= 1"), ("top_k=-3", "top_k", "integer >= 1"),
    ("top_k=2.5", "top_k", "integer >= 1"), ("top_k=inf", "top_k", "integer >= 1"),
    ("top_k=nan", "top_k", "integer >= 1"),
    ("no_repeat_ngram=0", "no_repeat_ngram", "integer >= 1"),
    ("no_repeat_ngram=1.5", "no_repeat_ngram", "integer >= 1"),
    ("repetition_penalty=0", "repetition_penalty", "> 0"), ("repetition_penalty=-1", "repetition_penalty", "> 0"),
    ("frequency_penalty=inf", "frequency_penalty", "finite"), ("presence_penalty=nan", "presence_penalty", "finite"),
    ("frequency_penalty=1e300", "frequency_penalty", "[-100, 100]"),
    ("presence_penalty=-100.5", "presence_penalty", "[-100, 100]"),
])
def test_bad_values_name_the_parameter_and_the_allowed_range(spec, name, allowed):
    with pytest.raises(ValueError) as error:
        build_sampler(spec)
    assert name in str(error.value) and allowed in str(error.value)


@pytest.mark.parametrize("spec", ["top_p=1", "min_p=1", "typical=1", "temperature=0", "top_k=1", "top_k=3.0",
                                  "no_repeat_ngram=1", "repetition_penalty=0.01", "frequency_penalty=-2",
                                  "presence_penalty=0", "frequency_penalty=100", "presence_penalty=-100",
                                  "temperature=1e-300", "repetition_penalty=1e-300", "repetition_penalty=1e300"])
def test_boundary_values_are_accepted(spec):
    build_sampler(spec)


def test_unknown_sampler_lists_the_available_names():
    with pytest.raises(ValueError, match="unknown sampler 'top_q'") as error:
        build_sampler("temperature=0.7,top_q=0.9")
    assert all(name in str(error.value) for name in BUILTIN_NAMES)


@pytest.mark.parametrize("spec, says", [
    ("top_p=", "malformed"), ("=3", "malformed"), ("top_k=5,", "malformed"), ("top_k=5,,top_p=0.9", "malformed"),
    ("", "non-empty"), ("   ", "non-empty"),
    ("top_p=abc", "takes a number"),
    ("top_k", "needs a value"), ("temperature", "needs a value"),
    ("greedy=3", "takes no value"),
])
def test_malformed_specs_say_what_is_wrong(spec, says):
    with pytest.raises(ValueError, match=says):
        build_sampler(spec)


# --- properties ------------------------------------------------------------------------------------
MASKING = (Greedy, TopK, TopP, MinP, Typical, NoRepeatNGram)  # these only remove tokens
TRANSFORMS = st.one_of(
    st.just(Greedy()),
    st.one_of(st.sampled_from([0.0, 1e-300, 1e-40]), st.floats(0.01, 100)).map(Temperature),
    st.integers(1, 30).map(TopK),
    st.floats(0, 1, exclude_min=True).map(TopP),
    st.floats(0, 1, exclude_min=True).map(MinP),
    st.floats(0, 1, exclude_min=True).map(Typical),
    st.one_of(st.sampled_from([1e-300, 1e-40, 1e300]), st.floats(0.01, 100)).map(RepetitionPenalty),
    st.floats(-100, 100).map(FrequencyPenalty),
    st.floats(-100, 100).map(PresencePenalty),
    st.integers(1, 4).map(NoRepeatNGram),
)


@st.composite
def logits_and_context(draw_):
    batch, vocab, length = draw_(st.integers(1, 3)), draw_(st.integers(1, 24)), draw_(st.integers(0, 8))
    value = st.one_of(st.floats(-1e4, 1e4, width=32), st.just(NEG_INF))
    row = st.lists(value, min_size=vocab, max_size=vocab).filter(lambda r: any(math.isfinite(v) for v in r))
    logits = torch.tensor(draw_(st.lists(row, min_size=batch, max_size=batch)), dtype=torch.float32)
    ids = draw_(st.lists(st.lists(st.integers(0, vocab - 1), min_size=length, max_size=length),
                         min_size=batch, max_size=batch))
    pads = draw_(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    tokens = torch.tensor([[-1] * pad + r[pad:] for r, pad in zip(ids, pads)], dtype=torch.long).view(batch, length)
    return logits, tokens


@settings(max_examples=150, deadline=None)
@given(case=logits_and_context(), transform=TRANSFORMS)
def test_transforms_keep_a_token_and_never_revive_minus_inf_or_make_nan(case, transform):
    logits, tokens = case
    out = transform(logits, tokens)
    assert not out.isnan().any() and not out.isposinf().any()
    assert out[logits == NEG_INF].eq(NEG_INF).all(), "a -inf logit came back"
    if not isinstance(transform, NoRepeatNGram):  # which may, by definition, ban every token
        assert out.isfinite().any(-1).all(), "a row lost every token"
    if isinstance(transform, MASKING):
        kept = out.isfinite()
        assert out[kept].equal(logits[kept]), "a filter changed a kept logit"


# --- generation ------------------------------------------------------------------------------------
PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]  # different lengths, so the contexts are left-padded
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def model_and_greedy():
    torch.manual_seed(0)
    model = tiny_model("gpt2-tiny")
    return model, armm.generate(model, PROMPTS, max_new_tokens=NEW_TOKENS, sampler="greedy")


@pytest.mark.parametrize("spec, seed", [("top_k=1", None), ("temperature=0", 7), ("top_p=0.5,top_k=1", [1, 2, 3])])
def test_one_token_samplers_generate_the_greedy_continuation(model_and_greedy, spec, seed):
    model, greedy = model_and_greedy
    assert [len(row) for row in greedy] == [NEW_TOKENS] * len(PROMPTS)
    assert armm.generate(model, PROMPTS, max_new_tokens=NEW_TOKENS, sampler=spec, seed=seed) == greedy


def test_a_temperature_of_1e_300_generates_the_greedy_continuation(model_and_greedy):
    model, greedy = model_and_greedy
    assert armm.generate(model, PROMPTS, max_new_tokens=NEW_TOKENS, sampler="temperature=1e-300", seed=3) == greedy


def test_greedy_generation_is_the_argmax_of_a_full_forward_pass(model_and_greedy):
    """Ties the greedy baseline above to the model, so the comparisons are not between two wrong answers."""
    model, greedy = model_and_greedy
    for prompt, continuation in zip(PROMPTS, greedy):
        ids = list(prompt)
        with torch.no_grad():
            for _ in continuation:
                ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        assert ids[len(prompt):] == continuation
