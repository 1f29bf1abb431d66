"""Streaming data preparation: read a source one unit at a time, encode its documents in batches straight into a file
of ids on disk, split them, and copy each split into the ``.npy`` array the loaders memory-map.

Memory stays bounded whatever the corpus size: at most one batch of documents (``BATCH_CHARS`` characters, or a batch
of a ``LongDocument``'s pieces) and its ids are held at a time; document boundaries are kept as numpy arrays.

Split rules (``meta.json`` ``split.rule``):

- ``documents``: at least two documents; ``max(1, round(N * val_fraction))`` of them, drawn by
  ``torch.randperm(N)`` seeded with ``seed``, are validation (``split.val`` lists them by source and index in it).
- ``token-stream``: a single document with the ``packed`` layout; its last ``val_fraction`` of tokens are
  validation (``split.cut``: the first validation token), as nanoGPT splits one text.
- ``explicit``: ``data.val_path`` holds the validation documents; nothing is drawn.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from armm.datasource import ReadUnit, list_units, read_unit
from armm.tokenizer import LongDocument, Tokenizer

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# Characters (or other units) of documents encoded in one call: 1M a core, so a multi-threaded encoder has a
# document or piece per core, while what one call holds stays bounded (text-bpe: ~75 bytes a character, transient).
BATCH_CHARS = (1 << 20) * max(2, CORES)
BATCH_DOCUMENTS = 4096
COPY_TOKENS = 1 << 22  # tokens copied from the stream into a split array at a time
AUTO_WORKERS_BYTES = 1 << 30  # files that pay for worker processes (see auto_workers)
Layout = Literal["packed", "samples"]


@dataclass(frozen=True)
class Source:
    """Documents to prepare: the files (units) of a path, or a built-in dataset's list of samples as one unit."""

    name: str  # the dataset name or data path, for messages
    units: list[ReadUnit]
    samples: Sequence[Any] | None = None  # a built-in dataset, already in memory
    fields: Mapping[str, str] | None = None

    @classmethod
    def of_path(cls, tokenizer: Tokenizer, path: str, fields: Mapping[str, str] | None) -> Source:
        return cls(path, list_units(tokenizer, path, fields), fields=fields)

    @classmethod
    def of_samples(cls, name: str, samples: Sequence[Any]) -> Source:
        return cls(name, [ReadUnit(name, name, 0)], samples=samples)

    def read(self, tokenizer: Tokenizer, unit: ReadUnit) -> Iterable[Any]:
        return self.samples if self.samples is not None else read_unit(tokenizer, unit, self.fields)

    def documents(self, tokenizer: Tokenizer) -> Iterator[tuple[int, Any]]:
        """``(unit index, sample)`` of every document, in order."""
        for index, unit in enumerate(self.units):
            for sample in self.read(tokenizer, unit):
                yield index, sample


@dataclass
class Encoded:
    """A source encoded into one raw file of ids, document after document (``bos … eos`` each)."""

    path: Path
    dtype: np.dtype
    ends: np.ndarray  # int64 [documents]: the offset just after each document
    units: np.ndarray  # int64 [documents]: modality units of each
    unit_of: np.ndarray  # int64 [documents]: the index of the source unit it came from

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], self.ends[:-1]]).astype(np.int64)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.ends, prepend=0)


