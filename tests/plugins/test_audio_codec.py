"""The audio-codec tokenizer: contract suite, the id layout of K codebooks (flattened and MusicGen's delay pattern), the
codec against the codes it decodes, reading clips, sampling inside the codebook cycle, and the espeak-digits dataset."""

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
from armm_audio.codec import delay, undelay
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


# --- the delay pattern ---------------------------------------------------------------------------------------
TINY = dict(sample_rate=RATE, clip_seconds=CLIP, hop=80, codebook_size=8, code_dim=4, channels=8, layers=1, seed=0)
FRAMES = round(CLIP * RATE) // 80  # 25


@pytest.fixture(scope="module")
def delay_codec(trained_codec) -> CodecTokenizer:
    """The trained codec, its ids in the delay pattern."""
    tokenizer = CodecTokenizer(**SMALL, pattern="delay")
    tokenizer.model.load_state_dict(trained_codec.model.state_dict())
    tokenizer.fitted = True
    return tokenizer


class TestDelayCodecContract(TestCodecContract):
    @pytest.fixture
    def tokenizer(self, delay_codec):
        return delay_codec


@pytest.mark.parametrize("k_total", [1, 2, 3])
def test_delay_shifts_codebook_k_by_k_steps_and_undelay_inverts_it(k_total):
    codes = torch.randint(0, 8, (k_total, 7), generator=torch.Generator().manual_seed(k_total))
    steps = delay(codes, empty=-5)
    assert steps.shape == (7 + k_total - 1, k_total)
    for s in range(7 + k_total - 1):
        for k in range(k_total):
            assert steps[s, k] == (codes[k, s - k] if 0 <= s - k < 7 else -5), (s, k)
    assert torch.equal(undelay(steps, 7), codes)


@pytest.mark.parametrize("k_total", [1, 2, 3])
def test_delay_ids_are_the_flattened_ids_shifted_by_codebook_with_empty_elsewhere(k_total, held_out):
    flat = CodecTokenizer(**TINY, num_codebooks=k_total)
    delayed = CodecTokenizer(**TINY, num_codebooks=k_total, pattern="delay")  # the same seed: the same codec
    (codes,) = flat.codes(held_out[:1])
    flat_ids = torch.tensor(flat.ids_of(codes)).view(FRAMES, k_total)
    ids = delayed.encode(held_out[0])
    assert len(ids) == delayed.sample_length == (FRAMES + k_total - 1) * k_total
    steps = torch.tensor(ids).view(FRAMES + k_total - 1, k_total)
    empty = delayed.empty_id
    for k in range(k_total):
        assert torch.equal(steps[k : k + FRAMES, k], flat_ids[:, k])
        assert steps[:k, k].tolist() == [empty] * k and steps[k + FRAMES :, k].tolist() == [empty] * (k_total - 1 - k)
    assert flat.empty_id is None and empty == flat.num_codes == k_total * 8
    assert delayed.vocab_size == flat.vocab_size + 1 and delayed.bos_id == flat.bos_id + 1
    assert (flat.num_streams, delayed.num_streams) == (1, k_total)
    assert delayed.start_ids == [delayed.bos_id] + [delayed.pad_id] * (k_total - 1)
    assert delayed.token_name(empty) == "empty" and flat.token_name(empty) is None


def test_delay_decode_is_the_flattened_decode_of_the_same_audio(trained_codec, delay_codec, held_out):
    for clip in held_out[:2]:
        expected = trained_codec.decode(trained_codec.encode(clip))
        ids = delay_codec.encode(clip)
        assert torch.equal(delay_codec.decode(ids), expected)
        assert torch.equal(delay_codec.decode([*delay_codec.start_ids, *ids, delay_codec.eos_id]), expected)


def test_every_delay_id_is_one_its_content_cycle_allows(delay_codec, held_out):
    cycle = delay_codec.content_cycle
    assert len(cycle) == delay_codec.sample_length
    assert [n for n, allowed in enumerate(cycle) if list(allowed) == [delay_codec.empty_id]] == [1, 2 * FRAMES]
    assert cycle[0] == range(32) and cycle[3] == range(32, 64)  # step 1: frame 1 of codebook 0, frame 0 of 1
    for clip in held_out:
        assert all(token in cycle[n] for n, token in enumerate(delay_codec.encode(clip)))


