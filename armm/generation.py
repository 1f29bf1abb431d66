"""The autoregressive loop: prefill the prompts in one pass, then decode one token a step from the KV-cache."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from armm.backends import check_backend, check_quantize, decoding
from armm.config import ModelConfig
from armm.model import Transformer, last_position
from armm.sampling import Sampler, build_sampler, nan_logits_error

Prompts = Sequence[Sequence[int]]
StopTokens = Sequence[int] | Sequence[Sequence[int]]
Seed = int | Sequence[int] | None
PastContext = Literal["recompute", "rolling", "chunked"]
PAST_CONTEXT: tuple[str, ...] = get_args(PastContext)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: next-token logits ``uncond + scale * (cond - uncond)``.

    ``unconditional`` holds one prompt per prompt with the condition left out (for a mixed layout,
    ``[bos, null]``). Both rows run in the same batched forward pass, each with its own KV-cache row, and
    both receive every drawn token. ``first_tokens`` limits guidance to the first N tokens of each span
    (counted from the last of ``span_begins`` in the context, or from the start of generation without one);
    later tokens use the conditional logits alone.
    """

    scale: float
    unconditional: Prompts
    first_tokens: int | None = None
    span_begins: Sequence[int] = ()

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not self.scale >= 0:
            raise ValueError(f"guidance scale must be a number >= 0 (1 = no guidance), got {self.scale!r}")
        if self.first_tokens is not None and (isinstance(self.first_tokens, bool) or not isinstance(self.first_tokens, int)
                                              or self.first_tokens < 1):
            raise ValueError(f"guidance first_tokens must be an integer >= 1 or None, got {self.first_tokens!r}")

    def __call__(self, logits: Tensor, tokens: Tensor, generated: int) -> Tensor:
        """``logits [2B, V]`` (conditional rows, then unconditional) → guided ``[B, V]``; ``tokens [B, T]`` is the
        conditional context, whose last ``generated`` tokens were drawn."""
        B = tokens.size(0)
        cond, uncond = logits[:B].float(), logits[B:].float()
        guided = uncond + self.scale * (cond - uncond)
        if self.first_tokens is None:
            return guided
        return torch.where((tokens_into_span(tokens, self.span_begins, generated) < self.first_tokens)[:, None],
                           guided, cond)


def tokens_into_span(tokens: Tensor, span_begins: Sequence[int], generated: int) -> Tensor:
    """How many tokens follow the last span-begin id in each row of ``tokens [B, T]`` → ``[B]``; rows without
    one count the ``generated`` tokens."""
    T = tokens.size(1)
    begins = torch.tensor(list(span_begins), dtype=tokens.dtype, device=tokens.device)
    position = torch.arange(T, device=tokens.device)
    last = torch.where(torch.isin(tokens, begins), position, -1).amax(1)  # (B,)
    return torch.where(last >= 0, T - 1 - last, generated)


