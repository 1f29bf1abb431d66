"""Speculative decoding: a small draft model proposes tokens, the target model checks them all in one pass.

Each round the draft proposes ``k`` tokens one by one from its own KV-cache; the target then runs a
single forward over the last committed token and the ``k`` proposals, which gives its next-token
logits at all ``k + 1`` positions at once. The longest prefix of proposals the target agrees with is
kept, followed by one token of the target's own, so a round yields between 1 and ``k + 1`` tokens for
one target forward (Leviathan et al. 2023, Chen et al. 2023; the loop follows gpt-fast's
``speculative_decode``).

Greedy samplers keep a proposal when it is the target's choice, so the output is the target's greedy
output. Other samplers use the rejection rule: keep proposal ``x`` with probability
``min(1, p(x) / q(x))`` (``p`` target, ``q`` draft, both after the sampler's transforms), and on a
rejection draw from ``max(p - q, 0)``; every token is then distributed exactly as the target samples it.

Both models decode with static KV-caches of their own (``armm.backends``). Rolling back needs no copy:
slots holding rejected proposals are simply written again by the next round's forward.

Rows of a batch advance together, by the smallest number of proposals any unfinished row kept, so a
batch verifies with one target forward per round, but the round is as short as its least lucky row
(rows that stopped do not count). Prompts of different lengths are left-padded, as in ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from armm.backends import Decoder, check_backend, decoding
from armm.generation import Prompts, Seed, StopTokens, check_prompts, row_generators, stop_table
from armm.model import Transformer
from armm.sampling import Sampler, build_sampler, draw


@dataclass
class SpeculativeStats:
    """Counters of ``speculative_generate``; a call adds to them, so one object can sum several calls.

    A round is one target forward that verifies the draft's proposals. ``drafted``, ``accepted``,
    ``tokens`` and ``row_rounds`` are summed over the rows that had not stopped yet in each round.
    """

    rounds: int = 0  # target forwards (the first one also prefills the prompts)
    draft_forwards: int = 0  # draft forwards (the first one also prefills the prompts)
    row_rounds: int = 0  # rounds x unfinished rows
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens kept
    tokens: int = 0  # tokens committed (accepted proposals + one target token per round)

    @property
    def target_forwards(self) -> int:
        return self.rounds

    @property
    def acceptance_rate(self) -> float:
        """Fraction of proposed draft tokens that were kept."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Mean accepted draft tokens per target forward (per row): ``k`` when the draft is always right."""
        return self.accepted / self.row_rounds if self.row_rounds else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        """Mean new tokens per target forward (per row); plain decoding makes exactly 1."""
        return self.tokens / self.row_rounds if self.row_rounds else 0.0