@dataclass
class StreamWriter:
    """Appends documents' ids to ``path`` and records where each ends; ``width`` (samples layout) caps a document."""

    path: Path
    dtype: np.dtype
    width: int | None = None
    written: int = 0
    ends: list[np.ndarray] = field(default_factory=list)
    units: list[np.ndarray] = field(default_factory=list)
    unit_of: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.handle = open(self.path, "wb")

    def add_documents(self, documents: Sequence[Sequence[int]], units: Sequence[int], unit_of: Sequence[int]) -> None:
        """Whole documents, with their modality units and the index of the source unit each came from."""
        lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
        self.check_width(int(lengths.max(initial=0)))
        start = self.written
        self.add_tokens(documents)
        self.ends.append(start + np.cumsum(lengths))
        self.units.append(np.asarray(units, dtype=np.int64))
        self.unit_of.append(np.asarray(unit_of, dtype=np.int64))

    def add_tokens(self, parts: Sequence[Sequence[int]]) -> None:
        count = sum(map(len, parts))
        ids = np.fromiter(itertools.chain.from_iterable(parts), dtype=self.dtype, count=count)
        self.handle.write(ids.tobytes())
        self.written += count

    def end_document(self, start: int, units: int, unit: int) -> None:
        """Close a document written with ``add_tokens`` since offset ``start``."""
        self.check_width(self.written - start)
        self.ends.append(np.array([self.written], dtype=np.int64))
        self.units.append(np.array([units], dtype=np.int64))
        self.unit_of.append(np.array([unit], dtype=np.int64))

    def append(self, part: Encoded, unit: int) -> None:
        """A unit encoded elsewhere (a worker's file): its ids and documents, as coming from source unit ``unit``."""
        self.handle.write(part.path.read_bytes())
        self.ends.append(part.ends + self.written)
        self.written += int(part.ends[-1]) if part.ends.size else 0
        self.units.append(part.units)
        self.unit_of.append(np.full(part.ends.size, unit, dtype=np.int64))

    def check_width(self, length: int) -> None:
        if self.width is not None and length > self.width:
            raise ValueError(
                f"a sample is {length} tokens long (bos and eos included) but a row holds {self.width} (data.seq_len "
                f"and the last targets); "
                f"raise data.seq_len (and the model's max_seq_len) or make the samples smaller"
            )

    def close(self) -> Encoded:
        self.handle.close()
        joined = [np.concatenate(a) if a else np.zeros(0, np.int64) for a in (self.ends, self.units, self.unit_of)]
        return Encoded(self.path, self.dtype, *joined)


def encode_documents(tokenizer: Tokenizer, documents: Iterable[tuple[int, Any]], writer: StreamWriter,
                     progress: ReadProgress | None = None) -> None:
    """Encode ``(unit index, sample)`` pairs into ``writer``: whole documents ``BATCH_CHARS`` at a time through
    ``encode_documents`` (a batch spans files, so a multi-threaded encoder has one per core); a ``LongDocument``'s
    pieces through ``encode_batch``, between one bos and one eos."""
    batch: list[Any] = []
    units: list[int] = []
    unit_of: list[int] = []

    def flush() -> None:
        if batch:
            writer.add_documents(tokenizer.encode_documents(batch), units, unit_of)
            if progress is not None:
                progress.documents(len(batch))
            for held in (batch, units, unit_of):
                held.clear()

    held = 0
    for unit, sample in documents:
        if isinstance(sample, LongDocument):
            flush()
            encode_long(tokenizer, sample, writer, unit, progress)
            continue
        batch.append(sample)
        units.append(tokenizer.num_units(sample))
        unit_of.append(unit)
        held += units[-1]
        if held >= BATCH_CHARS or len(batch) >= BATCH_DOCUMENTS:
            flush()
            held = 0
    flush()


def encode_long(tokenizer: Tokenizer, document: LongDocument, writer: StreamWriter, unit: int,
                progress: ReadProgress | None) -> None:
    start, total = writer.written, 0
    writer.add_tokens([tokenizer.start_ids])
    pieces = iter(document.pieces)
    while batch := _take_chars(pieces, tokenizer):
        writer.add_tokens(tokenizer.encode_batch([piece for piece, _ in batch]))
        read = sum(units for _, units in batch)
        total += read
        if progress is not None:
            progress.read(read)
    writer.add_tokens([[tokenizer.eos_id]] if tokenizer.eos_id is not None else [])
    writer.end_document(start, total, unit)
    if progress is not None:
        progress.documents(1)


