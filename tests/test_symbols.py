"""armm.SymbolTokenizer: ids from declared symbol groups, save/load, a decode that never fails, and a grammar that
sampling keeps to; a new symbolic domain (a toy melody tokenizer, under 80 lines) passes the contract suite."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import armm
from armm.files import find_files, numbered_paths, read_text
from armm.layout import sampler_for
from armm.plugins import Plugins, make_plugin_manager
from armm.testing import TokenizerContract


# --- a new symbolic domain: monophonic melodies as pitch/duration events --------------------------------------------
class MelodyTokenizer(armm.SymbolTokenizer):
    """A melody is a line of events: a MIDI pitch or ``r`` (a rest), each followed by its duration, e.g.
    ``"60 1/8 62 1/8 r 1/4"``; a fermata may follow a duration. One token per pitch, rest, duration or fermata."""

    name = "melody"
    modality = "music"
    unit = "event"
    file_suffix = ".txt"
    read_suffixes = (".txt",)
    groups = {"pitch": range(36, 97), "rest": None, "duration": ["1/16", "1/8", "1/4", "1/2", "1/1"], "fermata": None}
    grammar = {"pitch": ["duration"], "rest": ["duration"], "duration": ["pitch", "rest", "fermata"],
               "fermata": ["pitch", "rest"]}
    start = ["pitch", "rest"]

    def encode(self, sample: str) -> list[int]:
        words = sample.split()
        events = [("fermata", "fermata") if w == "^" else ("rest", "rest") if w == "r" else
                  ("pitch", int(w)) if w.isdigit() else ("duration", w) for w in words]
        return super().encode(events)

    def decode(self, ids: Sequence[int]) -> str:
        names = {"rest": "r", "fermata": "^"}
        return " ".join(names.get(group, str(value)) for group, value in self.decode_symbols(ids))

    def num_units(self, sample: str) -> int:
        return len(sample.split())

    def read(self, source: str | Path) -> list[str]:
        """One melody per non-blank line of each .txt file."""
        files = find_files(source, self.read_suffixes, what="melody files")
        return [" ".join(line.split()) for path in files for line in read_text(path).splitlines() if line.strip()]

    def write(self, samples: Sequence[str], path: str | Path) -> list[Path]:
        target = numbered_paths(path, 1, self.file_suffix)[0]
        target.write_text("".join(f"{sample}\n" for sample in samples), encoding="utf-8")
        return [target]


class Pairs(armm.SymbolTokenizer):
    """The base class as it is: samples are lists of (group, symbol) pairs, written as JSON lines."""

    name = "symbol-pairs"
    modality = "symbols"
    file_suffix = ".jsonl"
    read_suffixes = (".jsonl",)
    groups = {"pitch": range(60, 64), "duration": ["1/8", "1/4"], "rest": None}

    def read(self, source: str | Path) -> list[list[armm.Symbol]]:
        files = find_files(source, self.read_suffixes, what="JSON lines files")
        return [[armm.Symbol(*pair) for pair in json.loads(line)] for path in files
                for line in read_text(path).splitlines()]

    def write(self, samples: Sequence[list[armm.Symbol]], path: str | Path) -> list[Path]:
        target = numbered_paths(path, 1, self.file_suffix)[0]
        target.write_text("".join(json.dumps([list(s) for s in sample]) + "\n" for sample in samples))
        return [target]


class Registered:
    @armm.hookimpl
    def armm_register_tokenizers(self, register) -> None:
        register(MelodyTokenizer.name, MelodyTokenizer)
        register(Pairs.name, Pairs)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The contract suite finds the test tokenizers registered, as an installed plugin's would be."""
    pm = make_plugin_manager()
    pm.register(Registered(), name="test-symbols")
    monkeypatch.setattr("armm.testing.get_plugins", lambda: Plugins.from_manager(pm))


MELODIES = ["60 1/8 62 1/8 64 1/4 ^", "r 1/2", "36 1/16 96 1/1 r 1/4 ^ 72 1/2"]
melody_events = st.lists(st.tuples(st.one_of(st.integers(36, 96).map(str), st.just("r")),
                                   st.sampled_from(["1/16", "1/8", "1/4", "1/2", "1/1"]), st.booleans()), min_size=1)


