"""Training items drawn anew on every pass: condition dropout and the tokenizer's augmentation of each row.

Both act on the raw row (a window of the packed stream, or a padded sample) before the inputs and targets are made,
so ignored targets stay right. Every draw comes from a generator seeded with the run's seed and the item's key
``pass * len + index`` (``ResumableSampler(keyed=True)``), so a resumed run draws exactly what an uninterrupted one
would have, whichever worker process builds the item.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from armm.layout import VocabLayout
from armm.tokenizer import Tokenizer

Augment = Callable[[np.ndarray, random.Random], np.ndarray]


class Rows(Protocol):
    """A dataset whose item ``i`` is ``item(i, row(i))``: ``PackedWindows`` and ``PaddedSamples``."""

    def __len__(self) -> int: ...

    def row(self, i: int) -> np.ndarray: ...

    def item(self, i: int, row: np.ndarray) -> dict[str, torch.Tensor]: ...


class ConditionDropout:
    """Replaces a row's condition (the span of layout part ``part``) by the null token with probability ``p``, then
    re-pads the row to its width: classifier-free guidance training (rows of a samples layout)."""

    def __init__(self, layout: VocabLayout, part: str, p: float) -> None:
        layout.span(part)  # an unknown part fails now, naming the parts
        self.layout, self.part, self.p = layout, part, p

    def __call__(self, row: np.ndarray, rng: random.Random) -> np.ndarray:
        if rng.random() >= self.p:
            return row
        pad = self.layout.pad_id
        kept = np.flatnonzero(row != pad)
        ids = self.layout.without_part(row[:kept[-1] + 1 if kept.size else 0].tolist(), self.part)  # trailing pads cut
        dropped = np.full_like(row, pad)
        dropped[:len(ids)] = ids
        return dropped


class TrainingItems(Dataset):
    """Item ``key`` is row ``key % len(rows)`` after condition dropout (drawn from ``Random(f"{seed}:{key}")``), then
    after ``augment`` (drawn from ``Random(f"{seed}:{key}:augment")``): separate streams, so turning one on or off
    never changes the other's draws."""

    def __init__(self, rows: Rows, seed: int, dropout: ConditionDropout | None = None,
                 augment: Augment | None = None) -> None:
        self.rows, self.seed, self.dropout, self.augment = rows, seed, dropout, augment

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        index = key % len(self.rows)
        row = self.rows.row(index)
        if self.dropout is not None:
            row = self.dropout(row, random.Random(f"{self.seed}:{key}"))
        if self.augment is not None:
            augmented = self.augment(row, random.Random(f"{self.seed}:{key}:augment"))
            if augmented.shape != row.shape:
                raise ValueError(f"Tokenizer.augment returned {augmented.shape[0]} ids for a row of {row.shape[0]}; "
                                 "an augmentation must keep the row's length (pad or cut inside it)")
            row = augmented
        return self.rows.item(index, row)


def augmentation(tokenizer: Tokenizer) -> Augment | None:
    """The tokenizer's ``augment`` when its class overrides ``Tokenizer.augment``; None for the identity, so that
    training items stay exactly those of a run without augmentation."""
    return tokenizer.augment if type(tokenizer).augment is not Tokenizer.augment else None
