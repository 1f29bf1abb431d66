"""Fill-in-the-middle (Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the Middle").

A document is cut at two random character positions into prefix, middle and suffix, and reordered so a
left-to-right model learns to write the middle after seeing both sides:

- PSM: ``[PRE] prefix [SUF] suffix [MID] middle [EOS]``
- SPM (the paper's variant): ``[PRE] [SUF] suffix [MID] prefix middle [EOS]``

Each part is encoded on its own, so no token straddles a cut. Works with any tokenizer whose
``special_tokens`` has ``fim_prefix``, ``fim_middle``, ``fim_suffix`` and ``eos`` (``code-bpe`` does).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from armm.tokenizer import Tokenizer

Mode = Literal["plain", "psm", "spm"]


@dataclass(frozen=True)
class FIMTokens:
    """The ids FIM needs, looked up once with a clear error when the tokenizer lacks one."""

    prefix: int
    middle: int
    suffix: int
    eos: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> FIMTokens:
        roles = {"prefix": "fim_prefix", "middle": "fim_middle", "suffix": "fim_suffix", "eos": "eos"}
        missing = [role for role in roles.values() if role not in tokenizer.special_tokens]
        if missing:
            raise ValueError(
                f"tokenizer {tokenizer.name!r} has no {', '.join(missing)} special token(s); fill-in-the-middle needs "
                f"{', '.join(roles.values())} (code-bpe has them)"
            )
        return cls(**{field: tokenizer.special_tokens[role] for field, role in roles.items()})


@dataclass(frozen=True)
class FIMSplit:
    """One document as the transform chose to present it (``mode="plain"``: uncut, all in ``prefix``)."""

    mode: Mode
    prefix: str
    middle: str = ""
    suffix: str = ""

    @property
    def document(self) -> str:
        return self.prefix + self.middle + self.suffix


def fim_ids(tokenizer: Tokenizer, split: FIMSplit) -> list[int]:
    """A split → training ids, always ending with eos (so documents can be packed back to back)."""
    fim = FIMTokens.of(tokenizer)
    if split.mode == "plain":
        return [*tokenizer.encode(split.prefix), fim.eos]
    prompt = infill_prompt(tokenizer, split.prefix, split.suffix, mode=split.mode)
    return [*prompt, *tokenizer.encode(split.middle), fim.eos]


def infill_prompt(tokenizer: Tokenizer, prefix: str, suffix: str, *, mode: Mode = "psm") -> list[int]:
    """The ids to generate from to fill the gap between ``prefix`` and ``suffix``: a FIM sequence up to the middle."""
    fim = FIMTokens.of(tokenizer)
    if mode == "psm":
        return [fim.prefix, *tokenizer.encode(prefix), fim.suffix, *tokenizer.encode(suffix), fim.middle]
    if mode == "spm":
        return [fim.prefix, fim.suffix, *tokenizer.encode(suffix), fim.middle, *tokenizer.encode(prefix)]
    raise ValueError(f"infill mode must be 'psm' or 'spm', got {mode!r}")


def infilled_document(tokenizer: Tokenizer, prefix: str, suffix: str, generated: Sequence[int]) -> str:
    """The completed document from the ids generated after ``infill_prompt``: the middle runs up to the first eos."""
    eos = FIMTokens.of(tokenizer).eos
    generated = list(generated)
    middle = generated[: generated.index(eos)] if eos in generated else generated
    return prefix + tokenizer.decode(middle) + suffix


def check_rates(rate: float, spm_rate: float, prefix: str = "") -> None:
    """ValueError unless both are probabilities; ``prefix`` names them as the caller spells them (``fim_``)."""
    for label, value in ((f"{prefix}rate", rate), (f"{prefix}spm_rate", spm_rate)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"FIM {label} must be a probability in [0, 1], got {value}")


class FIMTransform:
    """Document → training ids: FIM with probability ``rate`` (SPM with probability ``spm_rate``, else PSM),
    otherwise plain left-to-right. Seeded, so a data pipeline's documents get reproducible transforms."""

    def __init__(self, tokenizer: Tokenizer, rate: float = 0.5, spm_rate: float = 0.5, seed: int = 0) -> None:
        check_rates(rate, spm_rate)
        FIMTokens.of(tokenizer)
        self.tokenizer = tokenizer
        self.rate = rate
        self.spm_rate = spm_rate
        self.rng = random.Random(seed)

    def split(self, document: str) -> FIMSplit:
        """Draw the mode, then (for FIM) two uniform character cut points."""
        if self.rng.random() >= self.rate:
            return FIMSplit("plain", document)
        mode: Mode = "spm" if self.rng.random() < self.spm_rate else "psm"
        start, end = sorted(self.rng.randint(0, len(document)) for _ in range(2))
        return FIMSplit(mode, document[:start], document[start:end], document[end:])

    def __call__(self, document: str) -> list[int]:
        return fim_ids(self.tokenizer, self.split(document))
