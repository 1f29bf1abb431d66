"""Built-in text datasets that ship with Python itself (no download)."""

from __future__ import annotations

from armm.tokenizer import Tokenizer


def pydoc_topics(tokenizer: Tokenizer | None = None) -> list[str]:
    """The Python reference manual's help topics (``pydoc_data.topics``): 79 English documents, about 0.8 MB."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]
