"""Mixed-modality layouts: the id space, encode/decode, files, errors, and the span grammar during generation.

The grammar is written out a second time here, in plain Python over lists of ints (``Grammar``), from the
documented id order alone (4 shared ids, then per part: begin, end, the plugin's local ids), and the code under
test is compared with it — never with ``VocabLayout.allowed`` itself.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import armm
from armm.layout import Part, SpanConstraint, SpanSampler, VocabLayout, sampler_for
from armm.sampling import Sampler, build_sampler
from armm.tokenizer import ByteTokenizer, Tokenizer
from armm_image.pixels import PixelTokenizer
from tests.conftest import tiny_model

BOS, EOS, PAD, NULL = 0, 1, 2, 3


def text_image_layout(size: int = 4) -> VocabLayout:
    """Text (bytes, any length) then a grey 8-bit image of ``size``² content tokens."""
    return VocabLayout({"text": ByteTokenizer(), "image": PixelTokenizer(size=size, channels=1, bits=8)})


def random_image(seed: int, size: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --- an independent model of the grammar -------------------------------------------------------------------
class Grammar:
    """The layout's grammar from its documented id order, in plain Python (no tensors, no layout internals)."""

    def __init__(self, parts: dict[str, Tokenizer], lengths: dict[str, int | None]) -> None:
        self.begin, self.end, self.content, self.block, self.length = {}, {}, {}, {}, dict(lengths)
        next_id = 4  # bos, eos, pad, null
        for name, tokenizer in parts.items():
            self.begin[name], self.end[name] = next_id, next_id + 1
            offset = next_id + 2
            specials = set(tokenizer.special_tokens.values())
            self.block[name] = range(offset, offset + tokenizer.vocab_size)
            self.content[name] = sorted(offset + i for i in range(tokenizer.vocab_size) if i not in specials)
            next_id = offset + tokenizer.vocab_size
        self.vocab_size = next_id
        self.part_of_begin = {i: name for name, i in self.begin.items()}
        self.ends = set(self.end.values())

    def state(self, prefix: list[int]) -> tuple[str | None, int]:
        """(open part or None, content tokens it holds), skipping -1 padding."""
        part, count = None, 0
        for token in prefix:
            if token < 0:
                continue
            if token in self.part_of_begin:
                part, count = self.part_of_begin[token], 0
            elif token in self.ends:
                part, count = None, 0
            elif part is not None:
                count += 1
        return part, count

    def allowed(self, prefix: list[int]) -> set[int]:
        part, count = self.state(prefix)
        if part is None:
            return set(self.begin.values()) | {EOS}
        length = self.length[part]
        if length is None:
            return set(self.content[part]) | {self.end[part]}
        return set(self.content[part]) if count < length else {self.end[part]}


# --- the id layout ---------------------------------------------------------------------------------------------
def test_shared_ids_come_first_and_the_part_blocks_tile_the_vocabulary():
    layout = text_image_layout()
    assert layout.special_tokens == {"bos": 0, "eos": 1, "pad": 2, "null": 3}
    assert (layout.bos_id, layout.eos_id, layout.pad_id, layout.null_id) == (0, 1, 2, 3)
    owner: dict[int, str] = {i: "shared" for i in range(4)}
    for name, span in layout.spans.items():
        block = [span.begin_id, span.end_id, *range(span.offset, span.offset + span.tokenizer.vocab_size)]
        for i in block:
            assert i not in owner, f"id {i} of part {name} is also in {owner.get(i)}"
            owner[i] = name
    assert sorted(owner) == list(range(layout.vocab_size))  # disjoint and covering, no gap
    assert layout.vocab_size == 4 + sum(2 + t.vocab_size for t in layout.parts.values())
    grammar = Grammar(layout.parts, layout.lengths)
    assert grammar.vocab_size == layout.vocab_size
    for name, span in layout.spans.items():
        assert (span.begin_id, span.end_id) == (grammar.begin[name], grammar.end[name])
        assert span.content_ids == grammar.content[name]
    assert layout.span("image").length == 16 and layout.span("text").length is None


