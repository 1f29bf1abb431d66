"""Prompts from files: `armm sample --prompt-file` and `armm.prompt_ids` for every first-party plugin, whole samples and
their first units, and the mistakes they refuse."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from rich.control import strip_control_codes
from armm_audio import CodecTokenizer, MuLawTokenizer
from armm_code import CodeTokenizer
from armm_image import PixelTokenizer, VQTokenizer
from armm_protein import ProteinTokenizer
from armm_text import BPETokenizer

import armm
import armm.cli
from armm.cli import main
from armm.layout import VocabLayout
from tests.conftest import tiny_model

TEXT = "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))  # five ✓\n"
RATE = 8000


def model_dir(root: Path, tokenizer: armm.Tokenizer) -> Path:
    """A random one-layer model over ``tokenizer``'s vocabulary, saved under ``root``."""
    model = tiny_model(vocab_size=tokenizer.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=128)
    return armm.save_model(root / "model", model, tokenizer)


def fitted(tokenizer: armm.Tokenizer) -> armm.Tokenizer:
    tokenizer.fit([TEXT * 4])
    return tokenizer


def untrained(tokenizer: armm.Tokenizer) -> armm.Tokenizer:
    """A codec tokenizer with its random weights taken as they are (saving and loading it needs no training)."""
    tokenizer.fitted = True
    return tokenizer


def wav(path: Path, length: int) -> Path:
    soundfile.write(path, np.sin(np.arange(length) / 3.0).astype(np.float32) * 0.5, RATE, subtype="PCM_16")
    return path


def png(path: Path, channels: int, size: int) -> Path:
    pixels = (np.arange(channels * size * size) * 7 % 256).astype(np.uint8).reshape(size, size, channels)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
    return path


def text_file(path: Path) -> Path:
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def fed(monkeypatch) -> list[list[int]]:
    """The prompts `armm sample` hands to ``generate``, recorded as it runs."""
    prompts: list[list[int]] = []

    def recording(model, rows, **options):
        prompts.extend(list(row) for row in rows)
        return armm.generate(model, rows, **options)

    monkeypatch.setattr(armm.cli, "generate", recording)
    return prompts


def sample_file(model: Path, prompt: Path, tmp_path: Path, *extra: str, output: str | None = "out/") -> None:
    args = ["sample", str(model), "--prompt-file", str(prompt), "--max-new-tokens", "6", "--seed", "0",
            "--sampler", "temperature=1", *extra]
    main(args + ([] if output is None else ["--output", f"{tmp_path}/{output}"]))


# --- every plugin: the ids fed to the model are the file's, whole or cut -------------------------------------------
# (name, tokenizer, write the prompt file, --prompt-units, the expected content ids from the file's first sample)
PLUGINS = {
    "bytes": (armm.ByteTokenizer, text_file, "7", lambda tok, s: list(s[:7].encode())),
    "text-bpe": (lambda: fitted(BPETokenizer(vocab_size=300)), text_file, "9", lambda tok, s: tok.encode(s[:9])),
    "code-bpe": (lambda: fitted(CodeTokenizer(vocab_size=300)), text_file, "20", lambda tok, s: tok.encode(s[:20])),
    "protein": (ProteinTokenizer, lambda p: (p.write_text(">a\nMKVLA\nGG\n>b\nWWW\n"), p)[1], "6",
                lambda tok, s: tok.encode("MKVLAG")),
    "audio-mulaw": (lambda: MuLawTokenizer(sample_rate=RATE, bits=4), lambda p: wav(p, 40), "25",
                    lambda tok, s: tok.encode(s[:25])),
    "audio-codec": (lambda: untrained(CodecTokenizer(sample_rate=RATE, clip_seconds=None, hop=8, num_codebooks=2,
                                                     codebook_size=16, code_dim=4, channels=8, layers=1)),
                    lambda p: wav(p, 40), "25", lambda tok, s: tok.encode(s)[: 3 * 2]),  # 25 samples: 3 whole frames
    "image-pixels": (lambda: PixelTokenizer(size=4, channels=3, bits=3), lambda p: png(p, 3, 4), "5",
                     lambda tok, s: tok.encode(s)[: 5 * 3]),  # 5 pixels, 3 values each
    "image-vq": (lambda: untrained(VQTokenizer(size=8, channels=1, downsample=4, codebook_size=16, code_dim=4,
                                               hidden=8, res_blocks=1)),
                 lambda p: png(p, 1, 8), "40", lambda tok, s: tok.encode(s)[:2]),  # 40 pixels: one row of 2 codes
}
SUFFIX = {"bytes": ".txt", "text-bpe": ".txt", "code-bpe": ".py", "protein": ".fasta", "audio-mulaw": ".wav",
          "audio-codec": ".wav", "image-pixels": ".png", "image-vq": ".png"}


@pytest.fixture(params=list(PLUGINS))
def plugin(request, tmp_path):
    """(model directory, its loaded tokenizer, prompt file, --prompt-units, expected content ids of the cut)."""
    build, write, units, expected = PLUGINS[request.param]
    directory = model_dir(tmp_path, build())
    tokenizer = armm.load_model(directory)[1]
    prompt = write(tmp_path / f"prompt{SUFFIX[request.param]}")
    return directory, tokenizer, prompt, units, expected


def test_the_model_continues_the_whole_first_sample_of_the_file(plugin, fed, tmp_path):
    directory, tok, prompt, _, _ = plugin
    sample_file(directory, prompt, tmp_path)
    whole = [tok.bos_id, *tok.encode(tok.read(prompt)[0])]
    assert fed == [whole]
    assert any((tmp_path / "out").iterdir())


