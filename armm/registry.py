"""A name → object registry that refuses duplicates and names every provider."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class PluginError(ValueError):
    """A plugin registered something invalid, or two plugins claim the same name."""


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    provider: str


class Registry:
    """Named entries of one kind (``tokenizer``, ``sampler``), each with the distribution that provided it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, obj: Any, *, provider: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{provider} registered a {self.kind} with an invalid name {name!r}")
        if name in self._entries:
            first = self._entries[name].provider
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {first} and by {provider}. "
                "Uninstall one of them, or rename one of the two."
            )
        self._entries[name] = Entry(name, obj, provider)

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries)) or '(none)'}. "
                f"Plugins add more through the armm.plugins entry point (see `armm plugins`)."
            )
        return self._entries[name].obj

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)
