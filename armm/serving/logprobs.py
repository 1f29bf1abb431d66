"""Log-probabilities for the server, and OpenAI's two shapes of them.

The figures are the model's own next-token distribution, ``log_softmax`` of the raw logits in float32, before any
sampling transform (penalties, temperature, top-k/top-p): vLLM's default "raw logprobs", and what ``armm.score``
gives for the same ids. Generated tokens get theirs from the logits ``generate`` draws them from
(``LogprobSampler``); an echoed prompt gets its own from one teacher-forced forward (``prompt_logprobs``).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from armm.backends import decoding
from armm.model import Transformer
from armm.sampling import Sampler
from armm.tokenizer import Tokenizer


@dataclass(frozen=True)
class TokenLogprob:
    """One token of a choice: its id, its log-probability (None for a prompt's first token, which nothing predicts),
    and the most likely ids at its position with theirs, most likely first."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()

    def keep(self, k: int) -> TokenLogprob:
        """The same token with only its ``k`` most likely alternatives."""
        return TokenLogprob(self.token, self.logprob, self.top[:k])


def token_logprobs(logits: Tensor, tokens: Tensor, k: int) -> list[TokenLogprob]:
    """``logits [N, V]`` and the ``tokens [N]`` that followed them → per row, the token's log-probability and the
    ``k`` most likely ids with theirs."""
    logprobs = logits.float().log_softmax(-1)  # (N, V)
    chosen = logprobs.gather(-1, tokens[:, None])[:, 0].tolist()  # (N,)
    best = logprobs.topk(min(k, logprobs.size(-1)), dim=-1)  # values and indices (N, k), most likely first
    rows = zip(tokens.tolist(), chosen, best.indices.tolist(), best.values.tolist())
    return [TokenLogprob(token, logprob, tuple(zip(ids, values))) for token, logprob, ids, values in rows]


class LogprobSampler(Sampler):
    """Draws as ``sampler`` does and keeps the raw log-probabilities of its last draw, with the ``k`` most likely
    alternatives. ``generate`` calls its sampler once a step with that step's logits ``[B, V]``, just before it
    yields the drawn tokens, so after each yielded step ``take()`` returns that step's figures, one per row."""

    def __init__(self, sampler: Sampler, k: int) -> None:
        super().__init__(sampler.transforms, sampler.spec)
        self.k = k
        self._last: list[TokenLogprob] | None = None

    def __call__(self, logits: Tensor, tokens: Tensor, generators: Sequence[torch.Generator] | None = None) -> Tensor:
        drawn = super().__call__(logits, tokens, generators)
        self._last = token_logprobs(logits, drawn, self.k)
        return drawn

    def take(self) -> list[TokenLogprob]:
        """The log-probabilities of the step ``generate`` yielded last."""
        if self._last is None:
            raise RuntimeError("generate yielded a step without drawing it through its sampler; the server's "
                               "log-probabilities need generate to call its sampler once per step")
        last, self._last = self._last, None
        return last


@torch.inference_mode()
def prompt_logprobs(model: Transformer, ids: Sequence[int], k: int, backend: str = "auto") -> list[TokenLogprob]:
    """Each token of a prompt that fits the model's context, given the tokens before it (the first: None), with the
    ``k`` most likely ids there, from one teacher-forced forward: ``armm.score(model, ids)``'s figures."""
    model.config.check_one_stream("prompt logprobs")
    first = TokenLogprob(ids[0], None)
    if len(ids) == 1:
        return [first]
    tokens = torch.tensor(list(ids), device=model.tok_emb.weight.device)
    with decoding(model, 1, len(ids) - 1, backend) as decoder:
        logits = decoder.forward(tokens[None, :-1], 0)[0]  # (T - 1, V): each next token's prediction
    return [first, *token_logprobs(logits, tokens[1:], k)]


class OpenAILogprobs:
    """Writes ``TokenLogprob``s as OpenAI does, naming each id as the tokenizer writes it: a special token as
    ``<|role|>`` (no bytes: it adds nothing to the text), a token holding part of a UTF-8 character as
    ``bytes:\\xe2\\x80`` (with its raw bytes), any other token as its text."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.special = {token: f"<|{role}|>" for role, token in tokenizer.special_tokens.items()}
        self.piece = lru_cache(maxsize=1 << 16)(self._piece)

    def _piece(self, token: int) -> tuple[str, bytes | None]:
        """An id's name and bytes (None for a special token)."""
        if token in self.special:
            return self.special[token], None
        data = self.tokenizer.token_bytes(token)
        try:
            return data.decode("utf-8"), data
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{byte:02x}" for byte in data), data

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        name, data = self.piece(token)
        return {"token": name, "logprob": logprob, "bytes": None if data is None else list(data)}

    def chat(self, tokens: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
        """``choices[i].logprobs.content`` of a chat completion (or of one chunk)."""
        return [{**self._entry(t.token, t.logprob), "top_logprobs": [self._entry(i, lp) for i, lp in t.top]}
                for t in tokens]

    def completion(self, tokens: Sequence[TokenLogprob], offsets: TextOffsets) -> dict[str, list[Any]]:
        """``choices[i].logprobs`` of a legacy completion (or of one chunk): ``top_logprobs`` maps the names of the
        most likely tokens, and of the chosen one, to their log-probabilities (null where the token's is null);
        ``offsets`` says where the choice's text has got to, and moves on."""
        names, logprobs, top, starts = [], [], [], []
        for t in tokens:
            name, data = self.piece(t.token)
            names.append(name)
            logprobs.append(t.logprob)
            top.append(None if t.logprob is None else {**{self.piece(i)[0]: lp for i, lp in t.top}, name: t.logprob})
            starts.append(offsets.advance(data or b""))
        return {"tokens": names, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": starts}


class TextOffsets:
    """Where each token starts in a choice's text, in characters, as its tokens' bytes arrive (decoded as
    ``decode`` does, with U+FFFD for bytes that are no UTF-8)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.length = 0

    def advance(self, data: bytes) -> int:
        """The offset of the token with bytes ``data``: where its first character begins, or the character it
        finishes when it continues one that an earlier token began."""
        pending = self._decoder.getstate()[0]
        if pending and not (data and 0x80 <= data[0] < 0xC0):  # nothing continues the pending bytes: U+FFFD now
            self.length += len(self._decoder.decode(b"", final=True))
        start = self.length
        self.length += len(self._decoder.decode(data))
        return start


class ResponseLogprobs:
    """One response's log-probabilities, per choice, in its endpoint's shape, a chunk at a time or all at once:
    chat's ``{"content": [...], "refusal": null}`` or the legacy completion's ``{"tokens", "token_logprobs",
    "top_logprobs", "text_offset"}``, whose offsets count on from chunk to chunk."""

    def __init__(self, openai_logprobs: OpenAILogprobs, chat: bool, choices: int) -> None:
        self.openai_logprobs, self.chat = openai_logprobs, chat
        self.offsets = [TextOffsets() for _ in range(choices)]

    def __call__(self, index: int, tokens: list[TokenLogprob]) -> dict[str, Any]:
        if self.chat:
            return {"content": self.openai_logprobs.chat(tokens), "refusal": None}
        return self.openai_logprobs.completion(tokens, self.offsets[index])
