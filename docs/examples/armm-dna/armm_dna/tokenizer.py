"""DNA as one token per base: A, C, G, T and N (any base), then bos, eos and pad."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import armm
from armm.files import find_files, numbered_paths, read_text

BASES = "ACGTN"
COMPLEMENT = np.array([3, 2, 1, 0, 4])  # A↔T, C↔G, N stays N


class DNATokenizer(armm.SymbolTokenizer):
    """Bases → ids 0..4 in ``BASES`` order, then bos=5, eos=6, pad=7. A sample is an upper-case ``str``.

    ``armm.SymbolTokenizer`` derives the ids, ``vocab_size``, ``special_tokens``, ``token_name``, ``encode`` (a
    ValueError names a bad base and its position), ``save`` and ``load`` from ``groups``."""

    name = "dna"  # the registry key: `--tokenizer dna`, recorded in saved models
    modality = "dna"
    unit = "base"  # what `armm score` reports "bits per base" over
    file_suffix = ".txt"  # what `write` produces: one sequence per line
    read_suffixes = (".txt",)  # the files `read` takes in a folder: training reads them one by one
    groups = {"base": BASES}  # one group of five one-letter symbols
    ignore_case = True  # encode takes lower case too

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(symbol.value for symbol in self.decode_symbols(ids))  # special tokens are skipped

    def num_units(self, sample: str) -> int:
        return len(sample)

    def augment(self, ids: np.ndarray, rng: random.Random) -> np.ndarray:
        """Half the training windows as their reverse complement (a read may come from either strand). Each run
        of bases between special tokens is turned on its own, so bos and eos stay where they are."""
        if rng.random() < 0.5:
            return ids
        out = ids.copy()
        bases = ids < len(BASES)
        out[bases] = COMPLEMENT[ids[bases]]
        specials = np.flatnonzero(~bases)
        for start, end in zip([0, *(specials + 1)], [*specials, len(ids)]):
            out[start:end] = out[start:end][::-1].copy()
        return out

    def read(self, source: str | Path) -> list[str]:
        """One sample per non-blank line of every .txt file in ``source`` (a file, a folder or a glob)."""
        samples = []
        for path in find_files(source, self.read_suffixes, what="DNA text files"):
            found = len(samples)
            for number, line in enumerate(read_text(path).splitlines(), start=1):
                line = line.strip()
                if not line:
                    continue  # blank lines are allowed
                try:
                    self.encode(line)  # validate: a ValueError names the bad base
                except ValueError as err:
                    raise ValueError(f"{path}, line {number}: {err}") from None
                samples.append(line.upper())
            if len(samples) == found:
                raise ValueError(f"{path} holds no DNA sequence")
        return samples

    def write(self, samples: Sequence[str], path: str | Path) -> list[Path]:
        """All samples into one .txt file, one sequence per line."""
        target = numbered_paths(path, 1, self.file_suffix)[0]
        target.write_text("".join(sample + "\n" for sample in samples), encoding="utf-8")
        return [target]

    def saved(self) -> dict[str, str]:
        return {"bases": BASES}  # what `save` writes to dna.json and `load` checks