class TestMelodyContract(TokenizerContract):
    @pytest.fixture
    def tokenizer(self):
        return MelodyTokenizer()

    @pytest.fixture
    def samples(self):
        return MELODIES

    def sample_strategy(self, tokenizer):
        return melody_events.map(lambda events: " ".join(f"{p} {d}" + (" ^" if f else "") for p, d, f in events))


class TestPairsContract(TokenizerContract):
    @pytest.fixture
    def tokenizer(self):
        return Pairs()

    @pytest.fixture
    def samples(self):
        return [[("pitch", 60), ("duration", "1/8"), ("rest", "rest")], [("pitch", 63)]]

    def sample_strategy(self, tokenizer):
        return st.lists(st.sampled_from(tokenizer.symbols), min_size=1)


def test_the_melody_domain_takes_under_80_lines():
    assert len(inspect.getsource(MelodyTokenizer).splitlines()) < 80


# --- ids, lookups, names ------------------------------------------------------------------------------------------
def test_ids_follow_the_groups_in_order_then_bos_eos_pad():
    tok = MelodyTokenizer()
    assert tok.vocab_size == 61 + 1 + 5 + 1 + 3
    assert tok.special_tokens == {"bos": 68, "eos": 69, "pad": 70}
    assert [tok.id_of("pitch", 36), tok.id_of("pitch", 96), tok.id_of("rest", "rest")] == [0, 60, 61]
    assert [tok.id_of("duration", "1/16"), tok.id_of("fermata", "fermata")] == [62, 67]
    assert tok.symbol_of(62) == ("duration", "1/16") and tok.symbol_of(68) is None
    assert [tok.token_name(i) for i in (24, 61, 63, 67, 68)] == ["pitch 60", "rest", "duration 1/8", "fermata", None]


def test_encode_takes_bare_symbols_or_pairs_and_names_a_bad_or_ambiguous_one():
    tok = Pairs()
    assert tok.encode([60, "1/4", "rest"]) == tok.encode([("pitch", 60), ("duration", "1/4"), ("rest", "rest")])
    assert tok.encode([60, "1/4"]) == [0, 5]
    with pytest.raises(ValueError, match=r"invalid token 99 at position 1; allowed: pitch: 60, 61, 62, 63; duration"):
        tok.encode([60, 99])
    with pytest.raises(ValueError, match=r"invalid token \('pitch', 99\) at position 0: no symbol 99 in group 'pitch'"):
        tok.encode([("pitch", 99)])
    with pytest.raises(ValueError, match="invalid token True at position 0"):
        tok.encode([True])

    class Twice(Pairs):
        groups = {"a": ["x", "y"], "b": ["x"]}

    with pytest.raises(ValueError, match=r"token 'x' at position 0 is in groups \['a', 'b'\]; give it as a \(group"):
        Twice().encode(["x"])
    assert Twice().encode([("b", "x"), "y"]) == [2, 1]


@pytest.mark.parametrize(("groups", "message"), [
    ({"a": []}, "group 'a' has no symbols"),
    ({"a": [1, 1]}, "group 'a' lists a symbol twice"),
    ({"a": [1.5]}, "symbol 1.5 of group 'a' is a float; symbols are str or int"),
])
def test_a_bad_group_declaration_is_named(groups, message):
    class Bad(Pairs):
        pass

    Bad.groups = groups
    with pytest.raises((ValueError, TypeError), match=message):
        Bad().vocab_size


# --- decode never fails -------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 70)))
def test_decode_of_any_ids_never_fails_and_drops_only_specials(ids):
    tok = MelodyTokenizer()
    decoded = tok.decode_symbols(ids)
    assert decoded == [tok.symbols[i] for i in ids if i < 68]
    assert tok.encode(tok.decode(ids)) == [i for i in ids if i < 68]  # grammar or not, every symbol survives


def test_decode_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        MelodyTokenizer().decode([0, 71])


