"""Chain-rule scoring: log P(x) = Σ_t log P(x_t | x_<t), from one teacher-forced forward pass."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from armm.model import Transformer


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
def score(model: Transformer, ids: Sequence[int] | Tensor) -> Score:
    """Score ``ids`` (start it with bos to score its first real token too).

    Raises ValueError if ``ids`` has fewer than 2 tokens, an id outside the vocabulary, or is
    longer than the model's context.
    """
    config = model.config
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() < 2:
        raise ValueError(f"scoring needs at least 2 tokens (a condition and one scored token), got {ids.numel()}")
    if ids.numel() > config.max_seq_len:
        raise ValueError(
            f"sequence of {ids.numel()} tokens is longer than the model's context (max_seq_len={config.max_seq_len}); "
            "score it in chunks of at most max_seq_len tokens"
        )
    bad = ((ids < 0) | (ids >= config.vocab_size)).nonzero()
    if bad.numel():
        position = int(bad[0])
        raise ValueError(
            f"token id {int(ids[position])} at position {position} is outside the model's vocabulary "
            f"(0 .. {config.vocab_size - 1})"
        )
    was_training = model.training
    model.eval()
    try:
        ids = ids.to(model.tok_emb.weight.device)
        logits = model(ids[None, :-1])[0].float()  # (T-1, V): the prediction for each next token
    finally:
        model.train(was_training)
    token_logprobs = logits.log_softmax(-1).gather(-1, ids[1:, None])[:, 0].cpu()
    return Score(token_logprobs=token_logprobs, log_likelihood=float(token_logprobs.double().sum()))
