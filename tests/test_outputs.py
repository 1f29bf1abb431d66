"""Files the command line writes where a user says (``armm sample --output``, ``armm init``): never over an existing
file without ``--overwrite``, in the format the suffix names of those the tokenizer writes, inside a folder when given
one, never half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile
import torch
from armm_audio import MuLawTokenizer
from armm_image import PixelTokenizer

import armm
import armm.cli
from armm.cli import main
from armm.layout import Part, VocabLayout
from armm.outputs import sample_output, writable_suffixes, write_new, write_samples
from tests.test_tokenizer import OneFormat


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "m"
    main(["init", str(path), "--preset", "gpt2-tiny", "--seed", "0"])
    return path


def sample(model_dir: Path, output: Path | str, *args: str) -> None:
    main(["sample", str(model_dir), "--prompt", "Hi", "--max-new-tokens", "3", "--output", str(output), *args])


def refused(capsys, call) -> str:
    """The one error line of a command that exits with status 2."""
    with pytest.raises(SystemExit) as exited:
        call()
    assert exited.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    return line


def listing(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) → its text."""
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_suffix_the_tokenizer_does_not_write_is_refused_before_generating(model_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setattr(armm.cli, "generate", lambda *a, **k: pytest.fail("generated before checking --output"))
    line = refused(capsys, lambda: sample(model_dir, tmp_path / "notes.md"))
    assert "tokenizer 'bytes' writes .txt or .jsonl files, not .md; end --output with .txt" in line
    assert listing(tmp_path) == {"notes.txt": "mine"}


@pytest.mark.parametrize("names, args", [(["existing.txt"], []), (["s-1.txt"], ["--num-samples", "2"])])
def test_existing_files_are_replaced_only_with_overwrite(model_dir, tmp_path, capsys, names, args):
    target = "existing.txt" if not args else "s.txt"
    for name in names:
        (tmp_path / name).write_text("mine")
    line = refused(capsys, lambda: sample(model_dir, tmp_path / target, *args))
    assert f"{tmp_path / names[0]} already exists: pass --overwrite to replace it" in line
    assert listing(tmp_path) == {name: "mine" for name in names}  # nothing else written, no leftover folder

    sample(model_dir, tmp_path / target, *args, "--overwrite")
    written = listing(tmp_path)
    assert len(written) == (2 if args else 1) and all(text.startswith("Hi") for text in written.values())


def test_a_folder_gets_the_samples_inside_it(model_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    sample(model_dir, tmp_path / "out", "--num-samples", "2")
    sample(model_dir, f"{tmp_path / 'new'}/")
    assert sorted(listing(tmp_path)) == ["new/sample.txt", "out/sample-0.txt", "out/sample-1.txt"]
    assert f"wrote {tmp_path / 'new' / 'sample.txt'}" in capsys.readouterr().out


def test_a_mixed_layout_writes_its_manifest_or_the_one_part_a_suffix_names(tmp_path, capsys):
    layout = VocabLayout({"text": armm.ByteTokenizer(), "image": PixelTokenizer(size=2, channels=1, bits=2)})
    assert writable_suffixes(layout) == [".jsonl", ".png"]
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=layout.vocab_size, max_seq_len=64))
    mixed = armm.save_model(tmp_path / "mixed", model, layout)
    line = refused(capsys, lambda: sample(mixed, tmp_path / "s.wav"))
    assert "tokenizer 'mixed' writes .jsonl or .png files, not .wav" in line
    assert not list(tmp_path.glob("s*"))


# --- formats: --output's suffix chooses one the tokenizer writes -------------------------------------------------
@pytest.fixture(scope="module")
def audio_model(tmp_path_factory) -> Path:
    tok = MuLawTokenizer(sample_rate=8000)
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=tok.vocab_size, max_seq_len=64))
    return armm.save_model(tmp_path_factory.mktemp("audio") / "m", model, tok)


