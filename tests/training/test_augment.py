"""Training augmentation: off unless a tokenizer overrides ``augment``, training split only, keyed draws that a resumed
run repeats, alongside condition dropout; the audio gain and the image shift against references."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio.functional

from armm.training.augment import ConditionDropout, TrainingItems
from armm.training.data import IGNORE_INDEX, ResumableSampler, TokenDataModule
from armm_audio.mulaw import MuLawTokenizer
from armm_image.pixels import PixelTokenizer
from tests.training.test_condition_dropout import NULL, padded_rows, small_layout

DIGITS = {"tokenizer": "image-pixels", "dataset": "sklearn-digits", "layout": "samples", "seq_len": 65,
          "batch_size": 16, "val_fraction": 0.1}


def digits(tmp_path, shift: int = 0) -> TokenDataModule:
    data = TokenDataModule(tokenizer_options={"size": 8, "channels": 1, "bits": 4, "augment_shift": shift},
                           cache_dir=tmp_path, **DIGITS)
    data.setup()
    return data


def batches(loader, count: int) -> list[dict[str, torch.Tensor]]:
    return [batch for batch, _ in zip(loader, range(count))]


def same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in ("input_ids", "targets"))


# --- off by default: the batches of a run without augmentation --------------------------------------------------
def test_without_augmentation_the_batches_are_the_unshuffled_reference_windows_and_rows(tmp_path):
    for i in range(6):
        (tmp_path / f"{i}.txt").write_text(f"document {i} " * 30)
    text = TokenDataModule(path=str(tmp_path), seq_len=16, batch_size=4, val_fraction=0.2, cache_dir=tmp_path / "c")
    text.setup()
    image = digits(tmp_path / "d")
    for data, width in ((text, 17), (image, 66)):
        order = [i for i, _ in zip(ResumableSampler(len(data.train_dataloader().dataset), data.seed), range(32))]
        tokens = torch.from_numpy(np.asarray(data.train_tokens).astype(np.int64))
        rows = [tokens[i:i + width] if data.layout == "packed" else tokens[i] for i in order]
        pad = data.tokenizer.pad_id
        inputs = torch.stack([r[:-1].masked_fill(r[:-1] == pad, 0) for r in rows])  # pads only in samples rows
        targets = torch.stack([r[1:].masked_fill(r[1:] == pad, IGNORE_INDEX) for r in rows])
        size = data.batch_size
        expected = [{"input_ids": inputs[b:b + size], "targets": targets[b:b + size]} for b in range(0, 32, size)]
        assert same(batches(data.train_dataloader(), len(expected)), expected)


def test_condition_dropout_draws_are_those_of_its_documented_generator():
    layout = small_layout()
    samples, _ = padded_rows(layout, 20)
    items = TrainingItems(samples, seed=7, dropout=ConditionDropout(layout, "text", 0.5))
    for key in range(100):
        dropped = int(items[key]["input_ids"][1]) == NULL
        assert dropped == (random.Random(f"7:{key}").random() < 0.5)


# --- keyed, training only -------------------------------------------------------------------------------------
def test_augmentation_changes_training_items_only_and_a_resumed_run_draws_the_same(tmp_path):
    plain, shifted = digits(tmp_path, shift=0), digits(tmp_path, shift=2)
    assert same(batches(plain.val_dataloader(), 3), batches(shifted.val_dataloader(), 3))
    assert not same(batches(plain.train_dataloader(), 3), batches(shifted.train_dataloader(), 3))
    items = shifted.train_dataloader().dataset
    assert isinstance(items, TrainingItems)
    uninterrupted = [k for k, _ in zip(ResumableSampler(len(items), seed=0, keyed=True), range(40))]
    resumed = [k for k, _ in zip(ResumableSampler(len(items), seed=0, start=25, keyed=True), range(15))]
    assert resumed == uninterrupted[25:]
    again = digits(tmp_path, shift=2).train_dataloader().dataset  # a new process rebuilds the dataset
    assert same([items[k] for k in uninterrupted[25:]], [again[k] for k in resumed])
    size = len(items)
    assert not same([items[k] for k in range(20)], [items[size + k] for k in range(20)])  # each pass draws anew


def test_augmentation_follows_condition_dropout_with_its_own_generator():
    layout = small_layout()
    samples, _ = padded_rows(layout, 10)
    dropout = ConditionDropout(layout, "text", 0.5)

    def reverse_some(ids: np.ndarray, rng: random.Random) -> np.ndarray:
        return ids[::-1].copy() if rng.random() < 0.5 else ids

    both = TrainingItems(samples, seed=3, dropout=dropout, augment=reverse_some)
    for key in range(40):
        row = dropout(samples.row(key % 10), random.Random(f"3:{key}"))
        expected = samples.item(key % 10, reverse_some(row, random.Random(f"3:{key}:augment")))
        assert torch.equal(both[key]["input_ids"], expected["input_ids"])
        assert torch.equal(both[key]["targets"], expected["targets"])

    with pytest.raises(ValueError, match="must keep the row's length"):
        TrainingItems(samples, seed=3, augment=lambda ids, rng: ids[1:])[0]


# --- audio: a random gain --------------------------------------------------------------------------------------
def test_audio_gain_scales_the_decoded_clip_by_the_drawn_gain_and_keeps_the_specials(tmp_path):
    tok = MuLawTokenizer(sample_rate=8000, bits=8, augment_gain_db=6.0)
    clip = 0.25 * torch.sin(torch.linspace(0, 40, 400))  # quiet enough never to clip at +6 dB
    row = np.array([*tok.encode_document(clip), tok.pad_id, tok.pad_id], dtype=np.uint16)
    assert np.array_equal(MuLawTokenizer(bits=8).augment(row, random.Random(0)), row)  # off by default
    original = tok.decode(row.tolist()).double()
    gains = []
    for seed in range(20):
        out = tok.augment(row, random.Random(seed))
        assert out.dtype == row.dtype and len(out) == len(row)
        assert (out[row >= 256] == row[row >= 256]).all() and (out[row < 256] < 256).all()
        louder = tok.decode(out.tolist()).double()
        gain = float(louder @ original / (original @ original))  # least-squares gain of the decoded clips
        expected = 10 ** (random.Random(seed).uniform(-6, 6) / 20)
        assert gain == pytest.approx(expected, rel=0.03)  # re-quantising to mu-law levels moves it a little
        # each sample within one mu-law step of the scaled amplitude
        step = torchaudio.functional.mu_law_decoding(torch.arange(256), 256).diff().abs().max().item()
        assert (louder - expected * original).abs().max() <= step
        gains.append(gain)
    assert 10 ** (-6 / 20) * 0.99 <= min(gains) < 0.8 and 1.25 < max(gains) <= 10 ** (6 / 20) * 1.01
    tok.save(tmp_path)
    assert MuLawTokenizer.load(tmp_path).augment_gain_db == 6.0


# --- images: a random horizontal shift -------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_image_shift_equals_a_replicate_padded_shift_of_the_decoded_image(channels, tmp_path):
    tok = PixelTokenizer(size=(4, 6), channels=channels, bits=8, num_classes=3, augment_shift=2)
    image = torch.randint(0, 256, (channels, 4, 6), dtype=torch.uint8)
    row = np.array([*tok.encode_document((1, image)), tok.pad_id], dtype=np.uint16)
    assert np.array_equal(PixelTokenizer(size=(4, 6), channels=channels).augment(row, random.Random(0)), row)
    shifts = set()
    for seed in range(30):
        out = tok.augment(row, random.Random(seed))
        shift = random.Random(seed).randint(-2, 2)
        padded = F.pad(image[None].float(), (max(shift, 0), max(-shift, 0), 0, 0), mode="replicate")[0]
        reference = padded[..., :6] if shift >= 0 else padded[..., -6:]
        assert torch.equal(tok.decode(out.tolist()), reference.to(torch.uint8))
        special = row >= tok.num_codes  # bos, the class token, eos, pad
        assert (out[special] == row[special]).all()
        shifts.add(shift)
    assert shifts == {-2, -1, 0, 1, 2}
    tok.save(tmp_path)
    assert PixelTokenizer.load(tmp_path).augment_shift == 2


def test_image_shift_refuses_a_row_without_one_whole_image_and_bad_options():
    tok = PixelTokenizer(size=4, channels=1, bits=4, augment_shift=1)
    with pytest.raises(ValueError, match="data.layout: samples"):
        tok.augment(np.array(tok.encode(torch.zeros(1, 4, 4, dtype=torch.uint8))[:10]), random.Random(0))
    with pytest.raises(ValueError, match=r"augment_shift must be a whole number of pixels in 0..3"):
        PixelTokenizer(size=4, augment_shift=4)
    with pytest.raises(ValueError, match="augment_gain_db must be a finite number"):
        MuLawTokenizer(augment_gain_db=-1.0)