def test_a_truncated_delay_sequence_decodes_the_frames_it_has(delay_codec, held_out):
    tok = delay_codec
    (codes,) = tok.codes(held_out[:1])  # (2, FRAMES)
    ids = tok.encode(held_out[0])
    cut = codes[:, :10].clone()
    cut[1, 9] = -1  # 10 steps hold frames 0..9 of codebook 0 and frames 0..8 of codebook 1
    assert torch.equal(tok.decode(ids[:20]), tok.waveform(cut))
    assert tok.decode(ids[:21]).shape == (11 * 80,)  # half a step: frame 10 with codebook 0 alone
    assert torch.equal(tok.decode(ids + ids), tok.decode(ids))  # ids past a full clip are ignored


def test_delay_decode_tolerates_empty_codes_and_codebooks_out_of_place(delay_codec, held_out):
    tok = delay_codec
    (codes,) = tok.codes(held_out[:1])
    ids = tok.encode(held_out[0])
    wrong = list(ids)
    wrong[1] = 5  # step 0, codebook 1: EMPTY's place (frame -1) holds a code, which is ignored
    wrong[2 * 4 + 1] = 7  # step 4, codebook 1 (frame 3) holds codebook 0's code 7: it counts as code 7
    wrong[2 * 6] = tok.empty_id  # step 6, codebook 0 (frame 6) is EMPTY: frame 6 decodes without codebook 0
    expected = codes.clone()
    expected[1, 3], expected[0, 6] = 7, -1
    assert torch.equal(tok.decode(wrong), tok.waveform(expected))


