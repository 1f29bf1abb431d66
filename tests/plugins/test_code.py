"""The code plugin: code-bpe (byte-level BPE for source files) and fill-in-the-middle (Bavarian et al. 2022)."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

import armm
from armm.testing import TokenizerContract
from armm.training.data import TokenDataModule
from armm_code import CodeTokenizer, FIMSplit, FIMTransform, fim_ids, infill_prompt, infilled_document
from armm_code.datasets import STDLIB_CHARACTERS
from armm_text import BPETokenizer

STDLIB = sorted(Path(os.path.dirname(os.__file__)).glob("*.py"))


def read_sources(paths, limit: int) -> list[str]:
    """Whole files, in order, until ``limit`` characters."""
    sources, total = [], 0
    for path in paths:
        if total >= limit:
            break
        sources.append(path.read_text(encoding="utf-8"))
        total += len(sources[-1])
    return sources


TRAIN = read_sources(STDLIB[0::2], 300_000)
HELD_OUT = read_sources(STDLIB[1::4], 600_000)


@pytest.fixture(scope="module")
def fitted() -> CodeTokenizer:
    tokenizer = CodeTokenizer(vocab_size=2000)
    tokenizer.fit(TRAIN)
    return tokenizer


class TestCodeBPEContract(TokenizerContract):
    @pytest.fixture
    def tokenizer(self, fitted):
        return fitted

    @pytest.fixture
    def samples(self):
        return ["def f(x):\n\treturn x  \n", "s = 'naïve 日本語 🤖'\n\n\n", " ", HELD_OUT[0][:3000]]

    def sample_strategy(self, tokenizer):
        whitespace_heavy = st.text(alphabet=st.sampled_from(list(" \t\r\n\x0b\x0c:()_aé日#")))
        return st.one_of(st.text(), whitespace_heavy)


def variants(source: str) -> list[str]:
    """The source as written, with CRLF line ends, tab indentation, trailing whitespace and non-ASCII text."""
    return [
        source,
        source.replace("\n", "\r\n"),
        source.replace("    ", "\t"),
        source.replace("\n", " \t \n"),
        "# -*- 编码: utf-8 -*- ünïcödé 🐍\r\n" + source + "\n\n\t  ",
    ]


def test_stdlib_sources_round_trip_exactly_with_tabs_trailing_whitespace_crlf_and_unicode(fitted):
    for source in HELD_OUT:
        for variant in variants(source) if len(source) < 40_000 else [source]:
            assert fitted.decode(fitted.encode(variant)) == variant


def test_indentation_after_a_line_break_is_one_token(fitted):
    ids = fitted.encode("if x:\n        return y\n")
    assert [fitted.decode([i]) for i in ids][3:5] == ["\n        ", "return"]


def test_fitting_compresses_held_out_source(fitted):
    num_bytes = sum(fitted.num_units(source) for source in HELD_OUT)
    num_tokens = sum(len(fitted.encode(source)) for source in HELD_OUT)
    assert num_bytes / num_tokens > 2.5


def test_fim_tokens_are_special_and_suffixes_persist(tmp_path):
    tokenizer = CodeTokenizer(vocab_size=400, suffixes=(".c", ".h"))
    tokenizer.fit(["int main(void) {\n    return 0;\n}\n"])
    assert set(tokenizer.special_tokens) == {"bos", "eos", "pad", "fim_prefix", "fim_middle", "fim_suffix"}
    tokenizer.save(tmp_path)
    loaded = CodeTokenizer.load(tmp_path)
    assert (loaded.read_suffixes, loaded.file_suffix) == ((".c", ".h", ".c.gz", ".h.gz"), ".c")
    assert loaded.special_tokens == tokenizer.special_tokens


# --- fill-in-the-middle ----------------------------------------------------------------------------
def fim_tokens(tokenizer):
    roles = tokenizer.special_tokens
    return roles["fim_prefix"], roles["fim_suffix"], roles["fim_middle"], roles["eos"]


def reassemble(tokenizer, ids: list[int], mode: str) -> str:
    """Undo a FIM sequence: check each FIM token appears once, in order, then decode the parts in document order."""
    pre, suf, mid, eos = fim_tokens(tokenizer)
    assert ids[-1] == eos and ids.count(eos) == 1
    if mode == "plain":
        assert pre not in ids and suf not in ids and mid not in ids
        return tokenizer.decode(ids[:-1])
    assert [ids.count(token) for token in (pre, suf, mid)] == [1, 1, 1]
    p, s, m = ids.index(pre), ids.index(suf), ids.index(mid)
    assert p == 0 and p < s < m < len(ids) - 1
    if mode == "psm":  # [PRE] prefix [SUF] suffix [MID] middle [EOS]
        return tokenizer.decode(ids[1:s]) + tokenizer.decode(ids[m + 1 : -1]) + tokenizer.decode(ids[s + 1 : m])
    assert s == 1  # SPM: [PRE] [SUF] suffix [MID] prefix middle [EOS]
    return tokenizer.decode(ids[m + 1 : -1]) + tokenizer.decode(ids[s + 1 : m])


FIM_DOCUMENTS = [HELD_OUT[1][:4000], "x = '<|fim_prefix|> is text here'\r\n\tprint('日本語 🤖')  \n", "a", ""]


@pytest.mark.parametrize("spm_rate", [0.0, 0.5, 1.0])
def test_fim_sequences_reassemble_into_the_document_for_many_seeds(fitted, spm_rate):
    pre, suf, mid, eos = fim_tokens(fitted)
    for seed in range(40):
        for document in FIM_DOCUMENTS:
            split = FIMTransform(fitted, rate=1.0, spm_rate=spm_rate, seed=seed).split(document)
            ids = FIMTransform(fitted, rate=1.0, spm_rate=spm_rate, seed=seed)(document)
            assert split.mode == {0.0: "psm", 1.0: "spm"}.get(spm_rate, split.mode)
            assert split.document == document
            assert reassemble(fitted, ids, split.mode) == document
            prefix, middle, suffix = (fitted.encode(part) for part in (split.prefix, split.middle, split.suffix))
            expected = {
                "psm": [pre, *prefix, suf, *suffix, mid, *middle, eos],
                "spm": [pre, suf, *suffix, mid, *prefix, *middle, eos],
            }[split.mode]
            assert ids == expected


def test_rate_zero_is_plain_encoding_and_rate_one_always_fim(fitted):
    document = FIM_DOCUMENTS[1]
    never = FIMTransform(fitted, rate=0.0, seed=3)
    always = FIMTransform(fitted, rate=1.0, seed=3)
    for _ in range(200):
        assert never(document) == [*fitted.encode(document), fitted.eos_id]
        assert always.split(document).mode in ("psm", "spm")


def within_four_sigma(count: int, draws: int, p: float) -> bool:
    return abs(count - draws * p) <= 4 * math.sqrt(draws * p * (1 - p))


@pytest.mark.parametrize(("rate", "spm_rate"), [(0.5, 0.5), (0.9, 0.2), (0.3, 0.8)])
def test_fim_and_spm_fractions_match_their_rates(fitted, rate, spm_rate):
    transform = FIMTransform(fitted, rate=rate, spm_rate=spm_rate, seed=7)
    modes = [transform.split("def f():\n    pass\n").mode for _ in range(4000)]
    fim = [mode for mode in modes if mode != "plain"]
    assert within_four_sigma(len(fim), len(modes), rate)
    assert within_four_sigma(fim.count("spm"), len(fim), spm_rate)


def test_cut_points_cover_every_position(fitted):
    transform = FIMTransform(fitted, rate=1.0, seed=0)
    starts = {len(transform.split("abcd").prefix) for _ in range(300)}
    ends = {4 - len(transform.split("abcd").suffix) for _ in range(300)}
    assert starts == ends == {0, 1, 2, 3, 4}


def test_a_seed_makes_the_transform_reproducible(fitted):
    document = FIM_DOCUMENTS[0]
    first, second = FIMTransform(fitted, seed=11), FIMTransform(fitted, seed=11)
    assert [first(document) for _ in range(20)] == [second(document) for _ in range(20)]


@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_infill_prompt_plus_generated_middle_rebuilds_the_document(fitted, mode):
    source = HELD_OUT[2][:3000]
    prefix, middle, suffix = source[:1000], source[1000:1400], source[1400:]
    prompt = infill_prompt(fitted, prefix, suffix, mode=mode)
    generated = [*fitted.encode(middle), fitted.eos_id]
    assert prompt + generated == fim_ids(fitted, FIMSplit(mode, prefix, middle, suffix))
    assert infilled_document(fitted, prefix, suffix, generated + fitted.encode("after eos")) == source
    assert infilled_document(fitted, prefix, suffix, fitted.encode(middle)) == source  # stopped by max tokens


def test_fim_refuses_bad_rates_and_tokenizers_without_fim_tokens(fitted):
    with pytest.raises(ValueError, match="spm_rate must be a probability in \\[0, 1\\], got 1.5"):
        FIMTransform(fitted, spm_rate=1.5)
    with pytest.raises(ValueError, match="infill mode must be 'psm' or 'spm'"):
        infill_prompt(fitted, "a", "b", mode="pms")
    text = BPETokenizer(vocab_size=300)
    text.fit(["plain text"])
    with pytest.raises(ValueError, match="'text-bpe' has no fim_prefix, fim_middle, fim_suffix"):
        FIMTransform(text)


# --- reading and writing source files ---------------------------------------------------------------
def test_read_takes_matching_source_files_one_per_sample(fitted, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "b.py").write_text("b = 2\n")
    (tmp_path / "notes.txt").write_text("not code\n")
    (tmp_path / "pkg" / "b.cpython-311.pyc").write_bytes(b"\x00\xff")
    assert fitted.read(tmp_path) == ["a = 1\n", "b = 2\n"]
    c_tokenizer = CodeTokenizer(suffixes=(".c", ".h"))
    (tmp_path / "main.c").write_text("int main;\n")
    assert c_tokenizer.read(tmp_path) == ["int main;\n"]
    assert c_tokenizer.file_suffix == ".c"


def test_read_names_a_folder_without_matching_files(fitted, tmp_path):
    (tmp_path / "readme.md").write_text("# nothing to see\n")
    with pytest.raises(FileNotFoundError, match=f"no code files \\(.py, .py.gz\\) found in {tmp_path}"):
        fitted.read(tmp_path)


def test_write_keeps_line_endings_byte_for_byte(fitted, tmp_path):
    source = "def f():\r\n\treturn 1  \r\n"
    (path,) = fitted.write([source], tmp_path / "generated")
    assert path.name == "generated.py" and path.read_bytes() == source.encode("utf-8")


def test_bad_suffixes_are_refused():
    with pytest.raises(ValueError, match="suffixes must be a non-empty list"):
        CodeTokenizer(suffixes=".py")


# --- fill-in-the-middle in training documents (encode_document) ---------------------------------------
@pytest.fixture(scope="module")
def fim_tokenizer(fitted, tmp_path_factory):
    """Makes tokenizers with the fitted vocabulary and FIM options, as a recipe's ``data.tokenizer_options`` gives."""
    folder = tmp_path_factory.mktemp("fitted")
    fitted.save(folder)

    def make(**fim_options) -> CodeTokenizer:
        return CodeTokenizer.from_file(folder / "tokenizer.json", **{**fitted.options(), **fim_options})

    return make


