"""Mixed-modality sequences: several tokenizer plugins composed into one id space.

A ``VocabLayout`` is itself a ``Tokenizer`` (registered as ``mixed``), so a model directory saves and
loads it like any other. Its ids are, in order::

    0 bos, 1 eos, 2 pad, 3 null                         shared special tokens
    then per part: <|name|>, <|/name|>, the plugin's own ids 0 .. V-1 shifted by the part's offset

A sample is a list of ``Part(name, sample)``; each part is encoded by its own plugin in its own local ids
and wrapped in its span tokens, e.g. ``<|text|> a seven <|/text|> <|image|> 64 pixels <|/image|>``.
Only the layout knows the offsets. ``SpanConstraint`` (sampler ``spans``) keeps generation inside the
grammar: within a part's span only that part's content and its end token may be drawn, a fixed-length
part ends exactly when it is full, and between spans only a begin token or eos may follow.

A part whose plugin lays its ids out in K streams (``Tokenizer.num_streams``, e.g. a codec's delay pattern) makes
the layout one of K streams, read K ids a position: sequences start with ``bos`` and K − 1 pads (``start_ids``),
pads after each span's end token fill its last position, and K − 1 pads after a multi-stream part's begin token fill
the first, so every span starts a position and each stream of such a part stays in its place (K = 2)::

    bos pad | <|label|> seven | <|/label|> pad | <|audio|> pad | the delayed codes, 2 a position | <|/audio|> pad | eos
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from armm.files import with_gzip
from armm.generation import Guidance
from armm.hookspecs import hookimpl
from armm.plugins import get_plugins
from armm.sampling import NEG_INF, Sampler, build_sampler
from armm.symbols import SymbolTokenizer
from armm.tokenizer import Tokenizer, build_tokenizer

LAYOUT_FILE = "layout.json"
SHARED_TOKENS = ("bos", "eos", "pad", "null")
PART_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")  # also a folder name: no path can escape


class Part(NamedTuple):
    """One part of a mixed sample: the layout part's ``name`` and a sample of that part's modality."""

    name: str
    sample: Any


@dataclass(frozen=True)
class Span:
    """Where one part's ids live in the layout."""

    name: str
    tokenizer: Tokenizer
    begin_id: int
    end_id: int
    offset: int  # layout id of the plugin's local id 0
    length: int | None  # content tokens of every sample, when fixed (an 8x8 image: 64)

    @property
    def content_ids(self) -> list[int]:
        """Layout ids of the plugin's content tokens (its own bos/eos/pad/… are never inside a span)."""
        specials = set(self.tokenizer.special_tokens.values())
        return [self.offset + i for i in range(self.tokenizer.vocab_size) if i not in specials]


