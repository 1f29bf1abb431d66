"""What a ``data.path`` holds, for training preparation: units (files, or runs of manifest rows) listed cheaply and
read one at a time, so a corpus never has to fit in memory."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armm.files import find_files
from armm.tokenizer import Tokenizer


@dataclass(frozen=True)
class ReadUnit:
    """One independently readable part of a data source; picklable, so worker processes can read it.

    ``name`` is how ``meta.json`` and error messages call it (a file, or ``manifest.jsonl rows 1-256``); ``size`` is
    its bytes on disk, for progress."""

    path: Path | str
    name: str
    size: int
    label: str | None = None
    rows: tuple[int, int] | None = None


def list_units(tokenizer: Tokenizer, source: str | Path, fields: Mapping[str, str] | None = None) -> list[ReadUnit]:
    """The units of ``source`` (a file, folder or glob), in a fixed order: one per file of the tokenizer's
    ``read_suffixes``, or the whole source as one unit for a plugin that declares none."""
    if not tokenizer.read_suffixes:
        return [ReadUnit(source, str(source), _size(source))]
    files = find_files(source, tokenizer.read_suffixes, what=f"{tokenizer.modality} files")
    return [ReadUnit(path, str(path), path.stat().st_size) for path in files]


def read_unit(tokenizer: Tokenizer, unit: ReadUnit, fields: Mapping[str, str] | None = None) -> Iterable[Any]:
    """The samples of one unit, in order (any may be a ``LongDocument``)."""
    if not tokenizer.read_suffixes:
        return tokenizer.read(unit.path)
    return tokenizer.read_file(Path(unit.path))


def _size(source: str | Path) -> int:
    path = Path(source)
    return path.stat().st_size if path.is_file() else 0
