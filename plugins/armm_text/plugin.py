"""Hook implementations of the text plugin."""

import armm
from armm_text.bpe import BPETokenizer


@armm.hookimpl
def armm_register_tokenizers(register) -> None:
    register(BPETokenizer.name, BPETokenizer)
