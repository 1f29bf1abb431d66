"""Generated tokens as text, piece by piece: cut at the first stop string, released in pieces that never change.

Used by ``armm sample --stream``, ``armm chat`` and the server."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import tokenizers
from tokenizers.decoders import DecodeStream

from armm.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 character decodes to until its last byte arrives


class TextStream:
    """Decodes one row's tokens as they arrive.

    ``push`` returns the text that is now final: it holds back a trailing incomplete character and any
    suffix that could be the start of a stop string. Once a stop string appears, the text ends just
    before it and ``finish_reason`` is ``"stop"``.

    ``text`` is always ``tokenizer.decode(ids)`` (cut at the stop string). A tokenizer over a ``tokenizers`` backend
    (``text-bpe``: its ``backend``) gets it from a ``DecodeStream``, at constant work per token; any other tokenizer
    decodes all ids again at each token.
    """

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of self.text already released
        self.finish_reason: str | None = None
        self._longest_stop = max(map(len, self.stop_strings), default=0)
        backend = getattr(tokenizer, "backend", None)
        self._backend = backend if isinstance(backend, tokenizers.Tokenizer) else None
        self._decoder = DecodeStream(skip_special_tokens=True) if self._backend else None  # as decode skips them
        self._settled = ""  # the text the decoder has given so far: that of ids[:_settled_ids]
        self._settled_ids = 0

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    def push(self, token: int, is_stop_token: bool = False) -> str:
        """Add one token; return the newly released text (the rest of it if this token ends the choice)."""
        final = _complete_length(self.text)  # only a trailing incomplete character can still change
        self.ids.append(token)
        self.text = self._decode(token)
        start = max(0, final - self._longest_stop + 1)  # a stop string in the text so far would have ended it
        cut = min((i for i in (self.text.find(s, start) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return self.finish("stop")
        if is_stop_token:
            return self.finish("stop")
        return self._release(self._stable_end())

    def finish(self, reason: str) -> str:
        """End the choice (``"stop"`` or ``"length"``) and release everything not yet released."""
        self.finish_reason = reason
        return self._release(len(self.text))

    def _decode(self, token: int) -> str:
        """``tokenizer.decode(self.ids)``: the decoder's text, then that of the ids it holds back (the bytes of an
        incomplete character, as replacement characters)."""
        if self._decoder is None:
            return self.tokenizer.decode(self.ids)
        self.tokenizer.check_ids([token])
        piece = self._decoder.step(self._backend, token)
        if piece is not None:
            self._settled += piece
            self._settled_ids = len(self.ids)
            return self._settled
        return self._settled + self.tokenizer.decode(self.ids[self._settled_ids:])

    def _stable_end(self) -> int:
        """Where the text that can no longer change ends."""
        stable = end = _complete_length(self.text)
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, stable), 0, -1):
                if self.text.endswith(stop[:size], 0, stable):
                    end = min(end, stable - size)
                    break
        return end

    def _release(self, end: int) -> str:
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:end], end
        return piece


def _complete_length(text: str) -> int:
    """The length of ``text`` without its trailing replacement characters (found without copying the text)."""
    end = len(text)
    while end and text[end - 1] == REPLACEMENT:
        end -= 1
    return end


def stream_text(tokenizer: Tokenizer, tokens: Iterable[int | None], stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """Text pieces of a stream of token ids (``None`` ends it), stopping before the first stop string."""
    stream = TextStream(tokenizer, stop_strings)
    for token in tokens:
        if token is None:
            break
        piece = stream.push(token)
        if piece:
            yield piece
        if stream.finish_reason is not None:
            return
    piece = stream.finish("length")
    if piece:
        yield piece