class VocabLayout(Tokenizer):
    """Compose tokenizer plugins into one vocabulary with a begin/end span token per part.

    Args:
        parts: Part name → a tokenizer instance, or ``{"tokenizer": NAME, "options": {...}, "length": N}``
            (a registered tokenizer built with ``options``; ``length`` fixes the content tokens per sample,
            defaulting to the tokenizer's ``sample_length``). Order sets the id blocks.
        prompt_part: The part a string prompt fills (``encode_prompt``); defaults to the first part.
    """

    name = "mixed"
    modality = "mixed"
    file_suffix = ".jsonl"
    read_suffixes = with_gzip((".jsonl", ".csv"))  # manifests (armm.datasource)

    def __init__(self, parts: Mapping[str, Tokenizer | Mapping[str, Any]], prompt_part: str | None = None) -> None:
        if not isinstance(parts, Mapping) or not parts:
            raise ValueError("a VocabLayout needs parts: a mapping of part name → tokenizer (or tokenizer spec)")
        for name in parts:
            if not isinstance(name, str) or not PART_NAME.match(name):
                raise ValueError(f"part name {name!r} must be a letter then letters, digits, '_' or '-' (≤ 32)")
        built = {name: _build_part(name, spec) for name, spec in parts.items()}
        self.parts: dict[str, Tokenizer] = {name: tokenizer for name, (tokenizer, _) in built.items()}
        self.lengths: dict[str, int | None] = {name: length for name, (_, length) in built.items()}
        self.prompt_part = prompt_part if prompt_part is not None else next(iter(self.parts))
        if self.prompt_part not in self.parts:
            raise ValueError(f"prompt_part {self.prompt_part!r} is not a part; the parts are: {', '.join(self.parts)}")
        self.num_streams  # parts of different stream counts fail now
        self._place()

    def _place(self) -> None:
        """Forget the id blocks; ``spans`` lays them out again (after fitting, vocabularies have their sizes)."""
        self._spans: dict[str, Span] | None = None
        self._tables: dict[torch.device, dict[str, Tensor]] = {}

    @property
    def spans(self) -> dict[str, Span]:
        """Each part's id block, after the shared tokens, in order; the parts must have their vocabularies."""
        if self._spans is None:
            unfitted = [name for name, tokenizer in self.parts.items() if tokenizer.needs_fit]
            if unfitted:
                raise ValueError(f"layout part(s) {', '.join(unfitted)} have no vocabulary yet; call fit(samples) "
                                 "on the layout first")
            spans, next_id = {}, len(SHARED_TOKENS)
            for name, tokenizer in self.parts.items():
                spans[name] = Span(name, tokenizer, next_id, next_id + 1, next_id + 2, self.lengths[name])
                next_id += 2 + tokenizer.vocab_size
            self._spans, self._vocab_size = spans, next_id
        return self._spans

    # --- the id space -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        self.spans  # lays the blocks out
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return {role: i for i, role in enumerate(SHARED_TOKENS)}

    @property
    def num_streams(self) -> int:
        """K when a part lays its ids out in K streams (every such part must have the same K), else 1."""
        counts = {tokenizer.num_streams for tokenizer in self.parts.values()} - {1}
        if len(counts) > 1:
            raise ValueError(f"the layout's parts lay their ids out in {sorted(counts)} streams; a model reads one "
                             f"number of ids a position, so give every multi-stream part the same number")
        return counts.pop() if counts else 1

    @property
    def null_id(self) -> int:
        """Stands in for a dropped condition (classifier-free guidance)."""
        return self.special_tokens["null"]

    @property
    def needs_fit(self) -> bool:
        return any(tokenizer.needs_fit for tokenizer in self.parts.values())

    def span(self, name: str) -> Span:
        if name not in self.parts:
            raise ValueError(f"the layout has no part {name!r}; its parts are: {', '.join(self.parts)}")
        return self.spans[name]

    def span_of(self, token: int) -> Span | None:
        """The span whose block holds layout id ``token`` (its begin, end or content), or None for shared ids."""
        for span in self.spans.values():
            if span.begin_id <= token < span.offset + span.tokenizer.vocab_size:
                return span
        return None

    # --- encoding -------------------------------------------------------------------------------------
    def encode(self, sample: Sequence[Part | tuple[str, Any]]) -> list[int]:
        """Parts → ``<|a|> a's ids <|/a|> <|b|> …`` in layout ids (no bos/eos)."""
        if isinstance(sample, (str, bytes)) or not isinstance(sample, Sequence):
            raise TypeError(f"tokenizer 'mixed' encodes a list of (part name, sample) pairs, got {type(sample).__name__}")
        ids: list[int] = []
        for item in sample:
            if not isinstance(item, tuple) or len(item) != 2:
                raise TypeError(f"each part of a mixed sample is a (part name, sample) pair, got {item!r:.60}")
            ids += self.encode_part(*item, at=len(ids))
        return ids

    def encode_part(self, name: str, sample: Any, *, close: bool = True, at: int = 0) -> list[int]:
        """One part in its span; ``close=False`` leaves the span open, for a prompt the model should continue. ``at``:
        where the span begins after ``start_ids`` (a layout of K streams pads its spans to whole positions)."""
        return self.span_of_ids(name, self.span(name).tokenizer.encode(sample), close=close, at=at)

    def span_of_ids(self, name: str, local: Sequence[int], *, close: bool = True, at: int = 0) -> list[int]:
        """Part ``name``'s own ids ``local`` in its span, in layout ids (see ``encode_part``)."""
        span, K = self.span(name), self.num_streams
        if close and span.length is not None and len(local) != span.length:
            raise ValueError(f"part {name!r} has fixed length {span.length} but its sample encodes to {len(local)} ids")
        first = [span.begin_id, *[self.pad_id] * ((-(at + 1)) % K if span.tokenizer.num_streams > 1 else 0)]
        ids = [*first, *(span.offset + i for i in local), *([span.end_id] if close else [])]
        return ids + [self.pad_id] * ((-(at + len(ids))) % K if close else 0)

    def prompt_for(self, name: str, given: Sequence[Part | tuple[str, Any]] = ()) -> list[int]:
        """The prompt asking for a part ``name`` after the parts ``given``: ``start_ids``, ``given`` in their spans,
        then ``name``'s span opened (its begin token, and a layout of K streams' pads)."""
        before = self.encode(given)
        return self.start_ids + before + self.span_of_ids(name, [], close=False, at=len(before))

    def encode_prompt(self, prompt: str) -> list[int]:
        """A string prompt as a closed span of ``prompt_part``; ``""`` → no ids."""
        return self.encode_part(self.prompt_part, prompt) if prompt else []

    def decode(self, ids: Sequence[int]) -> list[Part]:
        """Layout ids → parts, each decoded by its own plugin. Shared specials are skipped; a span left open
        (generation stopped early) is decoded as far as it goes; content outside a span becomes its own part."""
        self.check_ids(ids)
        parts: list[Part] = []
        current: Span | None = None
        local: list[int] = []

        def flush() -> None:
            if current is not None:
                parts.append(Part(current.name, current.tokenizer.decode(local)))

        for token in ids:
            span = self.span_of(token)
            if span is None:  # shared special token
                continue
            if token == span.begin_id or (token >= span.offset and span is not current):
                flush()
                current, local = span, []
                if token == span.begin_id:
                    continue
            if token == span.end_id:
                if span is current:
                    flush()
                    current, local = None, []
                continue
            local.append(token - span.offset)
        flush()
        return parts

    def num_units(self, sample: Sequence[Part | tuple[str, Any]]) -> int:
        """Tokens of the mixed sample (its parts count different units, so tokens are the common one)."""
        return len(self.encode(sample))

    def without_part(self, ids: Sequence[int], name: str) -> list[int]:
        """``ids`` with the first span of part ``name`` (begin … end) replaced by the null token: the
        unconditional version of a sample for classifier-free guidance. ``ids`` without that span are returned as is.
        In a layout of K streams pads follow the null token, so later ids keep their places mod K."""
        span = self.span(name)
        ids = list(ids)
        if span.begin_id not in ids:
            return ids
        start = ids.index(span.begin_id)
        end = ids.index(span.end_id, start) if span.end_id in ids[start:] else len(ids) - 1
        pads = (end - start) % self.num_streams  # the span held end - start + 1 ids; the null token is one
        return ids[:start] + [self.null_id] + [self.pad_id] * pads + ids[end + 1:]

    def fit(self, samples: Iterable[Sequence[Part | tuple[str, Any]]]) -> None:
        """Fit every part whose tokenizer learns a vocabulary on that part's samples; offsets are recomputed."""
        samples = list(samples)
        for part, tokenizer in self.parts.items():
            if tokenizer.needs_fit:
                own = [sample for parts in samples for name, sample in parts if name == part]
                if not own:
                    raise ValueError(f"part {part!r} needs fitting but no sample has a {part!r} part")
                tokenizer.fit(own)
        self._place()

    # --- files ------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        for span in self.spans.values():
            (directory / "parts" / span.name).mkdir(parents=True, exist_ok=True)
            span.tokenizer.save(directory / "parts" / span.name)
        layout = {"prompt_part": self.prompt_part, "parts": [
            {"name": span.name, "tokenizer": span.tokenizer.name, "length": span.length,
             "vocab_size": span.tokenizer.vocab_size} for span in self.spans.values()]}
        (directory / LAYOUT_FILE).write_text(json.dumps(layout, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> VocabLayout:
        directory = Path(directory)
        try:
            layout = json.loads((directory / LAYOUT_FILE).read_text())
            entries = {entry["name"]: entry for entry in layout["parts"]}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{directory / LAYOUT_FILE} is missing or malformed ({err})") from None
        registry = get_plugins().tokenizers
        parts = {}
        for name, entry in entries.items():
            if not isinstance(name, str) or not PART_NAME.match(name):
                raise ValueError(f"{directory / LAYOUT_FILE} names a part {name!r}, which is not a valid part name")
            tokenizer = registry.get(entry["tokenizer"]).load(directory / "parts" / name)
            if tokenizer.vocab_size != entry["vocab_size"]:
                raise ValueError(f"part {name!r} in {directory} has {tokenizer.vocab_size} ids, its layout says "
                                 f"{entry['vocab_size']}: the files come from different layouts")
            parts[name] = {"tokenizer": tokenizer, "length": entry["length"]}
        return cls(parts, layout.get("prompt_part"))

    def read(self, source: str | Path) -> list[list[Part]]:
        """The samples of manifests or a labelled folder, as training reads them (``armm.datasource``): JSON Lines
        of this layout's own format, one sample per line, a list of one-key objects ``[{"text": "a seven"},
        {"image": {"file": "7.png"}}]`` (see ``parts_of``); manifest rows of columns (``{"file": "7.png", "caption":
        "a seven"}``, ``.jsonl`` or ``.csv``); or, with a ``classes`` part, one subfolder of files per class."""
        from armm.datasource import read_source  # armm.datasource builds on this module

        samples = read_source(self, source)
        if not samples:
            raise ValueError(f"{source} holds no samples (expected one JSON list of parts per line)")
        return samples

    def parts_of(self, items: list[Any], base: Path, where: str) -> list[Part]:
        """A sample in the layout's own format: a list of one-key objects, each a part's inline sample or
        ``{"file": PATH}``, a file relative to ``base`` that the part's plugin reads (one sample). ``where`` names the
        line in errors."""
        if not all(isinstance(i, dict) and len(i) == 1 for i in items):
            raise ValueError(f'{where}: a sample is a list of one-key objects, e.g. [{{"text": "a seven"}}, '
                             f'{{"image": {{"file": "7.png"}}}}]')
        parts = []
        for item in items:
            (name, value), = item.items()
            if name not in self.parts:  # (before fitting, the parts have no spans yet)
                raise ValueError(f"{where}: the layout has no part {name!r}; its parts are: {', '.join(self.parts)}")
            if isinstance(value, dict) and set(value) == {"file"}:
                read = self.parts[name].read(base / value["file"])
                if len(read) != 1:
                    raise ValueError(f"{where}: {value['file']} holds {len(read)} samples; a part is one sample")
                value = read[0]
            parts.append(Part(name, value))
        return parts

    def write(self, samples: Sequence[Sequence[Part]], path: str | Path, format: str | None = None) -> list[Path]:
        """One JSON Lines manifest at ``path`` (suffix ``.jsonl``) in the format ``read`` takes: a text part inline,
        any other part as a file its plugin writes beside it (``<stem>-<sample>-<part>-<name>.<suffix>``).
        Returns the manifest, then the part files. When ``format`` (None: ``path``'s suffix) is the file suffix of
        one part's plugin (``seven.wav`` for an audio part), only that part of each sample is written, by its plugin,
        as that plugin names files."""
        suffix = Path(path).suffix if format is None else format
        part = self.part_written_as(suffix)
        if part is None and format not in (None, self.file_suffix):
            raise ValueError(f"a mixed layout writes a {self.file_suffix} manifest, or one part as its plugin's file "
                             f"suffix; {format!r} is neither")
        if part is not None:
            return self.span(part).tokenizer.write([self._only_part(sample, part, i) for i, sample in
                                                    enumerate(samples)], path)
        manifest = Path(path).with_suffix(self.file_suffix)
        lines, written = [], []
        for i, parts in enumerate(samples):
            items = []
            for j, (name, sample) in enumerate(parts):
                if isinstance(sample, str):
                    items.append({name: sample})
                    continue
                tokenizer = self.span(name).tokenizer
                target = manifest.with_name(f"{manifest.stem}-{i}-{j}-{name}{tokenizer.file_suffix}")
                files = tokenizer.write([sample], target)
                written += files
                items.append({name: {"file": files[0].name}})
            lines.append(json.dumps(items, ensure_ascii=False))
        manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return [manifest, *written]

    def part_written_as(self, suffix: str) -> str | None:
        """The one non-text part whose plugin writes files ending in ``suffix``, if exactly one does."""
        parts = [name for name, tokenizer in self.parts.items()
                 if tokenizer.file_suffix == suffix and suffix != self.file_suffix and not tokenizer.decodes_text]
        return parts[0] if len(parts) == 1 else None

    @staticmethod
    def _only_part(sample: Sequence[Part], name: str, index: int) -> Any:
        found = [part.sample for part in sample if part.name == name]
        if len(found) != 1:
            raise ValueError(f"sample {index} holds {len(found)} {name!r} parts, so it cannot be written as one "
                             f"{name} file (generation may have stopped early: raise --max-new-tokens), or write "
                             f"a .jsonl manifest of every part instead")
        return found[0]

    # --- decoding inside the grammar ----------------------------------------------------------------------
    def span_state(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Where each row of ``tokens [B, T]`` (left-padded with -1) stands → ``(part [B], count [B])``:
        the index of the open span's part (-1 between spans) and how many tokens it already holds; in a layout of K
        streams, negative while pads are owed (``allowed`` then allows the pad alone)."""
        tables = self._device_tables(tokens.device)
        B, T = tokens.shape
        if T == 0:
            return torch.full((B,), -1, device=tokens.device), torch.zeros(B, dtype=torch.long, device=tokens.device)
        V = self.vocab_size
        slot = torch.where((tokens >= 0) & (tokens < V), tokens, V)  # padding and unknown ids → a neutral slot
        begin_part, is_end = tables["begin_part"][slot], tables["is_end"][slot]  # (B, T)
        position = torch.arange(T, device=tokens.device)
        last_begin = torch.where(begin_part >= 0, position, -1).amax(1)  # (B,)
        last_end = torch.where(is_end, position, -1).amax(1)  # (B,)
        inside = last_begin > last_end
        part = begin_part.gather(1, last_begin.clamp(min=0)[:, None])[:, 0]
        count, between = T - 1 - last_begin, torch.zeros_like(last_begin)
        if self.num_streams > 1:  # the context is whole positions (left padding included): T is the next id's index
            K = self.num_streams  # a multi-stream part's content starts a position, and so does every span
            count = count - tables["streams"][part.clamp(min=0)] * ((-last_begin - 1) % K)  # < 0: pads owed
            between -= int(T % K != 0)
        return torch.where(inside, part, -1), torch.where(inside, count, between)

    def allowed(self, tokens: Tensor, vocab_size: int | None = None) -> Tensor:
        """Which next ids the grammar allows after each row of ``tokens [B, T]`` → bool ``[B, vocab_size]``
        (``vocab_size`` ≥ the layout's, for a model with a padded vocabulary; extra ids are never allowed)."""
        return self.allowed_in(*self.span_state(tokens), vocab_size)

    def allowed_in(self, part: Tensor, count: Tensor, vocab_size: int | None = None) -> Tensor:
        """``allowed`` from a ``span_state`` already worked out: ``part [B]``, ``count [B]`` (negative: alignment pads
        are owed)."""
        tables = self._device_tables(part.device)
        row = torch.where(part >= 0, part, len(self.spans))  # the last table row is "between spans"
        length = tables["length"][row]
        fixed = length >= 0
        content = tables["content"][row, count.clamp(min=0) % tables["period"][row]]  # (B, V): this position's ids
        allowed = content | tables["close"][row]
        allowed = torch.where((fixed & (count < length))[:, None], content, allowed)
        allowed = torch.where((fixed & (count >= length))[:, None], tables["close"][row], allowed)
        allowed = torch.where((count < 0)[:, None], tables["pad"], allowed)
        extra = (vocab_size or self.vocab_size) - self.vocab_size
        if extra < 0:
            raise ValueError(f"the model's vocab_size {vocab_size} is smaller than the layout's {self.vocab_size}")
        return torch.nn.functional.pad(allowed, (0, extra))

    def _device_tables(self, device: torch.device) -> dict[str, Tensor]:
        if device not in self._tables:
            P, V = len(self.spans), self.vocab_size
            begin_part = torch.full((V + 1,), -1, dtype=torch.long)
            is_end = torch.zeros(V + 1, dtype=torch.bool)
            cycles = [span.tokenizer.content_cycle or [None] for span in self.spans.values()]
            period = torch.tensor([len(cycle) for cycle in cycles] + [1])
            # content[p, i]: the ids part p may hold at content position i (mod its period); row P: between spans
            content = torch.zeros(P + 1, int(period.max()), V, dtype=torch.bool)
            close = torch.zeros(P + 1, V, dtype=torch.bool)
            length = torch.full((P + 1,), -1, dtype=torch.long)
            for index, (span, cycle) in enumerate(zip(self.spans.values(), cycles)):
                begin_part[span.begin_id] = index
                is_end[span.end_id] = True
                for phase, local_ids in enumerate(cycle):
                    ids = span.content_ids if local_ids is None else [span.offset + i for i in local_ids]
                    content[index, phase, ids] = True
                close[index, span.end_id] = True
                close[P, span.begin_id] = True
                length[index] = -1 if span.length is None else span.length
            close[P, self.eos_id] = True  # between spans: open a span, or end the sequence
            streams = torch.tensor([int(span.tokenizer.num_streams > 1) for span in self.spans.values()])
            pad = torch.zeros(V, dtype=torch.bool)
            pad[self.pad_id] = True
            tables = {"begin_part": begin_part, "is_end": is_end, "content": content, "close": close,
                      "period": period, "length": length, "streams": streams, "pad": pad}
            self._tables[device] = {key: value.to(device) for key, value in tables.items()}
        return self._tables[device]

    def sampler(self, default: str | Sampler = "greedy", per_part: Mapping[str, str | Sampler] | None = None) -> SpanSampler:
        """A sampler that keeps to the grammar and uses ``per_part[name]`` inside that part's spans
        (``default`` elsewhere), e.g. ``layout.sampler("temperature=0.8,top_p=0.9", {"image": "top_k=64"})``."""
        return SpanSampler(self, default, per_part or {})

    def guidance(self, prompts: Sequence[Sequence[int]], scale: float, *, first_tokens: int | None = None,
                 condition: str | None = None) -> Guidance:
        """Classifier-free guidance for ``prompts``: each unconditional prompt is its prompt with the span of part
        ``condition`` (default: ``prompt_part``) replaced by the null token, as ``data.condition_dropout`` trained."""
        condition = condition or self.prompt_part
        begins = [span.begin_id for span in self.spans.values()]
        return Guidance(scale, [self.without_part(p, condition) for p in prompts], first_tokens, begins)


def sampler_for(tokenizer: Tokenizer, spec: str | Sampler, per_part: Mapping[str, str] | None = None) -> Sampler:
    """The sampler generation should use with ``tokenizer``: for a mixed layout, ``spec`` inside its grammar
    (with ``per_part`` samplers); for a ``SymbolTokenizer``, ``spec`` inside its grammar if it has one; for any
    other tokenizer, ``spec`` itself."""
    if isinstance(tokenizer, VocabLayout):
        return tokenizer.sampler(spec, per_part)
    if per_part:
        raise ValueError(f"per-part samplers need a mixed layout tokenizer; this model's is {tokenizer.name!r}")
    if isinstance(tokenizer, SymbolTokenizer):
        return tokenizer.sampler(spec)  # inside its grammar, if it has one
    return build_sampler(spec, tokenizer=tokenizer)


def _build_part(name: str, spec: Tokenizer | Mapping[str, Any]) -> tuple[Tokenizer, int | None]:
    if isinstance(spec, Tokenizer):
        spec = {"tokenizer": spec}
    if not isinstance(spec, Mapping) or "tokenizer" not in spec or not set(spec) <= {"tokenizer", "options", "length"}:
        raise ValueError(f"part {name!r} must be a tokenizer or {{'tokenizer': NAME, 'options': {{...}}, 'length': N}}, "
                         f"got {spec!r}")
    tokenizer = spec["tokenizer"]
    if isinstance(tokenizer, str):
        tokenizer = build_tokenizer(get_plugins().tokenizers.get(tokenizer), dict(spec.get("options") or {}))
    elif spec.get("options"):
        raise ValueError(f"part {name!r}: options apply to a tokenizer name, not to a tokenizer instance")
    if isinstance(tokenizer, VocabLayout):
        raise ValueError(f"part {name!r} is itself a mixed layout; list its parts in this layout instead")
    length = spec.get("length", tokenizer.sample_length)
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"part {name!r}: length must be a positive integer or None, got {length!r}")
    return tokenizer, length


class SpanConstraint:
    """Logits transform: sets to ``-inf`` every id the layout's grammar does not allow next (see
    ``VocabLayout.allowed``). Registered as sampler ``spans``; needs the model's layout as ``tokenizer``."""

    deterministic = False

    def __init__(self, *, tokenizer: Tokenizer | None = None) -> None:
        if not isinstance(tokenizer, VocabLayout):
            raise ValueError("sampler 'spans' needs a model whose tokenizer is a mixed VocabLayout "
                             "(build it with build_sampler(spec, tokenizer=layout))")
        self.layout = tokenizer

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        return self.mask(logits, *self.layout.span_state(tokens))

    def mask(self, logits: Tensor, part: Tensor, count: Tensor) -> Tensor:
        """The transform, given the rows' ``span_state``."""
        return logits.masked_fill(~self.layout.allowed_in(part, count, logits.size(-1)), NEG_INF)


class SpanSampler(Sampler):
    """The span constraint first, then, per row, the sampler of the part whose span is open (the default
    sampler between spans), then one draw."""

    def __init__(self, layout: VocabLayout, default: str | Sampler, per_part: Mapping[str, str | Sampler]) -> None:
        self.layout = layout
        self.constraint = SpanConstraint(tokenizer=layout)
        self.default = build_sampler(default, tokenizer=layout)
        self.per_part = {layout.span(name).name: build_sampler(spec, tokenizer=layout) for name, spec in per_part.items()}
        self.part_index = {name: list(layout.spans).index(name) for name in self.per_part}  # as span_state numbers parts
        chains = [self.default, *self.per_part.values()]
        parts = "; ".join(f"{name}: {sampler.spec}" for name, sampler in self.per_part.items())
        super().__init__([self.constraint], f"spans, {self.default.spec}" + (f"; {parts}" if parts else ""))
        self.is_greedy = all(chain.is_greedy for chain in chains)

    def filter(self, logits: Tensor, tokens: Tensor) -> Tensor:
        part, count = self.layout.span_state(tokens)
        logits = self.constraint.mask(logits, part, count)
        filtered = self.default.filter(logits, tokens)
        for name, sampler in self.per_part.items():
            rows = (part == self.part_index[name])[:, None]
            filtered = torch.where(rows, sampler.filter(logits, tokens), filtered)
        return filtered


@hookimpl
def armm_register_tokenizers(register) -> None:
    register(VocabLayout.name, VocabLayout)


@hookimpl
def armm_register_samplers(register) -> None:
    register("spans", SpanConstraint)
