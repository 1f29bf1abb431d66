"""``synthetic-proteins``: a small protein-like dataset this plugin generates itself (seeded, no download).

These are NOT real proteins. Each sequence is drawn from a simple generative model that has realistic
residue statistics and structure a model can learn:

- residues outside domains are independent draws from the UniProtKB/Swiss-Prot amino-acid composition;
- every sequence starts with ``M``; a third begin with a signal-peptide-like stretch (``M``, one or two of
  ``K``/``R``, then 8–14 hydrophobic residues from ``LAVIF``);
- ``NUM_FAMILIES`` domain families, each a fixed 30–60-residue consensus drawn once from the composition;
  a sequence carries 1–3 domains (copies of a family's consensus with 10 % of the residues substituted),
  joined by 5–40-residue linkers;
- a tenth end with the ER-retention motif ``KDEL``.

So a model that has learned the families predicts most domain residues after seeing a few of them,
while the linkers stay at the composition's entropy (about 4.17 bits per residue).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from armm.tokenizer import Tokenizer
from armm_protein.fasta import FastaRecord
from armm_protein.tokenizer import STANDARD

# UniProtKB/Swiss-Prot amino-acid composition (percent), in ``STANDARD`` order (ACDEFGHIKLMNPQRSTVWY).
COMPOSITION = (8.25, 1.37, 5.45, 6.75, 3.86, 7.07, 2.27, 5.96, 5.84, 9.66,
               2.42, 4.06, 4.70, 3.93, 5.53, 6.56, 5.34, 6.87, 1.08, 2.92)  # fmt: skip
NUM_FAMILIES = 12
DOMAIN_LENGTH = (30, 60)
DOMAINS_PER_SEQUENCE = (1, 3)
LINKER_LENGTH = (5, 40)
SUBSTITUTION_RATE = 0.10
SIGNAL_PEPTIDE_RATE = 1 / 3
RETENTION_RATE = 0.1
HYDROPHOBIC = "LAVIF"


@dataclass(frozen=True)
class SyntheticProteins:
    """The generator: ``records()`` draws ``num_sequences`` records from ``random.Random(seed)``."""

    num_sequences: int = 2000
    seed: int = 0

    def families(self) -> list[str]:
        """The ``NUM_FAMILIES`` domain consensus sequences (the first draws of the seeded generator)."""
        return self._families(random.Random(self.seed))

    def records(self) -> list[FastaRecord]:
        """Records ``synthetic_0000 …`` whose description lists the drawn features (e.g. ``signal F3 F7 KDEL``)."""
        rng = random.Random(self.seed)
        families = self._families(rng)
        return [self._record(rng, families, index) for index in range(self.num_sequences)]

    def _families(self, rng: random.Random) -> list[str]:
        return [self._background(rng, rng.randint(*DOMAIN_LENGTH)) for _ in range(NUM_FAMILIES)]

    def _record(self, rng: random.Random, families: list[str], index: int) -> FastaRecord:
        features, parts = [], ["M"]
        if rng.random() < SIGNAL_PEPTIDE_RATE:
            features.append("signal")
            parts.append(rng.choice("KR") * rng.randint(1, 2) + "".join(rng.choices(HYDROPHOBIC, k=rng.randint(8, 14))))
        for family in rng.choices(range(NUM_FAMILIES), k=rng.randint(*DOMAINS_PER_SEQUENCE)):
            features.append(f"F{family}")
            parts.append(self._background(rng, rng.randint(*LINKER_LENGTH)))
            parts.append(self._mutate(rng, families[family]))
        parts.append(self._background(rng, rng.randint(*LINKER_LENGTH)))
        if rng.random() < RETENTION_RATE:
            features.append("KDEL")
            parts.append("KDEL")
        return FastaRecord(f"synthetic_{index:04d}", " ".join(features), "".join(parts))

    @staticmethod
    def _background(rng: random.Random, length: int) -> str:
        return "".join(rng.choices(STANDARD, weights=COMPOSITION, k=length))

    @staticmethod
    def _mutate(rng: random.Random, consensus: str) -> str:
        return "".join(
            rng.choices(STANDARD, weights=COMPOSITION)[0] if rng.random() < SUBSTITUTION_RATE else residue
            for residue in consensus
        )


def synthetic_proteins(tokenizer: Tokenizer | None = None, num_sequences: int = 2000, seed: int = 0) -> list[str]:
    """Dataset ``synthetic-proteins``: 2,000 synthetic sequences (157 residues on average, 48 to 308), seed 0."""
    return [record.sequence for record in SyntheticProteins(num_sequences, seed).records()]
