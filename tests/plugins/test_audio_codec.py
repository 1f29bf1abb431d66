"""The audio-codec tokenizer: contract suite, the id layout of K codebooks, the codec against the codes it decodes,
reading clips, sampling inside the codebook cycle, and the espeak-digits dataset."""

import json
import re
import shutil

import numpy as np
import pytest
import soundfile
import torch

import armm
import armm_audio.snr
from armm.layout import Part, VocabLayout
from armm.testing import TokenizerContract
from armm_audio import CodecTokenizer, MuLawTokenizer
from armm_audio.datasets import DIGITS, synthetic_tones
from armm_audio.spoken_digits import LEAD_IN, VARIANTS, espeak_digits, spoken_digits

RATE, CLIP = 8000, 0.25
SMALL = dict(sample_rate=RATE, clip_seconds=CLIP, hop=80, num_codebooks=2, codebook_size=32, code_dim=16,
             channels=48, layers=2, seed=0)  # fmt: skip
LOG_MEL_BAR = 12.0  # dB per held-out tone: the small codec reaches 3.3-10 (mean ~5.7), an untrained one 8.5-15 (~11)


def tones(count: int, seed: int) -> list[torch.Tensor]:
    return synthetic_tones(MuLawTokenizer(sample_rate=RATE, clip_seconds=CLIP), num_clips=count, seed=seed)


def log_mel_distance(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return armm_audio.snr.log_mel_distance(estimate, reference, RATE)


@pytest.fixture(scope="module")
def trained_codec() -> CodecTokenizer:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer = CodecTokenizer(**SMALL)
        tokenizer.fit(tones(200, seed=0), steps=150, batch_size=16, segment_seconds=CLIP)
    finally:
        torch.set_num_threads(threads)
    return tokenizer


@pytest.fixture(scope="module")
def held_out() -> list[torch.Tensor]:
    return tones(8, seed=1)


class TestCodecContract(TokenizerContract):
    lossless = False

    @pytest.fixture
    def tokenizer(self, trained_codec):
        return trained_codec

    @pytest.fixture
    def samples(self, held_out):
        return held_out[:3]

    def assert_same_sample(self, actual, expected):
        assert isinstance(actual, torch.Tensor) and actual.dtype == torch.float32 and actual.shape == expected.shape
        assert log_mel_distance(actual, expected) < LOG_MEL_BAR


def test_training_makes_the_codec_reconstruct_held_out_audio(trained_codec, held_out):
    untrained = CodecTokenizer(**SMALL)
    clips = torch.stack(held_out)
    trained = torch.stack([trained_codec.decode(trained_codec.encode(x)) for x in held_out])
    fresh = torch.stack([untrained.decode(untrained.encode(x)) for x in held_out])
    assert log_mel_distance(trained, clips) < 0.7 * log_mel_distance(fresh, clips)
    codes = torch.stack(trained_codec.codes(held_out))  # (N, K, frames)
    assert all(len(codes[:, k].unique()) > 8 for k in range(2))  # the codebooks are used, not collapsed


def test_the_decoder_s_vocoder_rebuilds_a_waveform_from_its_true_log_magnitudes(held_out):
    from armm_audio.codec_model import AudioCodec

    codec = AudioCodec(hop=80, channels=8, layers=1, code_dim=4, num_codebooks=1, codebook_size=4, ema_decay=0.99,
                       dead_code_threshold=0.5)  # fmt: skip
    clips = torch.stack(held_out)[:, None]  # (N, 1, L)
    with torch.no_grad():
        rebuilt = codec.synthesize(codec.log_magnitude(clips))  # Griffin-Lim: the phase is found, not kept
        again = codec.synthesize(codec.log_magnitude(clips))
    assert rebuilt.shape == clips.shape and torch.equal(rebuilt, again)  # deterministic
    assert log_mel_distance(rebuilt[:, 0], clips[:, 0]) < 1.0  # dB; a trained codec's error is on top of this


def test_ids_are_frames_of_k_codebooks_and_decode_is_the_codec_decoder(trained_codec, held_out):
    tok = trained_codec
    (codes,) = tok.codes(held_out[:1])  # (K, frames)
    ids = tok.encode(held_out[0])
    frames = round(CLIP * RATE) // 80
    assert codes.shape == (2, frames) and len(ids) == tok.sample_length == 2 * frames
    assert ids == [k * 32 + int(codes[k, t]) for t in range(frames) for k in range(2)]
    assert all(i // 32 == position % 2 for position, i in enumerate(ids))  # codebook 0, 1, 0, 1, …
    with torch.no_grad():
        torch.testing.assert_close(tok.decode(ids), tok.model.decode(codes[None])[0, 0].clamp(-1, 1))
        torch.testing.assert_close(tok.decode(ids[:8]), tok.model.decode(codes[None, :, :4])[0, 0].clamp(-1, 1))
    assert tok.decode(ids[:5]).shape == (3 * 80,)  # a partial last frame decodes with the codebooks it has
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]).shape == (frames * 80,)
    assert tok.token_name(33) == "codebook 1 code 1" and tok.token_name(tok.bos_id) is None


