"""The tokenizer contract plugins implement, and the byte-level tokenizer core ships for tests and the quick start."""

from __future__ import annotations

import inspect
import json
import operator
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from armm.files import find_files, numbered_paths, read_text, with_gzip
from armm.hookspecs import hookimpl


@dataclass(frozen=True)
class LongDocument:
    """One document too big to hold at once, as the pieces it is read in: ``read_file`` may yield one for a huge
    file. Data preparation encodes the pieces with ``encode_batch`` and puts one bos before them and one eos after,
    so a plugin must cut where encoding the pieces apart gives the ids of the whole (``armm.files.read_text_pieces``
    cuts text where byte-level BPE's pre-tokenizer splits anyway)."""

    pieces: Iterable[Any]


class Tokenizer(ABC):
    """Maps samples of one modality to token ids in ``[0, vocab_size)`` and back.

    A tokenizer owns everything domain-specific about its modality: ids (``encode``/``decode``),
    how raw files become samples (``read``), how generated samples become files a person can open
    (``write``), and the natural unit that "bits per unit" counts (``unit``, ``num_units``).
    Subclasses set ``name`` (the registry key), ``modality``, ``unit`` and ``file_suffixes`` (or only
    ``file_suffix``), and implement the abstract methods. ``special_tokens`` maps roles (``bos``, ``eos``,
    ``pad`` and any extra) to ids. ``armm.testing.TokenizerContract`` checks an implementation.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    unit: ClassVar[str] = "token"
    file_suffix: ClassVar[str] = ".txt"
    """The suffix of the files ``write`` makes by default: ``file_suffixes[0]``. A class that sets only
    ``file_suffix`` writes that one format (its instances may set it too, as ``code-bpe``'s ``suffixes`` do)."""
    read_suffixes: tuple[str, ...] = ()
    """The file names ``read`` takes in a folder or glob (``".txt"``, ``".txt.gz"``); empty when the plugin does not
    say, and then training preparation hands the whole source to ``read`` at once instead of streaming its files."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep ``file_suffix`` and ``file_suffixes`` in step: a class that declares only ``file_suffixes`` gets its
        first as ``file_suffix``; one that declares only ``file_suffix`` writes that one format."""
        super().__init_subclass__(**kwargs)
        suffixes, suffix = "file_suffixes" in vars(cls), "file_suffix" in vars(cls)
        if suffix and not suffixes:
            cls.file_suffixes = Tokenizer.file_suffixes  # the property again: (file_suffix,), per instance
        elif suffixes and not suffix:
            cls.file_suffix = cls.file_suffixes[0]
        elif suffixes and cls.file_suffixes[0] != cls.file_suffix:
            raise TypeError(f"{cls.__name__}: file_suffix {cls.file_suffix!r} must be the first of file_suffixes "
                            f"{cls.file_suffixes!r} (the default format)")

    @property
    def file_suffixes(self) -> tuple[str, ...]:
        """The suffixes of the formats ``write`` makes, the default (``file_suffix``) first: ``(".png", ".jpg",
        ".npy")``. A subclass declares them as a class attribute; by default ``(file_suffix,)``."""
        return (self.file_suffix,)

    def write_format(self, path: str | Path, format: str | None = None) -> str:
        """The suffix ``write(samples, path, format)`` gives its files: ``format`` when given (one of
        ``file_suffixes``, else a ValueError naming them), else ``path``'s suffix when it is one of them, else the
        default ``file_suffix``."""
        if format is None:
            suffix = Path(path).suffix
            return suffix if suffix in self.file_suffixes else self.file_suffix
        if format not in self.file_suffixes:
            raise ValueError(f"tokenizer {self.name!r} writes {one_of(self.file_suffixes)} files, not {format!r}; "
                             "pass format= one of them")
        return format

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @property
    def special_tokens(self) -> dict[str, int]:
        return {}

    @property
    def bos_id(self) -> int | None:
        return self.special_tokens.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get("eos")

    @property
    def pad_id(self) -> int | None:
        return self.special_tokens.get("pad")

    @property
    def num_streams(self) -> int:
        """Ids a model position reads (``ModelConfig.num_streams``): 1 for a plain sequence; K for a layout of K
        parallel streams, such as MusicGen's delay pattern over K codebooks, whose ids come K at a time (position s
        holds ids ``s·K .. s·K + K - 1``). Such a tokenizer must keep each stream's ids at their place mod K;
        sequences start with ``start_ids``, one whole position."""
        return 1

    @property
    def start_ids(self) -> list[int]:
        """What every sequence (document, prompt) starts with: bos, then ``num_streams - 1`` pads, so that the
        sample's ids begin a position; none without a bos."""
        if self.bos_id is None:
            return []
        if self.num_streams > 1 and self.pad_id is None:
            raise ValueError(f"tokenizer {self.name!r} lays its ids out in {self.num_streams} streams, which needs a "
                             f"pad token to fill whole positions; give it one in special_tokens")
        return [self.bos_id] + [self.pad_id] * (self.num_streams - 1)

    @abstractmethod
    def encode(self, sample: Any) -> list[int]:
        """One sample (text, array, …) → token ids, without bos/eos."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> Any:
        """Token ids → one sample; special tokens are skipped. Ids outside the vocabulary raise ValueError."""

    def token_bytes(self, token: int) -> bytes:
        """The UTF-8 bytes one token of a text tokenizer adds to decoded text, which may be part of a character
        (``decode([token])`` turns that into U+FFFD); by default the UTF-8 of ``decode([token])``."""
        return self.decode([token]).encode("utf-8")

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write everything ``load`` needs into ``directory`` (which exists)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Rebuild the tokenizer from what ``save`` wrote."""

    @abstractmethod
    def read(self, source: str | Path) -> list[Any]:
        """Raw data → samples. ``source`` is a file, a folder or a glob (see ``armm.files.find_files``);
        an empty or unreadable source raises an error naming the file."""

    @abstractmethod
    def write(self, samples: Sequence[Any], path: str | Path, format: str | None = None) -> list[Path]:
        """Samples → file(s) at ``path`` in the format ``format`` names, one of ``file_suffixes`` (None: the
        suffix of ``path`` when it is one of them, else the default; ``write_format`` resolves it); the files end
        with that suffix whatever ``path`` ends with. Returns the paths written. A tokenizer of one format may
        leave ``format`` out of its signature: armm passes it only to choose another format."""

    def read_file(self, path: Path) -> Iterable[Any]:
        """The samples of one file of ``read_suffixes``, for training preparation, which streams files one by one;
        ``read(path)`` by default. A plugin may yield samples lazily, and a ``LongDocument`` for a file too big to
        hold."""
        return self.read(path)

    def num_units(self, sample: Any) -> int:
        """How many ``unit``s a sample holds (bytes, residues, pixel values, audio samples)."""
        return len(self.encode(sample))

    @property
    def decodes_text(self) -> bool:
        """Whether samples are text (``decode`` returns ``str``): ``armm sample`` prints them instead of writing files,
        and ``armm inspect`` labels tokens with their text."""
        try:
            return isinstance(self.decode([]), str)
        except (ValueError, TypeError, IndexError, RuntimeError):  # a plugin that cannot decode no ids
            return False

    @property
    def sample_length(self) -> int | None:
        """Ids per encoded sample when every sample has the same number (an 8x8 image: 64), else None.
        A mixed layout uses it to end a span exactly when it is full."""
        return None

    @property
    def content_cycle(self) -> list[Sequence[int]] | None:
        """Which ids may stand at each position of a sample, in turn, when the positions cycle through groups: content
        position i holds an id of ``content_cycle[i % len(content_cycle)]`` (an audio codec's K codebooks, frame by
        frame; a delay pattern's whole clip). A mixed layout keeps sampling inside the cycle; None (default): any
        content id anywhere."""
        return None

    @property
    def needs_fit(self) -> bool:
        """True while a trainable tokenizer has no vocabulary yet (training fits it first)."""
        return False

    def encode_document(self, sample: Any) -> list[int]:
        """A training document: ``start_ids`` (bos), the sample's ids, eos. Plugins may add training-time transforms
        (fill-in-the-middle, a class token before an image)."""
        eos = [self.eos_id] if self.eos_id is not None else []
        return self.start_ids + self.encode(sample) + eos

    def encode_batch(self, samples: Sequence[Any]) -> list[list[int]]:
        """``encode`` of many samples (no bos/eos); plugins whose backend encodes batches faster override it."""
        return [self.encode(sample) for sample in samples]

    def encode_documents(self, samples: Sequence[Any]) -> list[list[int]]:
        """``encode_document`` of many samples, in order: what training preparation calls, a batch at a time."""
        return [self.encode_document(sample) for sample in samples]

    def augment(self, ids: np.ndarray, rng: random.Random) -> np.ndarray:
        """A random transform of one training item's ids, drawn from ``rng`` alone: music transposed, audio louder or
        softer, an image shifted. ``ids`` is the raw row before inputs and targets are made: a window of
        ``seq_len + 1`` ids of a packed stream (documents cut anywhere, bos and eos inside), or one row of a samples
        layout (bos … eos, then pads), possibly a read-only view of the cache: return a new array of the same length
        and dtype, leaving special tokens where they are. Training calls it only when a tokenizer class overrides it
        (the identity by default), on the training split only, with ``rng`` seeded by the run's seed and the item's
        key (``armm.training.augment``), so a resumed run draws the same transforms; make it the identity unless an
        option turns it on."""
        return ids

    def encode_prompt(self, prompt: str) -> list[int]:
        """The ids a generation starts from, after bos: a text prompt's ids by default, none for ``""``.
        Plugins whose samples are not text may read prompts their own way (e.g. ``"7"`` → a class token)."""
        return self.encode(prompt) if prompt else []

    def encode_prefix(self, sample: Any, units: int) -> list[int]:
        """The ids of the first ``units`` units of ``sample``, which a generation continues (``armm.prompt_ids``,
        ``armm sample --prompt-file --prompt-units``). By default the first ``units`` items of a ``str`` (characters)
        or a 1-D array (audio samples); plugins whose units are not the sample's items, or whose ids cover several
        units (an image's pixels in raster order, a codec's frames), override it."""
        if isinstance(sample, str) or getattr(sample, "ndim", None) == 1:
            return self.encode(sample[:units])
        raise ValueError(f"tokenizer {self.name!r} cannot keep the first units of a {type(sample).__name__} sample "
                         "(it has no encode_prefix(sample, units)); prompt with the whole sample")

    def fit(self, samples: Iterable[Any]) -> None:
        """Learn the vocabulary from samples; only trainable tokenizers override this."""
        raise NotImplementedError(f"tokenizer {self.name!r} has a fixed vocabulary and cannot be fitted")

    def check_ids(self, ids: Sequence[int]) -> None:
        """Raise ValueError naming the first id that is not an integer in ``[0, vocab_size)``."""
        for position, token in enumerate(ids):
            try:
                operator.index(token)  # int, numpy integer, integer 0-d tensor
            except TypeError:
                raise ValueError(
                    f"token id {token!r} at position {position} is not an integer; token ids of tokenizer "
                    f"{self.name!r} are integers 0 .. {self.vocab_size - 1}"
                ) from None
            if not 0 <= token < self.vocab_size:
                raise ValueError(
                    f"token id {token} at position {position} is outside the vocabulary of tokenizer "
                    f"{self.name!r} (0 .. {self.vocab_size - 1})"
                )


def one_of(suffixes: Sequence[str]) -> str:
    """``.png, .jpg or .npy``: suffixes for a message."""
    return " or ".join(filter(None, [", ".join(suffixes[:-1]), suffixes[-1]]))


def build_tokenizer(tokenizer_class: type[Tokenizer], options: Mapping[str, Any]) -> Tokenizer:
    """``tokenizer_class(**options)``; an option it does not take, or of the wrong type, is a ValueError naming the
    tokenizer and the options its constructor declares."""
    try:
        return tokenizer_class(**options)
    except TypeError as err:
        declared = [name for name, p in inspect.signature(tokenizer_class).parameters.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ValueError(
            f"tokenizer {tokenizer_class.name!r} cannot be built with the options {dict(options)} ({err}); "
            f"its options are: {', '.join(declared) or 'none'}"
        ) from None


TEXT_FORMATS = (".txt", ".jsonl")


def write_texts(samples: Sequence[str], path: str | Path, suffix: str) -> list[Path]:
    """Texts as files: ``.txt``, one UTF-8 file per sample (``out.txt``, or ``out-0.txt``, …) with its line endings
    as they are; ``.jsonl``, one file of ``{"text": sample}`` lines (a manifest training data takes as it is)."""
    if suffix == ".jsonl":
        return [write_jsonl_texts(samples, path)]
    paths = numbered_paths(path, len(samples), suffix)
    for sample, target in zip(samples, paths):
        target.write_text(sample, encoding="utf-8", newline="")
    return paths


def write_jsonl_texts(samples: Sequence[str], path: str | Path) -> Path:
    """One JSON Lines file at ``path`` (suffix ``.jsonl``): a ``{"text": sample}`` line per sample."""
    target = Path(path).with_suffix(".jsonl")
    lines = (json.dumps({"text": sample}, ensure_ascii=False) + "\n" for sample in samples)
    target.write_text("".join(lines), encoding="utf-8")
    return target


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, then bos=256, eos=257, pad=258. Lossless on any text."""

    name = "bytes"
    modality = "text"
    unit = "byte"
    file_suffixes = TEXT_FORMATS
    read_suffixes = with_gzip((".txt", ".md"))

    @property
    def vocab_size(self) -> int:
        return 259

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"bos": 256, "eos": 257, "pad": 258}

    def encode(self, sample: str) -> list[int]:
        if not isinstance(sample, str):
            raise TypeError(f"tokenizer 'bytes' encodes str, got {type(sample).__name__}")
        return list(sample.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        self.check_ids(ids)
        return bytes(token for token in ids if token < 256).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        self.check_ids([token])
        return bytes([token]) if token < 256 else b""

    def read(self, source: str | Path) -> list[str]:
        return [read_text(path) for path in find_files(source, self.read_suffixes, what="text files")]

    def write(self, samples: Sequence[str], path: str | Path, format: str | None = None) -> list[Path]:
        return write_texts(samples, path, self.write_format(path, format))

    def num_units(self, sample: str) -> int:
        return len(sample.encode("utf-8"))

    def save(self, directory: str | Path) -> None:
        (Path(directory) / "bytes.json").write_text(json.dumps({"vocab_size": self.vocab_size}) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ByteTokenizer:
        return cls()


@hookimpl
def armm_register_tokenizers(register) -> None:
    register("bytes", ByteTokenizer)
