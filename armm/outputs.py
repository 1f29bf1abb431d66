"""Files the command line writes where a user says: never over an existing file unless asked (``--overwrite``), and
never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from armm.layout import VocabLayout
from armm.tokenizer import Tokenizer, one_of


def writable_suffixes(tok: Tokenizer) -> list[str]:
    """The file suffixes ``tok.write`` keeps: its ``file_suffixes``, and for a mixed layout the suffix of each part it
    writes alone (``seven.wav``: the audio part)."""
    suffixes = list(tok.file_suffixes)
    if isinstance(tok, VocabLayout):
        parts = {part.file_suffix for part in tok.parts.values()}
        suffixes += sorted(suffix for suffix in parts if tok.part_written_as(suffix) is not None)
    return suffixes


def sample_output(output: str, tok: Tokenizer) -> Path:
    """Where ``armm sample --output OUTPUT`` has the tokenizer write: inside a folder (one that exists, or OUTPUT ending
    with a path separator) as ``sample`` with the tokenizer's suffix, else at OUTPUT, whose suffix (if any) must be one
    the tokenizer writes: a ValueError naming those otherwise, raised before anything is generated."""
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        return Path(output) / "sample"
    path, suffixes = Path(output), writable_suffixes(tok)
    if path.suffix and path.suffix not in suffixes:
        raise ValueError(f"--output {output}: tokenizer {tok.name!r} writes {one_of(suffixes)} files, not "
                         f"{path.suffix}; end --output with {suffixes[0]}, or leave the suffix out")
    return path


def write_samples(tok: Tokenizer, samples: Sequence, path: Path) -> list[Path]:
    """``tok.write`` in the format ``path``'s suffix names (``x.flac``: FLAC) when it is one of ``tok.file_suffixes``
    other than the default, passed as ``format=``; otherwise without ``format``, so plugins of one format whose
    ``write`` does not take it still work."""
    if path.suffix in tok.file_suffixes[1:]:
        return tok.write(samples, path, format=path.suffix)
    return tok.write(samples, path)


def check_new(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise FileExistsError naming the paths that exist, unless ``overwrite``."""
    existing = [str(path) for path in paths if os.path.lexists(path)]
    if existing and not overwrite:
        one = len(existing) == 1
        raise FileExistsError(f"{', '.join(existing)} already exist{'s' if one else ''}: pass --overwrite to replace "
                              f"{'it' if one else 'them'}, or choose another path")


def write_new(target: Path, write: Callable[[Path], Sequence[Path]], overwrite: bool) -> list[Path]:
    """Run ``write(path)`` (which returns the files it wrote) on a path named as ``target`` in a fresh folder beside it,
    then move those files into ``target``'s folder; returns where they went. Nothing is moved when one of them exists
    there (FileExistsError, see ``check_new``) or would land on a folder; the fresh folder goes whatever happens."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent)).resolve()
    try:
        written = [Path(path).resolve() for path in write(staging / target.name)]
        moves = {path: target.parent / path.relative_to(staging) for path in written}
        folders = [str(path) for path in moves.values() if path.is_dir()]
        if folders:
            raise IsADirectoryError(f"{', '.join(folders)} {'is a folder' if len(folders) == 1 else 'are folders'}: "
                                    "choose another path")
        check_new(moves.values(), overwrite)
        for source, destination in moves.items():
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, destination)
        return list(moves.values())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