def sample_audio(model_dir: Path, output: Path, *args: str) -> None:
    main(["sample", str(model_dir), "--max-new-tokens", "5", "--output", str(output), *args])


def test_output_flac_writes_flac(audio_model, tmp_path, capsys):
    sample_audio(audio_model, tmp_path / "want.flac", "--num-samples", "2", "--sampler", "temperature=1", "--seed", "0")
    assert [(p.name, soundfile.info(p).format) for p in sorted(tmp_path.iterdir())] == [
        ("want-0.flac", "FLAC"), ("want-1.flac", "FLAC")]
    sample_audio(audio_model, tmp_path / "default")
    assert soundfile.info(tmp_path / "default.wav").format == "WAV"


def test_a_format_the_plugin_lacks_is_refused_naming_those_it_has(audio_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(armm.cli, "generate", lambda *a, **k: pytest.fail("generated before checking --output"))
    line = refused(capsys, lambda: sample_audio(audio_model, tmp_path / "want.mid"))
    assert "tokenizer 'audio-mulaw' writes .wav or .flac files, not .mid; end --output with .wav" in line
    assert list(tmp_path.iterdir()) == []


def test_output_jsonl_writes_a_text_line_per_sample(model_dir, tmp_path):
    sample(model_dir, tmp_path / "s.jsonl", "--num-samples", "2")
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(set(row) == {"text"} and row["text"].startswith("Hi") for row in rows)
    assert listing(tmp_path).keys() == {"s.jsonl"}


def test_a_tokenizer_that_sets_only_file_suffix_still_writes(tmp_path):
    tok = OneFormat()
    assert writable_suffixes(tok) == [".seq"] and sample_output(str(tmp_path / "reads.seq"), tok)
    assert write_samples(tok, ["ACGT", "GG"], tmp_path / "reads.seq") == [tmp_path / "reads.seq"]
    assert (tmp_path / "reads.seq").read_text() == "ACGT\nGG"
    with pytest.raises(ValueError, match="tokenizer 'one-format' writes .seq files, not .mid; end --output with .seq"):
        sample_output(str(tmp_path / "reads.mid"), tok)


def test_a_mixed_layout_takes_format_as_a_suffix(tmp_path):
    layout = VocabLayout({"text": armm.ByteTokenizer(), "image": PixelTokenizer(size=2, channels=1, bits=2)})
    samples = [[Part("text", "a two"), Part("image", torch.zeros(1, 2, 2, dtype=torch.uint8))]]
    assert layout.write(samples, tmp_path / "s", format=".png") == [tmp_path / "s.png"]
    assert [p.name for p in layout.write(samples, tmp_path / "m", format=".jsonl")] == ["m.jsonl", "m-0-1-image.png"]
    with pytest.raises(ValueError, match="a mixed layout writes a .jsonl manifest, or one part as its plugin's file "
                                         "suffix; '.mid' is neither"):
        layout.write(samples, tmp_path / "s", format=".mid")


def test_a_failing_write_leaves_nothing_behind(tmp_path):
    def write(path: Path) -> list[Path]:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_new(tmp_path / "out.txt", write, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_init_replaces_a_model_directory_only_with_overwrite(model_dir, tmp_path, capsys):
    weights = (model_dir / "model.safetensors").read_bytes()
    line = refused(capsys, lambda: main(["init", str(model_dir), "--preset", "gpt2-tiny", "--seed", "1"]))
    named = ", ".join(str(model_dir / name) for name in ("config.json", "model.safetensors", "tokenizer"))
    assert f"{named} already exist: pass --overwrite to replace them" in line
    assert (model_dir / "model.safetensors").read_bytes() == weights
    copy = tmp_path / "m"
    main(["init", str(copy), "--preset", "gpt2-tiny", "--seed", "0"])
    main(["init", str(copy), "--preset", "gpt2-tiny", "--seed", "1", "--overwrite"])
    assert (copy / "model.safetensors").read_bytes() != weights