def speculative_generate(
    target: Transformer,
    draft: Transformer,
    prompts: Prompts,
    *,
    max_new_tokens: int,
    num_draft_tokens: int = 4,
    stop_tokens: StopTokens = (),
    sampler: str | Sampler = "greedy",
    seed: Seed = None,
    stats: SpeculativeStats | None = None,
    backend: str = "auto",
) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens of ``target``, ``num_draft_tokens`` drafted at a time.

    Arguments and result are those of ``armm.generate``: the new tokens of each prompt, ending with its
    stop token when one was drawn. With a greedy sampler the result is the target's greedy output (up to
    floating-point ties: the target scores ``k + 1`` tokens in one forward, so its logits may differ from
    ``generate``'s one-token steps in the last bits). With another sampler each token is distributed as
    the target would sample it, but the random draws differ from ``generate``'s, and in a batch a row's
    draws also depend on the other rows (they advance together). ``stats``, if given, has this call's
    counters added to it (see ``SpeculativeStats``). ``backend`` is ``generate``'s, for both models.

    ``draft`` must share the target's vocabulary (the same tokenizer) and device. Its architecture, size and dtype are free, and its context must fit the
    prompts too.
    """
    for model in (target, draft):
        model.config.check_one_stream("speculative decoding")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(
            f"draft vocab_size ({draft.config.vocab_size}) differs from the target's ({target.config.vocab_size}); "
            f"the draft must use the target's tokenizer"
        )
    device = target.tok_emb.weight.device
    if draft.tok_emb.weight.device != device:
        raise ValueError(f"draft is on {draft.tok_emb.weight.device} but the target on {device}; "
                         f"move both to one device")
    if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
    rows = check_prompts(prompts, target.config.vocab_size, target.config.max_seq_len, max_new_tokens, slide=False)
    try:
        check_prompts(rows, draft.config.vocab_size, draft.config.max_seq_len, max_new_tokens, slide=False)
    except ValueError as err:
        raise ValueError(f"for the draft model: {err}") from None
    check_backend(backend)
    sampler = build_sampler(sampler)
    stops = stop_table(stop_tokens, len(rows), target.config.vocab_size, device)
    generators = None if sampler.is_greedy else row_generators(seed, len(rows), device)
    stats = stats if stats is not None else SpeculativeStats()

    end = max(map(len, rows)) + max_new_tokens
    with torch.inference_mode(), decoding(target, len(rows), end, backend) as verifier, \
            decoding(draft, len(rows), end, backend) as drafter:
        return _decode(verifier, drafter, rows, max_new_tokens, num_draft_tokens, sampler, stops, generators, stats)


def _decode(
    target: Decoder,
    draft: Decoder,
    rows: list[list[int]],
    max_new_tokens: int,
    k: int,
    sampler: Sampler,
    stops: Tensor | None,
    generators: list[torch.Generator] | None,
    stats: SpeculativeStats,
) -> list[list[int]]:
    """The draft-then-verify loop over left-padded rows; returns each row's new tokens."""
    device = target.model.tok_emb.weight.device
    B, P = len(rows), max(len(r) for r in rows)
    end = P + max_new_tokens

    # context holds the committed tokens (-1 = left padding) and, past them, this round's proposals.
    context = torch.full((B, end), -1, dtype=torch.long, device=device)
    for row, ids in enumerate(rows):
        context[row, P - len(ids):P] = torch.tensor(ids, device=device)
    pad = torch.tensor([P - len(ids) for ids in rows], device=device) if any(len(r) < P for r in rows) else None

    n = P  # committed slots: 0 .. n-1
    target_len = draft_len = 0  # slots each cache holds for the committed tokens (the first round prefills)
    stopped_at: list[int | None] = [None] * B  # a finished row's output length
    while n < end:
        active = [row for row in range(B) if stopped_at[row] is None]
        k_round = min(k, end - n - 1)  # a round commits at most k_round + 1 tokens

        # 1. The draft proposes k_round tokens at slots n .. n+k_round-1, one forward each.
        draft_probs = []
        start = draft_len
        for j in range(k_round):
            slot = n + j
            logits = draft.forward(context[:, start:slot].clamp(min=0), start, pad, logits_to_keep=1)[:, -1]  # (B, V)
            logits = sampler.filter(logits, context[:, :slot])
            if sampler.is_greedy:
                context[:, slot] = logits.argmax(-1)
            else:
                draft_probs.append(logits.float().softmax(-1))
                context[:, slot] = draw(logits, generators)
            start = slot
        stats.draft_forwards += k_round

        # 2. The target scores the committed tail and every proposal in one forward: the logits at slots
        #    n-1 .. n+k_round-1 predict the tokens at n .. n+k_round.
        logits = target.forward(context[:, target_len:n + k_round].clamp(min=0), target_len, pad)
        logits = logits[:, -(k_round + 1):]  # (B, k+1, V)
        proposals = context[:, n:n + k_round]  # (B, k)
        if sampler.is_greedy:
            choice = torch.stack([sampler(logits[:, j], context[:, :n + j]) for j in range(k_round + 1)], 1)
            accepted = proposals == choice[:, :k_round]
            fallback = choice
        else:
            accepted, fallback = _rejection_sample(logits, context, n, proposals, draft_probs, sampler, generators)

        # 3. Keep the agreed prefix and one fallback token. The round's one host sync reads how many proposals
        #    each row would keep (and where the stop tokens are); every row advances by the fewest kept, m.
        kept = accepted.int().cumprod(1).sum(1)  # (B,)
        position = torch.arange(k_round + 1, device=device)
        padded = torch.cat([proposals, fallback[:, -1:]], 1)  # (B, k+1)
        tokens = torch.where(position < kept[:, None], padded, fallback)  # (B, k+1)
        is_stop = (tokens[..., None] == stops[:, None]).any(-1) if stops is not None else tokens[:, :0].bool()
        host = torch.cat([kept[:, None], is_stop], 1).tolist()  # row: [kept, is_stop at 0 .. k]
        m = min(host[row][0] for row in active)
        context[:, n:n + m + 1] = tokens[:, :m + 1]

        stats.rounds += 1
        stats.row_rounds += len(active)
        stats.drafted += k_round * len(active)
        stats.accepted += m * len(active)
        stats.tokens += (m + 1) * len(active)
        for row in active:
            hit = next((j for j in range(m + 1) if host[row][1 + j]), None) if stops is not None else None
            if hit is not None:
                stopped_at[row] = n - P + hit + 1
        target_len = n + m  # the target cached proposals 0 .. m-1, which were kept
        draft_len = min(n + k_round - 1, n + m) if k_round else draft_len  # the draft cached proposals 0 .. k-2
        n += m + 1
        if all(s is not None for s in stopped_at):
            break

    new = context[:, P:n].tolist()
    return [tokens[:length] if length is not None else tokens for tokens, length in zip(new, stopped_at)]