def test_delay_decode_of_random_ids_gives_a_frame_per_step_up_to_a_clip(delay_codec):
    tok = delay_codec
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = torch.randint(0, tok.vocab_size, (int(torch.randint(0, 2 * tok.sample_length, (1,), generator=generator)),),
                            generator=generator).tolist()  # fmt: skip
        content = sum(token < tok.num_content for token in ids)
        assert tok.decode(ids).shape == (min(-(-content // 2), FRAMES) * 80,)


def test_a_delay_prompt_holds_codebook_k_s_first_frames_less_k(delay_codec, held_out):
    ids = delay_codec.encode(held_out[0])
    prompt = delay_codec.encode_prefix(held_out[0], units=10 * 80 + 79)
    assert prompt == ids[:20]  # steps 0..9: frames 0..9 of codebook 0, EMPTY then frames 0..8 of codebook 1
    assert prompt[1] == delay_codec.empty_id and delay_codec.empty_id not in prompt[2:]


def test_the_pattern_option_is_checked():
    with pytest.raises(ValueError, match=r"pattern='delay' needs a fixed clip length: set clip_seconds \(e\.g\. 1\.0\)"):
        CodecTokenizer(**{**TINY, "clip_seconds": None}, pattern="delay")
    with pytest.raises(ValueError, match="pattern must be 'flattened' or 'delay', got 'bogus'"):
        CodecTokenizer(**TINY, pattern="bogus")


def test_a_saved_delay_codec_loads_as_one_and_old_settings_load_flattened(trained_codec, delay_codec, held_out,
                                                                          tmp_path):  # fmt: skip
    for name in ("delay", "old"):
        (tmp_path / name).mkdir()
    delay_codec.save(tmp_path / "delay")
    assert json.loads((tmp_path / "delay" / "audio_codec.json").read_text())["pattern"] == "delay"
    loaded = CodecTokenizer.load(tmp_path / "delay")
    ids = delay_codec.encode(held_out[0])
    assert loaded.pattern == "delay" and loaded.encode(held_out[0]) == ids
    assert torch.equal(loaded.decode(ids), delay_codec.decode(ids))
    trained_codec.save(tmp_path / "old")
    settings = json.loads((tmp_path / "old" / "audio_codec.json").read_text())
    del settings["pattern"]  # saved before the option existed
    (tmp_path / "old" / "audio_codec.json").write_text(json.dumps(settings))
    old = CodecTokenizer.load(tmp_path / "old")
    assert old.pattern == "flattened" and old.encode(held_out[0]) == trained_codec.encode(held_out[0])
    assert old.vocab_size == trained_codec.vocab_size and old.num_streams == 1


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


@pytest.fixture
def delay_layout(delay_codec) -> VocabLayout:
    layout = VocabLayout({"label": {"tokenizer": "classes"}, "audio": delay_codec}, prompt_part="label")
    layout.parts["label"].fit(DIGITS)
    return layout


def test_a_delay_pattern_layout_keeps_each_codebook_in_its_stream(delay_layout, held_out):
    """The codec's content starts a position: its stream k holds codebook k (or EMPTY), the grammar allows exactly
    what encoding writes, and a training row's targets are the next position's ids."""
    from armm.training.data import PaddedSamples

    layout, codec = delay_layout, delay_layout.parts["audio"]
    span = layout.span("audio")
    ids = layout.encode_document([("label", "seven"), ("audio", held_out[0])])
    first = ids.index(span.begin_id) + 2  # <|audio|> pad
    content = ids[first:first + span.length]
    assert first % 2 == 0 and [i - span.offset for i in content] == codec.encode(held_out[0])
    for t in range(2, len(ids)):
        allowed = layout.allowed(torch.tensor([ids[:t]]))[0].nonzero().flatten().tolist()
        assert ids[t] in allowed, t
        if first <= t < first + span.length:
            assert allowed == [span.offset + i for i in codec.content_cycle[t - first]], t
    row = np.array(ids + [layout.pad_id] * 3)  # seq_len + 2 ids
    item = PaddedSamples(row[None], layout.pad_id, streams=2)[0]
    assert item["input_ids"].tolist() == [0 if i == layout.pad_id else i for i in row[:-2].tolist()]
    assert item["targets"][:len(ids) - 2].tolist() == [-100 if i == layout.pad_id else i for i in ids[2:]]


def test_a_two_stream_model_generates_delay_pattern_clips_inside_the_grammar(delay_layout):
    """An untrained 2-stream model draws anything the grammar allows: every clip is the whole staircase (EMPTY at
    exactly its places) and decodes to a clip."""
    layout, codec = delay_layout, delay_layout.parts["audio"]
    span = layout.span("audio")
    torch.manual_seed(0)
    config = armm.ModelConfig.from_name("gpt2-tiny", vocab_size=layout.vocab_size, num_streams=2,
                                        tie_embeddings=False)  # fmt: skip
    model = armm.Transformer(config).eval()
    prompt = layout.prompt_for("audio", [("label", "seven")])
    assert len(prompt) == 8  # bos pad | <|label|> seven | <|/label|> pad | <|audio|> pad
    new = armm.generate(model, [prompt] * 3, max_new_tokens=span.length + 1, sampler=layout.sampler("temperature=1.0"),
                        seed=[0, 1, 2], guidance=layout.guidance([prompt] * 3, 2.0))  # fmt: skip
    for ids in new:
        assert ids[-1] == span.end_id and len(ids) == span.length + 1
        local = [i - span.offset for i in ids[:-1]]
        assert [i == codec.empty_id for i in local] == [cycle == [codec.empty_id] for cycle in codec.content_cycle]
        (audio,) = [part.sample for part in layout.decode(prompt + ids) if part.name == "audio"]
        assert audio.shape == (codec.clip_samples,)


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
@pytest.mark.parametrize("name", ["speech_digits", "speech_digits_flattened"])
def test_the_speech_digits_recipe_trains_on_a_labelled_wav_folder_and_samples_a_wav(name, tmp_path, monkeypatch,
                                                                                    one_thread):
    from pathlib import Path

    import yaml

    from armm.cli import main

    recipe = Path(__file__).parents[2] / "recipes" / f"{name}.yaml"
    config = yaml.safe_load(recipe.read_text())
    parts = config["data"]["tokenizer_options"]["parts"]
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
          json.dumps({**config["model"]["overrides"], "n_layer": 1, "n_head": 2, "d_model": 32}),
          "--model.warmup_steps", "1",
          "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1"])  # fmt: skip
    model, layout = armm.load_model(f"runs/{name}/export/final")
    assert sorted(layout.parts["label"].names) == sorted(DIGITS)
    assert model.config.num_streams == layout.num_streams == (1 if name.endswith("flattened") else 2)
    budgets = []
    generate = armm.cli.generate
    monkeypatch.setattr(armm.cli, "generate", lambda *a, **kw: budgets.append(kw["max_new_tokens"]) or generate(*a, **kw))
    main(["sample", f"runs/{name}/export/final", "--prompt", "two", "--output", "two.wav", "--seed", "0"])
    whole = layout.start_ids + layout.encode([("label", "two"), ("audio", torch.zeros(RATE))]) + [layout.eos_id]
    opened = layout.prompt_for("audio", [("label", "two")])
    assert whole[:len(opened)] == opened and budgets == [len(whole) - len(opened)]  # by default, the whole clip
    audio, rate = soundfile.read(tmp_path / "two.wav")
    assert rate == RATE and audio.shape == (RATE,)  # one 1 s clip at the recipe's 8 kHz
