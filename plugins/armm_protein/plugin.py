"""Hook implementations of the protein plugin."""

import armm
from armm_protein.synthetic import synthetic_proteins
from armm_protein.tokenizer import ProteinTokenizer


@armm.hookimpl
def armm_register_tokenizers(register) -> None:
    register("protein", ProteinTokenizer)


@armm.hookimpl
def armm_register_datasets(register) -> None:
    register("synthetic-proteins", synthetic_proteins)
