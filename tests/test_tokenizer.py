"""The byte-level tokenizer core ships, checked by the same contract suite every plugin runs."""

import json

import pytest
from hypothesis import strategies as st

import armm
import armm.files
from armm.classes import ClassTokenizer
from armm.datasource import read_source
from armm.testing import TokenizerContract


def test_bytes_tokenizer_round_trips_any_text():
    tok = armm.ByteTokenizer()
    text = "naïve café — 日本語 🤖\n\ttabs"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.bos_id, *tok.encode("hi"), tok.eos_id]) == "hi"
    with pytest.raises(ValueError, match="token id 300 at position 1 is outside the vocabulary"):
        tok.decode([104, 300])


class TestByteTokenizerContract(TokenizerContract):
    @pytest.fixture
    def tokenizer(self):
        return armm.ByteTokenizer()

    @pytest.fixture
    def samples(self):
        return ["hello", "naïve café — 日本語 🤖\n\ttabs", " "]

    def sample_strategy(self, tokenizer):
        return st.text(min_size=1)


# --- output formats --------------------------------------------------------------------------------
class OneFormat(armm.ByteTokenizer):
    """A third-party tokenizer written before ``file_suffixes``: it sets ``file_suffix`` and ``write`` takes no
    ``format``."""

    name = "one-format"
    file_suffix = ".seq"

    def write(self, samples, path):
        [target] = armm.files.numbered_paths(path, 1, self.file_suffix)
        target.write_text("\n".join(samples))
        return [target]


def test_a_tokenizer_that_sets_only_file_suffix_writes_that_one_format():
    assert (OneFormat.file_suffix, OneFormat().file_suffixes) == (".seq", (".seq",))
    assert armm.ByteTokenizer().file_suffixes == (".txt", ".jsonl")


def test_file_suffixes_follow_a_file_suffix_set_on_the_instance():
    tok = armm.ByteTokenizer()
    tok.file_suffix = ".md"  # as code-bpe's `suffixes` option does
    assert (tok.file_suffixes, OneFormat().file_suffixes) == ((".txt", ".jsonl"), (".seq",))  # declared: kept
    one = OneFormat()
    one.file_suffix = ".fa"
    assert one.file_suffixes == (".fa",)


def test_a_class_that_declares_only_file_suffixes_gets_the_first_as_file_suffix():
    class Grids(armm.ByteTokenizer):
        file_suffixes = (".png", ".npy")

    assert (Grids.file_suffix, Grids().file_suffixes) == (".png", (".png", ".npy"))
    with pytest.raises(TypeError, match=r"file_suffix '.txt' must be the first of file_suffixes \('.png', '.npy'\)"):
        type("Mixed", (armm.ByteTokenizer,), {"file_suffix": ".txt", "file_suffixes": (".png", ".npy")})


@pytest.mark.parametrize("path, format, written", [
    ("out", None, "out.txt"), ("out.jsonl", None, "out.jsonl"), ("out.md", None, "out.txt"),
    ("out", ".jsonl", "out.jsonl"), ("out.txt", ".jsonl", "out.jsonl"),
])
def test_format_or_else_the_path_suffix_chooses_the_format(tmp_path, path, format, written):
    [target] = armm.ByteTokenizer().write(["hi"], tmp_path / path, format=format)
    assert target == tmp_path / written


def test_a_format_the_tokenizer_does_not_write_is_refused_naming_those_it_does(tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer 'bytes' writes \.txt or \.jsonl files, not '\.mid'; pass format="):
        armm.ByteTokenizer().write(["hi"], tmp_path / "out", format=".mid")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tok, samples", [
    (armm.ByteTokenizer(), ["a\r\nb", 'ü "quoted"', " "]),
    (ClassTokenizer(["one", "seven"]), ["seven", "one", "seven"]),
])
def test_texts_written_as_jsonl_read_back_as_training_data(tmp_path, tok, samples):
    [path] = tok.write(samples, tmp_path / "out", format=".jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"text": sample} for sample in samples]
    assert read_source(tok, path) == samples