def test_only_the_layout_knows_the_offsets():
    layout = text_image_layout()
    text, image = layout.span("text"), layout.span("image")
    picture = random_image(1)
    assert layout.parts["text"].encode("hé") == list("hé".encode())  # the plugin still speaks local ids
    assert max(layout.parts["image"].encode(picture)) < 256
    ids = layout.encode([Part("text", "hé"), ("image", picture)])
    local_text, local_image = ByteTokenizer().encode("hé"), PixelTokenizer(size=4, channels=1).encode(picture)
    assert ids == [text.begin_id, *(text.offset + i for i in local_text), text.end_id,
                   image.begin_id, *(image.offset + i for i in local_image), image.end_id]
    assert text.offset != 0 and image.offset != text.offset
    assert layout.encode_prompt("hé") == ids[:len(local_text) + 2] and layout.encode_prompt("") == []
    assert layout.encode_document([("text", "x")]) == [BOS, text.begin_id, text.offset + ord("x"), text.end_id, EOS]


def test_span_of_finds_the_owning_part():
    layout = text_image_layout()
    for name, span in layout.spans.items():
        for token in (span.begin_id, span.end_id, span.offset, span.offset + span.tokenizer.vocab_size - 1):
            assert layout.span_of(token).name == name
    assert all(layout.span_of(i) is None for i in range(4))


# --- round trips -------------------------------------------------------------------------------------------------
ROUND_TRIP = text_image_layout()
images = st.binary(min_size=16, max_size=16).map(lambda b: torch.tensor(list(b), dtype=torch.uint8).reshape(1, 4, 4))
parts = st.one_of(st.tuples(st.just("text"), st.text(max_size=24)), st.tuples(st.just("image"), images))


def assert_same_parts(decoded: list[Part], expected: list[tuple[str, object]]) -> None:
    assert [name for name, _ in decoded] == [name for name, _ in expected]
    for (name, got), (_, want) in zip(decoded, expected):
        if name == "image":
            assert got.dtype == torch.uint8 and torch.equal(got, want)
        else:
            assert got == want


def test_text_image_text_image_round_trips():
    sample = [("text", "a handwritten seven"), ("image", random_image(2)), ("text", "ünïcode ✓"),
              ("image", random_image(3))]
    ids = ROUND_TRIP.encode(sample)
    assert_same_parts(ROUND_TRIP.decode(ids), sample)
    assert_same_parts(ROUND_TRIP.decode(ROUND_TRIP.encode_document(sample)), sample)  # bos/eos are skipped
    assert all(isinstance(p, Part) for p in ROUND_TRIP.decode(ids))


@settings(max_examples=100, deadline=None)
@given(sample=st.lists(parts, max_size=6))
def test_any_mix_of_texts_and_images_round_trips(sample):
    ids = ROUND_TRIP.encode(sample)
    assert all(0 <= i < ROUND_TRIP.vocab_size for i in ids)
    assert_same_parts(ROUND_TRIP.decode(ids), sample)
    assert ROUND_TRIP.num_units(sample) == len(ids)


def test_decode_of_an_unterminated_span_goes_as_far_as_it_goes():
    layout = text_image_layout()
    text, image = layout.span("text"), layout.span("image")
    assert layout.decode([BOS, text.begin_id, text.offset + ord("h"), text.offset + ord("i")]) == [Part("text", "hi")]
    assert layout.decode([BOS, text.begin_id]) == [Part("text", "")]
    picture = random_image(4)
    five = [image.offset + i for i in layout.parts["image"].encode(picture)[:5]]
    (text_name, caption), (name, got) = layout.decode([BOS, *layout.encode_part("text", "7"), image.begin_id, *five])
    assert (text_name, caption, name) == ("text", "7", "image")
    expected = torch.zeros(16, dtype=torch.uint8)  # the image plugin pads what is missing with id 0
    expected[:5] = picture.flatten()[:5]
    assert torch.equal(got.flatten(), expected)


