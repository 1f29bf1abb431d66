"""Files the command line writes where a user says (``armm sample --output``, ``armm init``): never over an existing
file without ``--overwrite``, in a format the tokenizer writes, inside a folder when given one, never half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
from armm_image import PixelTokenizer

import armm
import armm.cli
from armm.cli import main
from armm.layout import VocabLayout
from armm.outputs import write_new, writable_suffixes


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
    assert "tokenizer 'bytes' writes .txt files, not .md; end --output with .txt" in line
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
