"""Samples as prompts: a sample of any modality (a text, a protein, a clip, an image, a mixed sample), whole or its
first units, as the ids a generation continues (``armm sample --prompt-file``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from armm.layout import VocabLayout
from armm.tokenizer import Tokenizer


def prompt_ids(tokenizer: Tokenizer, sample: Any, units: int | None = None) -> list[int]:
    """``start_ids`` (bos), then ``sample``'s ids left open, so generation continues the sample instead of starting
    another: its ``encode`` ids (no eos), or with ``units`` those of its first ``units`` units (``first_unit_ids``).
    A mixed layout's sample is a list of ``(part, sample)`` pairs; its last part's span is left open and ``units``
    counts that part's units."""
    if units is not None and (isinstance(units, bool) or not isinstance(units, int) or units < 1):
        raise ValueError(f"units must be an integer >= 1 (how much of the sample to keep), got {units!r}")
    start = tokenizer.start_ids
    if isinstance(tokenizer, VocabLayout):
        return start + _open_last_part(tokenizer, sample, units)
    return start + first_unit_ids(tokenizer, sample, units)


def first_unit_ids(tokenizer: Tokenizer, sample: Any, units: int | None) -> list[int]:
    """The ids of ``sample`` (``units`` None), or of its first ``units`` units (``Tokenizer.encode_prefix``)."""
    return tokenizer.encode(sample) if units is None else tokenizer.encode_prefix(sample, units)


def _open_last_part(layout: VocabLayout, sample: Sequence[Any], units: int | None) -> list[int]:
    """A mixed sample's parts in their spans, the last span left open (and its part cut to ``units``)."""
    if isinstance(sample, (str, bytes)) or not isinstance(sample, Sequence) or not sample:
        raise ValueError("a mixed prompt is a non-empty list of (part name, sample) pairs; a string prompt goes "
                         "through encode_prompt")
    name, last = sample[-1]
    before = layout.encode(sample[:-1])
    return before + layout.span_of_ids(name, first_unit_ids(layout.span(name).tokenizer, last, units), close=False,
                                       at=len(before))