def _take_chars(pieces: Iterator[Any], tokenizer: Tokenizer) -> list[tuple[Any, int]]:
    """The next pieces of a long document, up to ``BATCH_CHARS`` units, each with its units."""
    batch, total = [], 0
    for piece in pieces:
        units = tokenizer.num_units(piece)
        batch.append((piece, units))
        total += units
        if total >= BATCH_CHARS:
            break
    return batch


# --- reading progress --------------------------------------------------------------------------------------------
class ReadProgress:
    """A Rich bar on stderr (documents, MB read, MB/s), shown only when stderr is a terminal."""

    def __init__(self, what: str, total_bytes: int) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[docs]:,} documents"), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), disable=not sys.stderr.isatty(), transient=False,
        )  # fmt: skip
        self.count = 0
        self.task = self.bar.add_task(what, total=total_bytes or None, docs=0)

    def __enter__(self) -> ReadProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def documents(self, count: int) -> None:
        self.count += count
        self.bar.update(self.task, docs=self.count)

    def read(self, units: int) -> None:
        """Units (bytes, for text) read inside a unit, before it ends."""
        self.bar.advance(self.task, units)

    def unit_done(self, done_bytes: int) -> None:
        """All units up to this one are read: ``done_bytes`` of their files."""
        self.bar.update(self.task, completed=done_bytes)


# --- encoding a whole source ---------------------------------------------------------------------------------------
def encode_source(tokenizer: Tokenizer, source: Source, path: Path, dtype: np.dtype, width: int | None,
                  workers: int) -> Encoded:
    """Every document of ``source``, encoded into ``path``; units are read by ``workers`` processes when > 0 (each
    unit encoded whole in a worker, results written in unit order)."""
    writer = StreamWriter(path, dtype, width)
    sizes = np.cumsum([unit.size for unit in source.units])
    with ReadProgress(f"tokenising {source.name}", int(sizes[-1])) as progress:
        if workers > 0 and source.samples is None and len(source.units) > 1:
            context = multiprocessing.get_context("spawn")  # fork would copy Rust and torch thread pools mid-use
            with context.Pool(workers, _start_worker, (tokenizer, source.fields, dtype, width, path.parent)) as pool:
                for index, part in enumerate(pool.imap(_encode_in_worker, source.units)):
                    writer.append(part, index)
                    progress.documents(part.ends.size)
                    progress.unit_done(int(sizes[index]))
                    part.path.unlink()
        else:
            def documents() -> Iterator[tuple[int, Any]]:
                for index, unit in enumerate(source.units):
                    yield from ((index, sample) for sample in source.read(tokenizer, unit))
                    progress.unit_done(int(sizes[index]))  # read; its last documents may wait for their batch

            encode_documents(tokenizer, documents(), writer, progress)
    return writer.close()


_worker: dict[str, Any] = {}


def _start_worker(tokenizer: Tokenizer, fields: Mapping[str, str] | None, dtype: np.dtype, width: int | None,
                  directory: Path) -> None:
    _worker.update(tokenizer=tokenizer, fields=fields, dtype=dtype, width=width, directory=directory)


def _encode_in_worker(unit: ReadUnit) -> Encoded:
    """One unit encoded into a file of its own in the cache folder: the parent appends it to the stream, then
    deletes it."""
    tokenizer = _worker["tokenizer"]
    handle, name = tempfile.mkstemp(suffix=".ids", dir=_worker["directory"])
    os.close(handle)
    writer = StreamWriter(Path(name), _worker["dtype"], _worker["width"])
    encode_documents(tokenizer, ((0, sample) for sample in read_unit(tokenizer, unit, _worker["fields"])), writer)
    return writer.close()


def auto_workers(tokenizer: Tokenizer, source: Source) -> int:
    """Worker processes when ``data.prepare_workers`` is unset: one per core for at least ``AUTO_WORKERS_BYTES`` of
    files and a tokenizer without its own batch encoder (images, audio: decoding files dominates), else none.
    Starting a worker imports torch and the plugins (~10 s on a busy 2-core machine), so smaller corpora prepare
    faster in one process; text-bpe's encoder is multi-threaded already (docs/performance.md, "Preparing data")."""
    if type(tokenizer).encode_batch is not Tokenizer.encode_batch or source.samples is not None or CORES < 2:
        return 0
    return min(CORES, len(source.units)) if sum(unit.size for unit in source.units) >= AUTO_WORKERS_BYTES else 0