def _rejection_sample(
    logits: Tensor,
    context: Tensor,
    n: int,
    proposals: Tensor,
    draft_probs: list[Tensor],
    sampler: Sampler,
    generators: Sequence[torch.Generator] | None,
) -> tuple[Tensor, Tensor]:
    """The rejection rule at every proposal → ``(accepted [B, k], fallback [B, k+1])``.

    ``fallback[:, j]`` is the token to emit at position ``j`` if proposal ``j`` is the first one rejected:
    a draw from ``max(p - q, 0)``, renormalised; ``fallback[:, k]`` is a plain draw from the target, for
    when every proposal was kept.
    """
    k = proposals.size(1)
    target_probs = torch.stack(
        [sampler.filter(logits[:, j], context[:, :n + j]).float().softmax(-1) for j in range(k + 1)], 1
    )  # (B, k+1, V)
    if k == 0:
        return proposals.bool(), draw(target_probs[:, 0].log(), generators)[:, None]
    q = torch.stack(draft_probs, 1)  # (B, k, V)
    p = target_probs[:, :k]
    p_x = p.gather(-1, proposals[..., None])[..., 0]  # (B, k)
    q_x = q.gather(-1, proposals[..., None])[..., 0]  # (B, k), > 0: the draft drew x from q
    accepted = _uniform(proposals.shape, generators, p.device) * q_x < p_x  # keep x with probability min(1, p/q)
    residual = (p - q).clamp(min=0)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p)  # p == q: nothing is ever rejected
    dists = torch.cat([residual, target_probs[:, k:]], 1).log()  # (B, k+1, V)
    fallback = torch.stack([draw(dists[:, j], generators) for j in range(k + 1)], 1)  # (B, k+1)
    return accepted, fallback


def _uniform(shape: torch.Size, generators: Sequence[torch.Generator] | None, device: torch.device) -> Tensor:
    """Uniform ``[0, 1)`` draws of ``shape [B, ...]``, row ``b`` from ``generators[b]`` when given."""
    if generators is None:
        return torch.rand(shape, device=device)
    return torch.stack([torch.rand(shape[1:], generator=g, device=device) for g in generators])
