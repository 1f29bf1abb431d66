"""Finding, reading and naming files for plugin readers and writers."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def find_files(source: str | Path, suffixes: Iterable[str], *, what: str = "files") -> list[Path]:
    """A single file, a folder (searched recursively) or a glob pattern → sorted files with one of ``suffixes``.

    Raises FileNotFoundError naming ``source`` and the suffixes when nothing matches, so an empty or
    mistyped data path fails before any work starts.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    text = str(source)
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes]
    elif any(ch in text for ch in "*?["):
        found = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
    else:
        raise FileNotFoundError(f"{source} does not exist (expected a file, a folder or a glob of {what})")
    found = sorted(p for p in found if p.suffix.lower() in suffixes)
    if not found:
        raise FileNotFoundError(f"no {what} ({', '.join(suffixes)}) found in {source}")
    return found


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents, or a ValueError naming the file when it is binary or not UTF-8."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:  # newline="": CRLF stays CRLF, byte for byte
            return handle.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}); is it a binary file?") from None


def numbered_paths(path: str | Path, count: int, suffix: str) -> list[Path]:
    """``out.txt`` for one sample, else ``out-0.txt, out-1.txt, …`` — the suffix forced to ``suffix``."""
    path = Path(path)
    if count == 1:
        return [path.with_suffix(suffix)]
    return [path.with_name(f"{path.stem}-{i}{suffix}") for i in range(count)]


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object; FileNotFoundError when it is missing, ValueError when it is not UTF-8 JSON
    holding an object, each naming the file and ``what`` it should hold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; it should hold {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it should hold {what}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object ({what})")
    return data
