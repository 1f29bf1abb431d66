"""A tokenizer over a fixed vocabulary of named symbol groups, for symbolic domains (notes, residues, bases, moves).

A plugin declares ``groups`` (and optionally a ``grammar``) and implements ``read``/``write``; the ids, the special
tokens, ``token_name``, ``save``/``load``, id↔symbol lookups, ``encode``/``decode`` and a sampling constraint that
keeps generation inside the grammar come from ``SymbolTokenizer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from armm.files import read_json_object
from armm.sampling import NEG_INF, Sampler, build_sampler
from armm.tokenizer import Tokenizer

SymbolValue = str | int
"""What a symbol is: a string (``"1/8"``, ``"K"``) or an integer (a MIDI pitch); they survive a JSON round trip."""


class Symbol(NamedTuple):
    """One symbol and the group it belongs to: ``Symbol("pitch", 60)``; equal to the plain pair ``("pitch", 60)``."""

    group: str
    value: SymbolValue


class SymbolTokenizer(Tokenizer):
    """Ids for named groups of symbols: the symbols of each group in declaration order, group after group, then
    bos, eos and pad (the order of armm's other tokenizers).

    A subclass declares ``groups`` as ``{name: symbols}`` (any iterable of ``str``/``int``: ``range(36, 97)``, a
    list, or a string of one-letter symbols; ``None`` is the one symbol named like the group, e.g. ``"rest"``), and
    optionally a ``grammar``: ``{group: [groups that may follow it]}`` for every group, with ``start`` the groups a
    sample may begin with (all by default). eos may follow anything. ``ignore_case`` makes ``encode`` take the
    lower case of string symbols too.

    ``encode`` takes a sequence of symbols, or of ``(group, symbol)`` pairs where a bare symbol is in two groups;
    ``decode`` gives ``Symbol`` pairs. ``decode`` never fails on ids inside the vocabulary: special ids are dropped and
    every symbol id is rendered as its symbol in order, whether or not the sequence follows the grammar
    (``follows_grammar`` tells); ids outside the vocabulary are a ValueError, as for every tokenizer. ``sampler``
    keeps generation inside the grammar (``armm sample`` applies it). ``save`` writes ``saved()`` to
    ``NAME.json``; ``load`` rebuilds the class and refuses a file saved with other groups (the ids would not
    match). A subclass whose groups depend on constructor options overrides ``load``.
    """

    groups: ClassVar[Mapping[str, Iterable[SymbolValue] | None]]
    grammar: ClassVar[Mapping[str, Sequence[str]] | None] = None
    start: ClassVar[Sequence[str] | None] = None
    ignore_case: ClassVar[bool] = False

    # --- the vocabulary ---------------------------------------------------------------------------------------
    @cached_property
    def symbols(self) -> list[Symbol]:
        """Every symbol in id order: ``symbols[i]`` is the symbol of id ``i``."""
        symbols = []
        for group, values in self.groups.items():
            values = [group] if values is None else list(values)
            if not values:
                raise ValueError(f"{type(self).__name__}: group {group!r} has no symbols")
            for value in values:
                if isinstance(value, bool) or not isinstance(value, str | int):
                    raise TypeError(f"{type(self).__name__}: symbol {value!r} of group {group!r} is a "
                                    f"{type(value).__name__}; symbols are str or int")
            if len(set(values)) < len(values):
                raise ValueError(f"{type(self).__name__}: group {group!r} lists a symbol twice")
            symbols += [Symbol(group, value) for value in values]
        return symbols

    @cached_property
    def _ids(self) -> dict[Symbol, int]:
        return {symbol: i for i, symbol in enumerate(self.symbols)}

    @cached_property
    def _bare_ids(self) -> dict[SymbolValue, int | None]:
        """Symbol → id, None where a symbol is in two groups; lower case too under ``ignore_case``."""
        ids: dict[SymbolValue, int | None] = {}
        for i, (_, value) in enumerate(self.symbols):
            ids[value] = None if value in ids else i
        if self.ignore_case:
            ids |= {value.lower(): i for value, i in ids.items() if isinstance(value, str) and value.lower() not in ids}
        return ids

    @property
    def vocab_size(self) -> int:
        return len(self.symbols) + 3

    @property
    def special_tokens(self) -> dict[str, int]:
        n = len(self.symbols)
        return {"bos": n, "eos": n + 1, "pad": n + 2}

    def id_of(self, group: str, value: SymbolValue) -> int:
        """The id of ``value`` in ``group``; a ValueError naming the group's symbols when it has no such symbol."""
        try:
            return self._ids[Symbol(group, value)]
        except (KeyError, TypeError):
            raise ValueError(f"no symbol {value!r} in group {group!r}; {self.describe(group)}") from None

    def symbol_of(self, token: int) -> Symbol | None:
        """The symbol of id ``token``; None for a special id. Ids outside the vocabulary are a ValueError."""
        self.check_ids([token])
        return self.symbols[token] if token < len(self.symbols) else None

    def token_name(self, token: int) -> str | None:
        """``"pitch 60"``, or ``"rest"`` for a group of one symbol named like it (for ``armm inspect``); None for
        special ids."""
        if not 0 <= token < len(self.symbols):
            return None
        group, value = self.symbols[token]
        return group if value == group else f"{group} {value}"

    def describe(self, group: str | None = None) -> str:
        """The symbols of ``group`` (or of every group) for a message: ``duration: 1/16, 1/8, 1/4``."""
        named = [group] if group in self.groups else list(self.groups)
        lists = []
        for name in named:
            values = [str(s.value) for s in self.symbols if s.group == name]
            shown = values if len(values) <= 12 else [*values[:3], "…", values[-1]]
            lists.append(f"{name}: {', '.join(shown)}")
        return "allowed: " + "; ".join(lists) + (" (either case)" if self.ignore_case else "")

    # --- samples ----------------------------------------------------------------------------------------------
    def encode(self, sample: Iterable[Any]) -> list[int]:
        """Symbols or ``(group, symbol)`` pairs → ids; anything else is a ValueError naming it and its position."""
        if isinstance(sample, str):  # one-letter symbols: the fast path
            ids = [self._bare_ids.get(letter) for letter in sample]
            if None not in ids:
                return ids
        return [self._encode_one(item, position) for position, item in enumerate(sample)]

    def _encode_one(self, item: Any, position: int) -> int:
        if isinstance(item, tuple) and len(item) == 2:
            try:
                return self.id_of(*item)
            except ValueError as err:
                raise ValueError(f"invalid {self.unit} {item!r} at position {position}: {err}") from None
        hashable = isinstance(item, str | int) and not isinstance(item, bool)
        token = self._bare_ids.get(item) if hashable else None
        if token is not None:
            return token
        if hashable and item in self._bare_ids:
            groups = [s.group for s in self.symbols if s.value == item]
            raise ValueError(f"{self.unit} {item!r} at position {position} is in groups {groups}; "
                             f"give it as a (group, symbol) pair")
        raise ValueError(f"invalid {self.unit} {item!r} at position {position}; {self.describe()}")

    def decode(self, ids: Sequence[int]) -> Any:
        """Ids → ``Symbol`` pairs (special ids dropped); see the class docstring."""
        return self.decode_symbols(ids)

    def decode_symbols(self, ids: Sequence[int]) -> list[Symbol]:
        """The symbols of ``ids`` in order, special ids dropped, grammar or not."""
        self.check_ids(ids)
        return [self.symbols[token] for token in ids if token < len(self.symbols)]

    # --- saving -----------------------------------------------------------------------------------------------
    def saved(self) -> dict[str, Any]:
        """What ``save`` writes and ``load`` checks: the groups (and the grammar), as JSON. A subclass may keep an
        older layout of its file by overriding this (the protein plugin saves ``{"alphabet": ...}``)."""
        saved: dict[str, Any] = {"groups": {group: [] for group in self.groups}}
        for group, value in self.symbols:
            saved["groups"][group].append(value)
        if self.grammar is not None:
            saved |= {"grammar": {g: list(after) for g, after in self.grammar.items()}, "start": self._start}
        return saved

    def save(self, directory: str | Path) -> None:
        (Path(directory) / f"{self.name}.json").write_text(json.dumps(self.saved()) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> SymbolTokenizer:
        tokenizer = cls()
        path = Path(directory) / f"{cls.name}.json"
        mine = json.loads(json.dumps(tokenizer.saved()))
        saved = read_json_object(path, f"the {' and '.join(mine)} {cls.__name__}.save wrote")
        for key, value in mine.items():
            if saved.get(key) != value:
                raise ValueError(f"{path} was saved with {key} {saved.get(key)!r}, but this version of "
                                 f"{cls.__module__.split('.')[0]} uses {value!r}; the token ids would not match")
        return tokenizer

    # --- the grammar ------------------------------------------------------------------------------------------
    @cached_property
    def _start(self) -> list[str]:
        return list(self.groups if self.start is None else self.start)

    @cached_property
    def next_table(self) -> Tensor:
        """Bool ``[vocab_size + 1, vocab_size]``: which ids may follow each id (row ``vocab_size``: no token yet, or
        one outside the vocabulary). After a symbol: the groups its group's grammar lists; after a special id or
        at the start: the ``start`` groups; eos anywhere. Every id may follow every symbol without a grammar."""
        V, n = self.vocab_size, len(self.symbols)
        if self.grammar is None:
            table = torch.zeros(V + 1, V, dtype=torch.bool)
            table[:, : n + 2] = True  # symbols, bos, eos
            table[:, self.special_tokens["bos"]] = False
            return table
        ids_of = {group: torch.tensor([i for i, s in enumerate(self.symbols) if s.group == group]) for group in self.groups}
        for group in [*self._start, *self.grammar, *(g for after in self.grammar.values() for g in after)]:
            if group not in self.groups:
                raise ValueError(f"{type(self).__name__}: the grammar names group {group!r}, which is not one of "
                                 f"the groups {list(self.groups)}")
        missing = [group for group in self.groups if group not in self.grammar]
        if missing:
            raise ValueError(f"{type(self).__name__}: the grammar says nothing of groups {missing}; give each the "
                             f"list of groups that may follow it (an empty list: only eos)")
        table = torch.zeros(V + 1, V, dtype=torch.bool)
        table[:, n + 1] = True
        for row in [*range(n, V), V]:
            for group in self._start:
                table[row, ids_of[group]] = True
        for token, symbol in enumerate(self.symbols):
            for group in self.grammar[symbol.group]:
                table[token, ids_of[group]] = True
        return table

    def allowed(self, tokens: Tensor, vocab_size: int | None = None) -> Tensor:
        """Which ids the grammar allows after each row of ``tokens [B, T]`` (left-padded with -1) → bool
        ``[B, vocab_size]`` (``vocab_size`` ≥ the tokenizer's for a padded model; extra ids are never allowed)."""
        table = self.next_table.to(tokens.device)
        V = self.vocab_size
        last = tokens[:, -1] if tokens.size(1) else torch.full((tokens.size(0),), -1, device=tokens.device)
        allowed = table[torch.where((last >= 0) & (last < V), last, V)]
        return torch.nn.functional.pad(allowed, (0, (vocab_size or V) - V), value=False)

    def follows_grammar(self, ids: Sequence[int]) -> bool:
        """Whether the ids of a sample after bos keep to the grammar, each allowed after the one before it."""
        self.check_ids(ids)
        return all(self.next_table[previous, token] for previous, token in zip([self.vocab_size, *ids], ids))

    def sampler(self, spec: str | Sampler = "") -> Sampler:
        """``spec`` drawing only what the grammar allows next; ``spec`` itself without a grammar."""
        chain = build_sampler(spec, tokenizer=self)
        if self.grammar is None:
            return chain
        return Sampler([GrammarConstraint(self), *chain.transforms], ", ".join(filter(None, ["grammar", chain.spec])))


class GrammarConstraint:
    """Logits transform: sets to ``-inf`` every id a ``SymbolTokenizer``'s grammar does not allow next."""

    deterministic = False

    def __init__(self, tokenizer: SymbolTokenizer) -> None:
        self.tokenizer = tokenizer
        self.table = tokenizer.next_table  # a grammar naming unknown groups fails here, not mid-generation

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        return logits.masked_fill(~self.tokenizer.allowed(tokens, logits.size(-1)), NEG_INF)
