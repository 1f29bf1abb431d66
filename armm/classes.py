"""The ``classes`` tokenizer: a fixed vocabulary of class names, one id each — the label part of a mixed layout
(``parts: {label: {tokenizer: classes}, image: …}``), so ``--prompt seven`` asks for class "seven" in any modality."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from armm.files import find_files, read_json_object, read_text, with_gzip
from armm.hookspecs import hookimpl
from armm.tokenizer import TEXT_FORMATS, Tokenizer, write_jsonl_texts

CONFIG_FILE = "classes.json"


def check_names(names: Sequence[str]) -> list[str]:
    """``names`` as a list, or a ValueError naming the first that is empty, not a string, padded with spaces, spans
    lines or repeats."""
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name or name != name.strip() or "\n" in name or "\r" in name:
            raise ValueError(f"class name {name!r} must be a non-empty string on one line, without surrounding spaces")
        if name in seen:
            raise ValueError(f"class name {name!r} is given twice; every class has one name")
        seen.add(name)
    return list(names)


class ClassTokenizer(Tokenizer):
    """Class names as ids ``0 .. N-1`` (in the order given, or sorted when learned by ``fit``), then bos, eos, pad.

    A sample is one class name (``str``); ``encode("seven")`` is its one id. Files hold one name per line.

    Args:
        names: The class names; None learns them with ``fit`` (sorted unique names, as torchvision's ImageFolder
            sorts class folders).
    """

    name = "classes"
    modality = "label"
    unit = "label"
    file_suffixes = TEXT_FORMATS
    read_suffixes = with_gzip((".txt",))

    def __init__(self, names: Sequence[str] | None = None) -> None:
        self.names: list[str] | None = None if names is None else check_names(names)
        if self.names == []:
            raise ValueError("a classes tokenizer needs at least one class name (or names=None, to fit them)")
        self._ids = {name: i for i, name in enumerate(self.names or [])}
        self._learned_here = False  # names learned by fit in this process (for a pointed error while preparing data)

    @property
    def needs_fit(self) -> bool:
        return self.names is None

    @property
    def fitted_names(self) -> list[str]:
        """The class names; a ValueError while there are none yet."""
        if self.names is None:
            raise ValueError("tokenizer 'classes' has no class names yet; call fit(names) or give names=[...]")
        return self.names

    @property
    def vocab_size(self) -> int:
        return len(self.fitted_names) + 3

    @property
    def special_tokens(self) -> dict[str, int]:
        count = len(self.fitted_names)
        return {"bos": count, "eos": count + 1, "pad": count + 2}

    @property
    def sample_length(self) -> int:
        return 1

    def fit(self, samples: Iterable[str]) -> None:
        """Learn the class names: the sorted unique names among ``samples``."""
        names = sorted(check_names(list(set(samples))))
        if not names:
            raise ValueError("tokenizer 'classes' cannot be fitted on no samples; give at least one class name")
        self.names = names
        self._ids = {name: i for i, name in enumerate(self.names)}
        self._learned_here = True

    def encode(self, sample: str) -> list[int]:
        if not isinstance(sample, str):
            raise TypeError(f"tokenizer 'classes' encodes a class name (str), got {type(sample).__name__}")
        if sample not in self._ids:
            hint = ("; they were learned from the training samples, so a class whose samples are all held out for "
                    "validation is unknown: add training samples of it, or list every class in the part's options "
                    "(options: {names: [...]})") if self._learned_here else ""  # fmt: skip
            raise ValueError(f"unknown class {sample!r}; the classes are: {', '.join(self.fitted_names)}{hint}")
        return [self._ids[sample]]

    def decode(self, ids: Sequence[int]) -> str:
        """The names of the class ids, space-separated (one id: its name); special tokens are skipped."""
        self.check_ids(ids)
        return " ".join(self.fitted_names[token] for token in ids if token < len(self.fitted_names))

    def token_name(self, token: int) -> str | None:
        """The class name of ``token`` (for ``armm inspect``); None for bos, eos and pad."""
        return self.fitted_names[token] if 0 <= token < len(self.fitted_names) else None

    def num_units(self, sample: str) -> int:
        return len(self.encode(sample))

    def read(self, source: str | Path) -> list[str]:
        """One class name per non-blank line of each text file (surrounding spaces stripped)."""
        files = find_files(source, self.read_suffixes, what="class name files")
        return [line.strip() for path in files for line in read_text(path).splitlines() if line.strip()]

    def write(self, samples: Sequence[str], path: str | Path, format: str | None = None) -> list[Path]:
        """All samples into one text file at ``path``, one name per line (suffix ``.txt``), or ``{"text": name}``
        lines (``format`` ``.jsonl``)."""
        if self.write_format(path, format) == ".jsonl":
            return [write_jsonl_texts(samples, path)]
        target = Path(path).with_suffix(".txt")
        target.write_text("".join(f"{sample}\n" for sample in samples), encoding="utf-8")
        return [target]

    def save(self, directory: str | Path) -> None:
        (Path(directory) / CONFIG_FILE).write_text(json.dumps({"names": self.names}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ClassTokenizer:
        return cls(**read_json_object(Path(directory) / CONFIG_FILE, "the class names written by ClassTokenizer.save"))


@hookimpl
def armm_register_tokenizers(register) -> None:
    register(ClassTokenizer.name, ClassTokenizer)
