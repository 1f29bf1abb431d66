"""Data sources: manifests (JSON Lines and CSV, plain or gzipped) read in runs of rows, labelled folders of images and
audio clips, captions, and the one-line errors that name the manifest, the row and the file. References: the rows as
the standard library's ``json`` and ``csv.DictReader`` read them, and each file as its plugin reads it alone."""

from __future__ import annotations

import csv
import gzip
import io
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import armm
from armm import datasource
from armm.cli import main
from armm.datasource import ReadUnit, list_units, read_source, read_unit
from armm.layout import VocabLayout
from armm.tokenizer import ByteTokenizer
from armm_audio import MuLawTokenizer
from armm_image.digits import DIGIT_WORDS, write_digit_folder
from armm_image.pixels import PixelTokenizer
from tests.test_recipes import tiny_overrides

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TEXTS = ["first, with a comma", 'a "quoted" word', "two\nlines", "", "ünïcode", "last one"]


def write_manifest(path: Path, rows: list[dict], *, blank_lines: bool = False) -> Path:
    """``rows`` as JSON Lines or CSV (by ``path``'s suffix, gzipped for ``.gz``); blank lines between rows."""
    out = io.StringIO()
    if ".csv" in path.name:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            out.write("\n" if blank_lines else "")
    else:
        out.write("".join(json.dumps(row) + "\n" + ("\n" if blank_lines else "") for row in rows))
    data = out.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def reference_rows(path: Path) -> list[dict]:
    """The rows as the standard library reads the whole file."""
    with (gzip.open(path, "rt", newline="") if path.name.endswith(".gz") else open(path, newline="")) as handle:
        if ".csv" in path.name:
            return list(csv.DictReader(line for line in handle if line.strip()))
        return [json.loads(line) for line in handle if line.strip()]


def read_all(tokenizer, source, fields=None) -> list:
    return [sample for unit in list_units(tokenizer, source, fields) for sample in read_unit(tokenizer, unit, fields)]


# --- manifests of a plain tokenizer ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["m.jsonl", "m.jsonl.gz", "m.csv", "m.csv.gz"])
def test_a_manifest_of_inline_text_reads_its_rows_through_custom_fields(tmp_path, name):
    rows = [{"id": str(i), "body": text} for i, text in enumerate(TEXTS) if text]
    manifest = write_manifest(tmp_path / name, rows, blank_lines=True)
    expected = [row["body"] for row in reference_rows(manifest)]
    assert expected == [text for text in TEXTS if text]
    assert read_all(ByteTokenizer(), manifest, {"text": "body"}) == expected


def test_a_long_manifest_is_runs_of_rows_each_read_alone_from_its_byte_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(datasource, "ROWS_PER_UNIT", 4)
    rows = [{"text": f"row {i} {TEXTS[i % len(TEXTS)]}"} for i in range(11)]
    for name in ("m.jsonl", "m.csv"):
        manifest = write_manifest(tmp_path / name, rows, blank_lines=True)
        units = list_units(ByteTokenizer(), manifest)
        assert [unit.rows[1] for unit in units] == [4, 4, 3]
        assert sum(unit.size for unit in units) <= manifest.stat().st_size
        expected = [row["text"] for row in reference_rows(manifest)]
        for index in (2, 0, 1):  # any unit, in any order, after a round trip through pickle (a worker process)
            unit = pickle.loads(pickle.dumps(units[index]))
            assert list(read_unit(ByteTokenizer(), unit)) == expected[4 * index:4 * index + 4]
    gzipped = write_manifest(tmp_path / "m.csv.gz", rows)
    (unit,) = list_units(ByteTokenizer(), gzipped)
    assert list(read_unit(ByteTokenizer(), unit)) == [row["text"] for row in rows]


def test_file_rows_are_read_by_the_plugin_relative_to_the_manifest(tmp_path):
    (tmp_path / "docs").mkdir()
    for i, text in enumerate(TEXTS[:3]):
        (tmp_path / "docs" / f"{i}.txt").write_text(text, encoding="utf-8")
    manifest = write_manifest(tmp_path / "m.csv", [{"path": f"docs/{i}.txt"} for i in range(3)])
    expected = [ByteTokenizer().read(tmp_path / "docs" / f"{i}.txt")[0] for i in range(3)]
    assert read_all(ByteTokenizer(), manifest, {"file": "path"}) == expected


@pytest.mark.parametrize("rows, fields, message", [
    ([{"path": "a.txt"}, {"path": "gone.txt"}], {"file": "path"}, r"m.jsonl:2: .*gone.txt does not exist"),
    ([{"text": "a"}, {"body": "b"}], {"text": "txt"}, r"m.jsonl:1: column 'txt' \(text\) is missing or empty; the "
                                                       r"row's columns are: text"),
    ([{"other": "a"}], None, r"m.jsonl:1: the row has no 'text' or 'file' column; its columns are: other"),
    ([{"text": "a", "label": "seven"}], None, r"m.jsonl:1: tokenizer 'bytes' cannot use a label column; .*mixed"),
    ([{"file": "a.png", "caption": "x"}], None, r"m.jsonl:1: tokenizer 'bytes' cannot use a caption column"),
    ([{"text": "a"}], {"picture": "a"}, r"data.fields has an unknown role 'picture'; the roles are: text, file"),
])  # fmt: skip
def test_a_bad_row_is_one_line_naming_the_manifest_the_row_and_the_column_or_file(tmp_path, rows, fields, message):
    (tmp_path / "a.txt").write_text("a")
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        read_all(ByteTokenizer(), manifest, fields)
    assert "\n" not in str(error.value)