def generate(
    model: Transformer,
    prompts: Prompts,
    *,
    max_new_tokens: int,
    sampler: str | Sampler = "greedy",
    stop_tokens: StopTokens = (),
    seed: Seed = None,
    stream: bool = False,
    guidance: Guidance | None = None,
    backend: str = "auto",
    quantize: str | None = None,
    past_context: PastContext = "recompute",
) -> list[list[int]] | Iterator[list[int | None]]:
    """Continue each prompt (a list of token ids; lengths may differ) by up to ``max_new_tokens`` tokens.

    Returns the new tokens of each prompt, ending with its stop token when one was drawn. A row stops
    at any of ``stop_tokens`` (one list for all rows, or one list per row) while the others go on.
    ``seed`` (one int for every row, or one per row) gives each row its own random generator, so a
    prompt's sampled continuation is the same alone or inside a batch. With ``stream=True`` this
    returns an iterator that yields, per step, each row's new token (``None`` once a row has stopped).
    ``guidance`` applies classifier-free guidance (see ``Guidance``).

    A prompt may fill the model's context, and ``max_new_tokens`` may reach past it. ``past_context`` says how
    tokens past the context are predicted (``PAST_CONTEXT``):

    - ``recompute`` (default, exact): from the last ``max_seq_len`` tokens of the row, run afresh, as a loop that
      calls the model on that window would; each such token costs a forward over the whole window.
    - ``rolling`` (RoPE models): a rolling KV-cache, each token at the cost of an ordinary step. Every layer then
      attends to the last ``max_seq_len`` tokens, whose cached states were computed from the windows before
      them: the sliding-window attention Mistral-style models are trained with, not a recomputed window.
    - ``chunked`` (approximate, any model): once a row's window is full, it keeps its last ``max_seq_len // 2``
      tokens, prefilled afresh, and goes on from there with the cache; one prefill per half a window of tokens.

    A model of ``num_streams`` K > 1 reads K ids a position: prompts hold whole positions (a multiple of K ids),
    each model step yields K ids (drawn one after another, so samplers and stop tokens see every id before theirs),
    and prompt and new tokens must fit in its context.
    """
    config = model.config
    device = model.tok_emb.weight.device
    rows = check_prompts(prompts, config.vocab_size, config.max_seq_len, max_new_tokens, streams=config.num_streams)
    if guidance is not None:
        unconditional = check_prompts(guidance.unconditional, config.vocab_size, config.max_seq_len, max_new_tokens,
                                      streams=config.num_streams)
        if len(unconditional) != len(rows):
            raise ValueError(f"guidance needs one unconditional prompt per prompt ({len(rows)}), got {len(unconditional)}")
        rows = rows + unconditional
    check_backend(backend)
    check_quantize(quantize)
    check_past_context(past_context, config)
    sampler = build_sampler(sampler)
    batch_size = len(prompts)
    stops = stop_table(stop_tokens, batch_size, config.vocab_size, device)
    generators = None if sampler.is_greedy else row_generators(seed, batch_size, device)
    steps = _decode(model, rows, max_new_tokens, sampler, stops, generators, guidance, backend, quantize, past_context)
    lengths = [len(row) for row in rows[:batch_size]]
    if stream:
        return _streamed(steps, lengths)
    tokens, done_before, nan_at = zip(*steps)
    check_nan_at(nan_at[-1], lengths)
    tokens, keep = torch.stack(tokens, 1).tolist(), (~torch.stack(done_before, 1)).tolist()  # (B, steps)
    return [[t for t, k in zip(row, row_keep) if k] for row, row_keep in zip(tokens, keep)]


def _streamed(steps: Iterator[tuple[Tensor, Tensor, Tensor | None]], lengths: list[int]) -> Iterator[list[int | None]]:
    """Each step's new token per row (None once a row has stopped), read from the device once a step."""
    for token, done_before, nan_at in steps:
        tokens, done = token.tolist(), done_before.tolist()
        check_nan_at(nan_at, lengths)
        yield [None if stopped else t for t, stopped in zip(tokens, done)]


def defers_nan_check(device: torch.device) -> bool:
    """Whether generation, not the sampler, checks logits for NaN: off the CPU, where a check would wait each step."""
    return device.type != "cpu"


def check_nan_at(nan_at: Tensor | None, lengths: list[int]) -> None:
    """Raise for the first row whose logits were NaN (``nan_at``: the step it happened, -1 if never; None when the
    sampler checked each step itself, as it does on the CPU) instead of returning the argmax of NaNs."""
    if nan_at is None:
        return
    steps = nan_at.tolist()
    for row, step in enumerate(steps):
        if step >= 0:
            raise nan_logits_error(row, lengths[row] + step)


MAX_CONTEXT_IDS = 2**28  # token ids a generation holds (rows x (prompt + new tokens)): 2 GiB of int64


