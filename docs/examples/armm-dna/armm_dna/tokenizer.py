"""DNA as one token per base: A, C, G, T and N (any base), then bos, eos and pad."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import armm
from armm.files import find_files, numbered_paths, read_text

BASES = "ACGTN"
COMPLEMENT = np.array([3, 2, 1, 0, 4])  # A↔T, C↔G, N stays N


class DNATokenizer(armm.Tokenizer):
    """Bases → ids 0..4 in ``BASES`` order, then bos=5, eos=6, pad=7. A sample is an upper-case ``str``."""

    name = "dna"  # the registry key: `--tokenizer dna`, recorded in saved models
    modality = "dna"
    unit = "base"  # what `armm score` reports "bits per base" over
    file_suffix = ".txt"  # what `write` produces: one sequence per line
    read_suffixes = (".txt",)  # the files `read` takes in a folder: training reads them one by one

    _ids = {base: i for i, base in enumerate(BASES)} | {base.lower(): i for i, base in enumerate(BASES)}

    @property
    def vocab_size(self) -> int:
        return len(BASES) + 3

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"bos": len(BASES), "eos": len(BASES) + 1, "pad": len(BASES) + 2}

    def encode(self, sample: str) -> list[int]:
        """Upper or lower case bases → ids; anything else is a ValueError naming it and its position."""
        ids = []
        for position, base in enumerate(sample):
            if base not in self._ids:
                raise ValueError(f"invalid base {base!r} at position {position}; allowed: {BASES} (either case)")
            ids.append(self._ids[base])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        self.check_ids(ids)  # ValueError naming any id outside [0, vocab_size)
        return "".join(BASES[i] for i in ids if i < len(BASES))  # special tokens are skipped

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

    def save(self, directory: str | Path) -> None:
        (Path(directory) / "dna.json").write_text(json.dumps({"bases": BASES}) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> DNATokenizer:
        saved = json.loads((Path(directory) / "dna.json").read_text())["bases"]
        if saved != BASES:
            raise ValueError(f"{directory} was saved with bases {saved!r}, not {BASES!r}; the ids would not match")
        return cls()