# --- splitting ---------------------------------------------------------------------------------------------------
def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id of a ``vocab_size`` vocabulary (uint16 or uint32)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def document_split(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices: ``val_fraction`` of ``count`` (at least one) drawn by the seeded permutation,
    each in the permutation's order."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).numpy().astype(np.int64)
    n_val = max(1, round(count * val_fraction))
    return order[n_val:], order[:n_val]


def count_documents(tokenizer: Tokenizer, source: Source) -> np.ndarray:
    """Documents per unit, reading each unit but no ``LongDocument``'s pieces (one counts 1)."""
    if source.samples is not None:
        return np.array([len(source.samples)], dtype=np.int64)
    return np.array([sum(1 for _ in source.read(tokenizer, unit)) for unit in source.units], dtype=np.int64)


def fitting_texts(tokenizer: Tokenizer, source: Source, keep: np.ndarray | None) -> Iterator[Any]:
    """The documents of ``source`` whose ``keep`` flag is on (all when None), streamed, a ``LongDocument`` as its
    pieces: what a trainable tokenizer fits on."""
    for index, (_, sample) in enumerate(source.documents(tokenizer)):
        if keep is None or keep[index]:
            yield from sample.pieces if isinstance(sample, LongDocument) else (sample,)


def write_documents(encoded: Encoded, order: np.ndarray, path: Path, layout: Layout, width: int,
                    pad_id: int | None) -> dict[str, int]:
    """Copy documents ``order`` of ``encoded`` into ``path`` (one stream, or one padded row each), ``COPY_TOKENS``
    at a time through plain reads and writes (a memory map would count every page copied as resident); their sizes
    for ``meta.json``."""
    starts, lengths = encoded.starts[order], encoded.lengths[order]
    tokens = int(lengths.sum())
    shape = (tokens,) if layout == "packed" else (len(order), width)
    with open(encoded.path, "rb") as stream, _npy_writer(path, encoded.dtype, shape) as out:
        parts, held = [], 0
        for start, length in zip(starts.tolist(), lengths.tolist()):
            stream.seek(start * encoded.dtype.itemsize)
            part = np.fromfile(stream, dtype=encoded.dtype, count=length)
            if layout == "samples":
                part = np.concatenate([part, np.full(width - length, pad_id, dtype=encoded.dtype)])
            parts.append(part)
            held += len(part)
            if held >= COPY_TOKENS:
                out.write(np.concatenate(parts).tobytes())
                parts, held = [], 0
        out.write(np.concatenate(parts).tobytes() if parts else b"")
    return {
        "documents": len(order), "tokens": tokens,
        # every token but the first of the stream (packed) or of each row (samples) is a target
        "scored_tokens": tokens - (min(tokens, 1) if layout == "packed" else len(order)),
        "units": int(encoded.units[order].sum()),
    }


def write_token_range(encoded: Encoded, start: int, end: int, path: Path, units: int) -> dict[str, int]:
    """Tokens ``start .. end`` of a one-document stream into ``path``: a token-stream split."""
    with open(encoded.path, "rb") as stream, _npy_writer(path, encoded.dtype, (end - start,)) as out:
        stream.seek(start * encoded.dtype.itemsize)
        for begin in range(start, end, COPY_TOKENS):
            out.write(np.fromfile(stream, dtype=encoded.dtype, count=min(end, begin + COPY_TOKENS) - begin).tobytes())
    return {"documents": 1, "tokens": end - start, "scored_tokens": max(0, end - start - 1), "units": units}


def _npy_writer(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> BinaryIO:
    """``path`` as an ``.npy`` file of ``shape``, open for writing its data from the start, in C order."""
    handle = open(path, "wb")
    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})
    return handle


