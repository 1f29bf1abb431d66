"""Condition dropout for classifier-free guidance: the rate, the rows it makes, resumability, and the data module."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import armm
from armm.layout import VocabLayout
from armm.tokenizer import ByteTokenizer
from armm.training.augment import ConditionDropout, TrainingItems
from armm.training.data import IGNORE_INDEX, PaddedSamples, ResumableSampler, TokenDataModule
from armm_image.digits import DIGIT_WORDS, caption, digits_for
from armm_image.pixels import PixelTokenizer

BOS, EOS, PAD, NULL = 0, 1, 2, 3
MIXED_OPTIONS = {"parts": {"text": {"tokenizer": "bytes"},
                           "image": {"tokenizer": "image-pixels", "options": {"size": 8, "channels": 1, "bits": 4}}}}


def small_layout() -> VocabLayout:
    return VocabLayout({"text": ByteTokenizer(), "image": PixelTokenizer(size=2, channels=1, bits=4)})


def padded_rows(layout: VocabLayout, count: int) -> tuple[PaddedSamples, list[list[int]]]:
    """``count`` documents (captions of varied length, 2x2 images) right-padded to one width."""
    g = torch.Generator().manual_seed(0)
    docs = [layout.encode_document([("text", "x" * (i % 9) + str(i)),
                                    ("image", torch.randint(0, 256, (1, 2, 2), dtype=torch.uint8, generator=g))])
            for i in range(count)]
    width = max(map(len, docs)) + 3
    rows = np.full((count, width), layout.pad_id, dtype=np.uint16)  # the cache's dtype
    for row, doc in zip(rows, docs):
        row[:len(doc)] = doc
    return PaddedSamples(rows, layout.pad_id), docs


def dropout_items(samples: PaddedSamples, layout: VocabLayout, part: str, p: float, seed: int) -> TrainingItems:
    """Training items of ``samples`` whose condition ``part`` is dropped with probability ``p``."""
    return TrainingItems(samples, seed, dropout=ConditionDropout(layout, part, p))


def without_caption(doc: list[int], layout: VocabLayout) -> list[int]:
    """The document with its text span (begin … end) replaced by null, found by scanning."""
    text = layout.span("text")
    start, end = doc.index(text.begin_id), doc.index(text.end_id)
    return doc[:start] + [NULL] + doc[end + 1:]


def full_row(item: dict[str, torch.Tensor], pad: int) -> list[int]:
    """A training item back to its row of ``seq_len + 1`` ids: the first input, then the targets (ignored → pad)."""
    targets = item["targets"].tolist()
    return [int(item["input_ids"][0])] + [pad if t == IGNORE_INDEX else t for t in targets]


def dropped(item: dict[str, torch.Tensor]) -> bool:
    return int(item["input_ids"][1]) == NULL


# --- ConditionDropout -----------------------------------------------------------------------------------------
def test_the_condition_is_dropped_at_rate_p_and_the_rows_stay_well_formed():
    layout = small_layout()
    samples, docs = padded_rows(layout, 50)
    width = samples.rows.shape[1]
    p, keys = 0.3, 2000
    data = dropout_items(samples, layout, "text", p, seed=0)
    assert len(data) == 50
    count = 0
    for key in range(keys):
        item, doc = data[key], docs[key % 50]
        assert item["input_ids"].shape == item["targets"].shape == (width - 1,)
        row = full_row(item, PAD)
        if dropped(item):
            count += 1
            expected = without_caption(doc, layout)
            assert row == expected + [PAD] * (width - len(expected))  # re-padded to the same width
            assert layout.decode(row)[0].name == "image"
        else:
            plain = samples[key % 50]
            assert torch.equal(item["input_ids"], plain["input_ids"]) and torch.equal(item["targets"], plain["targets"])
            assert row[:len(doc)] == doc
        real = len(row) - row[::-1].index(EOS)  # tokens up to and including eos
        assert (item["targets"][real - 1:] == IGNORE_INDEX).all() and (item["targets"][:real - 1] != IGNORE_INDEX).all()
        assert (item["input_ids"][real:] == 0).all()  # padding inputs are a harmless id
    sd = math.sqrt(keys * p * (1 - p))
    assert abs(count - keys * p) < 4.5 * sd, count


def test_the_draw_depends_on_the_key_and_seed_only():
    layout = small_layout()
    samples, _ = padded_rows(layout, 40)
    first = dropout_items(samples, layout, "text", 0.5, seed=3)
    again = dropout_items(samples, layout, "text", 0.5, seed=3)  # a resumed run rebuilds the dataset
    other_seed = dropout_items(samples, layout, "text", 0.5, seed=4)
    keys = [17, 3, 1999, 17, 40, 0]
    for key in keys:
        a, b = first[key], again[key]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["targets"], b["targets"])
        assert torch.equal(first[key]["input_ids"], a["input_ids"])  # the same key twice
    pattern = [dropped(first[k]) for k in range(400)]
    assert pattern != [dropped(other_seed[k]) for k in range(400)]


def test_each_pass_over_the_data_draws_anew():
    layout = small_layout()
    size, passes, p = 200, 10, 0.3
    samples, _ = padded_rows(layout, size)
    data = dropout_items(samples, layout, "text", p, seed=0)
    drops = np.array([[dropped(data[epoch * size + i]) for i in range(size)] for epoch in range(passes)])
    assert abs(drops.mean() - p) < 4.5 * math.sqrt(p * (1 - p) / drops.size)
    # the same sample in consecutive passes: dropped in both about p² of the time, as independent draws would be
    both = (drops[1:] & drops[:-1]).mean()
    n = (passes - 1) * size
    assert abs(both - p * p) < 4.5 * math.sqrt(p * p * (1 - p * p) / n), both
    assert not (drops == drops[0]).all()


def test_dropout_of_a_part_the_layout_lacks_is_refused():
    layout = small_layout()
    with pytest.raises(ValueError, match="no part 'caption'.*text, image"):
        ConditionDropout(layout, "caption", 0.1)


# --- ResumableSampler(keyed=True) -------------------------------------------------------------------------------
@pytest.mark.parametrize("start, rank, world", [(0, 0, 1), (13, 0, 1), (5, 1, 3)])
def test_keyed_sampling_yields_pass_times_size_plus_index_in_the_same_order(start, rank, world):
    size, n = 7, 40
    plain = ResumableSampler(size, seed=5, start=start, rank=rank, world=world)
    keyed = ResumableSampler(size, seed=5, start=start, rank=rank, world=world, keyed=True)
    indices = [i for i, _ in zip(plain, range(n))]
    keys = [k for k, _ in zip(keyed, range(n))]
    assert [k % size for k in keys] == indices
    positions = [start * world + rank + step * world for step in range(n)]  # in the shared order of all ranks
    assert [k // size for k in keys] == [position // size for position in positions]
    whole = [k for k, _ in zip(ResumableSampler(size, seed=5, keyed=True), range(3 * size))]
    assert whole[size:2 * size] != [k + size for k in whole[:size]]  # each pass has its own order
    assert [sorted(whole[e * size:(e + 1) * size]) for e in range(3)] == [
        list(range(e * size, (e + 1) * size)) for e in range(3)]


def test_a_resumed_keyed_run_drops_the_same_samples():
    layout = small_layout()
    samples, _ = padded_rows(layout, 9)
    data = dropout_items(samples, layout, "text", 0.5, seed=1)
    uninterrupted = [k for k, _ in zip(ResumableSampler(9, seed=1, keyed=True), range(30))]
    resumed = [k for k, _ in zip(ResumableSampler(9, seed=1, start=12, keyed=True), range(18))]
    assert resumed == uninterrupted[12:]
    assert [full_row(data[k], PAD) for k in resumed] == [full_row(data[k], PAD) for k in uninterrupted[12:]]


# --- the data module --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(condition_dropout=0.1, layout="samples"), "needs data.condition"),
    (dict(condition_dropout=0.1, condition="text", layout="packed"), "data.layout: samples"),
    (dict(condition_dropout=1.0, condition="text", layout="samples"), r"in \[0, 1\)"),
    (dict(condition_dropout=-0.1, condition="text", layout="samples"), r"in \[0, 1\)"),
])
def test_bad_condition_dropout_settings_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenDataModule(tokenizer="mixed", tokenizer_options=MIXED_OPTIONS, dataset="sklearn-digits-captioned",
                        cache_dir=tmp_path, **kwargs)


def test_condition_dropout_with_a_tokenizer_that_is_not_a_layout_fails_at_setup(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text(f"document number {i}")
    data = TokenDataModule(tokenizer="bytes", path=str(tmp_path), layout="samples", seq_len=32, batch_size=2,
                           cache_dir=tmp_path / "cache", val_fraction=0.25, condition_dropout=0.2, condition="text")
    with pytest.raises(ValueError, match="needs a mixed layout tokenizer.*'bytes'"):
        data.setup()


def check_grammar(row: list[int], layout: VocabLayout) -> str:
    """Assert ``row`` is bos, (a text span | null), an image span of 64, eos, then only pads → the caption or ''."""
    text, image = layout.span("text"), layout.span("image")
    text_content = set(text.content_ids)
    image_content = set(image.content_ids)
    assert row[0] == BOS
    if row[1] == NULL:
        caption_ids, rest = [], row[2:]
    else:
        assert row[1] == text.begin_id
        end = row.index(text.end_id)
        caption_ids, rest = row[2:end], row[end + 1:]
        assert caption_ids and set(caption_ids) <= text_content
    assert rest[0] == image.begin_id and set(rest[1:65]) <= image_content and rest[65] == image.end_id
    assert rest[66] == EOS and set(rest[67:]) <= {PAD}
    return text.tokenizer.decode([i - text.offset for i in caption_ids])


def test_a_captioned_digits_data_module_drops_captions_in_grammatical_rows(tmp_path):
    data = TokenDataModule(tokenizer="mixed", tokenizer_options=MIXED_OPTIONS, dataset="sklearn-digits-captioned",
                           layout="samples", seq_len=96, batch_size=16, cache_dir=tmp_path, condition_dropout=0.3,
                           condition="text", seed=0)
    data.setup()
    layout = data.tokenizer
    assert isinstance(layout, VocabLayout) and layout.span("image").length == 64
    captions, nulls = [], 0
    loader = iter(data.train_dataloader())
    for _ in range(8):
        batch = next(loader)
        assert batch["input_ids"].shape == batch["targets"].shape == (16, 96)
        for inputs, targets in zip(batch["input_ids"], batch["targets"]):
            row = full_row({"input_ids": inputs, "targets": targets}, PAD)
            assert len(row) == 97
            said = check_grammar(row, layout)
            nulls += said == ""
            captions += [said] if said else []
    assert 0 < nulls < 128 and len(captions) + nulls == 128
    assert abs(nulls - 0.3 * 128) < 4.5 * math.sqrt(128 * 0.3 * 0.7)
    assert all(len(digits_named(c)) == 1 for c in captions), captions  # each names one digit
    for inputs, targets in zip(*next(iter(data.val_dataloader())).values()):  # validation keeps every caption
        assert check_grammar(full_row({"input_ids": inputs, "targets": targets}, PAD), layout) != ""


def test_without_dropout_no_caption_is_replaced(tmp_path):
    data = TokenDataModule(tokenizer="mixed", tokenizer_options=MIXED_OPTIONS, dataset="sklearn-digits-captioned",
                           layout="samples", seq_len=96, batch_size=32, cache_dir=tmp_path)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert not (batch["input_ids"][:, 1] == NULL).any()


# --- the captioned dataset ---------------------------------------------------------------------------------------
NAMES = {word: digit for digit, word in enumerate(DIGIT_WORDS)} | {str(d): d for d in range(10)}


def digits_named(text: str) -> set[int]:
    return {NAMES[token] for token in re.findall(r"[a-z]+|\d", text.lower()) if token in NAMES}


def test_every_caption_names_its_label_and_no_other_digit():
    for label in range(10):
        for index in range(60):
            assert digits_named(caption(label, index)) == {label}, caption(label, index)
    assert len({caption(7, i) for i in range(60)}) > 3  # several phrasings


def test_sklearn_digits_captioned_pairs_each_digit_with_a_caption_of_its_label():
    layout = armm.get_plugins().tokenizers.get("mixed")(**MIXED_OPTIONS)
    samples = armm.get_plugins().datasets.get("sklearn-digits-captioned")(layout)
    images, labels = digits_for(layout.parts["image"])
    assert len(samples) == len(labels) == 1438
    for (text_part, image_part), image, label in zip(samples, images, labels):
        assert text_part[0] == "text" and image_part[0] == "image"
        assert digits_named(text_part[1]) == {label}
        assert torch.equal(image_part[1], image)
    assert len(layout.encode_document(samples[0])) <= 97


def test_sklearn_digits_captioned_needs_a_layout_with_a_text_and_an_image_part():
    dataset = armm.get_plugins().datasets.get("sklearn-digits-captioned")
    with pytest.raises(ValueError, match="needs tokenizer: mixed"):
        dataset(ByteTokenizer())
    with pytest.raises(ValueError, match="needs tokenizer: mixed"):
        dataset(VocabLayout({"image": PixelTokenizer(8, 1), "text": ByteTokenizer()}))  # prompt_part is the image
