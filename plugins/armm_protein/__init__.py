"""armm plugin: protein sequences, one token per residue, read from and written to FASTA."""

from armm_protein.fasta import FastaRecord, format_fasta, parse_fasta, read_fasta
from armm_protein.synthetic import SyntheticProteins, synthetic_proteins
from armm_protein.tokenizer import ALPHABET, ProteinTokenizer

__all__ = [
    "ALPHABET", "FastaRecord", "ProteinTokenizer", "SyntheticProteins", "format_fasta", "parse_fasta", "read_fasta",
    "synthetic_proteins",
]  # fmt: skip