def units_of_tokens(tokenizer: Tokenizer, encoded: Encoded, start: int) -> int:
    """Modality units that the tokens of ``encoded`` from ``start`` on stand for: each token's bytes for a byte-unit
    tokenizer, else the units of the decoded sample (a chunk at a time)."""
    table = (np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64)
             if tokenizer.unit == "byte" else None)
    total = 0
    with open(encoded.path, "rb") as stream:
        stream.seek(start * encoded.dtype.itemsize)
        while (ids := np.fromfile(stream, dtype=encoded.dtype, count=COPY_TOKENS)).size:
            total += int(table[ids].sum()) if table is not None else tokenizer.num_units(tokenizer.decode(ids.tolist()))
    return total


def listing(source: Source, encoded: Encoded, documents: np.ndarray, first_of_unit: np.ndarray) -> list[dict[str, Any]]:
    """``[{"source": name, "documents": [index in that unit, …]}, …]`` of some documents, by unit in order."""
    documents = np.sort(documents)
    units = encoded.unit_of[documents]
    return [{"source": source.units[u].name, "documents": (documents[units == u] - first_of_unit[u]).tolist()}
            for u in np.unique(units).tolist()]


# --- the whole preparation ---------------------------------------------------------------------------------------
def check_streams(tokenizer: Tokenizer, layout: Layout, seq_len: int) -> int:
    """The tokenizer's streams K (``Tokenizer.num_streams``): its samples come K ids a position, so the rows of a
    samples layout hold whole positions, ``seq_len + K`` ids (the inputs and the next position's targets)."""
    streams = tokenizer.num_streams
    if streams > 1 and layout != "samples":
        raise ValueError(f"tokenizer {tokenizer.name!r} lays its ids out in {streams} streams, whose windows must "
                         f"start at whole positions; set data.layout: samples")
    if seq_len % streams:
        raise ValueError(f"data.seq_len={seq_len} must be a multiple of the tokenizer's {streams} streams (a model "
                         f"position reads {streams} ids); set it to {seq_len + (-seq_len) % streams}")
    return streams


