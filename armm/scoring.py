"""Chain-rule scoring: log P(x) = Σ_t log P(x_t | x_<t), from one teacher-forced forward pass."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from armm.backends import check_backend, decoding
from armm.model import Transformer

Layout = Literal["packed", "samples"]  # how training lays out documents (``data.layout``)


@dataclass(frozen=True)
class Score:
    """The scores of one sequence. The first token is the condition, so ``num_tokens = len(ids) - 1``."""

    token_logprobs: Tensor  # [len(ids) - 1], natural log of P(x_t | x_<t) for t = 1 ..
    log_likelihood: float  # their sum, in nats

    @property
    def num_tokens(self) -> int:
        return self.token_logprobs.numel()

    @property
    def perplexity(self) -> float:
        return math.exp(-self.log_likelihood / self.num_tokens)

    @property
    def bits_per_token(self) -> float:
        return self.bits_per_unit(self.num_tokens)

    def bits_per_unit(self, num_units: int) -> float:
        """Total bits spread over the modality's units (bytes, residues, pixels…) that the scored tokens cover."""
        if num_units < 1:
            raise ValueError(f"num_units must be >= 1, got {num_units}")
        return -self.log_likelihood / (num_units * math.log(2))


@torch.inference_mode()
def score(model: Transformer, ids: Sequence[int] | Tensor, *, stride: int | None = None, window: int | None = None,
          backend: str = "auto") -> Score:
    """Score ``ids`` (start it with bos to score its first real token too).

    A sequence longer than ``window`` tokens (default ``max_seq_len``; at most ``max_seq_len + 1``, whose
    ``max_seq_len`` inputs fill the context) is scored with a sliding window: the first window holds ``window``
    tokens, and each next one moves by ``stride`` (default ``window // 2``), so every later token is predicted from
    at least ``window - 1 - stride`` tokens before it. ``backend`` runs the forwards as in ``generate``
    (``armm.backends``: short windows may go native). A model of K streams (``ModelConfig.num_streams``) reads
    ``ids`` K at a time: the first position (``Tokenizer.start_ids``) is the condition, each later id is predicted
    from the positions before its own, and the whole sequence must fit the context (no sliding window).
    Raises ValueError for fewer than 2 tokens, an id outside the vocabulary, or a bad stride or window.
    """
    config = model.config
    context = config.max_seq_len if window is None else window
    ids = _as_ids(ids)
    n = ids.numel()
    if n < 2:
        raise ValueError(f"scoring needs at least 2 tokens (a condition and one scored token), got {n}")
    if not 2 <= context <= config.max_seq_len + 1:
        raise ValueError(f"window must be in [2, max_seq_len + 1] = [2, {config.max_seq_len + 1}], got {context}")
    stride = context // 2 if stride is None else stride
    if not 1 <= stride <= context - 1:
        raise ValueError(f"stride must be in [1, window - 1] = [1, {context - 1}], got {stride}")
    bad = ((ids < 0) | (ids >= config.vocab_size)).nonzero()
    if bad.numel():
        position = int(bad[0])
        raise ValueError(
            f"token id {int(ids[position])} at position {position} is outside the model's vocabulary "
            f"(0 .. {config.vocab_size - 1})"
        )
    check_backend(backend)
    ids = ids.to(model.tok_emb.weight.device)
    if config.num_streams > 1:
        return _score_streams(model, ids, backend)
    pieces, scored = [], 1  # ids[0] is only a condition
    while scored < n:
        end = min(n, context if scored == 1 else scored + stride)
        span = ids[max(0, end - context):end]
        with decoding(model, 1, len(span) - 1, backend) as decoder:  # a fresh cache per window
            logits = decoder.forward(span[None, :-1], 0)[0].float()  # (len(span) - 1, V): next-token predictions
        logprobs = logits.log_softmax(-1).gather(-1, span[1:, None])[:, 0]
        pieces.append(logprobs[-(end - scored):])  # only the tokens this window scores first
        scored = end
    token_logprobs = torch.cat(pieces).cpu()
    return Score(token_logprobs=token_logprobs, log_likelihood=float(token_logprobs.double().sum()))


def _score_streams(model: Transformer, ids: Tensor, backend: str) -> Score:
    """``score`` for a model of K streams: every id after the first position, from one forward."""
    K, n = model.config.num_streams, ids.numel()
    positions = -(-n // K)  # the last may be partial: its missing ids are never inputs
    if n <= K or positions - 1 > model.config.max_seq_len:
        raise ValueError(f"a model of {K} streams scores ids after its first position, in one window of at most "
                         f"max_seq_len + 1 = {model.config.max_seq_len + 1} positions ({K} ids each); got {n} ids")
    inputs = ids[:(positions - 1) * K]  # (P-1)·K ids predict ids K .. P·K
    with decoding(model, 1, positions - 1, backend) as decoder:
        logits = decoder.forward(inputs[None], 0)[0].float()  # ((P-1)·K, V)
    targets = ids[K:]
    token_logprobs = logits[:len(targets)].log_softmax(-1).gather(-1, targets[:, None])[:, 0].cpu()
    return Score(token_logprobs=token_logprobs, log_likelihood=float(token_logprobs.double().sum()))


def score_documents(model: Transformer, documents: Sequence[Sequence[int]], layout: Layout, *,
                    backend: str = "auto") -> list[Score]:
    """Score training documents (``encode_document``: bos … eos) as validation scores its split, so that their bits
    per unit are ``val/bpu``'s. ``packed``: the documents concatenated into one stream, cut into windows of
    ``max_seq_len + 1`` tokens at stride ``max_seq_len`` (a window's first token is only context), the stream's end
    scored by one last window; one ``Score``. ``samples``: each document on its own (its bos is the condition)."""
    window = model.config.max_seq_len + 1
    if layout == "packed":
        stream = [token for document in documents for token in document]
        return [score(model, stream, stride=window - 1, window=window, backend=backend)]
    if layout == "samples":
        return [score(model, document, window=window, backend=backend) for document in documents]
    raise ValueError(f"layout must be 'packed' or 'samples' (the data.layout the model was trained with), got {layout!r}")


INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _as_ids(ids: Sequence[int] | Tensor) -> Tensor:
    """``ids`` as a 1-D int64 tensor; a ValueError for anything but a flat sequence of integer token ids."""
    try:
        tensor = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError):  # text, ragged lists, objects
        tensor = None
    if tensor is None or tensor.ndim != 1 or (tensor.numel() and tensor.dtype not in INTEGER_DTYPES):
        got = repr(ids)[:80] if tensor is None else f"a tensor of shape {list(tensor.shape)} and dtype {tensor.dtype}"
        raise ValueError(f"scoring takes a flat sequence of integer token ids (encode samples with a tokenizer "
                         f"first), got {got}")
    return tensor.long()
