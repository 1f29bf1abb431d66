"""The module the `armm.plugins` entry point names: armm calls the hooks defined here."""

import armm
from armm_dna.tokenizer import DNATokenizer


@armm.hookimpl
def armm_register_tokenizers(register) -> None:
    register("dna", DNATokenizer)