def test_documents_are_plain_without_fim(fitted):
    for document in FIM_DOCUMENTS:
        assert fitted.encode_document(document) == [fitted.bos_id, *fitted.encode(document), fitted.eos_id]


@pytest.mark.parametrize("spm_rate", [0.0, 0.5, 1.0])
def test_documents_follow_a_transform_seeded_alike_and_reassemble(fitted, fim_tokenizer, spm_rate):
    tokenizer = fim_tokenizer(fim_rate=1.0, fim_spm_rate=spm_rate, fim_seed=5)
    reference = FIMTransform(fitted, rate=1.0, spm_rate=spm_rate, seed=5)
    for document in FIM_DOCUMENTS * 10:
        ids = tokenizer.encode_document(document)
        assert ids == [tokenizer.bos_id, *reference(document)]
        mode = "spm" if ids[2] == tokenizer.special_tokens["fim_suffix"] else "psm"  # alike when the prefix is empty
        assert reassemble(tokenizer, ids[1:], mode) == document


def test_the_fim_rate_sets_the_share_of_fim_documents(fim_tokenizer):
    tokenizer = fim_tokenizer(fim_rate=0.5)
    prefix_id = tokenizer.special_tokens["fim_prefix"]
    documents = [tokenizer.encode_document("def f():\n    pass\n") for _ in range(2000)]
    assert within_four_sigma(sum(ids[1] == prefix_id for ids in documents), len(documents), 0.5)


