"""``armm.files``: ``read_text_pieces`` (pieces that join into the text and encode, one by one, to the ids of the whole)
and ``read_json_object``'s limits."""

from __future__ import annotations

import gzip
import json

import pytest

from armm.files import MAX_JSON_DEPTH, read_json_object, read_text_pieces
from armm_code import CodeTokenizer
from armm_text import BPETokenizer

PROSE = ("The quick  brown fox\u00a0jumps over the lazy dog's back.\n\nIt's 42 o'clock;   isn't it?\n"
         "  Indented line\twith a tab,\ttrailing spaces   \n\n\n\u00e9t\u00e9 \u4e2d\u6587 \u0645\u0631\u062d\u0628\u0627 !\n")
CODE = "def f(x):\r\n    if x:\r\n        return x  # done\r\n\r\n\r\nclass A:\n\tpass\n"
TEXT = (PROSE + CODE) * 6


@pytest.fixture(scope="module")
def tokenizers() -> list[BPETokenizer]:
    fitted = [BPETokenizer(vocab_size=400), CodeTokenizer(vocab_size=400)]
    for tokenizer in fitted:
        tokenizer.fit([TEXT])
    return fitted


@pytest.mark.parametrize("piece_chars", [7, 40, 200])
def test_pieces_join_into_the_text_and_encode_to_the_ids_of_the_whole(tmp_path, tokenizers, piece_chars):
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT.encode())
    pieces = list(read_text_pieces(path, piece_chars))
    assert "".join(pieces) == TEXT and len(pieces) > len(TEXT) // (8 * piece_chars)
    for tokenizer in tokenizers:
        assert [i for piece in pieces for i in tokenizer.encode(piece)] == tokenizer.encode(TEXT), tokenizer.name


def test_a_gzip_file_gives_the_same_pieces(tmp_path):
    (tmp_path / "t.txt").write_bytes(TEXT.encode())
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(TEXT.encode()))
    assert list(read_text_pieces(tmp_path / "t.txt.gz", 30)) == list(read_text_pieces(tmp_path / "t.txt", 30))


@pytest.mark.parametrize("text", ["x" * 1000, "\n" * 999 + "y", "a\r\n" * 300, "\u4e2d\u6587" * 400])
def test_text_without_a_safe_cut_is_cut_at_the_piece_size(tmp_path, text):
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    pieces = list(read_text_pieces(path, 50))
    assert "".join(pieces) == text
    assert len(pieces) > 1 and max(map(len, pieces)) <= 4 * 50  # cut anyway, at most 4 pieces' worth held


def test_a_file_that_is_not_utf8_is_refused_naming_it(tmp_path):
    path = tmp_path / "b.txt"
    path.write_bytes(b"ok \xff\xfe")
    with pytest.raises(ValueError, match="b.txt is not UTF-8 text"):
        list(read_text_pieces(path, 50))


# --- read_json_object ------------------------------------------------------------------------------
def nested(depth: int) -> str:
    return '{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])  # 100k levels: past Python's own recursion limit
def test_json_nested_too_deep_is_refused_naming_the_file_and_the_limit(tmp_path, depth):
    (tmp_path / "config.json").write_text(nested(depth))
    with pytest.raises(ValueError, match=rf"config.json nests arrays or objects more than {MAX_JSON_DEPTH} levels "
                                         r"deep; it should hold a ModelConfig"):
        read_json_object(tmp_path / "config.json", "a ModelConfig")


def test_json_nested_to_the_limit_is_read(tmp_path):
    (tmp_path / "config.json").write_text(nested(MAX_JSON_DEPTH))
    assert list(read_json_object(tmp_path / "config.json", "a ModelConfig")) == ["a"]


def test_json_larger_than_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("armm.files.MAX_JSON_BYTES", 100)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"vocab": "x" * 100}))
    with pytest.raises(ValueError, match=r"tokenizer.json is 113 bytes, more than the 100 armm reads as JSON; it "
                                         r"should hold a tokenizer \(is it another file under this name\?\)"):
        read_json_object(tmp_path / "tokenizer.json", "a tokenizer")
    monkeypatch.setattr("armm.files.MAX_JSON_BYTES", 113)
    assert read_json_object(tmp_path / "tokenizer.json", "a tokenizer") == {"vocab": "x" * 100}