def test_encode_pads_to_the_clip_and_refuses_longer_audio(trained_codec):
    tok = trained_codec
    assert len(tok.encode(torch.zeros(100))) == tok.sample_length
    assert tok.num_units(torch.zeros(100)) == round(CLIP * RATE)
    with pytest.raises(ValueError, match=r"clip_seconds=0\.25 \(2000 samples at 8000 Hz\), got 2001 samples"):
        tok.encode(torch.zeros(2001))
    unclipped = CodecTokenizer(**{**SMALL, "clip_seconds": None})
    assert unclipped.sample_length is None and len(unclipped.encode(torch.zeros(161))) == 3 * 2  # 3 frames of 80


def test_read_cuts_files_into_clips_padding_the_last(tmp_path, trained_codec):
    t = np.arange(int(2.3 * CLIP * RATE)) / RATE
    soundfile.write(tmp_path / "word.wav", (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), RATE)
    clips = trained_codec.read(tmp_path)
    assert [len(c) for c in clips] == [2000] * 3
    assert clips[2][600:].abs().max() == 0 and clips[2][:590].abs().max() > 0.4


def test_options_and_fitting_data_are_checked():
    with pytest.raises(ValueError, match="hop must be a positive integer"):
        CodecTokenizer(hop=0)
    with pytest.raises(ValueError, match="clip_seconds must hold at least one frame"):
        CodecTokenizer(clip_seconds=0.01)
    with pytest.raises(ValueError, match="needs at least 1 s of audio, got 0.5 s"):
        CodecTokenizer(**SMALL).fit([torch.zeros(4000)], steps=1)


