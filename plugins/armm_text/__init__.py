"""armm plugin: text — byte-level BPE (Hugging Face ``tokenizers``), registered as ``text-bpe``."""

from armm_text.bpe import BPETokenizer

__all__ = ["BPETokenizer"]