def test_prompt_units_keep_the_first_units_and_no_more(plugin, fed, tmp_path):
    directory, tok, prompt, units, expected = plugin
    sample_file(directory, prompt, tmp_path, "--prompt-units", units)
    cut = [tok.bos_id, *expected(tok, tok.read(prompt)[0])]
    assert fed == [cut] and 1 < len(cut) < len([tok.bos_id, *tok.encode(tok.read(prompt)[0])])
    assert armm.prompt_ids(tok, tok.read(prompt)[0], int(units)) == cut


def test_a_text_prompt_file_is_printed_with_its_continuation(tmp_path, capsys):
    directory = model_dir(tmp_path, armm.ByteTokenizer())
    model, tok = armm.load_model(directory)
    sample_file(directory, text_file(tmp_path / "prompt.txt"), tmp_path, "--prompt-units", "10", output=None)
    ids = [tok.bos_id, *TEXT[:10].encode()]
    new = armm.generate(model, [ids], max_new_tokens=6, sampler="temperature=1", stop_tokens=[tok.eos_id], seed=[0])
    assert capsys.readouterr().out == strip_control_codes(tok.decode(ids + new[0])) + "\n"  # as rich prints it
    main(["sample", str(directory), "--prompt-file", str(tmp_path / "prompt.txt"), "--prompt-units", "10",
          "--max-new-tokens", "6", "--seed", "0", "--sampler", "temperature=1", "--stream"])
    assert capsys.readouterr().out == strip_control_codes(tok.decode(ids + new[0])) + "\n"  # as rich prints it


def test_a_file_of_several_samples_gives_the_first_said_on_stderr_or_the_one_asked_for(tmp_path, fed, capsys):
    directory = model_dir(tmp_path, ProteinTokenizer())
    fasta = tmp_path / "two.fasta"
    fasta.write_text(">a\nMKV\n>b\nWWY\n")
    sample_file(directory, fasta, tmp_path)
    assert "holds 2 samples; continuing the first (--prompt-index picks another)" in capsys.readouterr().err
    sample_file(directory, fasta, tmp_path, "--prompt-index", "1", output="again/")
    assert "holds 2 samples" not in capsys.readouterr().err
    tok = ProteinTokenizer()
    assert fed == [[tok.bos_id, *tok.encode("MKV")], [tok.bos_id, *tok.encode("WWY")]]


def test_a_mixed_prompt_continues_inside_the_last_part_of_a_manifest_line(tmp_path, fed):
    layout = VocabLayout({"text": armm.ByteTokenizer(), "image": PixelTokenizer(size=2, channels=1, bits=4)})
    directory = model_dir(tmp_path, layout)
    Image.fromarray(np.array([[16, 48], [80, 112]], np.uint8)).save(tmp_path / "two.png")
    manifest = tmp_path / "prompt.jsonl"
    manifest.write_text(json.dumps([{"text": "a two"}, {"image": {"file": "two.png"}}]) + "\n")
    sample_file(directory, manifest, tmp_path, "--prompt-units", "3")
    image_span = layout.span("image")
    pixels = [image_span.offset + i for i in (1, 3, 5)]  # 4 bits of 16, 48, 80
    assert fed == [[layout.bos_id, *layout.encode([("text", "a two")]), image_span.begin_id, *pixels]]
    samples = layout.read(tmp_path / "out" / "sample.jsonl")  # the open span went on to a whole 2x2 image
    assert samples[0][0] == ("text", "a two") and samples[0][1].sample.flatten().tolist()[:3] == [24, 56, 88]


# --- mistakes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--prompt-file", "{tmp}/nowhere.txt"], "nowhere.txt does not exist"),
    (["--prompt-file", "{tmp}/p.txt", "--prompt", "Hi"], "give --prompt or --prompt-file, not both"),
    (["--prompt-file", "{tmp}/p.txt", "--prompt-units", "0"], "--prompt-units must be >= 1, got 0"),
    (["--prompt-units", "3"], "--prompt-units and --prompt-index choose what of --prompt-file to continue"),
    (["--prompt-file", "{tmp}/p.txt", "--prompt-index", "1"], "--prompt-index 1 is out of range: "),
])
def test_prompt_file_mistakes_exit_with_one_clear_line(tmp_path, capsys, args, message):
    directory = model_dir(tmp_path, armm.ByteTokenizer())
    text_file(tmp_path / "p.txt")
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(directory), *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("name, units, message", [
    ("audio-codec", "7", "the first 7 audio samples hold no whole frame: audio-codec prompts continue from whole "
                         "frames of hop=8 samples; keep at least 8"),
    ("image-vq", "31", "the first 31 pixels hold no whole row of codes: image-vq prompts continue from whole code rows "
                       "of 32 pixels (4 image rows); keep at least 32"),
])
def test_fewer_units_than_a_frame_or_a_code_row_are_refused(tmp_path, capsys, name, units, message):
    build, write, _, _ = PLUGINS[name]
    directory = model_dir(tmp_path, build())
    with pytest.raises(SystemExit):
        sample_file(directory, write(tmp_path / f"p{SUFFIX[name]}"), tmp_path, "--prompt-units", units)
    assert message in capsys.readouterr().err


def test_prompt_ids_take_samples_through_the_python_api():
    tok = ProteinTokenizer()
    assert armm.prompt_ids(tok, "MKV") == [tok.bos_id, *tok.encode("MKV")]
    assert armm.prompt_ids(tok, "MKV", units=2) == [tok.bos_id, *tok.encode("MK")]
    audio = MuLawTokenizer(bits=4)
    clip = torch.linspace(-1, 1, 50)
    assert armm.prompt_ids(audio, clip, units=10) == [audio.bos_id, *audio.encode(clip[:10])]
    with pytest.raises(ValueError, match="units must be an integer >= 1"):
        armm.prompt_ids(tok, "MKV", units=0)