def prepare_splits(tokenizer: Tokenizer, data: Source, directory: Path, *, layout: Layout, seq_len: int,
                   val_fraction: float, seed: int, val: Source | None = None, test: Source | None = None,
                   workers: int | None = None) -> dict[str, Any]:
    """Fit ``tokenizer`` if it needs it (on the training documents), encode ``data`` (and ``val``, ``test``), split
    it, and write ``train.npy``, ``val.npy`` (and ``test.npy``) into ``directory``; returns what ``meta.json`` says
    of them: ``split`` (the rule and the held-out documents) and each split's sizes.

    The split must be known before fitting, so a trainable tokenizer or a built-in dataset counts the documents
    first; otherwise they are counted while encoding. A built-in dataset is encoded in split order (training
    documents, then validation ones, as its permutation lists them), so a stateful encoder (fill-in-the-middle draws)
    sees them in the order it always did; files are encoded in file order."""
    streams = check_streams(tokenizer, layout, seq_len)
    width = seq_len + streams if layout == "samples" else None
    held_out = None  # (train, val) indices, when drawn before encoding
    if val is None and (data.samples is not None or tokenizer.needs_fit):
        count = int(count_documents(tokenizer, data).sum())
        _check_count(count, data, layout)
        held_out = document_split(count, val_fraction, seed) if count > 1 else None
    if tokenizer.needs_fit:
        started = time.perf_counter()
        say = Console(stderr=True).print
        say(f"fitting tokenizer {tokenizer.name!r} on the training documents of {data.name} …", highlight=False)
        if data.samples is not None and held_out is not None:
            tokenizer.fit([data.samples[i] for i in held_out[0].tolist()])  # in the permutation's order
        else:  # a single document fits on the whole of it
            keep = None if held_out is None else ~np.isin(np.arange(count), held_out[1])
            tokenizer.fit(fitting_texts(tokenizer, data, keep))
        say(f"fitted tokenizer {tokenizer.name!r} in {time.perf_counter() - started:.0f} s", highlight=False)
    if layout == "samples" and tokenizer.pad_id is None:
        raise ValueError(f"layout 'samples' needs a pad token, and tokenizer {tokenizer.name!r} has none")
    dtype = ids_dtype(tokenizer.vocab_size)

    def encode(source: Source, name: str) -> Encoded:
        chosen = auto_workers(tokenizer, source) if workers is None else workers
        return encode_source(tokenizer, source, directory / f"{name}.ids", dtype, width, chosen)

    write = lambda encoded, order, name: write_documents(  # noqa: E731
        encoded, order, directory / f"{name}.npy", layout, seq_len + streams, tokenizer.pad_id)
    meta: dict[str, Any] = {}
    if data.samples is not None and held_out is not None:  # in split order: training, then validation
        order = np.concatenate(held_out)
        encoded = encode(Source.of_samples(data.name, [data.samples[i] for i in order.tolist()]), "data")
        positions = np.arange(len(order))
        train, val_positions = positions[:len(held_out[0])], positions[len(held_out[0]):]
        meta["split"] = {"rule": "documents", "seed": seed, "val_fraction": val_fraction,
                         "val": [{"source": data.name, "documents": np.sort(held_out[1]).tolist()}]}
        meta["train"], meta["val"] = write(encoded, train, "train"), write(encoded, val_positions, "val")
    else:
        encoded = encode(data, "data")
        count = len(encoded.ends)
        if held_out is not None and count != sum(map(len, held_out)):
            raise ValueError(f"{data.name} changed while it was prepared ({sum(map(len, held_out))} documents, "
                             f"then {count}); prepare it again when it no longer changes")
        if val is not None:
            held = encode(val, "held-out")
            meta["split"] = {"rule": "explicit", "val": [{"source": unit.name} for unit in val.units]}
            meta["train"] = write(encoded, np.arange(count), "train")
            meta["val"] = write(held, np.arange(len(held.ends)), "val")
            held.path.unlink()
        else:
            _check_count(count, data, layout)
            if count == 1:
                meta.update(_token_stream_split(tokenizer, encoded, directory, val_fraction))
            else:
                train, val_documents = held_out or document_split(count, val_fraction, seed)
                first = np.searchsorted(encoded.unit_of, np.arange(len(data.units)))
                meta["split"] = {"rule": "documents", "seed": seed, "val_fraction": val_fraction,
                                 "val": listing(data, encoded, val_documents, first)}
                meta["train"], meta["val"] = write(encoded, train, "train"), write(encoded, val_documents, "val")
    encoded.path.unlink()
    if test is not None:
        tested = encode(test, "test")
        meta["split"]["test"] = [{"source": unit.name} for unit in test.units]
        meta["test"] = write(tested, np.arange(len(tested.ends)), "test")
        tested.path.unlink()
    return meta


def _check_count(count: int, data: Source, layout: Layout) -> None:
    if count == 0:
        raise ValueError(f"the dataset {data.name} is empty: it holds no samples")
    if count == 1 and layout == "samples":
        raise ValueError(
            f"the dataset {data.name} holds 1 sample; a validation split needs at least 2 (add samples, or give "
            "held-out ones in data.val_path)"
        )


def _token_stream_split(tokenizer: Tokenizer, encoded: Encoded, directory: Path, val_fraction: float) -> dict[str, Any]:
    """One document: its last ``val_fraction`` of tokens (at least one) are validation."""
    total = int(encoded.ends[-1])
    cut = total - max(1, round(total * val_fraction))
    val_units = units_of_tokens(tokenizer, encoded, cut)
    return {
        "split": {"rule": "token-stream", "val_fraction": val_fraction, "cut": cut},
        "train": write_token_range(encoded, 0, cut, directory / "train.npy", int(encoded.units[0]) - val_units),
        "val": write_token_range(encoded, cut, total, directory / "val.npy", val_units),
    }
