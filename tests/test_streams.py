"""Models of K parallel streams (``ModelConfig.num_streams``, MusicGen's delay pattern): a position reads K ids. Each
check compares with a reference: the full forward, a loop that recomputes it, the rows run one by one."""

from __future__ import annotations

import pytest
import torch

from armm import ModelConfig, Tokenizer, Transformer, generate
from armm.tokenizer import ByteTokenizer
from armm.layout import SpanConstraint, VocabLayout

VOCAB = 40


def streams_model(K: int, style: str = "gpt2", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    preset = "gpt2-tiny" if style == "gpt2" else "llama-tiny"
    config = ModelConfig.from_name(preset, vocab_size=VOCAB, max_seq_len=24, num_streams=K, tie_embeddings=False)
    return Transformer(config).eval()


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("K", [2, 3])
def test_cached_positions_equal_the_full_forward(K, style):
    model = streams_model(K, style)
    idx = torch.randint(0, VOCAB, (2, 7 * K))
    with torch.no_grad():
        full = model(idx)  # (2, 7K, V)
        cache = model.new_caches(2, 24)
        pieces = [model(idx[:, :3 * K], cache=cache, start=0)]
        for position in range(3, 7):
            pieces.append(model(idx[:, position * K:(position + 1) * K], cache=cache, start=position))
    assert full.shape == (2, 7 * K, VOCAB)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_an_id_is_predicted_from_earlier_positions_only():
    """Logits at id t·K + k predict id (t+1)·K + k: they change with the ids of positions ≤ t, never later ones."""
    K = 3
    model = streams_model(K)
    idx = torch.randint(0, VOCAB, (1, 6 * K))
    changed = idx.clone()
    changed[0, 4 * K + 1] = (changed[0, 4 * K + 1] + 1) % VOCAB  # position 4, stream 1
    with torch.no_grad():
        before, after = model(idx)[0], model(changed)[0]
    assert torch.equal(before[:4 * K], after[:4 * K])
    assert not torch.allclose(before[4 * K:5 * K], after[4 * K:5 * K])


def test_a_position_sums_its_k_embeddings():
    K = 2
    model = streams_model(K)
    idx = torch.tensor([[3, 5, 7, 11]])
    expected = model.tok_emb.weight[[3, 7]] + model.tok_emb.weight[[5, 11]]
    torch.testing.assert_close(model.embed(idx)[0], expected)


def reference_greedy(model: Transformer, prompt: list[int], new: int) -> list[int]:
    """Recompute the full forward for every position; each id is the argmax of its stream's logits."""
    K, ids = model.config.num_streams, list(prompt)
    while len(ids) < len(prompt) + new:
        with torch.no_grad():
            last = model(torch.tensor([ids]))[0, -K:]  # (K, V): the next position's streams
        ids += last.argmax(-1).tolist()
    return ids[len(prompt):len(prompt) + new]


@pytest.mark.parametrize("backend", ["eager", "native", "auto"])
@pytest.mark.parametrize("K", [2, 3])
def test_greedy_generation_equals_recomputing_the_full_forward(K, backend):
    model = streams_model(K)
    prompt = torch.randint(0, VOCAB, (2 * K,)).tolist()
    new = 5 * K - 1  # ends inside a position
    assert generate(model, [prompt], max_new_tokens=new, backend=backend)[0] == reference_greedy(model, prompt, new)


def test_the_compiled_decode_step_reads_a_position_of_k_ids():
    """``backend="compiled"`` (torch.compile of ``decode_step``, whose token buffer holds K ids a row) = eager."""
    model = streams_model(2)
    prompts = [[1, 2, 3, 4], [5, 6]]
    assert generate(model, prompts, max_new_tokens=9, backend="compiled") == generate(model, prompts, max_new_tokens=9)


@pytest.mark.parametrize("sampler", ["greedy", "temperature=1.0,top_k=8"])
def test_a_ragged_batch_equals_its_rows_alone(sampler):
    K = 2
    model = streams_model(K, "llama")
    prompts = [torch.randint(0, VOCAB, (n * K,)).tolist() for n in (1, 4, 2)]
    batch = generate(model, prompts, max_new_tokens=9, sampler=sampler, seed=[1, 2, 3])
    alone = [generate(model, [p], max_new_tokens=9, sampler=sampler, seed=s)[0] for p, s in zip(prompts, [1, 2, 3])]
    assert batch == alone


def test_stop_tokens_and_streaming_count_ids():
    K = 2
    model = streams_model(K)
    prompt = torch.randint(0, VOCAB, (2 * K,)).tolist()
    free = generate(model, [prompt], max_new_tokens=10)[0]
    stop = free[3]  # the second stream of the second new position
    stopped = generate(model, [prompt], max_new_tokens=10, stop_tokens=[stop])[0]
    assert stopped == free[:free.index(stop) + 1]
    streamed = [step[0] for step in generate(model, [prompt], max_new_tokens=10, stream=True)]
    assert streamed == free


def test_prompts_of_partial_positions_and_contexts_too_long_are_refused():
    model = streams_model(2)
    with pytest.raises(ValueError, match="reads 2 ids a position .* keep its length a multiple of 2"):
        generate(model, [[1, 2, 3]], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"24 positions of 2 ids, and one more drawn from them\); lower "
                                         r"max_new_tokens to at most 48"):
        generate(model, [[1, 2]], max_new_tokens=49)
    new = generate(model, [[1, 2]], max_new_tokens=48)[0]  # 24 positions read, the 25th drawn from them
    assert new == reference_greedy(model, [1, 2], 48)
    with pytest.raises(ValueError, match="idx has 5 ids a row; give a multiple of 2"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_tied_embeddings_are_refused_with_several_streams():
    with pytest.raises(ValueError, match="set tie_embeddings to false"):
        ModelConfig(num_streams=2)


# --- a mixed layout of two streams ---------------------------------------------------------------------------------
class PairTokenizer(Tokenizer):
    """Samples are lists of (a, b) digit pairs, laid out in 2 streams: a's ids 0-9, b's ids 10-19."""

    name, modality = "pairs-for-tests", "pairs"
    num_streams = 2
    content_cycle = [range(0, 10), range(10, 20)]

    @property
    def vocab_size(self) -> int:
        return 23

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"bos": 20, "eos": 21, "pad": 22}

    def encode(self, sample):
        return [i for a, b in sample for i in (a, 10 + b)]

    def decode(self, ids):
        content = [i for i in ids if i < 20]
        return [(a, b - 10) for a, b in zip(content[::2], content[1::2])]

    def save(self, directory):
        pass

    @classmethod
    def load(cls, directory):
        return cls()

    def read(self, source):
        raise NotImplementedError

    def write(self, samples, path, format=None):
        raise NotImplementedError


def pair_layout() -> VocabLayout:
    return VocabLayout({"label": ByteTokenizer(), "pairs": PairTokenizer()},
                       prompt_part="label")


def label_sample(label: str, pairs: list[tuple[int, int]]) -> list[tuple[str, object]]:
    return [("label", label), ("pairs", pairs)]


@pytest.mark.parametrize("label", ["one", "three", "twenty-two"])
def test_a_multi_stream_part_starts_at_a_whole_position(label):
    layout = pair_layout()
    assert layout.num_streams == 2 and layout.start_ids == [layout.bos_id, layout.pad_id]
    pairs = [(1, 2), (3, 4)]
    ids = layout.encode_document(label_sample(label, pairs))
    span = layout.span("pairs")
    first = ids.index(span.offset + 1)  # the first pair's a
    assert first % 2 == 0  # the content opens a position: stream 0 holds the a's, stream 1 the b's
    assert ids[first:first + 4] == [span.offset + i for i in (1, 12, 3, 14)]
    assert set(ids[ids.index(span.begin_id) + 1:first]) <= {layout.pad_id}
    begins = [layout.span(name).begin_id for name in ("label", "pairs")]
    assert [ids.index(b) % 2 for b in begins] == [0, 0] and ids.index(layout.eos_id) % 2 == 0  # spans open positions
    prompt = layout.start_ids + layout.encode_prompt(label)
    assert len(prompt) % 2 == 0 and ids[:len(prompt)] == prompt  # a prompt is whole positions of the document
    assert layout.decode(ids) == [("label", label), ("pairs", pairs)]


def test_the_grammar_allows_every_id_of_aligned_samples_and_forces_the_pads():
    """Each id of an encoded document is allowed after its prefix; where pads are owed, nothing else is."""
    layout = pair_layout()
    constraint = SpanConstraint(tokenizer=layout)
    for label in ("one", "three", "twenty-two"):
        ids = layout.encode_document(label_sample(label, [(5, 6), (7, 8), (9, 0)]))
        begin = ids.index(layout.span("pairs").begin_id)
        for t in range(2, len(ids)):
            allowed = layout.allowed(torch.tensor([ids[:t]]))[0]
            assert allowed[ids[t]], (label, t)
            if begin < t and ids[t] == layout.pad_id:
                assert allowed.sum() == 1  # an alignment pad is forced
        masked = constraint(torch.zeros(1, layout.vocab_size), torch.tensor([ids[:begin + 1]]))
        assert (masked[0] > -1e30).sum() == 1 or ids[begin + 1] != layout.pad_id


def test_parts_of_different_stream_counts_are_refused_when_the_layout_is_built():
    class Triples(PairTokenizer):
        num_streams = 3

    with pytest.raises(ValueError, match=r"lay their ids out in \[2, 3\] streams"):
        VocabLayout({"pairs": PairTokenizer(), "triples": Triples()})


def test_a_model_directory_whose_tokenizer_reads_other_streams_is_refused(tmp_path):
    from armm import load_model, save_model

    model = Transformer(ModelConfig.from_name("gpt2-tiny", vocab_size=259, num_streams=2, tie_embeddings=False))
    save_model(tmp_path / "m", model, ByteTokenizer())
    with pytest.raises(ValueError, match="lays its ids out in 1 stream.s. but the model reads 2 ids a position; the "
                                         "tokenizer and the weights come from different models"):
        load_model(tmp_path / "m")


def test_leaving_out_the_condition_keeps_the_streams_in_place():
    layout = pair_layout()
    for label in ("one", "three", "twenty-two"):
        ids = layout.encode_document(label_sample(label, [(1, 1)]))
        unconditional = layout.without_part(ids, "label")
        assert (len(ids) - len(unconditional)) % 2 == 0
        assert unconditional[2] == layout.null_id
        assert layout.decode(unconditional) == [("pairs", [(1, 1)])]


def test_scoring_reads_positions_and_equals_recomputed_predictions():
    """Each id after the first position is scored from a fresh forward over the positions before its own."""
    from armm import score

    K = 2
    model = streams_model(K)
    ids = torch.randint(0, VOCAB, (9,)).tolist()  # 4 whole positions and one id of the fifth
    expected = []
    for t in range(K, len(ids)):
        with torch.no_grad():
            logits = model(torch.tensor([ids[:t - t % K]]))[0, -K + t % K]  # position t // K - 1, stream t % K
        expected.append(logits.log_softmax(-1)[ids[t]])
    result = score(model, ids)
    assert result.num_tokens == len(ids) - K
    torch.testing.assert_close(result.token_logprobs, torch.stack(expected), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="scores ids after its first position"):
        score(model, ids[:2])


@pytest.mark.parametrize("feature", ["inspect", "speculative", "hf"])
def test_features_of_one_id_a_position_refuse_a_model_of_streams(feature, tmp_path):
    from armm.hf import family_of
    from armm.inspect.api import next_token
    from armm.speculative import speculative_generate

    model = streams_model(2)
    calls = {
        "inspect": lambda: next_token(model, None, [1, 2]),
        "speculative": lambda: speculative_generate(model, model, [[1, 2]], max_new_tokens=2),
        "hf": lambda: family_of(model.config),
    }
    with pytest.raises(ValueError, match="reads one id a position, but this model reads num_streams=2"):
        calls[feature]()


def test_a_window_too_long_for_the_context_names_the_ids_and_the_positions():
    from armm.training.module import check_fits

    config = ModelConfig.from_name("gpt2-tiny", max_seq_len=24, num_streams=2, tie_embeddings=False)
    check_fits(config, 48, streams=2)  # 24 positions fit
    with pytest.raises(ValueError, match=r"data.seq_len=50 \(25 positions of 2 ids\) is larger than the model's context "
                                         r"\(max_seq_len=24\); lower data.seq_len or set model.overrides.max_seq_len "
                                         r">= 25"):
        check_fits(config, 50, streams=2)
