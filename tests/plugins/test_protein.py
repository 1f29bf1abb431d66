"""The protein plugin: one token per residue, FASTA in and out, checked against hand-written expectations."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import strategies as st

import armm
from armm.testing import TokenizerContract
from armm_protein import ALPHABET, FastaRecord, ProteinTokenizer, SyntheticProteins, synthetic_proteins
from armm_protein.synthetic import COMPOSITION, NUM_FAMILIES
from armm_protein.tokenizer import STANDARD

HBA_HUMAN = (  # the first 92 residues of human haemoglobin alpha, UniProt P69905
    "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHVDDMPNALSALSDLHAHKL"
)

# Multi-line records, lower case, blank lines, a terminal stop, a tab in a header, CRLF endings.
HAND_WRITTEN = (
    "\n"
    ">sp|P69905|HBA_HUMAN Hemoglobin subunit alpha  OS=Homo sapiens\n"
    f"{HBA_HUMAN[:40]}\n"
    f"{HBA_HUMAN[40:80]}\n"
    "\n"
    f"{HBA_HUMAN[80:]}\n"
    ">lower case and a stop\r\n"
    "mktayiakqr\r\n"
    "qisfvksh*\r\n"
    ">all-letters\ttab-separated description\n"
    "ACDEFGHIKLMNPQRSTVWY\n"
    "bzxuo\n"
)
EXPECTED_RECORDS = [
    FastaRecord("sp|P69905|HBA_HUMAN", "Hemoglobin subunit alpha  OS=Homo sapiens", HBA_HUMAN),
    FastaRecord("lower", "case and a stop", "MKTAYIAKQRQISFVKSH"),
    FastaRecord("all-letters", "tab-separated description", "ACDEFGHIKLMNPQRSTVWYBZXUO"),
]


@pytest.fixture
def tok():
    return ProteinTokenizer()


class TestProteinTokenizerContract(TokenizerContract):
    @pytest.fixture
    def tokenizer(self):
        return ProteinTokenizer()

    @pytest.fixture
    def samples(self):
        return [HBA_HUMAN, "M", ALPHABET, "X" * 130]

    def sample_strategy(self, tokenizer):
        return st.text(alphabet=ALPHABET, min_size=1, max_size=200)


def test_ids_follow_the_alphabet_then_the_special_tokens(tok):
    assert ALPHABET == "ACDEFGHIKLMNPQRSTVWY" + "BZXUO"
    assert tok.encode(ALPHABET) == list(range(25))
    assert tok.special_tokens == {"bos": 25, "eos": 26, "pad": 27} and tok.vocab_size == 28
    assert tok.decode([25, 10, 8, 26, 27]) == "MK"
    assert tok.num_units(HBA_HUMAN) == len(HBA_HUMAN) == 92


def test_encode_accepts_lower_case_and_names_an_invalid_residue_and_its_position(tok):
    assert tok.encode("mkWy") == tok.encode("MKWY")
    for sample, symbol, position in (("MKJ", "J", 2), ("M K", " ", 1), ("-AC", "-", 0), ("Mß", "ß", 1)):
        with pytest.raises(ValueError, match=rf"invalid residue '{symbol}' at position {position};"):
            tok.encode(sample)
    with pytest.raises(TypeError, match="encodes str, got list"):
        tok.encode(["M"])


def test_fasta_records_parse_to_the_expected_names_descriptions_and_sequences(tok, tmp_path):
    (tmp_path / "globins.fasta").write_text(HAND_WRITTEN, newline="")
    assert tok.read_records(tmp_path / "globins.fasta") == EXPECTED_RECORDS
    assert tok.read(tmp_path / "globins.fasta") == [r.sequence for r in EXPECTED_RECORDS]


def test_a_folder_reads_every_fasta_suffix_in_name_order_and_nothing_else(tok, tmp_path):
    (tmp_path / "b.fa").write_text(">b\nKK\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.faa").write_text(">c\nWW\n")
    (tmp_path / "a.fasta").write_text(">a1\nMM\n>a2\nAA\n")
    (tmp_path / "notes.txt").write_text("not a protein\n")
    assert tok.read(tmp_path) == ["MM", "AA", "KK", "WW"]
    assert tok.read(str(tmp_path / "*.fa*")) == ["MM", "AA", "KK"]


def test_an_invalid_residue_names_the_file_the_record_the_position_and_the_line(tok, tmp_path):
    path = tmp_path / "bad.fasta"
    path.write_text(">ok\nMKT\n>second record\nACDEF\nGHJKL\n")
    with pytest.raises(ValueError, match=rf"{path}: record 'second' has invalid residue 'J' at position 8 \(line 5\)"):
        tok.read(path)


def test_a_stop_is_allowed_only_at_the_end_of_a_record(tok, tmp_path):
    (tmp_path / "end.fasta").write_text(">a\nMK\nT*\n\n>b\nAC*\n")
    assert tok.read(tmp_path / "end.fasta") == ["MKT", "AC"]
    (tmp_path / "inside.fasta").write_text(">a\nMK*T\n")
    with pytest.raises(ValueError, match=r"record 'a' has invalid residue '\*' at position 3 \(line 2\)"):
        tok.read(tmp_path / "inside.fasta")


def test_an_empty_file_names_the_file(tok, tmp_path):
    for text in ("", "\n \n"):
        path = tmp_path / "empty.fasta"
        path.write_text(text)
        with pytest.raises(ValueError, match=rf"{path} holds no FASTA records"):
            tok.read(path)


def test_a_binary_or_non_fasta_file_names_the_file(tok, tmp_path):
    binary = tmp_path / "image.fasta"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ValueError, match=rf"{binary} is not UTF-8 text"):
        tok.read(binary)
    json_file = tmp_path / "config.fa"
    json_file.write_text('{"residues": "MKT"}\n>late header\nMKT\n')
    with pytest.raises(ValueError, match=rf"{json_file} is not FASTA: line 1 comes before the first '>' header"):
        tok.read(json_file)


def test_the_writer_wraps_at_60_columns_and_reads_back_the_same_sequences(tok, tmp_path):
    long = "M" + "ACDEFGHIKL" * 15  # 151 residues: lines of 60, 60 and 31
    paths = tok.write([long, "mkt", "W" * 60], tmp_path / "generated.seq")  # not a format's suffix: FASTA
    assert paths == [tmp_path / "generated.fasta"]
    assert paths[0].read_text() == (
        f">sample_0\n{long[:60]}\n{long[60:120]}\n{long[120:]}\n"
        ">sample_1\nMKT\n"
        f">sample_2\n{'W' * 60}\n"
    )
    assert tok.read_records(paths[0]) == [
        FastaRecord("sample_0", "", long), FastaRecord("sample_1", "", "MKT"), FastaRecord("sample_2", "", "W" * 60)
    ]


@pytest.mark.parametrize("output, format", [("plain.txt", None), ("plain", ".txt")])
def test_the_plain_format_is_one_sequence_a_line(tok, tmp_path, output, format):
    long = "M" + "ACDEFGHIKL" * 15  # one line, however long
    [path] = tok.write([long, "mkt"], tmp_path / output, format=format)
    assert path == tmp_path / "plain.txt" and path.read_text() == f"{long}\nMKT\n"


def test_the_writer_refuses_invalid_residues_and_nothing_to_write(tok, tmp_path):
    with pytest.raises(ValueError, match="invalid residue '1' at position 3"):
        tok.write(["MKT1"], tmp_path / "out.fasta")
    with pytest.raises(ValueError, match="no protein samples to write"):
        tok.write([], tmp_path / "out.fasta")


def test_loading_a_tokenizer_saved_with_another_alphabet_is_refused(tok, tmp_path):
    (tmp_path / "protein.json").write_text('{"alphabet": "ACDEFGHIKLMNPQRSTVWY"}\n')
    with pytest.raises(ValueError, match="protein.json was saved with alphabet 'ACDEFGHIKLMNPQRSTVWY'"):
        ProteinTokenizer.load(tmp_path)


def test_the_plugin_is_discovered_through_its_entry_point():
    entries = {entry.name: entry.provider for entry in armm.get_plugins().tokenizers}
    assert entries["protein"].startswith("armm ")


# --- the built-in synthetic-proteins dataset ---------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    return SyntheticProteins()


def test_synthetic_proteins_are_seeded_valid_and_registered(tok, synthetic):
    sequences = armm.get_plugins().datasets.get("synthetic-proteins")(tok)
    assert sequences == [record.sequence for record in synthetic.records()] == synthetic_proteins()
    assert sequences != synthetic_proteins(seed=1)
    assert len(sequences) == 2000 and all(sequence.startswith("M") for sequence in sequences)
    assert set("".join(sequences)) <= set(STANDARD)
    assert tok.decode(tok.encode(sequences[0])) == sequences[0]


def test_synthetic_residue_frequencies_are_close_to_the_uniprot_composition(synthetic):
    counts = Counter("".join(record.sequence for record in synthetic.records()))
    total = sum(counts.values())
    for residue, percent in zip(STANDARD, COMPOSITION):
        assert abs(100 * counts[residue] / total - percent * 100 / sum(COMPOSITION)) < 2.0, residue


def best_match_mismatches(sequence: str, motif: str) -> float:
    """The smallest fraction of mismatched residues between ``motif`` and any window of ``sequence``."""
    seq, pattern = np.frombuffer(sequence.encode(), np.uint8), np.frombuffer(motif.encode(), np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(seq, len(pattern))
    return float((windows != pattern).mean(axis=1).min())


def test_annotated_domains_are_close_copies_of_their_family_and_others_are_absent(synthetic):
    families = synthetic.families()
    assert len(families) == NUM_FAMILIES and all(30 <= len(family) <= 60 for family in families)
    for record in synthetic.records()[:300]:
        features = record.description.split()
        present = {int(feature[1:]) for feature in features if feature.startswith("F")}
        assert 1 <= len(present) <= 3
        for index, family in enumerate(families):
            mismatches = best_match_mismatches(record.sequence, family)
            assert mismatches <= 0.3 if index in present else mismatches > 0.6
        assert record.sequence.endswith("KDEL") if "KDEL" in features else True
        if "signal" in features:
            assert record.sequence[1] in "KR" and set(record.sequence[3:10]) <= set("LAVIF")
