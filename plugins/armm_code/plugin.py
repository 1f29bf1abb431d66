"""Hook implementations of the code plugin."""

import armm
from armm_code.tokenizer import CodeTokenizer


@armm.hookimpl
def armm_register_tokenizers(register) -> None:
    register(CodeTokenizer.name, CodeTokenizer)