def test_saves_safetensors_and_json_only_and_rejects_foreign_weights(trained_codec, held_out, tmp_path):
    trained_codec.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio_codec.json", "audio_codec.safetensors"]
    loaded = CodecTokenizer.load(tmp_path)
    ids = trained_codec.encode(held_out[0])
    assert loaded.encode(held_out[0]) == ids and torch.equal(loaded.decode(ids), trained_codec.decode(ids))
    (tmp_path / "audio_codec.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "audio_codec.safetensors"))):
        CodecTokenizer.load(tmp_path)


# --- in a mixed layout --------------------------------------------------------------------------------
@pytest.fixture
def labelled_layout(trained_codec) -> VocabLayout:
    layout = VocabLayout({"label": {"tokenizer": "classes"}, "audio": trained_codec}, prompt_part="label")
    layout.parts["label"].fit(DIGITS)
    return layout


def test_sampling_keeps_each_position_to_its_codebook_and_ends_when_the_clip_is_full(labelled_layout):
    layout = labelled_layout
    span = layout.span("audio")
    prompt = layout.encode_prompt("seven") + [span.begin_id]
    codebook = lambda k: set(range(span.offset + 32 * k, span.offset + 32 * (k + 1)))  # noqa: E731
    tokens = list(prompt)
    for position in range(span.length):
        allowed = set(layout.allowed(torch.tensor([tokens])).nonzero()[:, 1].tolist())
        assert allowed == codebook(position % 2), position
        tokens.append(min(allowed))
    assert layout.allowed(torch.tensor([tokens]))[0].nonzero().flatten().tolist() == [span.end_id]


def test_a_mixed_sample_written_as_wav_writes_its_audio_part(labelled_layout, held_out, tmp_path):
    layout = labelled_layout
    samples = [layout.decode(layout.encode([("label", "seven"), ("audio", clip)])) for clip in held_out[:2]]
    paths = layout.write(samples, tmp_path / "seven.wav")
    assert [p.name for p in paths] == ["seven-0.wav", "seven-1.wav"]
    assert torch.allclose(layout.parts["audio"].read(paths[0])[0], samples[0][1].sample, atol=1 / 32768)
    with pytest.raises(ValueError, match="sample 0 holds 0 'audio' parts"):
        layout.write([[Part("label", "seven")]], tmp_path / "cut.wav")


# --- the espeak-digits dataset ------------------------------------------------------------------------------
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not on PATH (CI installs it)")


@needs_espeak
def test_spoken_digits_are_one_second_clips_of_each_word_after_a_silent_lead_in():
    words, clips, said = spoken_digits(RATE, 1.0, voices=("en-us",), speeds=(160,), pitches=(50,))
    assert words == [digit for digit in DIGITS for _ in VARIANTS]
    assert {u.voice for u in said} == {"en-us" + variant for variant in VARIANTS}
    assert {(clip.dtype, clip.shape) for clip in clips} == {(torch.float32, (RATE,))}
    lead_in = round(LEAD_IN * RATE)
    assert all(clip[:lead_in].abs().max() == 0 and clip[lead_in:].abs().max() > 0.05 for clip in clips)
    slow, *_ = spoken_digits(RATE, 1.0, voices=("en-us",), speeds=(100,), pitches=(50,))
    assert len(slow) == len(words)


@needs_espeak
def test_espeak_digits_label_every_clip_for_a_mixed_layout(labelled_layout, monkeypatch):
    import armm_audio.spoken_digits as module

    monkeypatch.setattr(module, "english_voices", lambda: ("en-gb",))
    dataset = armm.get_plugins().datasets.get("espeak-digits")
    assert dataset is espeak_digits
    samples = dataset(labelled_layout)
    assert len(samples) == 10 * len(VARIANTS) * 9
    assert [name for name, _ in samples[0]] == ["label", "audio"] and samples[0][0].sample == "zero"
    assert samples[0][1].sample.shape == (round(CLIP * RATE),)  # the codec part's clip_seconds


# --- the speech_digits recipe on a user's folder --------------------------------------------------------------
def test_the_speech_digits_recipe_trains_on_a_labelled_wav_folder_and_samples_a_wav(tmp_path, monkeypatch, one_thread):
    from pathlib import Path

    import yaml

    from armm.cli import main

    recipe = Path(__file__).parents[2] / "recipes" / "speech_digits.yaml"
    parts = yaml.safe_load(recipe.read_text())["data"]["tokenizer_options"]["parts"]
    parts["audio"]["options"].update(fit_steps=3, channels=16, layers=1)
    for digit, word in enumerate(DIGITS):  # what a user brings: 16 kHz WAVs, one folder per digit
        (tmp_path / "my_digits" / word).mkdir(parents=True)
        for take in range(4):
            t = np.arange(int(0.6 * 16000)) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * digit + 20 * take) * t)
            soundfile.write(tmp_path / "my_digits" / word / f"{take:03}.wav", wave.astype(np.float32), 16000)
    monkeypatch.chdir(tmp_path)
    main(["fit", "-c", str(recipe), "--data.dataset", "null", "--data.path", "my_digits",
          "--data.tokenizer_options", json.dumps({"parts": parts, "prompt_part": "label"}), "--data.val_fraction",
          "0.1", "--data.batch_size", "4", "--model.overrides",
          json.dumps({"n_layer": 1, "n_head": 2, "d_model": 32, "max_seq_len": 107}), "--model.warmup_steps", "1",
          "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1"])  # fmt: skip
    _, layout = armm.load_model("runs/speech_digits/export/final")
    assert sorted(layout.parts["label"].names) == sorted(DIGITS)
    main(["sample", "runs/speech_digits/export/final", "--prompt", "two", "--output", "two.wav", "--seed", "0"])
    audio, rate = soundfile.read(tmp_path / "two.wav")
    assert rate == RATE and audio.shape == (RATE,)  # one 1 s clip at the recipe's 8 kHz
