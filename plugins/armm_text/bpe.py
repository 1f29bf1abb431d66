"""Byte-level BPE on Hugging Face ``tokenizers``: trainable, lossless on any Unicode text, loads any tokenizer.json."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend

from armm.files import find_files, read_json_object, read_text, read_text_pieces, with_gzip
from armm.tokenizer import TEXT_FORMATS, LongDocument, Tokenizer, write_texts

TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "bpe_settings.json"
BYTE_ALPHABET_SIZE = 256
LONG_FILE_BYTES = 8 << 20  # files bigger than this on disk are read in pieces (see docs/performance.md)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character a byte-level vocabulary writes each byte as → that byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(BYTE_ALPHABET_SIZE) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(BYTE_ALPHABET_SIZE + i): b for i, b in enumerate(shifted)}}


BYTE_OF_CHAR = _byte_level_alphabet()


@dataclass(frozen=True)
class Vocabulary:
    """What a fitted or loaded tokenizer knows: the backend and its special tokens."""

    backend: Backend
    special_ids: dict[str, int]  # role → id
    id_of_special_text: dict[str, int]  # every special token's text → id: the roles' and all others
    skipped_ids: frozenset[int]  # the special tokens' ids, which ``decode`` drops
    size: int  # highest id + 1
    special_pattern: re.Pattern[str]  # matches any special token's text, longest first


class BPETokenizer(Tokenizer):
    """Byte-level BPE: text → UTF-8 bytes → learned merges. No normalizer: ``decode(encode(t)) == t`` for any ``t``.

    Special tokens are the roles (``bos``, ``eos``, ``pad`` and any ``extra_special_tokens`` role → token text),
    the ``unnamed_special_tokens``, and every other token the backend marks special (a tokenizer.json's
    ``added_tokens`` with ``"special": true``, such as a chat format's ``<|im_start|>``). Their ids come only from
    ``special_texts``: text that happens to contain a special token's string is encoded as ordinary text unless
    ``encode(..., allow_special=True)``. ``decode`` skips special tokens.
    """

    name = "text-bpe"
    modality = "text"
    unit = "byte"
    file_suffixes = TEXT_FORMATS
    read_suffixes: tuple[str, ...] = with_gzip((".txt", ".md"))

    def __init__(
        self,
        vocab_size: int = 8192,
        *,
        bos: str | None = "<|bos|>",
        eos: str | None = "<|endoftext|>",
        pad: str | None = "<|pad|>",
        extra_special_tokens: Mapping[str, str] | None = None,
        unnamed_special_tokens: Sequence[str] = (),
    ) -> None:
        """``vocab_size`` is what ``fit`` aims for (special tokens and the 256 byte tokens included); a role set
        to None has no token. ``unnamed_special_tokens`` are special tokens without a role (a chat format's
        markers): ``fit`` reserves them, and a loaded vocabulary's tokens of that text become special."""
        extra = dict(extra_special_tokens or {})
        clashing = sorted({"bos", "eos", "pad"} & extra.keys())
        if clashing:
            raise ValueError(f"extra_special_tokens may not redefine {clashing}; pass them as bos=, eos=, pad=")
        roles = {"bos": bos, "eos": eos, "pad": pad, **extra}
        self.roles = {role: token for role, token in roles.items() if token is not None}
        if isinstance(unnamed_special_tokens, str):
            raise ValueError(f"unnamed_special_tokens must be a list of strings, got {unnamed_special_tokens!r}")
        self.unnamed_special_tokens = list(unnamed_special_tokens)
        tokens = [*self.roles.values(), *self.unnamed_special_tokens]
        if not all(isinstance(t, str) and t for t in tokens) or len(set(tokens)) != len(tokens):
            raise ValueError(f"special tokens must be distinct non-empty strings, got roles {self.roles} and "
                             f"unnamed_special_tokens {self.unnamed_special_tokens}")
        self.fit_vocab_size = vocab_size
        self._vocabulary: Vocabulary | None = None

    # --- construction ------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """Constructor keywords (JSON-able) that rebuild this tokenizer around a saved vocabulary."""
        extra = {role: token for role, token in self.roles.items() if role not in ("bos", "eos", "pad")}
        named = {role: self.roles.get(role) for role in ("bos", "eos", "pad")}
        return {"vocab_size": self.fit_vocab_size, **named, "extra_special_tokens": extra,
                "unnamed_special_tokens": list(self.unnamed_special_tokens)}

    def pre_tokenizer(self) -> pre_tokenizers.PreTokenizer:
        """How ``fit`` splits text before merging: GPT-2's byte-level regex (no prefix space)."""
        return pre_tokenizers.ByteLevel(add_prefix_space=False)

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> BPETokenizer:
        """Wrap any ``tokenizers`` tokenizer.json (e.g. GPT-2's); ``options`` are constructor keywords, the roles
        naming tokens of that vocabulary (GPT-2: ``bos=None, eos="<|endoftext|>", pad=None``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (expected a Hugging Face tokenizers tokenizer.json)")
        try:
            backend = Backend.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for unparsable files
            raise ValueError(f"{path} is not a Hugging Face tokenizer.json ({err})") from None
        tokenizer = cls(**options)
        tokenizer._attach(backend, source=str(path))
        return tokenizer

    def fit(self, samples: Iterable[str]) -> None:
        """Train merges on texts (any iterable of str, streamed) up to ``vocab_size`` ids."""
        specials = [*self.roles.values(), *self.unnamed_special_tokens]
        minimum = BYTE_ALPHABET_SIZE + len(specials)
        if self.fit_vocab_size < minimum:
            raise ValueError(
                f"vocab_size {self.fit_vocab_size} is too small: 256 byte tokens + "
                f"{len(specials)} special tokens need {minimum}"
            )
        backend = Backend(models.BPE())
        backend.pre_tokenizer = self.pre_tokenizer()
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.fit_vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        seen = [0]
        backend.train_from_iterator(_counting_texts(samples, seen), trainer)
        if not seen[0]:
            raise ValueError(f"cannot fit tokenizer {self.name!r}: the samples hold no text (empty corpus)")
        self._attach(backend, source="the fitted vocabulary")

    def _attach(self, backend: Backend, source: str) -> None:
        """Adopt a trained or loaded backend: resolve the roles to ids, mark the named special tokens special in the
        backend (so plain text never yields them, and they travel with its tokenizer.json), collect every special
        token, and make special strings encode as text."""
        vocab = backend.get_vocab(with_added_tokens=True)
        named = [*self.roles.values(), *self.unnamed_special_tokens]
        missing = [token for token in named if token not in vocab]
        if missing:
            raise ValueError(
                f"special token(s) {missing} are not in the vocabulary of {source}; name existing tokens "
                f"or set the role to None (roles: {self.roles}, unnamed: {self.unnamed_special_tokens})"
            )
        marked = {added.content for added in backend.get_added_tokens_decoder().values() if added.special}
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in named if t not in marked])
        specials = {added.content: i for i, added in backend.get_added_tokens_decoder().items() if added.special}
        backend.encode_special_tokens = True
        longest_first = sorted(specials, key=len, reverse=True)
        self._vocabulary = Vocabulary(
            backend=backend,
            special_ids={role: specials[token] for role, token in self.roles.items()},
            id_of_special_text=specials,
            skipped_ids=frozenset(specials.values()),
            size=max(vocab.values()) + 1,
            special_pattern=re.compile("(" + "|".join(map(re.escape, longest_first)) + ")"),
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (DataLoader workers) rebuilds the backend, which forgets ``encode_special_tokens``."""
        self.__dict__.update(state)
        if self._vocabulary is not None:
            self._vocabulary.backend.encode_special_tokens = True

    @property
    def needs_fit(self) -> bool:
        return self._vocabulary is None

    @property
    def vocabulary(self) -> Vocabulary:
        """The fitted or loaded vocabulary; a clear error telling how to get one before that."""
        if self._vocabulary is None:
            raise ValueError(
                f"tokenizer {self.name!r} has no vocabulary yet: call fit(samples) to train one, or "
                f"load(directory) / from_file('tokenizer.json') to load one"
            )
        return self._vocabulary

    @property
    def backend(self) -> Backend:
        """The ``tokenizers.Tokenizer`` doing the work."""
        return self.vocabulary.backend

    # --- the Tokenizer contract --------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.vocabulary.size

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.vocabulary.special_ids)

    @property
    def special_texts(self) -> dict[str, int]:
        """Every special token's text → its id: the roles' and those without a role (``<|im_start|>``)."""
        return dict(self.vocabulary.id_of_special_text)

    def encode(self, sample: str, *, allow_special: bool = False) -> list[int]:
        """Text → ids. With ``allow_special`` a special token's string in the text becomes its id, never split."""
        if not isinstance(sample, str):
            raise TypeError(f"tokenizer {self.name!r} encodes str, got {type(sample).__name__}")
        vocabulary = self.vocabulary
        if not allow_special or not vocabulary.id_of_special_text:
            return vocabulary.backend.encode(sample, add_special_tokens=False).ids
        ids: list[int] = []
        for index, part in enumerate(vocabulary.special_pattern.split(sample)):
            if index % 2:  # re.split puts the captured special tokens at odd indices
                ids.append(vocabulary.id_of_special_text[part])
            elif part:
                ids.extend(vocabulary.backend.encode(part, add_special_tokens=False).ids)
        return ids

    def encode_batch(self, samples: Sequence[str]) -> list[list[int]]:
        """``encode`` of many texts at once, on all cores (the backend's ``encode_batch``)."""
        for sample in samples:
            if not isinstance(sample, str):
                raise TypeError(f"tokenizer {self.name!r} encodes str, got {type(sample).__name__}")
        return [encoding.ids for encoding in self.backend.encode_batch(list(samples), add_special_tokens=False)]

    def encode_documents(self, samples: Sequence[str]) -> list[list[int]]:
        bos = [self.bos_id] if self.bos_id is not None else []
        eos = [self.eos_id] if self.eos_id is not None else []
        return [bos + ids + eos for ids in self.encode_batch(samples)]

    def decode(self, ids: Sequence[int]) -> str:
        self.check_ids(ids)
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_bytes(self, token: int) -> bytes:
        """A byte-level vocabulary's piece as its bytes (part of a character, maybe); other vocabularies' pieces and
        the tokens ``decode`` skips as ``Tokenizer.token_bytes`` gives them."""
        self.check_ids([token])
        vocabulary = self.vocabulary
        piece = vocabulary.backend.id_to_token(token) or ""
        if (token in vocabulary.skipped_ids or not isinstance(vocabulary.backend.decoder, decoders.ByteLevel)
                or not piece or not set(piece) <= BYTE_OF_CHAR.keys()):
            return super().token_bytes(token)
        return bytes(BYTE_OF_CHAR[char] for char in piece)

    def num_units(self, sample: str) -> int:
        return len(sample.encode("utf-8"))

    def read(self, source: str | Path) -> list[str]:
        """One sample per file with one of ``read_suffixes`` in a file, folder or glob."""
        return [read_text(path) for path in find_files(source, self.read_suffixes, what=f"{self.modality} files")]

    def read_file(self, path: Path) -> list[str | LongDocument]:
        """The file's text; a file over ``LONG_FILE_BYTES`` on disk as a ``LongDocument`` of ~1M-character pieces
        (``armm.files.read_text_pieces``) when the vocabulary pre-tokenizes the way ``fit`` does, so the pieces
        encode to the ids of the whole. Its pieces are read again each time they are iterated."""
        if path.stat().st_size > LONG_FILE_BYTES and self.cuts_safely:
            return [LongDocument(Pieces(path))]
        return [read_text(path)]

    @property
    def cuts_safely(self) -> bool:
        """Whether encoding ``read_text_pieces``' pieces apart gives the ids of the whole text: no normalizer, and
        the pre-tokenizer ``fit`` uses (a loaded tokenizer.json may split or normalise otherwise)."""
        settings = json.loads(self.backend.to_str())
        wanted = json.loads(self.pre_tokenizer().__getstate__())
        return settings.get("normalizer") is None and settings.get("pre_tokenizer") == wanted

    def write(self, samples: Sequence[str], path: str | Path, format: str | None = None) -> list[Path]:
        """One UTF-8 file per sample, line endings exactly as in the sample; or (``format`` ``.jsonl``) one file of
        ``{"text": sample}`` lines (``armm.tokenizer.write_texts``)."""
        return write_texts(samples, path, self.write_format(path, format))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.backend.save(str(directory / TOKENIZER_FILE))
        (directory / SETTINGS_FILE).write_text(json.dumps(self.options(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> BPETokenizer:
        settings = read_json_object(Path(directory) / SETTINGS_FILE, f"settings written by {cls.__name__}.save")
        return cls.from_file(Path(directory) / TOKENIZER_FILE, **settings)


@dataclass(frozen=True)
class Pieces:
    """A text file's pieces (``read_text_pieces``), read afresh each time they are iterated."""

    path: Path

    def __iter__(self) -> Iterator[str]:
        return read_text_pieces(self.path)


def _counting_texts(samples: Iterable[str], seen: list[int]) -> Iterator[str]:
    """Stream ``samples`` to the trainer, checking each is text and adding its length to ``seen[0]``."""
    for sample in samples:
        if not isinstance(sample, str):
            raise TypeError(f"fit expects str samples, got {type(sample).__name__}")
        seen[0] += len(sample)
        yield sample
