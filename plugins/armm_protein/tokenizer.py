"""Protein sequences as one token per residue: 20 standard amino acids, 5 rare/ambiguous letters, bos/eos/pad."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from armm.files import find_files, numbered_paths, with_gzip
from armm.symbols import SymbolTokenizer
from armm_protein.fasta import FastaRecord, format_fasta, read_fasta

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
RARE = "BZXUO"  # B = D or N, Z = E or Q, X = any, U = selenocysteine, O = pyrrolysine
ALPHABET = STANDARD + RARE
THREE_LETTER = ("Ala Cys Asp Glu Phe Gly His Ile Lys Leu Met Asn Pro Gln Arg Ser Thr Val Trp Tyr "
                "Asx Glx Xaa Sec Pyl").split()  # in ALPHABET order
FASTA_SUFFIXES = with_gzip((".fasta", ".fa", ".faa"))


class ProteinTokenizer(SymbolTokenizer):
    """Residue letters → ids ``0 .. 24`` in ``ALPHABET`` order, then bos=25, eos=26, pad=27. Lossless.

    A sample is a ``str`` of upper-case residue letters; ``encode`` also accepts lower case.
    """

    name = "protein"
    modality = "protein"
    unit = "residue"
    read_suffixes = FASTA_SUFFIXES
    file_suffixes = (".fasta", ".txt")  # FASTA; plain: one sequence per line
    groups = {"residue": ALPHABET}
    ignore_case = True

    def encode(self, sample: str) -> list[int]:
        if not isinstance(sample, str):
            raise TypeError(f"tokenizer 'protein' encodes str, got {type(sample).__name__}")
        return super().encode(sample)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(symbol.value for symbol in self.decode_symbols(ids))

    def num_units(self, sample: str) -> int:
        return len(sample)

    def token_name(self, token: int) -> str | None:
        """``"K (Lys)"``: a residue's letter and three-letter code, for ``armm inspect``; None for special ids."""
        return f"{ALPHABET[token]} ({THREE_LETTER[token]})" if 0 <= token < len(ALPHABET) else None

    def read_records(self, source: str | Path) -> list[FastaRecord]:
        """Every record (name, description, sequence) of the .fasta/.fa/.faa files in ``source``, in file order."""
        paths = find_files(source, FASTA_SUFFIXES, what="FASTA files")
        return [record for path in paths for record in read_fasta(path, ALPHABET)]

    def read(self, source: str | Path) -> list[str]:
        return [record.sequence for record in self.read_records(source)]

    def write(self, samples: Sequence[str], path: str | Path, format: str | None = None) -> list[Path]:
        """All samples into one file: FASTA, records ``sample_0, sample_1, …`` wrapped at 60 columns, or (``format``
        ``.txt``) plain, one sequence per line."""
        if not samples:
            raise ValueError("no protein samples to write")
        sequences = [self.decode(self.encode(sample)) for sample in samples]
        suffix = self.write_format(path, format)
        if suffix == ".txt":
            text = "".join(f"{sequence}\n" for sequence in sequences)
        else:
            text = format_fasta([FastaRecord(f"sample_{i}", "", sequence) for i, sequence in enumerate(sequences)])
        target = numbered_paths(path, 1, suffix)[0]
        target.write_text(text, encoding="utf-8")
        return [target]

    def saved(self) -> dict[str, str]:
        return {"alphabet": ALPHABET}  # the file models saved before SymbolTokenizer hold
