"""armm plugin: DNA sequences, one token per base."""

from armm_dna.tokenizer import DNATokenizer

__all__ = ["DNATokenizer"]
