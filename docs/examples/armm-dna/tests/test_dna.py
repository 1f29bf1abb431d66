"""The DNA tokenizer passes armm's contract suite, plus the checks specific to it."""

import pytest
from hypothesis import strategies as st

from armm.testing import TokenizerContract
from armm_dna import DNATokenizer


class TestDNATokenizer(TokenizerContract):
    @pytest.fixture
    def tokenizer(self):
        return DNATokenizer()

    @pytest.fixture
    def samples(self):
        return ["ACGT", "GATTACA", "N", "ACGTN" * 50]

    def sample_strategy(self, tokenizer):
        return st.text(alphabet="ACGTN", min_size=1)


def test_lower_case_encodes_like_upper_case_and_other_letters_are_refused():
    tok = DNATokenizer()
    assert tok.encode("gattaca") == tok.encode("GATTACA") == [2, 0, 3, 3, 0, 1, 0]
    with pytest.raises(ValueError, match="invalid base 'U' at position 2"):
        tok.encode("ACU")


def test_read_takes_one_sequence_per_line_and_names_the_file_and_line_of_a_bad_base(tmp_path):
    tok = DNATokenizer()
    (tmp_path / "reads.txt").write_text("acgt\n\nGATTACA\n")
    assert tok.read(tmp_path) == ["ACGT", "GATTACA"]
    (tmp_path / "reads.txt").write_text("ACGT\nACXT\n")
    with pytest.raises(ValueError, match=r"reads.txt, line 2: invalid base 'X' at position 2"):
        tok.read(tmp_path)