def test_decode_turns_content_outside_any_span_into_its_own_part_and_skips_shared_ids():
    layout = text_image_layout()
    text = layout.span("text")
    picture = random_image(5)
    stray = [text.offset + ord("x"), NULL, text.offset + ord("y")]  # text content with no <|text|> before it
    ids = [BOS, *stray, *layout.encode_part("image", picture), PAD, EOS]
    assert_same_parts(layout.decode(ids), [("text", "xy"), ("image", picture)])
    after = [*layout.encode_part("text", "ab"), text.offset + ord("c")]  # content after the span closed
    assert layout.decode(after) == [Part("text", "ab"), Part("text", "c")]
    # a plugin's own specials inside a span are skipped by that plugin
    assert layout.decode([text.begin_id, text.offset + 256, text.offset + ord("z"), text.end_id]) == [Part("text", "z")]


@pytest.mark.parametrize("bad", [[526], [0, 4, 10_000], [-1]])
def test_out_of_vocabulary_ids_raise(bad):
    layout = text_image_layout()
    assert layout.vocab_size == 526
    with pytest.raises(ValueError, match="outside the vocabulary"):
        layout.decode(bad)


# --- files -------------------------------------------------------------------------------------------------------
def assert_same_layout(loaded: Tokenizer, layout: VocabLayout, samples: list[list[tuple[str, object]]]) -> None:
    assert isinstance(loaded, VocabLayout)
    assert loaded.vocab_size == layout.vocab_size and loaded.prompt_part == layout.prompt_part
    assert list(loaded.spans) == list(layout.spans)
    for name, span in layout.spans.items():
        other = loaded.span(name)
        assert (other.begin_id, other.end_id, other.offset, other.length) == (span.begin_id, span.end_id,
                                                                              span.offset, span.length)
        assert type(other.tokenizer) is type(span.tokenizer) and other.content_ids == span.content_ids
    for sample in samples:
        assert loaded.encode(sample) == layout.encode(sample)
        assert_same_parts(loaded.decode(layout.encode(sample)), list(sample))


def test_save_model_then_load_model_restores_the_layout(tmp_path):
    layout = VocabLayout({"tag": {"tokenizer": "bytes", "length": 2},  # a length the plugin does not imply
                          "caption": ByteTokenizer(), "image": PixelTokenizer(size=4, channels=1, bits=8)},
                         prompt_part="caption")
    model = tiny_model(vocab_size=layout.vocab_size + 6, max_seq_len=32)  # a padded model vocabulary
    armm.save_model(tmp_path / "m", model, layout)
    loaded_model, loaded = armm.load_model(tmp_path / "m")
    assert loaded_model.config.vocab_size == layout.vocab_size + 6
    assert loaded.span("tag").length == 2 and loaded.span("caption").length is None
    assert_same_layout(loaded, layout, [[("tag", "ok"), ("caption", "a seven"), ("image", random_image(6))],
                                        [("image", random_image(7)), ("caption", "")]])
    with pytest.raises(ValueError, match="fixed length 2"):
        loaded.encode([("tag", "toolong")])


def test_a_layout_with_a_trainable_part_fits_and_round_trips(tmp_path):
    layout = VocabLayout({"text": {"tokenizer": "text-bpe", "options": {"vocab_size": 300}},
                          "image": {"tokenizer": "image-pixels", "options": {"size": 4, "channels": 1, "bits": 8}}})
    assert layout.needs_fit
    with pytest.raises(ValueError, match="no vocabulary yet.*fit"):
        layout.vocab_size
    captions = ["a handwritten seven", "the digit 7", "a seven", "draw a seven, please", "seven seven seven"] * 4
    layout.fit([[("text", c), ("image", random_image(i))] for i, c in enumerate(captions)])
    assert not layout.needs_fit
    text = layout.span("text")
    assert layout.span("image").begin_id == text.offset + text.tokenizer.vocab_size  # blocks laid out after fitting
    assert len(layout.encode([("text", "seven seven")])) < len("seven seven") + 2  # merges were learned
    armm.save_model(tmp_path / "m", tiny_model(vocab_size=layout.vocab_size, max_seq_len=32), layout)
    _, loaded = armm.load_model(tmp_path / "m")
    assert_same_layout(loaded, layout, [[("text", "a seven, please"), ("image", random_image(9))],
                                        [("text", "unseen wörds ✓")]])