def check_prompts(prompts: Prompts, vocab_size: int, max_seq_len: int, max_new_tokens: int,
                  slide: bool = True, streams: int = 1) -> list[list[int]]:
    """Validate prompts and budget, with errors that say what is allowed. A prompt may fill the context; with
    ``slide`` the new tokens may go past it (each predicted from the last ``max_seq_len`` tokens), else they must
    fit in it too. A model of ``streams`` K > 1 reads K ids a position: prompts hold whole positions, and prompt
    and new tokens must fit in ``max_seq_len`` positions and the one drawn from the last of them (never read)."""
    if streams > 1:  # in ids: the prompt may fill the context; the position after it is drawn, never read
        slide, longest, most = False, max_seq_len * streams, (max_seq_len + 1) * streams
        context = f"{max_seq_len} positions of {streams} ids, and one more drawn from them"
    else:  # without sliding, one new token must fit too
        longest, most, context = (max_seq_len if slide else max_seq_len - 1), max_seq_len, f"max_seq_len={max_seq_len}"
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists (encode text with a tokenizer first)")
    if all(isinstance(p, int) for p in prompts):
        raise ValueError("prompts must be a list of token-id lists; wrap a single prompt as [ids]")
    checked = []
    for row, prompt in enumerate(prompts):
        ids = prompt.tolist() if isinstance(prompt, Tensor) else list(prompt)
        if not ids:
            raise ValueError(f"prompt {row} is empty; start it with at least one token (e.g. the tokenizer's bos)")
        if len(ids) % streams:
            raise ValueError(f"prompt {row} has {len(ids)} ids, but the model reads {streams} ids a position "
                             f"(num_streams); give whole positions: start it with the tokenizer's start_ids and "
                             f"keep its length a multiple of {streams}")
        for position, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
                raise ValueError(
                    f"prompt {row} has token id {token!r} at position {position}, outside the model's "
                    f"vocabulary (0 .. {vocab_size - 1})"
                )
        if len(ids) > longest:
            raise ValueError(f"prompt {row} has {len(ids)} tokens, more than the model's context allows "
                             f"({context}); shorten it to at most {longest} tokens")
        if not slide and len(ids) + max_new_tokens > most:
            raise ValueError(
                f"prompt {row} has {len(ids)} tokens, which with max_new_tokens={max_new_tokens} needs "
                f"{len(ids) + max_new_tokens} positions, more than the model's context ({context}); "
                f"lower max_new_tokens to at most {most - len(ids)}"
            )
        checked.append(ids)
    held = len(checked) * (max(map(len, checked)) + max_new_tokens)
    if held > MAX_CONTEXT_IDS:
        raise ValueError(f"{len(checked)} rows of up to {max(map(len, checked)) + max_new_tokens} tokens would hold "
                         f"{held} token ids, more than {MAX_CONTEXT_IDS}; lower max_new_tokens or the batch size")
    return checked


def check_past_context(past_context: str, config: ModelConfig) -> None:
    if past_context not in PAST_CONTEXT:
        raise ValueError(f"past_context must be one of {', '.join(PAST_CONTEXT)}, got {past_context!r}")
    if past_context == "rolling" and config.position != "rope":
        raise ValueError("past_context='rolling' needs RoPE positions (a model with learned positions cannot roll its "
                         "KV-cache); use 'recompute' (exact) or 'chunked' (faster, approximate)")


def stop_table(stop_tokens: StopTokens, batch_size: int, vocab_size: int, device: torch.device) -> Tensor | None:
    """Stop ids as ``[B, S]`` (``-1`` fill), or None when there are none."""
    rows = list(stop_tokens)
    if rows and all(isinstance(s, int) for s in rows):
        rows = [rows] * batch_size
    elif rows and len(rows) != batch_size:
        raise ValueError(f"stop_tokens per row must have one list per prompt ({batch_size}), got {len(rows)}")
    rows = [list(r) for r in rows]
    for token in (t for r in rows for t in r):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            raise ValueError(f"stop token {token!r} is outside the vocabulary (0 .. {vocab_size - 1})")
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        return None
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], device=device)


