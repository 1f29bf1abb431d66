"""The tokenizer contract plugins implement, and the byte-level tokenizer core ships for tests and the quick start."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from armm.hookspecs import hookimpl


class Tokenizer(ABC):
    """Maps samples of one modality to token ids in ``[0, vocab_size)`` and back.

    Subclasses set ``name`` (the registry key) and ``modality``, and implement the abstract
    methods. ``special_tokens`` maps roles (``bos``, ``eos``, ``pad`` and any extra) to ids.
    """

    name: ClassVar[str]
    modality: ClassVar[str]

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

    @abstractmethod
    def encode(self, sample: Any) -> list[int]:
        """One sample (text, array, …) → token ids, without bos/eos."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> Any:
        """Token ids → one sample; special tokens are skipped. Ids outside the vocabulary raise ValueError."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write everything ``load`` needs into ``directory`` (which exists)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Rebuild the tokenizer from what ``save`` wrote."""

    def fit(self, samples: Iterable[Any]) -> None:
        """Learn the vocabulary from samples; only trainable tokenizers override this."""
        raise NotImplementedError(f"tokenizer {self.name!r} has a fixed vocabulary and cannot be fitted")

    def check_ids(self, ids: Sequence[int]) -> None:
        """Raise ValueError naming the first id outside ``[0, vocab_size)``."""
        for position, token in enumerate(ids):
            if not 0 <= token < self.vocab_size:
                raise ValueError(
                    f"token id {token} at position {position} is outside the vocabulary of tokenizer "
                    f"{self.name!r} (0 .. {self.vocab_size - 1})"
                )


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, then bos=256, eos=257, pad=258. Lossless on any text."""

    name = "bytes"
    modality = "text"

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

    def save(self, directory: str | Path) -> None:
        (Path(directory) / "bytes.json").write_text(json.dumps({"vocab_size": self.vocab_size}) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ByteTokenizer:
        return cls()


@hookimpl
def armm_register_tokenizers(register) -> None:
    register("bytes", ByteTokenizer)
