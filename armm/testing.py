"""A reusable contract test suite for tokenizer plugins (needs the ``dev`` extra: pytest, hypothesis).

Subclass it in your plugin's tests and provide two fixtures::

    from armm.testing import TokenizerContract

    class TestDNATokenizer(TokenizerContract):
        @pytest.fixture
        def tokenizer(self):
            return DNATokenizer()          # fitted already, if it learns a vocabulary

        @pytest.fixture
        def samples(self):
            return ["ACGT", "GATTACA"]     # a few real samples of the modality

Every first-party plugin runs this suite. Override ``assert_same_sample`` for lossy tokenizers (audio,
images), ``sample_strategy`` to add a hypothesis round-trip property, and set ``write_round_trips =
False`` when the written file is not one sample per file (an image grid): then files of one sample are
read back. Every format of ``file_suffixes`` that ``read_suffixes`` lists is written and read back; name
the lossy ones (JPEG) in ``lossy_formats``, whose samples are checked with ``assert_similar_sample``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from armm.plugins import get_plugins
from armm.tokenizer import Tokenizer

_FIXTURE_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class TokenizerContract:
    """What every armm tokenizer must do. Subclasses provide the ``tokenizer`` and ``samples`` fixtures."""

    lossless: ClassVar[bool] = True
    write_round_trips: ClassVar[bool] = True
    lossy_formats: ClassVar[tuple[str, ...]] = ()

    @pytest.fixture
    def tokenizer(self) -> Tokenizer:
        raise NotImplementedError("provide a `tokenizer` fixture")

    @pytest.fixture
    def samples(self) -> list[Any]:
        raise NotImplementedError("provide a `samples` fixture")

    def assert_same_sample(self, actual: Any, expected: Any) -> None:
        """Lossless tokenizers compare exactly; lossy ones override this with their tolerance."""
        assert actual == expected

    def assert_similar_sample(self, actual: Any, expected: Any) -> None:
        """A sample read back from a file of ``lossy_formats``: by default, of the same type and shape."""
        assert type(actual) is type(expected) and np.shape(actual) == np.shape(expected)

    def sample_strategy(self, tokenizer: Tokenizer) -> st.SearchStrategy | None:
        """A hypothesis strategy of valid samples, for a round-trip property test (None: skip it)."""
        return None

    # --- identity ----------------------------------------------------------------------------------
    def test_is_registered_under_its_name(self, tokenizer: Tokenizer) -> None:
        assert get_plugins().tokenizers.get(tokenizer.name) is type(tokenizer)

    def test_declares_modality_unit_and_file_suffix(self, tokenizer: Tokenizer) -> None:
        for attribute in ("name", "modality", "unit", "file_suffix"):
            assert isinstance(getattr(tokenizer, attribute), str) and getattr(tokenizer, attribute)
        assert tokenizer.file_suffix.startswith(".")

    def test_declares_the_formats_it_writes_default_first(self, tokenizer: Tokenizer) -> None:
        suffixes = tokenizer.file_suffixes
        assert isinstance(suffixes, tuple) and suffixes and suffixes[0] == tokenizer.file_suffix
        assert len(set(suffixes)) == len(suffixes)
        assert all(isinstance(s, str) and s.startswith(".") and len(s) > 1 for s in suffixes)
        assert set(self.lossy_formats) <= set(suffixes)

    def test_special_tokens_are_distinct_ids_inside_the_vocabulary(self, tokenizer: Tokenizer) -> None:
        ids = list(tokenizer.special_tokens.values())
        assert len(set(ids)) == len(ids)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)

    # --- ids ---------------------------------------------------------------------------------------
    def test_encode_gives_ids_inside_the_vocabulary(self, tokenizer: Tokenizer, samples: list[Any]) -> None:
        for sample in samples:
            ids = tokenizer.encode(sample)
            assert ids and all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)

    def test_decode_inverts_encode(self, tokenizer: Tokenizer, samples: list[Any]) -> None:
        for sample in samples:
            self.assert_same_sample(tokenizer.decode(tokenizer.encode(sample)), sample)

    def test_round_trip_property(self, tokenizer: Tokenizer) -> None:
        strategy = self.sample_strategy(tokenizer)
        if strategy is None:
            pytest.skip("no sample_strategy for this tokenizer")

        @_FIXTURE_SETTINGS
        @given(strategy)
        def round_trip(sample: Any) -> None:
            self.assert_same_sample(tokenizer.decode(tokenizer.encode(sample)), sample)

        round_trip()

    def test_decode_of_any_ids_inside_the_vocabulary_never_crashes(self, tokenizer: Tokenizer) -> None:
        # The property is built per test so hypothesis sees one executor per subclass.
        @_FIXTURE_SETTINGS
        @given(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=80))
        def decode(ids: list[int]) -> None:
            tokenizer.decode(ids)

        decode()

    def test_decode_rejects_ids_outside_the_vocabulary(self, tokenizer: Tokenizer) -> None:
        for bad in (tokenizer.vocab_size, -1):
            with pytest.raises(ValueError, match=str(bad)):
                tokenizer.decode([0, bad])

    # --- persistence and files ---------------------------------------------------------------------
    def test_save_then_load_encodes_the_same(self, tokenizer: Tokenizer, samples: list[Any], tmp_path) -> None:
        tokenizer.save(tmp_path)
        loaded = type(tokenizer).load(tmp_path)
        assert loaded.vocab_size == tokenizer.vocab_size
        assert loaded.special_tokens == tokenizer.special_tokens
        for sample in samples:
            assert loaded.encode(sample) == tokenizer.encode(sample)

    def test_write_makes_files_that_read_back(self, tokenizer: Tokenizer, samples: list[Any], tmp_path) -> None:
        decoded = [tokenizer.decode(tokenizer.encode(sample)) for sample in samples]
        paths = tokenizer.write(decoded, tmp_path / "out")
        assert paths and all(p.is_file() and p.stat().st_size > 0 and p.suffix == tokenizer.file_suffix for p in paths)
        if self.write_round_trips:
            read_back = [sample for path in paths for sample in tokenizer.read(path)]
            assert len(read_back) == len(decoded)
            for actual, expected in zip(read_back, decoded):
                self.assert_same_sample(actual, expected)

    def test_every_format_is_written_as_its_suffix_says(self, tokenizer: Tokenizer, samples: list[Any],
                                                        tmp_path) -> None:
        """``format=`` or the path's suffix chooses a format; the files end with its suffix."""
        decoded = [tokenizer.decode(tokenizer.encode(sample)) for sample in samples]
        for suffix in tokenizer.file_suffixes[1:]:
            folder = tmp_path / suffix[1:]
            folder.mkdir()
            chosen = tokenizer.write(decoded, folder / "out", format=suffix)
            by_path = tokenizer.write(decoded, folder / f"path{suffix}")
            for paths in (chosen, by_path):
                assert paths and all(p.is_file() and p.stat().st_size > 0 and p.suffix == suffix for p in paths)
        if len(tokenizer.file_suffixes) > 1:
            with pytest.raises(ValueError, match=tokenizer.file_suffixes[-1]):
                tokenizer.write(decoded, tmp_path / "out", format=".no-such-format")

    def test_every_readable_format_reads_back(self, tokenizer: Tokenizer, samples: list[Any], tmp_path) -> None:
        """Each format ``read`` takes gives back the samples written (one, when ``write_round_trips`` is False)."""
        decoded = [tokenizer.decode(tokenizer.encode(sample)) for sample in samples]
        decoded = decoded if self.write_round_trips else decoded[:1]
        for suffix in [s for s in tokenizer.file_suffixes if s in tokenizer.read_suffixes]:
            (folder := tmp_path / suffix[1:]).mkdir()
            chosen = {} if suffix == tokenizer.file_suffix else {"format": suffix}  # one format: no format= needed
            paths = tokenizer.write(decoded, folder / "out", **chosen)
            read_back = [sample for path in paths for sample in tokenizer.read(path)]
            assert len(read_back) == len(decoded), suffix
            compare = self.assert_similar_sample if suffix in self.lossy_formats else self.assert_same_sample
            for actual, expected in zip(read_back, decoded):
                compare(actual, expected)

    def test_reading_an_empty_folder_names_it(self, tokenizer: Tokenizer, tmp_path) -> None:
        with pytest.raises((FileNotFoundError, ValueError), match=str(tmp_path)):
            tokenizer.read(tmp_path)

    def test_every_sample_has_units(self, tokenizer: Tokenizer, samples: list[Any]) -> None:
        assert all(tokenizer.num_units(sample) > 0 for sample in samples)