def test_an_unreadable_file_and_a_broken_line_are_one_line_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    layout = text_image_layout()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"file": "bad.png", "caption": "a"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:1: cannot read .*bad.png \(.*not a readable PNG") as error:
        read_all(layout, manifest)
    manifest.write_text('{"file": "bad.png"\n')
    with pytest.raises(ValueError, match=r"m.jsonl:1 is not valid JSON") as broken:
        read_all(layout, manifest)
    assert "\n" not in str(error.value) + str(broken.value)


def test_fields_for_a_source_that_is_not_a_manifest_are_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(ValueError, match=r"data.fields names manifest columns, but .* is not a manifest"):
        list_units(ByteTokenizer(), tmp_path, {"text": "body"})


# --- mixed layouts: captions and the layout's own format -------------------------------------------------------
def text_image_layout() -> VocabLayout:
    return VocabLayout({"text": ByteTokenizer(), "image": PixelTokenizer(size=8, channels=1, bits=4)})


def test_a_caption_manifest_gives_text_then_image_in_layout_order(tmp_path):
    digits = write_digit_folder(tmp_path / "digits", count=6, by_class=False)
    rows = [{"caption": f"a {DIGIT_WORDS[label]}", "file": str(path.relative_to(tmp_path))} for path, label in digits]
    layout = text_image_layout()
    for manifest in (write_manifest(tmp_path / "c.csv", rows), write_manifest(tmp_path / "c.jsonl.gz", rows)):
        samples = read_all(layout, manifest)
        assert [[name for name, _ in sample] for sample in samples] == [["text", "image"]] * 6
        for sample, (path, label) in zip(samples, digits):
            assert sample[0].sample == f"a {DIGIT_WORDS[label]}"
            assert torch.equal(sample[1].sample, layout.parts["image"].read(path)[0])
        assert [s[0] for s in layout.read(manifest)] == [s[0] for s in samples]  # armm score --file reads the same


def test_the_layouts_own_format_still_reads_beside_manifest_rows(tmp_path):
    ((path, _),) = write_digit_folder(tmp_path, count=1, by_class=False)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps([{"text": "seven"}, {"image": {"file": path.name}}]) + "\n"
                        + json.dumps({"caption": "seven", "file": path.name}) + "\n")
    own, row = text_image_layout().read(manifest)
    assert own[0] == row[0] and torch.equal(own[1].sample, row[1].sample)


# --- labelled folders ----------------------------------------------------------------------------------------------
def label_layout(file_part: dict) -> VocabLayout:
    return VocabLayout({"label": {"tokenizer": "classes"}, "sample": file_part}, prompt_part="label")


IMAGE_PART = {"tokenizer": "image-pixels", "options": {"size": 8, "channels": 1, "bits": 4}}


def test_an_image_folder_gives_each_image_its_folders_label(tmp_path):
    digits = write_digit_folder(tmp_path / "root", count=30, by_class=True)
    layout = label_layout(IMAGE_PART)
    units = list_units(layout, tmp_path / "root")
    assert all(isinstance(pickle.loads(pickle.dumps(unit)), ReadUnit) for unit in units)
    samples = [sample for unit in units for sample in read_unit(layout, unit)]
    expected = sorted(digits, key=lambda item: (DIGIT_WORDS[item[1]], item[0]))  # class folders sorted, then files
    assert [[part.name for part in sample] for sample in samples] == [["label", "sample"]] * len(digits)
    for sample, (path, label) in zip(samples, expected):
        assert sample[0].sample == DIGIT_WORDS[label]
        assert torch.equal(sample[1].sample, layout.parts["sample"].read(path)[0])
    assert [s[0] for s in layout.read(tmp_path / "root")] == [s[0] for s in samples]


def test_the_built_in_named_digits_are_what_a_folder_of_the_digits_reads_as(tmp_path):
    layout = label_layout(IMAGE_PART)
    written = write_digit_folder(tmp_path, count=20)
    named = armm.get_plugins().datasets.get("sklearn-digits-named")(layout)[:20]
    for sample, (path, _) in zip(named, written):
        (read,) = read_unit(layout, ReadUnit(path, str(path), 0, label=path.parent.name))
        assert sample[0] == read[0] and sample[1].name == read[1].name
        assert torch.equal(sample[1].sample, read[1].sample)


