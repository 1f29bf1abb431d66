"""The ``classes`` tokenizer: the contract suite, names learned as torchvision's ImageFolder sorts class folders,
errors that list the classes, and a label part of a mixed layout whose names survive a model directory."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

import armm
from armm.classes import ClassTokenizer
from armm.layout import VocabLayout
from armm.testing import TokenizerContract
from armm_image.pixels import PixelTokenizer
from tests.conftest import tiny_model

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class TestClassTokenizer(TokenizerContract):
    @pytest.fixture
    def tokenizer(self) -> ClassTokenizer:
        return ClassTokenizer(["cat", "dog", "hot dog", "ünïcode"])

    @pytest.fixture
    def samples(self) -> list[str]:
        return ["dog", "hot dog", "ünïcode", "cat"]

    def sample_strategy(self, tokenizer):
        return st.sampled_from(tokenizer.names)


def test_fit_sorts_the_unique_names_as_image_folder_sorts_class_folders(tmp_path):
    for name in ["seven", "Zebra", "one", "seven", "a b"]:
        (tmp_path / name).mkdir(exist_ok=True)
    # torchvision.datasets.folder.find_classes: sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    expected = sorted(entry.name for entry in tmp_path.iterdir() if entry.is_dir())
    tokenizer = ClassTokenizer()
    assert tokenizer.needs_fit
    tokenizer.fit(["seven", "Zebra", "one", "seven", "a b"])
    assert tokenizer.names == expected and not tokenizer.needs_fit
    assert [tokenizer.encode(name) for name in expected] == [[i] for i in range(len(expected))]
    assert tokenizer.special_tokens == {"bos": 4, "eos": 5, "pad": 6} and tokenizer.vocab_size == 7


def test_given_names_keep_their_order_and_each_is_one_token():
    tokenizer = ClassTokenizer(NAMES)
    assert tokenizer.encode("seven") == [7] and tokenizer.sample_length == 1
    assert tokenizer.decode([7]) == "seven" and tokenizer.decode([tokenizer.bos_id, 7, tokenizer.eos_id]) == "seven"
    assert tokenizer.token_name(7) == "seven" and tokenizer.token_name(tokenizer.pad_id) is None
    assert tokenizer.encode_prompt("seven") == [7] and tokenizer.encode_prompt("") == []


def test_an_unknown_class_is_an_error_listing_the_classes():
    with pytest.raises(ValueError, match="unknown class 'eleven'; the classes are: zero, one, two, .*nine$"):
        ClassTokenizer(NAMES).encode("eleven")


@pytest.mark.parametrize("names, problem", [
    (["a", "a"], "given twice"), (["a", ""], "non-empty"), (["a\nb"], "one line"), ([" a"], "surrounding spaces"),
    ([7], "non-empty string"), ([], "at least one"),
])  # fmt: skip
def test_bad_names_are_refused(names, problem):
    with pytest.raises(ValueError, match=problem):
        ClassTokenizer(names)


def test_an_unfitted_tokenizer_says_how_to_get_names():
    with pytest.raises(ValueError, match=r"no class names yet; call fit\(names\) or give names"):
        ClassTokenizer().vocab_size  # noqa: B018


def test_files_hold_one_label_per_line(tmp_path):
    tokenizer = ClassTokenizer(NAMES)
    (path,) = tokenizer.write(["seven", "one", "seven"], tmp_path / "labels")
    assert path.read_text() == "seven\none\nseven\n"
    (tmp_path / "more.txt").write_text("  two \n\nnine\n")
    assert tokenizer.read(tmp_path) == ["seven", "one", "seven", "two", "nine"]


def label_layout() -> VocabLayout:
    return VocabLayout({"label": {"tokenizer": "classes"}, "image": PixelTokenizer(size=2, channels=1, bits=2)},
                       prompt_part="label")


def test_a_label_part_fits_its_names_and_a_prompt_by_name_is_that_class_in_its_span():
    layout = label_layout()
    images = [PixelTokenizer(size=2, channels=1, bits=2).decode([i % 4] * 4) for i in range(3)]
    layout.fit([[("label", name), ("image", image)] for name, image in zip(["seven", "one", "three"], images)])
    span = layout.span("label")
    assert layout.parts["label"].names == ["one", "seven", "three"]
    assert layout.encode_prompt("seven") == [span.begin_id, span.offset + 1, span.end_id]
    assert layout.decode(layout.encode_prompt("seven")) == [("label", "seven")]
    guidance = layout.guidance([[layout.bos_id, *layout.encode_prompt("three")]], 2.0)
    assert guidance.unconditional == [[layout.bos_id, layout.null_id]]


def test_class_names_survive_saving_and_loading_a_model_directory(tmp_path):
    layout = label_layout()
    layout.fit([[("label", name)] for name in ["seven", "one", "three"]])
    model = tiny_model(vocab_size=layout.vocab_size, max_seq_len=16)
    armm.save_model(tmp_path / "model", model, layout)
    _, loaded = armm.load_model(tmp_path / "model")
    assert loaded.parts["label"].names == ["one", "seven", "three"]
    assert loaded.encode_prompt("seven") == layout.encode_prompt("seven")
    with pytest.raises(ValueError, match="unknown class 'eight'; the classes are: one, seven, three"):
        loaded.encode_prompt("eight")


def test_a_class_missing_from_the_fitted_names_says_how_it_happened_and_the_fix():
    tokenizer = ClassTokenizer()
    tokenizer.fit(["one", "two"])  # as prepare does, on the training split only
    with pytest.raises(ValueError, match=r"unknown class 'four'.*held out for validation.*options: \{names: \[\.\.\.\]\}"):
        tokenizer.encode("four")
    with pytest.raises(ValueError, match=r"unknown class 'four'; the classes are: one, two$"):
        ClassTokenizer(["one", "two"]).encode("four")  # given names: nothing was learned, nothing to explain