def test_fim_options_survive_save_and_load_and_give_the_same_documents(fim_tokenizer, tmp_path):
    tokenizer = fim_tokenizer(fim_rate=0.7, fim_spm_rate=0.2, fim_seed=3)
    tokenizer.save(tmp_path)
    loaded = CodeTokenizer.load(tmp_path)
    assert (loaded.fim_rate, loaded.fim_spm_rate, loaded.fim_seed) == (0.7, 0.2, 3)
    documents = FIM_DOCUMENTS * 5
    assert [loaded.encode_document(d) for d in documents] == [tokenizer.encode_document(d) for d in documents]


def test_bad_fim_rates_are_refused_when_constructed():
    with pytest.raises(ValueError, match="fim_rate must be a probability in \\[0, 1\\], got 2"):
        CodeTokenizer(fim_rate=2)
    with pytest.raises(ValueError, match="fim_spm_rate must be a probability in \\[0, 1\\], got -0.1"):
        CodeTokenizer(fim_spm_rate=-0.1)


def test_a_recipe_turns_fim_on_through_the_tokenizer_options(tmp_path):
    (tmp_path / "src").mkdir()
    for i in range(8):
        (tmp_path / "src" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    data = TokenDataModule(tokenizer="code-bpe", tokenizer_options={"vocab_size": 300, "fim_rate": 1.0},
                           path=str(tmp_path / "src"), seq_len=16, batch_size=2, val_fraction=0.25,
                           cache_dir=tmp_path / "cache")
    data.setup()
    tokens = np.concatenate([data.train_tokens, data.val_tokens]).tolist()
    special = data.tokenizer.special_tokens
    assert data.tokenizer.fim_rate == 1.0
    assert [tokens.count(special[role]) for role in ("bos", "fim_prefix", "fim_middle", "fim_suffix", "eos")] == [8] * 5


# --- the built-in python-stdlib dataset ------------------------------------------------------------------
def test_python_stdlib_is_the_sorted_standard_library_up_to_two_million_characters():
    sources = armm.get_plugins().datasets.get("python-stdlib")(CodeTokenizer())
    assert sources == read_sources(STDLIB, STDLIB_CHARACTERS)
    assert sources[0] == STDLIB[0].read_text(encoding="utf-8")
    total = sum(map(len, sources))
    assert STDLIB_CHARACTERS <= total < STDLIB_CHARACTERS + len(sources[-1])
