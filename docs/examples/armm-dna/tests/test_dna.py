"""The DNA tokenizer passes armm's contract suite, plus the checks specific to it."""

import random

import numpy as np
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


def test_augment_reverse_complements_the_bases_between_special_tokens():
    tok = DNATokenizer()
    bos, eos = tok.bos_id, tok.eos_id
    window = np.array([bos, *tok.encode("AACGTN"), eos, bos, *tok.encode("GGA")])
    turned = np.array([bos, *tok.encode("NACGTT"), eos, bos, *tok.encode("TCC")])  # each read's reverse complement
    drawn = [tok.augment(window, random.Random(seed)) for seed in range(20)]
    assert all((d == window).all() or (d == turned).all() for d in drawn)
    assert any((d == window).all() for d in drawn) and any((d == turned).all() for d in drawn)