def test_fit_needs_samples_of_the_trainable_part():
    layout = VocabLayout({"text": {"tokenizer": "text-bpe", "options": {"vocab_size": 300}}, "image": PixelTokenizer(4, 1)})
    with pytest.raises(ValueError, match="'text' needs fitting but no sample has a 'text' part"):
        layout.fit([[("image", random_image(0))]])


def test_loading_a_layout_that_names_a_part_outside_its_folder_is_refused(tmp_path):
    layout = text_image_layout()
    layout.save(tmp_path)
    meta = json.loads((tmp_path / "layout.json").read_text())
    meta["parts"][0]["name"] = "../x"
    meta["prompt_part"] = "../x"
    (tmp_path / "layout.json").write_text(json.dumps(meta))
    shutil.copytree(tmp_path / "parts" / "text", tmp_path / "x")  # parts/../x exists: only the name check stops it
    with pytest.raises(ValueError, match="not a valid part name"):
        VocabLayout.load(tmp_path)


def test_loading_mismatched_or_malformed_layout_files_is_refused(tmp_path):
    layout = text_image_layout()
    layout.save(tmp_path)
    meta = json.loads((tmp_path / "layout.json").read_text())
    meta["parts"][1]["vocab_size"] += 1
    (tmp_path / "layout.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="different layouts"):
        VocabLayout.load(tmp_path)
    (tmp_path / "layout.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="missing or malformed"):
        VocabLayout.load(tmp_path)


# --- errors ------------------------------------------------------------------------------------------------------
def test_an_unknown_part_name_is_refused_naming_the_parts():
    layout = text_image_layout()
    with pytest.raises(ValueError, match="no part 'audio'.*text, image"):
        layout.span("audio")
    with pytest.raises(ValueError, match="no part 'audio'"):
        layout.encode([("audio", "x")])
    with pytest.raises(ValueError, match="no part 'audio'"):
        layout.sampler("greedy", {"audio": "greedy"})


@pytest.mark.parametrize("name", ["1text", "../x", "a/b", "", "x" * 33, "tëxt"])
def test_a_bad_part_name_is_refused(name):
    with pytest.raises(ValueError, match="part name"):
        VocabLayout({name: ByteTokenizer()})


def test_layout_construction_errors():
    with pytest.raises(ValueError, match="prompt_part 'caption' is not a part"):
        VocabLayout({"text": ByteTokenizer()}, prompt_part="caption")
    with pytest.raises(ValueError, match="needs parts"):
        VocabLayout({})
    with pytest.raises(ValueError, match="length must be a positive integer"):
        VocabLayout({"tag": {"tokenizer": "bytes", "length": 0}})
    with pytest.raises(ValueError, match="must be a tokenizer or"):
        VocabLayout({"tag": {"tokenizer": "bytes", "size": 3}})
    with pytest.raises(ValueError, match="itself a mixed layout"):
        VocabLayout({"inner": text_image_layout()})


def test_a_fixed_length_part_refuses_a_sample_of_another_length():
    layout = VocabLayout({"tag": {"tokenizer": "bytes", "length": 3}, "text": ByteTokenizer()})
    assert len(layout.encode([("tag", "abc")])) == 5
    with pytest.raises(ValueError, match="fixed length 3 but its sample encodes to 2 ids"):
        layout.encode([("tag", "ab")])
    with pytest.raises(TypeError, match="list of"):
        layout.encode("abc")


# --- the span constraint against the reference grammar ------------------------------------------------------------
GRAMMAR_LAYOUT = VocabLayout({
    "text": ByteTokenizer(),  # any length
    "image": PixelTokenizer(size=2, channels=1, bits=2),  # 4 content tokens of 4 codes, then 3 local specials
    "tag": {"tokenizer": "bytes", "length": 2},  # a fixed length given in the spec, with local specials
})
GRAMMAR = Grammar(GRAMMAR_LAYOUT.parts, GRAMMAR_LAYOUT.lengths)


@st.composite
def grammar_prefixes(draw) -> list[int]:
    """bos, maybe null, then spans of random parts; only the last may be open (a fixed one partly filled)."""
    tokens = [BOS] + ([NULL] if draw(st.booleans()) else [])
    n_spans = draw(st.integers(0, 4))
    for index in range(n_spans):
        name = draw(st.sampled_from(sorted(GRAMMAR.begin)))
        last, length = index == n_spans - 1, GRAMMAR.length[name]
        if length is None:
            count = draw(st.integers(0, 6))
        else:
            count = draw(st.integers(0, length)) if last else length
        content = draw(st.lists(st.sampled_from(GRAMMAR.content[name]), min_size=count, max_size=count))
        tokens += [GRAMMAR.begin[name], *content]
        full = length is None or count == length
        if full and (not last or draw(st.booleans())):
            tokens.append(GRAMMAR.end[name])
    return tokens


def extreme_logits(rows: int, vocab: int, seed: int, scale: float) -> torch.Tensor:
    """Finite float32 logits of magnitude ``scale``, with the float32 extremes sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    big = torch.finfo(torch.float32).max
    logits = (torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale).clamp(-big, big).float()
    special = torch.tensor([big, -big, torch.finfo(torch.float32).tiny, 0.0, -1e-45])
    where = torch.rand(rows, vocab, generator=g) < 0.1
    picks = special[torch.randint(0, len(special), (rows, vocab), generator=g)]
    return torch.where(where, picks, logits)


@settings(max_examples=150, deadline=None)
@given(prefixes=st.lists(grammar_prefixes(), min_size=1, max_size=5), extra=st.integers(0, 7),
       scale=st.sampled_from([1e-30, 1.0, 30.0, 1e30, 1e39]), seed=st.integers(0, 2**31 - 1))
def test_the_span_constraint_allows_exactly_what_the_grammar_allows(prefixes, extra, scale, seed):
    width = max(map(len, prefixes))
    tokens = torch.tensor([[-1] * (width - len(p)) + p for p in prefixes])  # left padding, as generate has it
    vocab = GRAMMAR.vocab_size + extra  # a model vocabulary padded past the layout's
    logits = extreme_logits(len(prefixes), vocab, seed, scale)
    assert torch.isfinite(logits).all()
    out = SpanConstraint(tokenizer=GRAMMAR_LAYOUT)(logits, tokens)
    for row, prefix in enumerate(prefixes):
        expected = GRAMMAR.allowed(prefix)
        finite = set(torch.isfinite(out[row]).nonzero().flatten().tolist())
        assert finite == expected, f"after {prefix}"
        assert expected and all(i < GRAMMAR.vocab_size for i in finite)  # never empty, never a padded id
        assert (out[row][sorted(finite)] == logits[row][sorted(finite)]).all()  # allowed logits are untouched
        assert (out[row][sorted(set(range(vocab)) - finite)] == float("-inf")).all()
        part, _ = GRAMMAR.state(prefix)
        if part is not None:  # inside a span: that part's content and its end, never its plugin's own specials
            span = GRAMMAR_LAYOUT.span(part)
            assert finite <= set(span.content_ids) | {span.end_id}
            local_specials = {span.offset + i for i in span.tokenizer.special_tokens.values()}
            assert not finite & local_specials


def test_span_state_reports_the_open_span_and_its_fill():
    layout, grammar = GRAMMAR_LAYOUT, GRAMMAR
    image = layout.span("image")
    prefixes = [[BOS], [BOS, image.begin_id, image.offset, image.offset + 1],
                [BOS, *layout.encode_part("tag", "ab"), layout.span("text").begin_id]]
    width = max(map(len, prefixes))
    part, count = layout.span_state(torch.tensor([[-1] * (width - len(p)) + p for p in prefixes]))
    names = list(layout.spans)
    assert part.tolist() == [-1, names.index("image"), names.index("text")] and count.tolist() == [0, 2, 0]
    assert [grammar.state(p) for p in prefixes] == [(None, 0), ("image", 2), ("text", 0)]
    part, count = layout.span_state(torch.empty(2, 0, dtype=torch.long))  # nothing yet: between spans
    assert part.tolist() == [-1, -1] and count.tolist() == [0, 0]
    with pytest.raises(ValueError, match="smaller than the layout"):
        layout.allowed(torch.tensor([[BOS]]), layout.vocab_size - 1)


# --- generation inside the grammar -------------------------------------------------------------------------------
def grammar_violations(grammar: Grammar, prompt: list[int], new: list[int]) -> list[int]:
    """Steps at which a generated token was not allowed by the reference grammar."""
    return [step for step, token in enumerate(new) if token not in grammar.allowed(prompt + new[:step])]


def test_constrained_sampling_fills_fixed_length_spans_exactly_even_from_a_random_model():
    layout = text_image_layout()  # image spans hold exactly 16 content tokens
    grammar = Grammar(layout.parts, layout.lengths)
    image = layout.span("image")
    model = tiny_model(vocab_size=layout.vocab_size + 5, max_seq_len=64)
    opened = [BOS, *layout.encode_part("text", "a seven"), image.begin_id]
    partial = [BOS, NULL, image.begin_id, *(image.offset + i for i in range(5))]  # 5 of 16 already there
    seeds = list(range(16))
    prompts = [opened] * 8 + [partial] * 8
    for sampler, expect_ok in ((layout.sampler("temperature=1.0"), True), ("temperature=1.0", False)):
        outputs = armm.generate(model, prompts, max_new_tokens=30, sampler=sampler, seed=seeds, stop_tokens=[EOS])
        ok = []
        for prompt, new in zip(prompts, outputs):
            already = len(prompt) - prompt.index(image.begin_id) - 1
            need = 16 - already
            ok.append(all(t in grammar.content["image"] for t in new[:need]) and new[need:need + 1] == [image.end_id]
                      and not grammar_violations(grammar, prompt, new))
        if expect_ok:
            assert all(ok), [o for o, good in zip(outputs, ok) if not good]
        else:  # the random model, unconstrained, breaks the grammar: the check above can fail
            assert not any(ok)


def test_a_per_part_sampler_is_greedy_inside_image_spans_and_samples_elsewhere():
    layout = GRAMMAR_LAYOUT
    image, text = layout.span("image"), layout.span("text")
    prefixes = [
        [BOS, image.begin_id], [BOS, image.begin_id, image.offset + 1, image.offset + 2],
        [BOS, image.begin_id, *[image.offset] * 4],  # full: only the end may follow
        [BOS, text.begin_id, text.offset + 65], [BOS], [BOS, *layout.encode_part("tag", "ab")],
    ] * 6
    width = max(map(len, prefixes))
    tokens = torch.tensor([[-1] * (width - len(p)) + p for p in prefixes])
    logits = torch.randn(len(prefixes), layout.vocab_size + 3, generator=torch.Generator().manual_seed(0)) * 3
    seeds = list(range(100, 100 + len(prefixes)))
    sampler = layout.sampler("temperature=1.0", {"image": "greedy"})
    assert isinstance(sampler, SpanSampler) and not sampler.is_greedy
    got = sampler(logits, tokens, [torch.Generator().manual_seed(s) for s in seeds]).tolist()

    for row, prefix in enumerate(prefixes):  # a direct computation: mask by the grammar, then argmax or a draw
        allowed = sorted(GRAMMAR.allowed(prefix))
        masked = torch.full_like(logits[row], float("-inf"))
        masked[allowed] = logits[row][allowed]
        if GRAMMAR.state(prefix)[0] == "image":
            assert got[row] == int(masked.argmax())
        else:
            uniform = torch.rand(masked.shape, generator=torch.Generator().manual_seed(seeds[row]))
            noise = -uniform.log()  # Exp(1), as armm.sampling.draw makes it
            assert got[row] == int((masked.softmax(-1) / noise).argmax())
    sampled = [got[r] != int(logits[r].argmax()) for r, p in enumerate(prefixes) if GRAMMAR.state(p)[0] != "image"]
    assert any(sampled)  # outside image spans it really samples


def test_per_part_greedy_holds_inside_generated_image_spans():
    layout = text_image_layout()
    grammar = Grammar(layout.parts, layout.lengths)
    model = tiny_model(vocab_size=layout.vocab_size, max_seq_len=64)
    prompt = [BOS, *layout.encode_part("text", "a two"), layout.span("image").begin_id]
    outputs = armm.generate(model, [prompt] * 6, max_new_tokens=24, seed=list(range(6)), stop_tokens=[EOS],
                            sampler=layout.sampler("temperature=1.0", {"image": "greedy"}))
    in_image = other = 0
    with torch.no_grad():
        for new in outputs:
            logits = model(torch.tensor([prompt + new]))[0, len(prompt) - 1:-1]  # logits that drew each new token
            for step, token in enumerate(new):
                context = prompt + new[:step]
                allowed = sorted(grammar.allowed(context))
                assert token in allowed
                best = allowed[int(logits[step][allowed].argmax())]
                if grammar.state(context)[0] == "image":
                    assert token == best
                    in_image += 1
                else:
                    other += token != best
    assert in_image >= 6 * 16 and other > 0


def test_spans_composes_with_other_transforms_through_build_sampler():
    layout = GRAMMAR_LAYOUT
    image = layout.span("image")
    prefixes = [[BOS], [BOS, image.begin_id, image.offset], [BOS, image.begin_id, *[image.offset + 3] * 4],
                [BOS, layout.span("text").begin_id]]
    width = max(map(len, prefixes))
    tokens = torch.tensor([[-1] * (width - len(p)) + p for p in prefixes])
    logits = torch.randn(len(prefixes), layout.vocab_size, generator=torch.Generator().manual_seed(1))
    sampler = build_sampler("spans,top_k=2", tokenizer=layout)
    filtered = sampler.filter(logits, tokens)
    for row, prefix in enumerate(prefixes):
        allowed = sorted(GRAMMAR.allowed(prefix), key=lambda i: -float(logits[row, i]))
        assert set(torch.isfinite(filtered[row]).nonzero().flatten().tolist()) == set(allowed[:2])
    draws = sampler(logits, tokens, [torch.Generator().manual_seed(s) for s in range(len(prefixes))]).tolist()
    assert all(token in GRAMMAR.allowed(p) for token, p in zip(draws, prefixes))


def test_spans_without_a_layout_and_per_part_samplers_without_a_layout_are_refused():
    with pytest.raises(ValueError, match=r"build_sampler\(spec, tokenizer=layout\)"):
        build_sampler("spans")
    with pytest.raises(ValueError, match="mixed VocabLayout"):
        build_sampler("spans,top_k=2", tokenizer=ByteTokenizer())
    with pytest.raises(ValueError, match="per-part samplers need a mixed layout"):
        sampler_for(ByteTokenizer(), "greedy", {"image": "top_k=2"})
    plain = sampler_for(ByteTokenizer(), "top_k=3")
    assert isinstance(plain, Sampler) and not isinstance(plain, SpanSampler) and plain.spec == "top_k=3"
    constrained = sampler_for(text_image_layout(), "greedy", {"image": "top_k=2"})
    assert isinstance(constrained, SpanSampler) and "image: top_k=2" in constrained.spec
