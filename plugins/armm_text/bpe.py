"""Byte-level BPE on Hugging Face ``tokenizers``: trainable, lossless on any Unicode text, loads any tokenizer.json."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from armm.files import find_files, numbered_paths, read_json_object, read_text
from armm.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "bpe_settings.json"
BYTE_ALPHABET_SIZE = 256


@dataclass(frozen=True)
class Vocabulary:
    """What a fitted or loaded tokenizer knows: the backend and its special-token ids."""

    backend: Backend
    special_ids: dict[str, int]  # role → id
    id_of_special_text: dict[str, int]  # token text → id
    skipped_ids: frozenset[int]  # ids ``decode`` drops: the roles' and the file's own special tokens
    size: int  # highest id + 1
    special_pattern: re.Pattern[str]  # matches any role's token text, longest first


class BPETokenizer(Tokenizer):
    """Byte-level BPE: text → UTF-8 bytes → learned merges. No normalizer: ``decode(encode(t)) == t`` for any ``t``.

    Special tokens are roles (``bos``, ``eos``, ``pad`` and any ``extra_special_tokens`` role → token text) whose
    ids come only from ``special_tokens``: text that happens to contain a special token's string is encoded as
    ordinary text unless ``encode(..., allow_special=True)``. ``decode`` skips special tokens.
    """

    name = "text-bpe"
    modality = "text"
    unit = "byte"
    file_suffix = ".txt"
    read_suffixes: tuple[str, ...] = (".txt", ".md")

    def __init__(
        self,
        vocab_size: int = 8192,
        *,
        bos: str | None = "<|bos|>",
        eos: str | None = "<|endoftext|>",
        pad: str | None = "<|pad|>",
        extra_special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        """``vocab_size`` is what ``fit`` aims for (special tokens and the 256 byte tokens included); a role set
        to None has no token."""
        extra = dict(extra_special_tokens or {})
        clashing = sorted({"bos", "eos", "pad"} & extra.keys())
        if clashing:
            raise ValueError(f"extra_special_tokens may not redefine {clashing}; pass them as bos=, eos=, pad=")
        roles = {"bos": bos, "eos": eos, "pad": pad, **extra}
        self.roles = {role: token for role, token in roles.items() if token is not None}
        tokens = list(self.roles.values())
        if "" in tokens or len(set(tokens)) != len(tokens):
            raise ValueError(f"special tokens must be distinct non-empty strings, got {self.roles}")
        self.fit_vocab_size = vocab_size
        self._vocabulary: Vocabulary | None = None

    # --- construction ------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """Constructor keywords (JSON-able) that rebuild this tokenizer around a saved vocabulary."""
        extra = {role: token for role, token in self.roles.items() if role not in ("bos", "eos", "pad")}
        named = {role: self.roles.get(role) for role in ("bos", "eos", "pad")}
        return {"vocab_size": self.fit_vocab_size, **named, "extra_special_tokens": extra}

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
        minimum = BYTE_ALPHABET_SIZE + len(self.roles)
        if self.fit_vocab_size < minimum:
            raise ValueError(
                f"vocab_size {self.fit_vocab_size} is too small: 256 byte tokens + "
                f"{len(self.roles)} special tokens need {minimum}"
            )
        backend = Backend(models.BPE())
        backend.pre_tokenizer = self.pre_tokenizer()
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.fit_vocab_size,
            special_tokens=list(self.roles.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        seen = [0]
        backend.train_from_iterator(_counting_texts(samples, seen), trainer)
        if not seen[0]:
            raise ValueError(f"cannot fit tokenizer {self.name!r}: the samples hold no text (empty corpus)")
        self._attach(backend, source="the fitted vocabulary")

    def _attach(self, backend: Backend, source: str) -> None:
        """Adopt a trained or loaded backend: resolve the roles to ids and make special strings encode as text."""
        vocab = backend.get_vocab(with_added_tokens=True)
        missing = [token for token in self.roles.values() if token not in vocab]
        if missing:
            raise ValueError(
                f"special token(s) {missing} are not in the vocabulary of {source}; name existing tokens "
                f"or set the role to None (roles: {self.roles})"
            )
        special_ids = {role: vocab[token] for role, token in self.roles.items()}
        file_specials = {i for i, added in backend.get_added_tokens_decoder().items() if added.special}
        longest_first = sorted(self.roles.values(), key=len, reverse=True)
        backend.encode_special_tokens = True
        self._vocabulary = Vocabulary(
            backend=backend,
            special_ids=special_ids,
            id_of_special_text={token: special_ids[role] for role, token in self.roles.items()},
            skipped_ids=frozenset(special_ids.values()) | frozenset(file_specials),
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

    def encode(self, sample: str, *, allow_special: bool = False) -> list[int]:
        """Text → ids. With ``allow_special`` a special token's string in the text becomes its id, never split."""
        if not isinstance(sample, str):
            raise TypeError(f"tokenizer {self.name!r} encodes str, got {type(sample).__name__}")
        vocabulary = self.vocabulary
        if not allow_special or not self.roles:
            return vocabulary.backend.encode(sample, add_special_tokens=False).ids
        ids: list[int] = []
        for index, part in enumerate(vocabulary.special_pattern.split(sample)):
            if index % 2:  # re.split puts the captured special tokens at odd indices
                ids.append(vocabulary.id_of_special_text[part])
            elif part:
                ids.extend(vocabulary.backend.encode(part, add_special_tokens=False).ids)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        self.check_ids(ids)
        skipped = self.vocabulary.skipped_ids
        kept = [int(i) for i in ids if i not in skipped]
        return self.backend.decode(kept, skip_special_tokens=False)

    def num_units(self, sample: str) -> int:
        return len(sample.encode("utf-8"))

    def read(self, source: str | Path) -> list[str]:
        """One sample per file with one of ``read_suffixes`` in a file, folder or glob."""
        return [read_text(path) for path in find_files(source, self.read_suffixes, what=f"{self.modality} files")]

    def write(self, samples: Sequence[str], path: str | Path) -> list[Path]:
        """One UTF-8 file per sample, line endings exactly as in the sample."""
        paths = numbered_paths(path, len(samples), self.file_suffix)
        for sample, target in zip(samples, paths):
            target.write_text(sample, encoding="utf-8", newline="")
        return paths

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.backend.save(str(directory / TOKENIZER_FILE))
        (directory / SETTINGS_FILE).write_text(json.dumps(self.options(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> BPETokenizer:
        settings = read_json_object(Path(directory) / SETTINGS_FILE, f"settings written by {cls.__name__}.save")
        return cls.from_file(Path(directory) / TOKENIZER_FILE, **settings)


def _counting_texts(samples: Iterable[str], seen: list[int]) -> Iterator[str]:
    """Stream ``samples`` to the trainer, checking each is text and adding its length to ``seen[0]``."""
    for sample in samples:
        if not isinstance(sample, str):
            raise TypeError(f"fit expects str samples, got {type(sample).__name__}")
        seen[0] += len(sample)
        yield sample
