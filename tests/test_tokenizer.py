"""The byte-level tokenizer core ships, checked by the same contract suite every plugin runs."""

import pytest
from hypothesis import strategies as st

import armm
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
