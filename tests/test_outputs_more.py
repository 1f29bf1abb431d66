"""`armm inspect --plot/--html` and `armm convert` never replace what a user has without `--overwrite`, never write
into the folder they read from, and never leave a half-written file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import armm
from armm.cli import main
from armm.hf import export_hf, import_hf
from tests.conftest import tiny_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def refused(args: list, capsys) -> str:
    """Run ``armm args``, which must exit 2 with one error line; that line."""
    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    return " ".join(err.split())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too), by relative path."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# --- armm inspect --plot / --html ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "m"
    main(["init", str(path), "--preset", "gpt2-tiny", "--seed", "0"])
    return path


def refused_before_loading(args: list, capsys, monkeypatch) -> str:
    """``refused(args)``, and before any compute: loading the model fails the test."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    with monkeypatch.context() as patch:
        patch.setattr("armm.inspect.cli.load_model_with_tokenizer", load)
        return refused(args, capsys)


def inspect_args(command: str, model_dir: Path, tmp: Path, option: str, name: str) -> list:
    (tmp / "a.txt").write_text("abc")
    extra = ["--text", tmp / "a.txt"] if command == "surprise" else ["--prompt", "ab"]
    return ["inspect", command, model_dir, *extra, option, tmp / name]


CASES = [("next", "--plot", "p.png"), ("attention", "--plot", "p.png"), ("surprise", "--plot", "p.png"),
         ("surprise", "--html", "p.html")]


@pytest.mark.parametrize("command, option, name", CASES)
def test_an_existing_plot_or_page_is_replaced_only_with_overwrite(command, option, name, model_dir, tmp_path,
                                                                   capsys, monkeypatch):
    (tmp_path / name).write_text("mine")
    args = inspect_args(command, model_dir, tmp_path, option, name)
    line = refused_before_loading(args, capsys, monkeypatch)
    assert f"{tmp_path / name} already exists: pass --overwrite to replace it" in line
    assert (tmp_path / name).read_text() == "mine"
    main([str(arg) for arg in args] + ["--overwrite"])
    written = (tmp_path / name).read_bytes()
    assert written.startswith(PNG_SIGNATURE) if name.endswith(".png") else written.startswith(b"<!DOCTYPE html>")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt", name]  # no temporary file left


