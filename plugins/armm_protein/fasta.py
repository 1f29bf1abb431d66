"""FASTA files: parse records (validated against an alphabet) and format them back, wrapped at 60 columns."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from armm.files import read_text

LINE_WIDTH = 60
STOP = "*"


@dataclass(frozen=True)
class FastaRecord:
    """One record: ``>name description`` then the sequence (upper case, without a terminal ``*``)."""

    name: str
    description: str
    sequence: str


def parse_fasta(text: str, path: str | Path, alphabet: str) -> list[FastaRecord]:
    """The records of a FASTA text; ``path`` only names the file in errors.

    Sequence lines may be lower case and are upper-cased; blank lines are skipped; one ``*`` (a stop)
    may end a record and is dropped. Any other symbol outside ``alphabet``, text before the first
    ``>`` header, or a text without records raises ValueError naming the file (and the record,
    residue position and line).
    """
    allowed = set(alphabet) | set(alphabet.lower())
    records: list[FastaRecord] = []
    header: tuple[str, str] | None = None
    lines: list[tuple[int, str]] = []  # (line number, sequence line) of the current record

    def close_record() -> None:
        if header is not None:
            sequence = _join_residues(lines, allowed, path, header[0], alphabet)
            records.append(FastaRecord(header[0], header[1], sequence))

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith(">"):
            close_record()
            header, lines = _split_header(line), []
        elif line and header is None:
            raise ValueError(f"{path} is not FASTA: line {number} comes before the first '>' header ({line[:40]!r})")
        elif line:
            lines.append((number, line))
    close_record()
    if not records:
        raise ValueError(f"{path} holds no FASTA records (no line starts with '>')")
    return records


def _split_header(line: str) -> tuple[str, str]:
    """``>name description`` → ``(name, description)``; spaces or tabs separate them."""
    fields = line[1:].split(maxsplit=1)
    return (fields[0] if fields else "", fields[1] if len(fields) > 1 else "")


def _join_residues(lines: list[tuple[int, str]], allowed: set[str], path: str | Path, name: str,
                   alphabet: str) -> str:
    """A record's upper-cased sequence without its terminal stop; ValueError at the first symbol not allowed."""
    sequence = "".join(line for _, line in lines).removesuffix(STOP)
    bad = next((index for index, symbol in enumerate(sequence) if symbol not in allowed), None)
    if bad is None:
        return sequence.upper()
    ends = itertools.accumulate(len(line) for _, line in lines)
    number = next(number for (number, _), end in zip(lines, ends) if bad < end)
    raise ValueError(
        f"{path}: record {name!r} has invalid residue {sequence[bad]!r} at position {bad + 1} (line {number}); "
        f"allowed: {alphabet} in either case, and one '{STOP}' at the end of a record"
    )


def format_fasta(records: Sequence[FastaRecord], width: int = LINE_WIDTH) -> str:
    """FASTA text of ``records``, sequences wrapped at ``width`` columns."""
    out = []
    for record in records:
        out.append(f">{record.name} {record.description}".rstrip())
        out.extend(record.sequence[i:i + width] for i in range(0, len(record.sequence), width))
    return "\n".join(out) + "\n"


def read_fasta(path: str | Path, alphabet: str) -> list[FastaRecord]:
    """The records of one FASTA file (see ``parse_fasta``)."""
    return parse_fasta(read_text(path), path, alphabet)
