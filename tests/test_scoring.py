import math

import pytest
import torch

import armm
from armm.scoring import score_documents
from tests.conftest import tiny_model


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_log_likelihood_is_the_log_of_the_product_of_softmax_probabilities(preset):
    model = tiny_model(preset)
    ids = [3, 14, 15, 92, 65, 35, 89, 79]
    result = armm.score(model, ids)
    probability = 1.0
    for t in range(1, len(ids)):  # chain rule, one full forward per prefix, probabilities by hand
        with torch.no_grad():
            logits = model(torch.tensor([ids[:t]]))[0, -1].double()
        probability *= (logits.exp() / logits.exp().sum())[ids[t]].item()
    assert result.log_likelihood == pytest.approx(math.log(probability), abs=1e-4)
    assert result.token_logprobs.shape == (len(ids) - 1,)
    assert result.token_logprobs.sum().item() == pytest.approx(result.log_likelihood, abs=1e-5)
    n = len(ids) - 1
    assert result.perplexity == pytest.approx(probability ** (-1 / n), rel=1e-4)
    assert result.bits_per_token == pytest.approx(-math.log2(probability) / n, rel=1e-4)
    assert result.bits_per_unit(2 * n) == pytest.approx(result.bits_per_token / 2)


def test_an_untrained_model_scores_near_uniform():
    model = tiny_model()
    result = armm.score(model, torch.randint(0, 256, (100,)))
    assert abs(result.bits_per_token - 8.0) < 0.5  # log2(256) for a near-uniform predictor


def test_long_sequences_are_scored_with_a_sliding_window():
    model = tiny_model(max_seq_len=128)
    ids = torch.randint(0, 256, (300,))
    result = armm.score(model, ids, stride=64)
    # (window start, window end, first token it scores): the first window is full, then steps of 64
    windows = [(0, 128, 1), (64, 192, 128), (128, 256, 192), (172, 300, 256)]
    expected = []
    with torch.no_grad():
        for begin, end, first in windows:
            logprobs = model(ids[None, begin:end - 1])[0].log_softmax(-1)
            expected += [logprobs[t - 1 - begin, ids[t]].item() for t in range(first, end)]
    assert result.num_tokens == 299
    torch.testing.assert_close(result.token_logprobs, torch.tensor(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "ids, kwargs, message",
    [
        ([1], {}, "at least 2 tokens"),
        ([1, 256], {}, "token id 256 at position 1 is outside"),
        ([1, 2, 3], dict(stride=128), r"stride must be in \[1, window - 1\]"),
    ],
)
def test_bad_sequences_are_refused(ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        armm.score(tiny_model(), ids, **kwargs)


def test_documents_packed_are_scored_in_the_disjoint_windows_of_validation_then_the_tail():
    model = tiny_model(max_seq_len=16, vocab_size=259)
    g = torch.Generator().manual_seed(0)
    documents = [[256, *torch.randint(0, 256, (n,), generator=g).tolist(), 257] for n in (9, 30, 5)]  # 50 tokens
    stream = torch.tensor([t for d in documents for t in d])
    [result] = score_documents(model, documents, "packed")
    # (window start, first token it scores): windows of 17 tokens at stride 16, as PackedWindows(stride=seq_len), then
    # one last window ending with the stream
    expected = []
    with torch.no_grad():
        for begin, first in [(0, 1), (16, 17), (32, 33), (33, 49)]:
            logprobs = model(stream[None, begin:begin + 16])[0].log_softmax(-1)
            expected += [logprobs[t - 1 - begin, stream[t]].item() for t in range(first, begin + 17)]
    torch.testing.assert_close(result.token_logprobs, torch.tensor(expected), rtol=0, atol=1e-5)


def test_documents_as_samples_are_scored_each_alone_in_one_pass_of_up_to_max_seq_len_inputs():
    model = tiny_model(max_seq_len=16, vocab_size=259)
    documents = [[256, *range(15), 257], [256, 7, 257]]  # 17 tokens: 16 inputs fill the context
    results = score_documents(model, documents, "samples")
    for document, result in zip(documents, results):
        ids = torch.tensor(document)
        with torch.no_grad():
            logprobs = model(ids[None, :-1])[0].log_softmax(-1).gather(-1, ids[1:, None])[:, 0]
        torch.testing.assert_close(result.token_logprobs, logprobs, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="layout must be 'packed' or 'samples'"):
        score_documents(model, documents, "rows")
    with pytest.raises(ValueError, match=r"window must be in \[2, max_seq_len \+ 1\] = \[2, 17\]"):
        armm.score(model, [1, 2, 3], window=18)
