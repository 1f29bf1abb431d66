"""What a ``data.path`` holds, for training preparation: units listed cheaply and read one at a time, so a corpus
never has to fit in memory.

A source is one of:

- files the tokenizer reads (its ``read_suffixes``: a file, folder or glob): one unit per file;
- a manifest (``.jsonl``, ``.csv``, either gzipped) whose rows are documents: runs of ``ROWS_PER_UNIT`` rows, each
  unit seeking to its first row's byte offset (a gzipped manifest is one unit). Columns give roles (``data.fields``
  maps a role to its column; by default the column is the role's name): ``text`` (an inline sample), ``file`` (a path
  relative to the manifest, read by the modality plugin), ``label`` (a class name) and ``caption`` (text describing
  the file). A JSON Lines row that is a JSON list is a mixed layout's own sample format (``VocabLayout.parts_of``);
- for a mixed layout with a ``classes`` part, a labelled folder (torchvision's ImageFolder convention): one subfolder
  per class, its name the label, one unit per file.

Labels and captions go to the parts of a mixed layout by role: ``label`` to its ``classes`` part, ``file`` to the part
whose plugin reads that file's suffix, ``caption`` to the part left (its ``prompt_part`` when several are left); the
sample lists them in layout order, e.g. ``[("label", "seven"), ("image", <the image>)]``.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from armm.classes import ClassTokenizer
from armm.files import find_files
from armm.layout import Part, VocabLayout
from armm.tokenizer import Tokenizer

ROLES = ("text", "file", "label", "caption")
MANIFEST_SUFFIXES = VocabLayout.read_suffixes
ROWS_PER_UNIT = 1024
MIXED_HINT = ("labels and captions need tokenizer: mixed with a classes part for labels (recipes/image_folder.yaml) or "
              "a text part for captions (recipes/text2digit.yaml)")


@dataclass(frozen=True)
class ReadUnit:
    """One independently readable part of a data source; picklable, so worker processes can read it.

    ``name`` is how ``meta.json`` and error messages call it (a file, or ``manifest.jsonl lines 2-1025``); ``size`` is
    its bytes on disk, for progress. A labelled file has its class name in ``label``; a run of manifest rows starts at
    byte ``offset`` and ``rows`` is (the line number of its first row, how many rows it holds)."""

    path: Path | str
    name: str
    size: int
    label: str | None = None
    rows: tuple[int, int] | None = None
    offset: int = 0


def list_units(tokenizer: Tokenizer, source: str | Path, fields: Mapping[str, str] | None = None) -> list[ReadUnit]:
    """The units of ``source`` (a file, folder or glob; a manifest; a labelled folder), in a fixed order."""
    columns(fields)  # a wrong role fails before any file is opened
    path = Path(source)
    labelled = isinstance(tokenizer, VocabLayout) and path.is_dir() and _has_classes(tokenizer)
    manifest = not labelled and is_manifest(tokenizer, path)
    if fields and not manifest:
        raise ValueError(f"data.fields names manifest columns, but {source} is not a manifest "
                         f"({', '.join(MANIFEST_SUFFIXES)}); drop data.fields or give a manifest as data.path")
    if labelled:
        return _labelled_units(tokenizer, path)
    if manifest:
        manifests = [path] if path.is_file() else find_files(source, MANIFEST_SUFFIXES, what="manifests")
        return [unit for file in manifests for unit in _manifest_units(file)]
    if not tokenizer.read_suffixes:
        return [ReadUnit(source, str(source), path.stat().st_size if path.is_file() else 0)]
    files = find_files(source, tokenizer.read_suffixes, what=f"{tokenizer.modality} files")
    return [ReadUnit(file, str(file), file.stat().st_size) for file in files]


def read_unit(tokenizer: Tokenizer, unit: ReadUnit, fields: Mapping[str, str] | None = None) -> Iterable[Any]:
    """The samples of one unit, in order (any may be a ``LongDocument``)."""
    path = Path(unit.path)
    if unit.label is not None:
        return _file_samples(tokenizer, path, str(path.parent), {"label": unit.label})
    if is_manifest(tokenizer, path):
        return _manifest_samples(tokenizer, unit, columns(fields))
    if not tokenizer.read_suffixes:
        return tokenizer.read(unit.path)
    return tokenizer.read_file(path)


def read_source(tokenizer: Tokenizer, source: str | Path, fields: Mapping[str, str] | None = None) -> list[Any]:
    """Every sample of ``source``, unit by unit (``list_units`` then ``read_unit``): for callers that hold them all."""
    return [sample for unit in list_units(tokenizer, source, fields) for sample in read_unit(tokenizer, unit, fields)]


def is_manifest(tokenizer: Tokenizer, path: Path) -> bool:
    """Whether ``path`` is read as manifests: anything but a labelled folder for a mixed layout (its own JSON Lines are
    manifests too); for another tokenizer, a ``.jsonl``/``.csv`` (or gzipped) file it does not read itself."""
    if isinstance(tokenizer, VocabLayout):
        return True
    name = path.name.lower()
    own = name.endswith(tuple(s.lower() for s in tokenizer.read_suffixes))
    return name.endswith(MANIFEST_SUFFIXES) and not own and path.is_file()


def columns(fields: Mapping[str, str] | None) -> dict[str, str]:
    """Role → column name: ``fields`` over the defaults (each role's own name); an unknown role is a ValueError."""
    for role, column in (fields or {}).items():
        if role not in ROLES:
            raise ValueError(f"data.fields has an unknown role {role!r}; the roles are: {', '.join(ROLES)}")
        if not isinstance(column, str) or not column:
            raise ValueError(f"data.fields.{role} must be a column name, got {column!r}")
    return {role: role for role in ROLES} | dict(fields or {})


# --- mixed layouts: which part each role fills ------------------------------------------------------------------
def label_part(layout: VocabLayout) -> str:
    """The layout's one ``classes`` part, which labels fill."""
    names = [name for name, tokenizer in layout.parts.items() if isinstance(tokenizer, ClassTokenizer)]
    if len(names) != 1:
        raise ValueError(f"labels need a mixed layout with one classes part (parts: {{label: {{tokenizer: classes}}, "
                         f"…}}); this layout's parts are: {', '.join(layout.parts)}")
    return names[0]


def file_part(layout: VocabLayout, path: Path, taken: Iterable[str] = ()) -> str:
    """The part (not in ``taken``, never the classes part) whose plugin reads ``path``'s suffix, or the only one left."""
    left = [name for name, tokenizer in layout.parts.items()
            if name not in taken and not isinstance(tokenizer, ClassTokenizer)]
    readers = [name for name in left
               if path.name.lower().endswith(tuple(s.lower() for s in layout.parts[name].read_suffixes))]
    if len(readers) == 1 or (not readers and len(left) == 1):
        return (readers or left)[0]
    raise ValueError(f"no single part of the layout ({', '.join(left)}) reads {path.name}: "
                     f"{'several do' if readers else 'none reads its suffix'}")


def caption_part(layout: VocabLayout, taken: Iterable[str] = ()) -> str:
    """The part a caption fills: of the parts not in ``taken`` (never a classes part), the ``prompt_part``, or the only
    one left."""
    left = [name for name, tokenizer in layout.parts.items()
            if name not in taken and not isinstance(tokenizer, ClassTokenizer)]
    if layout.prompt_part in left or len(left) == 1:
        return layout.prompt_part if layout.prompt_part in left else left[0]
    raise ValueError(f"a caption needs one text part; the layout's parts left for it are: {', '.join(left) or 'none'} "
                     f"(set prompt_part to the text part)")


def modality_part(tokenizer: Tokenizer, modality: str, what: str) -> str:
    """The first part of a mixed layout whose plugin's modality is ``modality`` (for built-in datasets; ``what``
    names the dataset in the error)."""
    parts = tokenizer.parts if isinstance(tokenizer, VocabLayout) else {}
    for name, part in parts.items():
        if part.modality == modality:
            return name
    raise ValueError(f"{what} needs tokenizer: mixed with an {modality} part; got {tokenizer.name!r}"
                     + (f" with parts {', '.join(parts)}" if parts else ""))


def in_layout_order(layout: VocabLayout, parts: Mapping[str, Any]) -> list[Part]:
    """``parts`` (part name → sample) as a mixed sample, in the layout's order of parts."""
    return [Part(name, parts[name]) for name in layout.parts if name in parts]


def _has_classes(layout: VocabLayout) -> bool:
    return any(isinstance(tokenizer, ClassTokenizer) for tokenizer in layout.parts.values())


def _file_samples(tokenizer: Tokenizer, path: Path, where: str, roles: Mapping[str, Any]) -> Iterator[Any]:
    """The samples of one file: the plugin's own for a plain tokenizer; for a mixed layout, each sample of the file
    (an image; every clip of a recording) with the ``label`` and ``caption`` of ``roles`` in their parts."""
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist")
    if not isinstance(tokenizer, VocabLayout):
        return _read_file(tokenizer, path, where)
    parts: dict[str, Any] = {}
    try:
        if "label" in roles:
            parts[label_part(tokenizer)] = roles["label"]
        name = file_part(tokenizer, path, parts)
        if "caption" in roles:
            parts[caption_part(tokenizer, [*parts, name])] = roles["caption"]
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return (in_layout_order(tokenizer, {**parts, name: sample})
            for sample in _read_file(tokenizer.parts[name], path, where))


def _read_file(tokenizer: Tokenizer, path: Path, where: str) -> Iterator[Any]:
    try:
        yield from tokenizer.read_file(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot read {path} ({' '.join(str(err).split())})") from None


# --- labelled folders -------------------------------------------------------------------------------------------
def _labelled_units(layout: VocabLayout, root: Path) -> list[ReadUnit]:
    """One unit per readable file of each class subfolder (sorted by class, then path), labelled by its folder."""
    suffixes = tuple(s.lower() for name, tokenizer in layout.parts.items() if not isinstance(tokenizer, ClassTokenizer)
                     for s in tokenizer.read_suffixes)

    def readable(path: Path) -> bool:
        return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(suffixes or ("",))

    stray = sorted(path for path in root.iterdir() if readable(path))
    if stray:
        raise ValueError(f"{stray[0]} sits directly under {root}; a labelled folder holds one subfolder per class "
                         f"({root / '<class>' / stray[0].name})")
    folders = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not folders:
        raise FileNotFoundError(f"{root} has no class subfolders; a labelled folder holds one subfolder per class, "
                                f"named by its label ({root / '<class>' / '<file>'})")
    units = []
    for folder in folders:
        files = sorted(path for path in folder.rglob("*") if readable(path))
        if not files:
            raise ValueError(f"class folder {folder} holds no readable files ({', '.join(suffixes)})")
        units += [ReadUnit(path, str(path), path.stat().st_size, label=folder.name) for path in files]
    return units


# --- manifests --------------------------------------------------------------------------------------------------
def _manifest_units(manifest: Path) -> list[ReadUnit]:
    """Runs of ``ROWS_PER_UNIT`` rows with their byte offsets (one scan, nothing parsed); a gzipped manifest is one
    unit, as it cannot seek."""
    if manifest.name.lower().endswith(".gz"):
        return [ReadUnit(manifest, str(manifest), manifest.stat().st_size)]
    is_csv = _is_csv(manifest)
    starts: list[tuple[int, int]] = []  # (line number, byte offset) of every row
    with open(manifest, "rb") as handle:
        for number, offset, _ in _records(handle, is_csv):
            starts.append((number, offset))
    if is_csv:
        starts = starts[1:]  # the header
    if not starts:
        raise ValueError(f"{manifest} holds no rows")
    end = manifest.stat().st_size
    units = []
    for first in range(0, len(starts), ROWS_PER_UNIT):
        run = starts[first:first + ROWS_PER_UNIT]
        stop = starts[first + ROWS_PER_UNIT][1] if first + ROWS_PER_UNIT < len(starts) else end
        name = f"{manifest} lines {run[0][0]}-{run[-1][0]}"
        units.append(ReadUnit(manifest, name, stop - run[0][1], rows=(run[0][0], len(run)), offset=run[0][1]))
    return units


def _is_csv(manifest: Path) -> bool:
    return manifest.name.lower().removesuffix(".gz").endswith(".csv")


def _records(handle: IO[bytes], is_csv: bool, number: int = 1, offset: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """The non-blank records of a manifest as (line number, byte offset, bytes): a JSON line, or a CSV row, which
    runs over several lines while a quoted field is open (an odd count of ``"`` so far)."""
    record, start, start_number = b"", offset, number
    for line in handle:
        if not record:
            start, start_number = offset, number
        record += line
        offset += len(line)
        number += 1
        if is_csv and record.count(b'"') % 2:
            continue
        if record.strip():
            yield start_number, start, record
        record = b""
    if record.strip():
        yield start_number, start, record


def _open(manifest: Path) -> IO[bytes]:
    return gzip.open(manifest, "rb") if manifest.name.lower().endswith(".gz") else open(manifest, "rb")


def _manifest_rows(unit: ReadUnit) -> Iterator[tuple[str, Any]]:
    """The unit's rows as (``manifest:line``, a dict of columns, or a JSON list: a mixed layout's own format)."""
    manifest = Path(unit.path)
    is_csv = _is_csv(manifest)
    with _open(manifest) as handle:
        records = _records(handle, is_csv)
        header = _csv_header(manifest, next(records, None)) if is_csv else None
        if unit.offset:
            handle.seek(unit.offset)
            records = _records(handle, is_csv, unit.rows[0], unit.offset)
        for count, (number, _, raw) in enumerate(records):
            if unit.rows is not None and count == unit.rows[1]:
                return
            where = f"{manifest}:{number}"
            yield where, _parse(raw, header, where)


def _csv_header(manifest: Path, record: tuple[int, int, bytes] | None) -> list[str]:
    if record is None:
        raise ValueError(f"{manifest} is empty; a CSV manifest starts with a header row naming its columns")
    return next(csv.reader(record[2].decode("utf-8-sig").splitlines(keepends=True)))


def _parse(raw: bytes, header: list[str] | None, where: str) -> dict[str, Any] | list[Any]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} is not UTF-8 text (byte {err.start} of the row)") from None
    if header is not None:
        values = next(csv.reader(text.splitlines(keepends=True)))
        if len(values) != len(header):
            raise ValueError(f"{where} has {len(values)} values but the header names {len(header)} columns")
        return dict(zip(header, values))
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(row, (dict, list)):
        raise ValueError(f'{where}: a row is a JSON object of columns, e.g. {{"file": "7.png", "label": "seven"}}')
    return row


def _manifest_samples(tokenizer: Tokenizer, unit: ReadUnit, roles: dict[str, str]) -> Iterator[Any]:
    manifest = Path(unit.path)
    for where, row in _manifest_rows(unit):
        if isinstance(row, list):
            if not isinstance(tokenizer, VocabLayout):
                raise ValueError(f"{where}: a JSON list of parts is a mixed layout's sample; for tokenizer "
                                 f"{tokenizer.name!r} a row is an object with a text or a file column")
            yield tokenizer.parts_of(row, manifest.parent, where)
        else:
            yield from _row_samples(tokenizer, row, roles, manifest.parent, where)


def _row_samples(tokenizer: Tokenizer, row: dict[str, Any], roles: dict[str, str], base: Path,
                 where: str) -> Iterable[Any]:
    """The samples of one manifest row: its inline ``text``, or its ``file`` with any ``label`` and ``caption``."""
    given = {}
    for role, column in roles.items():
        value = row.get(column)
        if value in (None, ""):
            if column != role:  # a column data.fields names must be there
                raise ValueError(f"{where}: column {column!r} ({role}) is missing or empty; the row's columns are: "
                                 f"{', '.join(map(str, row))}")
            continue
        if role == "label" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"{where}: column {column!r} ({role}) must be a string, got {json.dumps(value)[:60]}")
        given[role] = value
    described = [role for role in ("label", "caption") if role in given]
    if described and not isinstance(tokenizer, VocabLayout):
        raise ValueError(f"{where}: tokenizer {tokenizer.name!r} cannot use a {' or '.join(described)} column; "
                         f"{MIXED_HINT}")
    if "text" in given:
        if isinstance(tokenizer, VocabLayout):
            raise ValueError(f"{where}: a mixed layout's row is a file with its label or caption (or a JSON list of "
                             f"parts), not a {roles['text']!r} column")
        if "file" in given:
            raise ValueError(f"{where}: give a {roles['text']!r} or a {roles['file']!r} column, not both")
        return [given["text"]]
    if "file" not in given:
        raise ValueError(f"{where}: the row has no {roles['text']!r} or {roles['file']!r} column; its columns are: "
                         f"{', '.join(map(str, row))}")
    return _file_samples(tokenizer, base / given.pop("file"), where, given)
