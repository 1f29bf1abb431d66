"""A built-in code dataset that ships with Python itself (no download)."""

from __future__ import annotations

import os
from pathlib import Path

from armm.files import read_text
from armm.tokenizer import Tokenizer

STDLIB_CHARACTERS = 2_000_000


def stdlib_sources(limit: int = STDLIB_CHARACTERS) -> list[str]:
    """The standard library's top-level modules (``os.path.dirname(os.__file__)/*.py``) in name order, whole
    files, until ``limit`` characters are reached (the file that crosses it is kept)."""
    sources, total = [], 0
    for path in sorted(Path(os.path.dirname(os.__file__)).glob("*.py")):
        if total >= limit:
            break
        sources.append(read_text(path))
        total += len(sources[-1])
    return sources


def python_stdlib(tokenizer: Tokenizer | None = None) -> list[str]:
    """Dataset ``python-stdlib``: about 2 MB of standard-library source, one sample per module
    (on Python 3.11.7: 74 files, ``__future__.py`` to ``io.py``)."""
    return stdlib_sources()