def row_generators(seed: Seed, batch_size: int, device: torch.device) -> list[torch.Generator] | None:
    """One seeded generator per row (``seed`` is one int for all rows or one per row), or None without a seed."""
    if seed is None:
        return None
    many = isinstance(seed, Iterable) and not isinstance(seed, (str, bytes))
    seeds = list(seed) if many else [seed] * batch_size
    if not all(map(_is_seed, seeds)):
        raise ValueError(f"seed must be an integer in [-2**63, 2**64), or a list of them, one per prompt; got {seed!r}")
    if len(seeds) != batch_size:
        raise ValueError(f"seed must be one int or one per prompt ({batch_size}), got {len(seeds)}")
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _is_seed(value: object) -> bool:
    """Whether ``torch.Generator.manual_seed`` takes ``value``: an integer in [-2**63, 2**64) (numpy's too)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and -(2**63) <= value < 2**64


@torch.inference_mode()
def _decode(
    model: Transformer,
    rows: list[list[int]],
    max_new_tokens: int,
    sampler: Sampler,
    stops: Tensor | None,
    generators: list[torch.Generator] | None,
    guidance: Guidance | None,
    backend: str,
    quantize: str | None,
    past_context: str,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(token [B], finished_before [B], nan_at [B] or None)`` per step (``nan_at``: the step at which each
    row's logits were NaN, -1 if never; None on the CPU, where the sampler raises); stop once every row has drawn a
    stop token.

    With guidance, ``rows`` holds the B prompts and then their B unconditional prompts (R = 2B rows). A model of K
    streams yields K tokens a model step; the cache and ``pad`` count positions (K ids each), the context ids.
    """
    device = model.tok_emb.weight.device
    R, P = len(rows), max(len(r) for r in rows)
    B = R // 2 if guidance is not None else R
    K = model.config.num_streams

    # Left-pad every prompt to P; -1 marks padding in the context the samplers see.
    context = torch.full((R, P + max_new_tokens), -1, dtype=torch.long, device=device)
    for row, ids in enumerate(rows):
        context[row, P - len(ids):P] = torch.tensor(ids, device=device)
    pad = torch.tensor([(P - len(ids)) // K for ids in rows], device=device) if any(len(r) < P for r in rows) else None

    window = model.config.max_seq_len
    positions = -(-(P + max_new_tokens) // K)  # the cache slots the prompt and new tokens fill
    rolling = past_context == "rolling" and positions > window
    keep = window if past_context == "recompute" else max(1, window // 2)  # tokens a refill keeps
    first = [P - len(r) for r in rows]  # each row's first token in the cache (a slot of `context`)
    shift, cache_pad = 0, pad  # the cache holds slots shift.. of the context; cache_pad[r] = first[r] - shift
    with decoding(model, R, min(positions, window), backend, quantize, rolling) as decoder:
        prefill = decoder.forward(context[:, :P].clamp(min=0), 0, pad, logits_to_keep=1)  # (R, K, V)
        logits = last_position(prefill)  # (R, V), or (R, K, V) with K streams
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        # On an accelerator the sampler cannot check NaN logits without waiting each step: note the step instead.
        nan_at = torch.full((B,), -1, device=device) if defers_nan_check(device) else None  # (B,)
        for step in range(max_new_tokens):
            slot = P + step  # the new token's place in the context
            stream_logits = logits if K == 1 else logits[:, step % K]  # (R, V)
            if guidance is not None:
                stream_logits = guidance(stream_logits, context[:B, :slot], step)  # (B, V)
            if nan_at is not None:
                nan_at = torch.where((nan_at < 0) & stream_logits[:B].isnan().any(-1), step, nan_at)
            token = sampler(stream_logits, context[:B, :slot], generators)  # (B,)
            context[:, slot].view(R // B, B).copy_(token)  # an unconditional row takes its prompt's token too
            yield token, finished.clone(), nan_at
            if stops is not None:
                finished |= (token[:, None] == stops).any(-1)
                if bool(finished.all()):  # the only host sync, and only when there are stop tokens
                    return
            if step + 1 == max_new_tokens:
                return
            if (slot + 1) % K:
                continue  # the position's next stream is already predicted
            if K > 1:  # the context fits the cache (check_prompts): one step of the K ids just drawn
                logits = decoder.step(context[:, slot + 1 - K:slot + 1], slot // K, pad)  # (R, K) → (R, K, V)
            elif rolling or slot - shift < window:
                logits = decoder.step(context[:, slot:slot + 1], slot - shift, cache_pad)  # (R, 1) → logits (R, V)
            else:  # the cache is full: rows whose window is full keep their last `keep` tokens; prefill afresh
                first = [slot + 1 - keep if slot + 1 - f > window else f for f in first]
                shift = min(first)
                cache_pad = torch.tensor([f - shift for f in first], device=device)  # (R,)
                ids = context[:, shift:slot + 1].clamp(min=0)  # (R, slot + 1 - shift); -1 marks padding
                logits = decoder.forward(ids, 0, cache_pad, logits_to_keep=1)[:, -1]
