"""Hook implementations of the text plugin."""

import armm
from armm_text.bpe import BPETokenizer
from armm_text.datasets import pydoc_chat, pydoc_topics


@armm.hookimpl
def armm_register_tokenizers(register) -> None:
    register(BPETokenizer.name, BPETokenizer)


@armm.hookimpl
def armm_register_datasets(register) -> None:
    register("pydoc-topics", pydoc_topics)
    register("pydoc-chat", pydoc_chat)
