"""Hook implementations of the code plugin."""

import armm
from armm_code.datasets import python_stdlib
from armm_code.tokenizer import CodeTokenizer


@armm.hookimpl
def armm_register_tokenizers(register) -> None:
    register(CodeTokenizer.name, CodeTokenizer)


@armm.hookimpl
def armm_register_datasets(register) -> None:
    register("python-stdlib", python_stdlib)