def test_a_folder_of_labelled_wavs_gives_each_clip_its_label(tmp_path):
    rate, rng = 8000, np.random.default_rng(0)
    for label in ("dog", "cat"):
        for i in range(2):
            (tmp_path / label).mkdir(exist_ok=True)
            soundfile.write(tmp_path / label / f"{i}.wav", rng.uniform(-0.5, 0.5, 300 + i), rate, subtype="PCM_16")
    layout = label_layout({"tokenizer": "audio-mulaw", "options": {"sample_rate": rate}})
    samples = layout.read(tmp_path)
    assert [part.sample for part, _ in samples] == ["cat", "cat", "dog", "dog"]
    for (_, audio), path in zip(samples, sorted(tmp_path.glob("*/*.wav"))):
        assert torch.equal(audio.sample, MuLawTokenizer(sample_rate=rate).read(path)[0])


def test_the_built_in_notes_name_the_same_note_in_their_label_and_their_caption():
    audio = {"tokenizer": "audio-mulaw", "options": {"sample_rate": 8000, "clip_seconds": 0.0625}}
    datasets = armm.get_plugins().datasets
    labelled = datasets.get("synthetic-notes")(label_layout(audio))
    captioned = datasets.get("synthetic-notes-captioned")(VocabLayout({"text": ByteTokenizer(), "audio": audio}))
    assert len(labelled) == len(captioned) == 1200
    assert {label.sample for label, _ in labelled} == {f"{note}4" for note in "C C# D D# E F F# G G# A A# B".split()}
    for (label, clip), (caption, same_clip) in zip(labelled, captioned):
        assert re.findall(r"[A-G]#?4", caption.sample) == [label.sample] and (label.name, caption.name) == ("label", "text")
        assert torch.equal(clip.sample, same_clip.sample) and clip.sample.shape == (500,)


def test_files_outside_class_folders_and_empty_class_folders_are_errors(tmp_path):
    write_digit_folder(tmp_path, count=3, by_class=False)
    layout = label_layout(IMAGE_PART)
    with pytest.raises(ValueError, match=r"0000.png sits directly under .*; a labelled folder holds one subfolder "
                                         r"per class"):
        list_units(layout, tmp_path)
    for path in tmp_path.glob("*.png"):
        path.unlink()
    (tmp_path / "seven").mkdir()
    (tmp_path / "seven" / "notes.md").write_text("not an image")
    with pytest.raises(ValueError, match=r"class folder .*seven holds no readable files \(.png, .jpg, .jpeg\)"):
        list_units(layout, tmp_path)


def test_a_label_manifest_with_custom_fields_reads_as_the_folder_does(tmp_path):
    digits = write_digit_folder(tmp_path / "root", count=5, by_class=True)
    rows = [{"digit": DIGIT_WORDS[label], "path": str(path.relative_to(tmp_path))} for path, label in digits]
    manifest = write_manifest(tmp_path / "labels.csv", rows)
    layout = label_layout(IMAGE_PART)
    samples = read_source(layout, manifest, {"file": "path", "label": "digit"})
    assert [sample[0].sample for sample in samples] == [DIGIT_WORDS[label] for _, label in digits]


# --- training on the user's files ------------------------------------------------------------------------------
def shrunk(recipe: str, *extra: str) -> list[str]:
    """``armm fit`` of a recipe, shrunk to a few steps of a tiny model, on ``extra``'s data."""
    config = __import__("yaml").safe_load((RECIPES / recipe).read_text())
    return ["fit", "-c", str(RECIPES / recipe), *tiny_overrides(config), "--data.batch_size", "8",
            "--trainer.max_steps", "3", "--trainer.callbacks", "[]", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", *extra]


def test_an_image_caption_manifest_trains_text2digit(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    digits = write_digit_folder(tmp_path / "digits", count=40, by_class=False)
    write_manifest(tmp_path / "captions.jsonl", [{"file": f"digits/{path.name}", "caption": f"a {DIGIT_WORDS[label]}"}
                                                 for path, label in digits])
    main(shrunk("text2digit.yaml", "--data.dataset", "null", "--data.path", "captions.jsonl"))
    _, layout = armm.load_model(tmp_path / "runs" / "text2digit" / "export" / "final")
    assert list(layout.parts) == ["text", "image"] and layout.encode_prompt("a seven")


def test_an_image_folder_trains_image_folder_yaml_and_samples_a_class_by_name(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    write_digit_folder(tmp_path / "digits", count=60, by_class=True)
    main(shrunk("image_folder.yaml", "--data.dataset", "null", "--data.path", "digits"))
    run = tmp_path / "runs" / "image_folder" / "export" / "final"
    _, layout = armm.load_model(run)
    assert layout.parts["label"].names == sorted(DIGIT_WORDS)
    main(["sample", str(run), "--prompt", "seven", "--num-samples", "2", "--output", "seven.jsonl", "--seed", "0",
          "--sampler", "temperature=1.0", "--guidance", "2", "--max-new-tokens", "67"])
    samples = layout.read(tmp_path / "seven.jsonl")
    assert [sample[0] for sample in samples] == [("label", "seven")] * 2
    assert all(part.name == "image" and part.sample.shape == (1, 8, 8) for sample in samples for part in sample[1:])