# --- save and load ------------------------------------------------------------------------------------------------
def test_save_writes_the_groups_and_grammar_and_load_refuses_other_groups(tmp_path):
    tok = MelodyTokenizer()
    tok.save(tmp_path)
    saved = json.loads((tmp_path / "melody.json").read_text())
    assert saved["groups"]["pitch"] == list(range(36, 97)) and saved["groups"]["rest"] == ["rest"]
    assert saved["start"] == ["pitch", "rest"] and saved["grammar"]["fermata"] == ["pitch", "rest"]
    assert MelodyTokenizer.load(tmp_path).encode(MELODIES[2]) == tok.encode(MELODIES[2])
    saved["groups"]["pitch"] = list(range(36, 98))
    (tmp_path / "melody.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="melody.json was saved with groups .* the token ids would not match"):
        MelodyTokenizer.load(tmp_path)
    (tmp_path / "melody.json").unlink()
    with pytest.raises(FileNotFoundError, match="melody.json is missing; it should hold the groups and grammar and "
                                                "start MelodyTokenizer.save wrote"):
        MelodyTokenizer.load(tmp_path)


def test_a_model_saved_with_the_protein_and_dna_files_of_before_still_loads(tmp_path):
    protein = armm.get_plugins().tokenizers.get("protein")
    (tmp_path / "protein.json").write_text(json.dumps({"alphabet": "ACDEFGHIKLMNPQRSTVWYBZXUO"}) + "\n")
    assert protein.load(tmp_path).encode("MKb") == [10, 8, 20]
    protein().save(tmp_path / ".")
    assert (tmp_path / "protein.json").read_text() == '{"alphabet": "ACDEFGHIKLMNPQRSTVWYBZXUO"}\n'


# --- the grammar --------------------------------------------------------------------------------------------------
def test_follows_grammar_checks_each_id_against_the_one_before():
    tok = MelodyTokenizer()
    assert tok.follows_grammar(tok.encode("60 1/8 ^ r 1/4") + [tok.eos_id])
    assert not tok.follows_grammar(tok.encode("1/8 60"))  # a duration cannot start
    assert not tok.follows_grammar(tok.encode("60 62"))  # a pitch needs its duration


def test_an_unknown_group_in_the_grammar_or_a_group_it_omits_is_named():
    class Typo(MelodyTokenizer):
        grammar = {**MelodyTokenizer.grammar, "pitch": ["durations"]}

    class Omits(MelodyTokenizer):
        grammar = {group: MelodyTokenizer.grammar[group] for group in ("pitch", "rest", "duration")}

    with pytest.raises(ValueError, match="the grammar names group 'durations', which is not one of the groups"):
        Typo().next_table
    with pytest.raises(ValueError, match=r"the grammar says nothing of groups \['fermata'\]"):
        Omits().next_table


@pytest.mark.parametrize("padded", [0, 5])
def test_constrained_sampling_never_leaves_the_grammar(padded):
    tok = MelodyTokenizer()
    sampler = sampler_for(tok, "temperature=1.5")
    assert sampler.spec == "grammar, temperature=1.5"
    generator = torch.Generator().manual_seed(0)
    V = tok.vocab_size + padded  # a model whose vocabulary is padded past the tokenizer's
    tokens = torch.full((16, 1), tok.bos_id)
    for _ in range(200):
        logits = torch.randn(16, V, generator=generator) * 4
        logits[:, tok.eos_id] = -1e4  # whole rows to check, not ended early
        tokens = torch.cat([tokens, sampler(logits, tokens)[:, None]], dim=1)
    for row in tokens.tolist():
        assert max(row) < tok.vocab_size and tok.follows_grammar(row[1:])
    assert len({tok.symbols[i].group for i in tokens[:, 1:].flatten().tolist()}) == 4  # every group was drawn


def test_the_constraint_starts_after_bos_or_an_empty_row_and_ignores_left_padding():
    tok = MelodyTokenizer()
    start = tok.allowed(torch.tensor([[tok.bos_id], [-1]]))
    expected = torch.zeros(tok.vocab_size, dtype=torch.bool)
    expected[: tok.id_of("rest", "rest") + 1] = True
    expected[tok.eos_id] = True
    assert (start == expected).all()
    assert (tok.allowed(torch.zeros(2, 0, dtype=torch.long)) == expected).all()
    after_pitch = tok.allowed(torch.tensor([[-1, tok.bos_id, 24]]))[0]
    assert after_pitch.nonzero().flatten().tolist() == [*range(62, 67), tok.eos_id]


def test_without_a_grammar_the_sampler_is_the_spec_itself():
    assert sampler_for(Pairs(), "top_k=3").spec == "top_k=3"
    assert Pairs().follows_grammar([0, 0, 4, Pairs().eos_id])
