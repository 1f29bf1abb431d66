"""armm plugin: code — byte-level BPE for source files (``code-bpe``) and fill-in-the-middle."""

from armm_code.fim import FIMSplit, FIMTransform, fim_ids, infill_prompt, infilled_document
from armm_code.tokenizer import CodeTokenizer

__all__ = ["CodeTokenizer", "FIMSplit", "FIMTransform", "fim_ids", "infill_prompt", "infilled_document"]
