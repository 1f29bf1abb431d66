"""Finding, reading and naming files for plugin readers and writers."""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def temporary_beside(path: Path) -> Path:
    """A new empty file ``.NAME.<random>.tmp`` in ``path``'s folder, to write and then rename over ``path``. It has
    the mode any new file gets (0666 less the umask), not the private 0600 of ``tempfile.mkstemp``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def find_files(source: str | Path, suffixes: Iterable[str], *, what: str = "files") -> list[Path]:
    """A single file, a folder (searched recursively) or a glob pattern → sorted files whose name ends with one of
    ``suffixes`` (any case; ``.txt.gz`` is a suffix too).

    Raises FileNotFoundError naming ``source`` and the suffixes when nothing matches, so an empty or
    mistyped data path fails before any work starts.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    text = str(source)
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file()]  # the suffixes (".txt.gz" too) are matched below
    elif any(ch in text for ch in "*?["):
        found = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
    else:
        raise FileNotFoundError(f"{source} does not exist (expected a file, a folder or a glob of {what})")
    found = sorted(p for p in found if p.name.lower().endswith(suffixes))
    if not found:
        raise FileNotFoundError(f"no {what} ({', '.join(suffixes)}) found in {source}")
    return found


def with_gzip(suffixes: Iterable[str]) -> tuple[str, ...]:
    """``suffixes`` and their gzip-compressed versions: ``(".txt",)`` → ``(".txt", ".txt.gz")``."""
    suffixes = tuple(suffixes)
    return suffixes + tuple(s + ".gz" for s in suffixes if not s.lower().endswith(".gz"))


def open_text(path: str | Path) -> io.TextIOBase:
    """A UTF-8 text file opened for reading, decompressed on the fly when its name ends with ``.gz``; line endings
    are kept as they are (CRLF stays CRLF)."""
    if str(path).lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents (gunzipped when it ends with ``.gz``), or a ValueError naming the file when it is
    binary, not UTF-8 or a broken gzip file."""
    try:
        with open_text(path) as handle:
            return handle.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}); is it a binary file?") from None
    except (gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"{path} is not a complete gzip file ({err})") from None


def numbered_paths(path: str | Path, count: int, suffix: str) -> list[Path]:
    """``out.txt`` for one sample, else ``out-0.txt, out-1.txt, …`` — the suffix forced to ``suffix``."""
    path = Path(path)
    if count == 1:
        return [path.with_suffix(suffix)]
    return [path.with_name(f"{path.stem}-{i}{suffix}") for i in range(count)]


MAX_JSON_BYTES = 256 * 2**20  # the largest Hugging Face tokenizer.json files are ~35 MB
MAX_JSON_DEPTH = 64  # configs and tokenizer files nest a few levels


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object; FileNotFoundError when it is missing, ValueError when it is not UTF-8 JSON
    holding an object, is larger than ``MAX_JSON_BYTES`` or nests deeper than ``MAX_JSON_DEPTH``, each naming the
    file and ``what`` it should hold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; it should hold {what}")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path} is {size} bytes, more than the {MAX_JSON_BYTES} armm reads as JSON; it should hold "
                         f"{what} (is it another file under this name?)")
    too_deep = ValueError(f"{path} nests arrays or objects more than {MAX_JSON_DEPTH} levels deep; it should hold "
                          f"{what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it should hold {what}") from None
    except RecursionError:  # deeper than Python's parser goes
        raise too_deep from None
    if _nests_deeper(data, MAX_JSON_DEPTH):
        raise too_deep
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object ({what})")
    return data


def _nests_deeper(data: Any, depth: int) -> bool:
    """Whether parsed JSON ``data`` has arrays or objects nested more than ``depth`` levels, found level by level
    (no recursion)."""
    level = [data]
    for _ in range(depth):
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)]
        if not level:
            return False
    return any(isinstance(node, (dict, list)) for node in level)


def read_text_pieces(path: str | Path, piece_chars: int = 1 << 20) -> Iterator[str]:
    """A UTF-8 text file (gunzipped when it ends with ``.gz``) as pieces of about ``piece_chars`` characters that
    join back into the text.

    Each piece ends just before a space that follows a non-whitespace character and precedes one (``"a| b"``).
    GPT-2's byte-level pre-tokenizer, and code-bpe's, start a pre-token at such a space and end one before it, so
    encoding the pieces one by one gives the ids of the whole text. (A cut at a line break would not be safe: both
    split a run of line breaks differently at the end of a text.) Where no such space comes within
    ``4 * piece_chars`` characters (text without spaces: CJK, minified data), the piece is cut at ``piece_chars``
    anyway, and the ids around that cut may differ from the whole text's."""
    try:
        with open_text(path) as handle:
            carry = ""
            while chunk := handle.read(piece_chars):
                text = carry + chunk
                cut = _last_safe_cut(text)
                if cut < 0 and len(text) >= 4 * piece_chars:
                    cut = piece_chars
                if cut <= 0:
                    carry = text
                    continue
                yield text[:cut]
                carry = text[cut:]
            if carry:
                yield carry
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start} of a piece); is it a binary file?") from None
    except (gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"{path} is not a complete gzip file ({err})") from None


def _last_safe_cut(text: str) -> int:
    """The last index ``i`` with ``text[i] == " "`` between two non-whitespace characters, or -1."""
    end = len(text) - 1
    while (i := text.rfind(" ", 1, end)) > 0:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
        end = i
    return -1
