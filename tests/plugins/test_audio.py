"""The audio-mulaw tokenizer: contract suite, mu-law against its textbook formulas, SNR, reading and writing."""

import math
import re
import shutil

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import strategies as st

import armm
from armm.testing import TokenizerContract
from armm_audio import MuLawTokenizer, datasets
from armm_audio.datasets import PHRASES, SPEAKERS, espeak_phrases, speak, synthetic_tones
from armm_audio.snr import PHRASE, espeak_speech, round_trip_snr, snr_db, tone

PCM16_STEP = 1 / 32768


def mu_law_error_bound(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Largest |decode(encode(x)) - x|: half a level (1/mu) in the companded domain times the steepest slope
    of the expansion F⁻¹(y) = sign(y)((1+mu)^|y| - 1)/mu over that half level, which is
    (1+mu|x|) ln(1+mu) (1+mu)^(1/mu) / mu²."""
    mu = 2**bits - 1
    return (1 + mu * x.double().abs()) * math.log1p(mu) * (1 + mu) ** (1 / mu) / mu**2


def mu_law_textbook(x: np.ndarray, bits: int) -> np.ndarray:
    """F(x) = sign(x) ln(1 + mu|x|) / ln(1 + mu), then [-1, 1] quantised to levels 0 .. mu by rounding."""
    mu = 2**bits - 1
    companded = np.sign(x) * np.log(1 + mu * np.abs(x)) / np.log(1 + mu)
    return np.floor((companded + 1) / 2 * mu + 0.5).astype(np.int64)


def write_tone(path, frequency: float, seconds: float, rate: int, channels: int = 1, subtype: str | None = None):
    """Channel c holds a sine at (c + 1) × frequency; returns the float32 frames written."""
    t = np.arange(round(seconds * rate)) / rate
    frames = np.stack([0.5 * np.sin(2 * np.pi * frequency * (c + 1) * t) for c in range(channels)], axis=1)
    soundfile.write(path, frames.astype(np.float32), rate, subtype=subtype)
    return frames.astype(np.float32)


class TestMuLawContract(TokenizerContract):
    bits = 8

    @pytest.fixture
    def tokenizer(self):
        return MuLawTokenizer(bits=self.bits)

    @pytest.fixture
    def samples(self):
        noise = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32))
        ramp = torch.linspace(-1, 1, 501)
        return [tone(440.0, 0.25, 16000), noise, ramp, torch.tensor([0.0])]

    def assert_same_sample(self, actual, expected):
        """Lossy: within the mu-law quantisation bound, plus one 16-bit PCM step for samples written to a file."""
        assert isinstance(actual, torch.Tensor) and actual.dtype == torch.float32
        assert actual.shape == expected.shape
        error = (actual.double() - expected.double()).abs()
        assert (error <= mu_law_error_bound(expected, self.bits) + PCM16_STEP).all()

    def sample_strategy(self, tokenizer):
        values = st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=200)
        return values.map(lambda v: torch.tensor(v, dtype=torch.float32))


class TestMuLaw4BitContract(TestMuLawContract):
    bits = 4


# --- mu-law ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8, 12])
def test_encoding_matches_the_textbook_mu_law_formula(bits):
    x = np.random.default_rng(bits).uniform(-1, 1, 20000).astype(np.float32)
    x = np.concatenate([x, np.array([-1, 0, 1], dtype=np.float32)])
    assert MuLawTokenizer(bits=bits).encode(torch.from_numpy(x)) == mu_law_textbook(x.astype(np.float64), bits).tolist()


def test_decoding_matches_the_textbook_mu_law_expansion():
    mu = 255
    companded = 2 * np.arange(mu + 1) / mu - 1
    expected = np.sign(companded) * ((1 + mu) ** np.abs(companded) - 1) / mu
    decoded = MuLawTokenizer(bits=8).decode(list(range(mu + 1)))
    np.testing.assert_allclose(decoded.numpy(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_encode_after_decode_is_the_identity_so_re_encoding_is_idempotent(bits):
    tok = MuLawTokenizer(bits=bits)
    levels = list(range(2**bits))
    assert tok.encode(tok.decode(levels)) == levels
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, 5000).astype(np.float32))
    assert tok.encode(tok.decode(tok.encode(x))) == tok.encode(x)


def test_the_round_trip_error_bound_is_tight():
    """The tolerance the contract uses is nearly reached, so it would catch a codec one level off."""
    tok = MuLawTokenizer(bits=8)
    x = torch.linspace(-1, 1, 200001)
    ratio = (tok.decode(tok.encode(x)).double() - x.double()).abs() / mu_law_error_bound(x, 8)
    assert 0.9 < ratio.max() <= 1


def test_special_tokens_are_skipped_and_values_outside_the_range_clipped():
    tok = MuLawTokenizer(bits=8)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (256, 257, 258, 259)
    assert torch.equal(tok.decode([tok.bos_id, 0, 255, tok.eos_id, tok.pad_id]), tok.decode([0, 255]))
    assert tok.encode(torch.tensor([1.5, -2.0, 0.0])) == [255, 0, 128]
    assert tok.decode([]).shape == (0,)


def test_encode_accepts_numpy_and_rejects_what_is_not_a_mono_float_waveform():
    tok = MuLawTokenizer()
    x = np.random.default_rng(2).uniform(-1, 1, 100).astype(np.float32)
    assert tok.encode(x) == tok.encode(torch.from_numpy(x))
    assert tok.num_units(x) == 100
    with pytest.raises(ValueError, match=r"1-D \(mono\).*\(2, 100\)"):
        tok.encode(np.stack([x, x]))
    with pytest.raises(ValueError, match="int16"):
        tok.encode(np.zeros(4, dtype=np.int16))
    with pytest.raises(ValueError, match="nan at index 1"):
        tok.encode(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError, match="list"):
        tok.encode([0.0, 0.5])


@pytest.mark.parametrize(
    ("options", "message"),
    [({"bits": 1}, "bits"), ({"bits": 17}, "bits"), ({"bits": 8.0}, "bits"), ({"sample_rate": 0}, "sample_rate"),
     ({"clip_seconds": 0}, "clip_seconds")],
)
def test_constructor_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        MuLawTokenizer(**options)


def test_save_then_load_keeps_every_option(tmp_path):
    MuLawTokenizer(sample_rate=8000, bits=12, clip_seconds=2.5).save(tmp_path)
    loaded = MuLawTokenizer.load(tmp_path)
    assert (loaded.sample_rate, loaded.bits, loaded.clip_seconds, loaded.vocab_size) == (8000, 12, 2.5, 4099)


# --- round-trip quality ------------------------------------------------------------------------------
def test_snr_db_of_a_known_error():
    assert snr_db(torch.ones(100), torch.full((100,), 0.9)) == pytest.approx(20.0)


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_tone_snr_matches_the_textbook_mu_law_snr(bits):
    """Rabiner & Schafer's mu-law SNR for a signal of rms σ:
    6.02 B + 4.77 - 20 log10 ln(1+mu) - 10 log10(1 + (1/(mu σ))² + √2/(mu σ))."""
    mu, sigma = 2**bits - 1, 0.5 / math.sqrt(2)
    load = 1 / (mu * sigma)
    expected = 6.02 * bits + 4.77 - 20 * math.log10(math.log1p(mu)) - 10 * math.log10(1 + load**2 + math.sqrt(2) * load)
    assert round_trip_snr(MuLawTokenizer(bits=bits), tone(440.0, 1.0, 16000)) == pytest.approx(expected, abs=1.0)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not on PATH (CI installs it)")
def test_speech_round_trips_at_30_db_or_more_at_8_bits():
    tok = MuLawTokenizer(bits=8)
    speech = espeak_speech(PHRASE, tok)
    assert len(speech) > 2 * tok.sample_rate and speech.square().mean().sqrt() > 0.02
    assert round_trip_snr(tok, speech) >= 30.0


# --- reading -----------------------------------------------------------------------------------------
def test_read_resamples_a_44k_tone_to_16k(tmp_path):
    write_tone(tmp_path / "a.wav", 440.0, 1.0, 44100, subtype="FLOAT")
    (x,) = MuLawTokenizer(sample_rate=16000).read(tmp_path / "a.wav")
    assert x.dtype == torch.float32 and x.shape == (16000,)
    assert np.argmax(np.abs(np.fft.rfft(x.numpy()))) == 440  # 1 s of signal: bin k is k Hz
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    np.testing.assert_allclose(x.numpy()[32:-32], expected[32:-32], atol=1e-3)


def test_read_mixes_stereo_down_to_the_mean_of_the_channels(tmp_path):
    frames = write_tone(tmp_path / "stereo.wav", 300.0, 0.5, 16000, channels=2, subtype="FLOAT")
    (x,) = MuLawTokenizer(sample_rate=16000).read(tmp_path / "stereo.wav")
    np.testing.assert_allclose(x.numpy(), frames.mean(axis=1), atol=1e-7)


def test_read_a_folder_in_order_and_cut_into_clips(tmp_path):
    write_tone(tmp_path / "c.wav", 220.0, 2.5, 16000)
    write_tone(tmp_path / "b.ogg", 440.0, 0.5, 16000)
    write_tone(tmp_path / "a.flac", 330.0, 0.25, 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    whole = MuLawTokenizer().read(tmp_path)
    assert [len(x) for x in whole] == [4000, 8000, 40000]
    clips = MuLawTokenizer(clip_seconds=1.0).read(tmp_path / "*.wav")
    assert [len(x) for x in clips] == [16000, 16000, 8000]
    assert torch.equal(torch.cat(clips), whole[2])


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), b"just some text\n"])
def test_read_rejects_a_corrupt_wav_naming_it(tmp_path, content):
    path = tmp_path / "fake.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".* not a readable audio file"):
        MuLawTokenizer().read(tmp_path)


def test_read_rejects_a_wav_without_frames(tmp_path):
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty.wav")) + " holds no audio frames"):
        MuLawTokenizer().read(tmp_path / "empty.wav")


# --- writing -----------------------------------------------------------------------------------------
def test_write_makes_numbered_16_bit_wavs_that_read_back_exactly(tmp_path):
    tok = MuLawTokenizer(sample_rate=8000)
    on_the_pcm16_grid = torch.arange(-32768, 32768, dtype=torch.float32) / 32768
    samples = [on_the_pcm16_grid, tone(440.0, 0.1, 8000), torch.zeros(3)]
    paths = tok.write(samples, tmp_path / "out.wav")
    assert [p.name for p in paths] == ["out-0.wav", "out-1.wav", "out-2.wav"]
    info = soundfile.info(paths[0])
    assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
    assert torch.equal(tok.read(paths[0])[0], on_the_pcm16_grid)
    assert (tok.read(paths[1])[0] - samples[1]).abs().max() <= PCM16_STEP


@pytest.mark.parametrize("output, format", [("out.flac", None), ("out", ".flac")])
def test_flac_is_written_as_the_suffix_or_format_says_and_reads_back_exactly(tmp_path, output, format):
    tok = MuLawTokenizer(sample_rate=8000)
    on_the_pcm16_grid = torch.arange(-32768, 32768, dtype=torch.float32) / 32768
    [path] = tok.write([on_the_pcm16_grid], tmp_path / output, format=format)
    info = soundfile.info(path)
    assert (path.name, info.format, info.subtype, info.samplerate) == ("out.flac", "FLAC", "PCM_16", 8000)
    assert torch.equal(tok.read(path)[0], on_the_pcm16_grid)


def test_an_empty_sample_is_refused_as_flac_before_writing_any(tmp_path):
    with pytest.raises(ValueError, match="sample 1 holds no audio, which FLAC cannot store"):
        MuLawTokenizer().write([torch.zeros(3), torch.zeros(0)], tmp_path / "out.flac")
    assert list(tmp_path.iterdir()) == []
    assert [p.name for p in MuLawTokenizer().write([torch.zeros(0)], tmp_path / "out.wav")] == ["out.wav"]


# --- built-in datasets --------------------------------------------------------------------------------
CLIPS = MuLawTokenizer(sample_rate=8000, clip_seconds=0.0625)
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not on PATH (CI installs it)")


@needs_espeak
def test_espeak_phrases_are_fixed_length_clips_of_speech_at_the_tokenizer_rate():
    clips = armm.get_plugins().datasets.get("espeak-phrases")(CLIPS)
    assert len(clips) > 4000 and {(clip.dtype, clip.shape) for clip in clips} == {(torch.float32, (500,))}
    assert all(clip.abs().max() <= 1 for clip in clips)
    loudness = torch.stack(clips).square().mean(dim=1).sqrt()
    assert (loudness > 0.01).float().mean() > 0.9  # trimmed speech: few clips fall in a pause
    twice_the_rate = espeak_phrases(MuLawTokenizer(sample_rate=16000, clip_seconds=0.0625))
    assert abs(len(twice_the_rate) / len(clips) - 1) < 0.02  # the same seconds of speech: resampled right
    assert len(espeak_phrases(MuLawTokenizer(sample_rate=8000))) == pytest.approx(len(clips) / 2, rel=0.05)


@needs_espeak
def test_espeak_speaks_the_same_waveform_every_time():
    waveform, rate = speak(PHRASES[-1], *SPEAKERS[1])
    again, _ = speak.__wrapped__(PHRASES[-1], *SPEAKERS[1])  # a fresh espeak-ng run, not the cache
    assert rate == 22050 and torch.equal(waveform, again)


def test_espeak_phrases_fall_back_to_synthetic_tones_with_a_warning(monkeypatch):
    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="espeak-ng is not installed, so dataset 'espeak-phrases' falls back to "
                                         "'synthetic-tones'"):
        clips = espeak_phrases(CLIPS)
    assert all(torch.equal(a, b) for a, b in zip(clips, synthetic_tones(CLIPS), strict=True))


def test_synthetic_tones_are_seeded_notes_with_harmonics_and_an_envelope():
    tokenizer = MuLawTokenizer(sample_rate=8000, clip_seconds=0.25)
    tones = armm.get_plugins().datasets.get("synthetic-tones")(tokenizer)
    assert len(tones) == 2000 and {clip.shape for clip in tones} == {(2000,)}
    assert all(torch.equal(a, b) for a, b in zip(tones, synthetic_tones(tokenizer)))
    assert not torch.equal(synthetic_tones(tokenizer, num_clips=1)[0], synthetic_tones(tokenizer, num_clips=1, seed=1)[0])
    peaks = torch.stack(tones).abs().amax(dim=1)
    assert peaks.min() >= 0.2 - 1e-6 and peaks.max() <= 0.8 + 1e-6
    assert all(clip[0] == 0 for clip in tones)  # the attack starts from silence
    notes = torch.tensor([110.0 * 2 ** (n / 12) * k for n in range(37) for k in range(1, 9)])
    for clip in tones[:50]:  # the strongest frequency is a harmonic of a semitone of A2..A5 (4 Hz bins)
        strongest = torch.fft.rfft(clip.double()).abs().argmax() * tokenizer.sample_rate / len(clip)
        assert (notes - strongest).abs().min() <= 2.0