@pytest.mark.parametrize("command, option, name, suffix", [
    ("next", "--plot", "notes.txt", ".png"), ("attention", "--plot", "grid", ".png"),
    ("surprise", "--plot", "s.PNG.txt", ".png"), ("surprise", "--html", "page.txt", ".html"),
])
def test_a_plot_or_page_suffix_other_than_what_is_written_is_refused(command, option, name, suffix, model_dir,
                                                                      tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    line = refused_before_loading(inspect_args(command, model_dir, tmp_path, option, name), capsys, monkeypatch)
    assert f"error: {option} {tmp_path / name}: it writes " in line and line.endswith(f"end {option} with {suffix}")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt", "notes.txt"]


def test_an_upper_case_png_suffix_is_a_png(model_dir, tmp_path):
    main(["inspect", "next", str(model_dir), "--prompt", "ab", "--plot", str(tmp_path / "next.PNG")])
    assert (tmp_path / "next.PNG").read_bytes().startswith(PNG_SIGNATURE)


def test_a_plot_that_fails_midway_keeps_the_old_file_and_leaves_nothing(model_dir, tmp_path, capsys, monkeypatch):
    def half(result, path, **kwargs):
        Path(path).write_bytes(PNG_SIGNATURE)  # the first bytes, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("armm.inspect.plots.plot_next_token", half)
    (tmp_path / "next.png").write_text("mine")
    line = refused(["inspect", "next", model_dir, "--prompt", "ab", "--plot", tmp_path / "next.png", "--overwrite"],
                   capsys)
    assert "No space left on device" in line
    assert (tmp_path / "next.png").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["next.png"]


# --- armm convert ----------------------------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """An armm model directory and its Hugging Face export."""
    armm.save_model(tmp_path / "armm", tiny_model("gpt2-tiny", vocab_size=300))
    return tmp_path / "armm", export_hf(tmp_path / "armm", tmp_path / "hf")


@pytest.mark.parametrize("to", ["armm", "hf"])
@pytest.mark.parametrize("inside", [False, True])
def test_convert_refuses_to_write_into_its_source(to, inside, folders, capsys):
    source = folders[0] if to == "hf" else folders[1]
    output = source / "converted" if inside else source
    before = snapshot(source)
    where = f"inside the source folder {source.resolve()}" if inside else "the source folder"
    for overwrite in ([], ["--overwrite"]):
        line = refused(["convert", source, output, "--to", to, *overwrite], capsys)
        assert f"{output.resolve()} is {where}: convert into a folder outside it" in line
        assert snapshot(source) == before and not (source / "converted").exists()


def test_convert_into_a_folder_that_holds_files_needs_overwrite(folders, capsys):
    armm_dir, hf_dir = folders
    output = armm_dir.parent / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    (output / "config.json").write_text("{}")
    line = refused(["convert", hf_dir, output], capsys)
    assert f"{output} is not empty: pass --overwrite to replace the files convert writes there" in line
    assert snapshot(output) == {"notes.txt": b"mine", "config.json": b"{}"}
    main(["convert", str(hf_dir), str(output), "--overwrite"])
    converted, _ = armm.load_model(output)
    original, _ = armm.load_model(armm_dir)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids), original(ids), rtol=0, atol=0)
    assert (output / "notes.txt").read_text() == "mine"  # files convert does not write stay
    assert sorted(path.name for path in output.parent.iterdir()) == ["armm", "hf", "out"]  # no temporary folder


def test_convert_into_an_empty_or_new_folder_needs_no_overwrite(folders):
    armm_dir, hf_dir = folders
    (armm_dir.parent / "empty").mkdir()
    main(["convert", str(hf_dir), str(armm_dir.parent / "empty")])
    main(["convert", str(armm_dir), str(armm_dir.parent / "new" / "hf"), "--to", "hf"])
    assert snapshot(armm_dir.parent / "new" / "hf") == snapshot(hf_dir)


def test_convert_onto_a_file_is_refused(folders, capsys):
    armm_dir, hf_dir = folders
    (armm_dir.parent / "notes.txt").write_text("mine")
    line = refused(["convert", hf_dir, armm_dir.parent / "notes.txt"], capsys)
    assert "notes.txt is a file, not a folder: choose another OUTPUT" in line
    assert (armm_dir.parent / "notes.txt").read_text() == "mine"


def test_a_convert_that_fails_midway_writes_nothing(folders, capsys, monkeypatch):
    armm_dir, _ = folders

    def full(tensors, path, **kwargs):
        Path(path).write_bytes(b"\x00" * 8)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("armm.hf.save_file", full)
    assert "No space left on device" in refused(["convert", armm_dir, armm_dir.parent / "out", "--to", "hf"], capsys)
    assert sorted(path.name for path in armm_dir.parent.iterdir()) == ["armm", "hf"]


def test_the_python_api_replaces_like_save_model_but_never_writes_into_its_source(folders):
    armm_dir, hf_dir = folders
    other = tiny_model("gpt2-tiny", vocab_size=300)
    armm.save_model(armm_dir, other)
    export_hf(armm_dir, hf_dir)  # replaced, as armm.save_model replaces
    import_hf(hf_dir, armm_dir.parent / "back")
    back, _ = armm.load_model(armm_dir.parent / "back")
    torch.testing.assert_close(back.tok_emb.weight, other.tok_emb.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="is the source folder: convert into a folder outside it"):
        export_hf(armm_dir, armm_dir)
    with pytest.raises(ValueError, match="is inside the source folder"):
        import_hf(hf_dir, hf_dir / "armm")
