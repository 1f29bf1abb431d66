"""Look inside a model: the next-token distribution before and after the sampler chain, the attention maps,
the per-token log-probabilities of a text, and generation one step at a time.

Everything here computes and returns dataclasses and tensors; ``armm.inspect.plots`` draws them and
``armm.inspect.cli`` prints them (``armm inspect next|attention|surprise|generation``).

Token labels work for any modality (``token_label``): special tokens show their role (``<eos>``), a text
token its text with whitespace and control characters made visible (``·`` space, ``⏎`` newline, ``\\x07``),
and a plugin may name its other tokens with an optional method ``token_name(id) -> str | None`` (a residue,
a pixel level, a mu-law level); anything else is shown as ``#id``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from einops import rearrange, repeat
from torch import Tensor

from armm.generation import generate
from armm.layout import VocabLayout, sampler_for
from armm.model import Transformer, apply_rope
from armm.sampling import Sampler, build_sampler
from armm.scoring import score
from armm.tokenizer import Tokenizer

VISIBLE = {" ": "·", "\n": "⏎", "\t": "⇥"}
REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 character decodes to


# --- token labels ----------------------------------------------------------------------------------
def visible(text: str) -> str:
    """``text`` with spaces, newlines and tabs as ``·``, ``⏎``, ``⇥`` and other unprintable characters escaped."""
    out = []
    for ch in text:
        if ch in VISIBLE:
            out.append(VISIBLE[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])  # '\x07', '\r', '\u200b'
    return "".join(out)


def token_text(tokenizer: Tokenizer, token: int) -> str | None:
    """The raw text of one id when the tokenizer decodes to text (None for specials and non-text modalities)."""
    if isinstance(tokenizer, VocabLayout):
        span = tokenizer.span_of(token) if 0 <= token < tokenizer.vocab_size else None
        if span is None or token < span.offset:
            return None
        return token_text(span.tokenizer, token - span.offset)
    if not 0 <= token < tokenizer.vocab_size or token in tokenizer.special_tokens.values():
        return None
    if not tokenizer.decodes_text or (tokenizer.name == "bytes" and token >= 128):  # a lone UTF-8 byte is no text
        return None
    decoded = tokenizer.decode([token])
    return decoded if isinstance(decoded, str) else None


def token_label(tokenizer: Tokenizer, token: int) -> str:
    """A short readable name for one id, for any modality (see the module docstring)."""
    token = int(token)
    if isinstance(tokenizer, VocabLayout):
        return _layout_label(tokenizer, token)
    if not 0 <= token < tokenizer.vocab_size:
        return f"#{token}"  # a padded model vocabulary: an id no tokenizer produces
    roles = {i: role for role, i in tokenizer.special_tokens.items()}
    if token in roles:
        return f"<{roles[token]}>"
    name = getattr(tokenizer, "token_name", None)
    if callable(name):
        named = name(token)
        if named is not None:
            return str(named)
    if tokenizer.name == "bytes" and token >= 128:
        return f"\\x{token:02x}"
    text = token_text(tokenizer, token)
    return visible(text) if text else f"#{token}"


def _layout_label(layout: VocabLayout, token: int) -> str:
    roles = {i: role for role, i in layout.special_tokens.items()}
    if token in roles:
        return f"<{roles[token]}>"
    span = layout.span_of(token) if 0 <= token < layout.vocab_size else None
    if span is None:
        return f"#{token}"
    if token == span.begin_id:
        return f"<|{span.name}|>"
    if token == span.end_id:
        return f"<|/{span.name}|>"
    label = token_label(span.tokenizer, token - span.offset)
    return label if token_text(span.tokenizer, token - span.offset) else f"{span.name}:{label}"


def text_pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str | None]:
    """The text each id adds when ``ids`` are decoded in order, so ``"".join`` of the pieces is the decoded text
    (None for special ids, and for every id when the tokenizer's samples are not text). A character split over
    several ids (UTF-8 bytes) belongs to the id that completes it; the ids before it add ``""``."""
    ids = [int(i) for i in ids]
    if not tokenizer.decodes_text:
        return [None] * len(ids)
    specials = set(tokenizer.special_tokens.values())
    pieces: list[str | None] = []
    start, pending = 0, ""  # decoding restarts after every id that completes the text so far
    for t, token in enumerate(ids):
        if token in specials:
            pieces.append(None)
            continue
        full = tokenizer.decode([i for i in ids[start:t + 1] if i not in specials])
        stable = full.rstrip(REPLACEMENT)  # an incomplete character waits for the id that completes it
        pieces.append(stable[len(pending):] if stable.startswith(pending) else stable)
        pending = stable
        if stable == full:
            start, pending = t + 1, ""
    return pieces


def token_labels(tokenizer: Tokenizer | None, ids: Sequence[int]) -> list[str]:
    """``token_label`` of every id (``#id`` without a tokenizer)."""
    return [token_label(tokenizer, i) if tokenizer is not None else f"#{int(i)}" for i in ids]


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """bos, then the prompt as the plugin reads it (as ``armm sample`` does); an empty prompt is bos alone."""
    ids = tokenizer.start_ids + tokenizer.encode_prompt(prompt)
    if not ids:
        raise ValueError(f"tokenizer {tokenizer.name!r} has no bos token, so an empty prompt has no tokens; "
                         "pass a non-empty --prompt")
    return ids


def _ids_tensor(model: Transformer, ids: Sequence[int] | Tensor) -> Tensor:
    model.config.check_one_stream("armm inspect")
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("no token ids to inspect; start the sequence with at least one token (e.g. bos)")
    V = model.config.vocab_size
    bad = ((ids < 0) | (ids >= V)).nonzero()
    if bad.numel():
        position = int(bad[0])
        raise ValueError(f"token id {int(ids[position])} at position {position} is outside the model's "
                         f"vocabulary (0 .. {V - 1})")
    return ids.to(model.tok_emb.weight.device)


@torch.inference_mode()
def _logits(model: Transformer, ids: Tensor) -> Tensor:
    """Next-token logits at every position of one sequence ``ids [T]`` → ``[T, V]`` (the model's dtype)."""
    was_training = model.training
    model.eval()
    try:
        return model(ids[None])[0]
    finally:
        model.train(was_training)


def _sampler(tokenizer: Tokenizer | None, spec: str | Sampler) -> Sampler:
    return build_sampler(spec) if tokenizer is None else sampler_for(tokenizer, spec)


# --- the next-token distribution -------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One token of a distribution: its id, readable label and probability before / after the sampler chain."""

    id: int
    label: str
    p_before: float
    p_after: float


@dataclass(frozen=True)
class NextToken:
    """The distribution over the token that follows ``ids``."""

    ids: list[int]  # the context
    sampler: str  # the chain's spec
    p_before: Tensor  # [V] softmax of the model's logits
    p_after: Tensor  # [V] softmax of Sampler.filter(logits, context): what the draw samples from
    top: list[Candidate]  # ranked by p_after, then p_before

    @property
    def kept(self) -> int:
        """How many tokens the sampler chain leaves a chance of being drawn."""
        return int((self.p_after > 0).sum())

    @property
    def entropy_before(self) -> float:
        """Entropy of the model's distribution, in bits."""
        return _entropy_bits(self.p_before)

    @property
    def entropy_after(self) -> float:
        """Entropy of the filtered distribution, in bits."""
        return _entropy_bits(self.p_after)


def _entropy_bits(p: Tensor) -> float:
    p = p.double()
    return float(-(p * p.log()).nan_to_num().sum() / math.log(2))


def _ranked(tokenizer: Tokenizer | None, p_before: Tensor, p_after: Tensor, top: int) -> list[Candidate]:
    order = p_before.argsort(descending=True, stable=True)
    order = order[p_after[order].argsort(descending=True, stable=True)][:top]  # by p_after, ties by p_before
    return [Candidate(int(i), token_labels(tokenizer, [int(i)])[0], float(p_before[i]), float(p_after[i]))
            for i in order]


def _check_top(top: int) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an integer >= 1, got {top!r}")
    return top


def next_token(
    model: Transformer,
    tokenizer: Tokenizer | None,
    prompt_ids: Sequence[int] | Tensor,
    sampler: str | Sampler | None = None,
    top: int = 10,
) -> NextToken:
    """The distribution over the token after ``prompt_ids``: the model's softmax, and the distribution the
    sampler chain leaves (``sampler``, default ``"temperature=1"``: the model's own distribution; with a mixed
    layout the chain always keeps to its grammar, as ``armm sample`` does). ``top`` entries are listed."""
    _check_top(top)
    ids = _ids_tensor(model, prompt_ids)
    chain = _sampler(tokenizer, "temperature=1" if sampler is None else sampler)
    logits = _logits(model, ids)[-1:]  # (1, V)
    filtered = chain.filter(logits, ids[None])  # (1, V)
    p_before, p_after = logits[0].float().softmax(-1).cpu(), filtered[0].float().softmax(-1).cpu()
    return NextToken(ids.tolist(), chain.spec, p_before, p_after, _ranked(tokenizer, p_before, p_after, top))


# --- attention -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCapture:
    """What one attention module computed, recomputed from its captured input."""

    probs: Tensor  # [B, n_head, T, S] softmax(q·kᵀ/√d + mask), float32
    values: Tensor  # [B, n_head, S, hd] the values each query head reads (kv heads repeated for GQA)
    output: Tensor  # [B, T, d_model] the module's real output


def capture_attention(model: Transformer, ids: Tensor) -> list[LayerCapture]:
    """Run ``model(ids [B, T])`` once with a forward hook on every attention module, and recompute each one's
    attention probabilities from the input it received, exactly as it computes them: the same q/k/v projection,
    RoPE (or none, for learned positions), grouped-query heads, 1/√head_dim scale and causal mask.
    ``proj(probs @ values)`` (heads merged) reproduces ``output``."""
    captured: list[tuple] = []

    def hook(module, args, kwargs, output):  # args: x, rope, mask, is_causal, start
        captured.append((module, args, kwargs, output))

    handles = [block.attn.register_forward_hook(hook, with_kwargs=True) for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(ids)
            return [_recompute(*item) for item in captured]
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def _recompute(attn, args: tuple, kwargs: dict, output: Tensor) -> LayerCapture:
    names = ("x", "rope", "mask", "is_causal", "start", "cache")
    inputs = dict(zip(names, args)) | kwargs
    x, rope, mask, is_causal = inputs["x"], inputs.get("rope"), inputs.get("mask"), inputs.get("is_causal", False)
    if inputs.get("cache") is not None:
        raise ValueError("attention maps are computed from a forward without a KV-cache (cache=None)")
    T = x.shape[1]
    hd = attn.head_dim
    q, k, v = attn.qkv(x).split([attn.n_head * hd, attn.n_kv_head * hd, attn.n_kv_head * hd], dim=-1)
    q = rearrange(q, "b t (head d) -> b head t d", head=attn.n_head)
    k = rearrange(k, "b t (kv_head d) -> b kv_head t d", kv_head=attn.n_kv_head)
    v = rearrange(v, "b t (kv_head d) -> b kv_head t d", kv_head=attn.n_kv_head)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    # grouped-query attention: query head h reads kv head h // group, so kv heads repeat in place (not tiled)
    group = attn.n_head // attn.n_kv_head
    k = repeat(k, "b kv_head t d -> b (kv_head group) t d", group=group)  # (B, nh, T, hd)
    v = repeat(v, "b kv_head t d -> b (kv_head group) t d", group=group)
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(hd)  # (B, nh, T, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif is_causal:
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    return LayerCapture(scores.softmax(-1), v, output)


@dataclass(frozen=True)
class Attention:
    """Attention probabilities of one sequence: ``probs[i, j, q, k]`` is how much query position ``q`` of head
    ``heads[j]`` in layer ``layers[i]`` attends to key position ``k``. Causal: zero above the diagonal."""

    ids: list[int]
    labels: list[str]
    layers: list[int]
    heads: list[int]
    probs: Tensor  # [len(layers), len(heads), T, T], float32, on the CPU

    def map(self, layer: int, head: int) -> Tensor:
        """One head's ``[T, T]`` map, by the model's layer and head numbers."""
        return self.probs[self.layers.index(layer), self.heads.index(head)]


def _select(index: int | None, count: int, what: str) -> list[int]:
    if index is None:
        return list(range(count))
    if isinstance(index, bool) or not isinstance(index, int) or not -count <= index < count:
        raise ValueError(f"{what} {index!r} does not exist: the model has {count} {what}s (0 .. {count - 1})")
    return [index % count]


def attention(
    model: Transformer,
    ids: Sequence[int] | Tensor,
    layer: int | None = None,
    head: int | None = None,
    *,
    tokenizer: Tokenizer | None = None,
) -> Attention:
    """The attention maps of ``ids`` in every layer and head, or only ``layer`` / ``head`` (negative counts
    from the end). ``tokenizer`` fills in readable labels."""
    layers = _select(layer, model.config.n_layer, "layer")
    heads = _select(head, model.config.n_head, "head")
    ids = _ids_tensor(model, ids)
    captures = capture_attention(model, ids[None])
    probs = torch.stack([captures[i].probs[0, heads] for i in layers]).cpu()  # (L, H, T, T)
    return Attention(ids.tolist(), token_labels(tokenizer, ids.tolist()), layers, heads, probs)


# --- surprise ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Surprise:
    """Teacher-forced log-probabilities of a sequence; ``ids[0]`` is the condition, ``ids[1:]`` are scored."""

    ids: list[int]
    labels: list[str]  # one per id
    texts: list[str | None]  # the raw text of each id, for text-like tokenizers (None otherwise)
    token_logprobs: Tensor  # [len(ids) - 1] natural log P(ids[t] | ids[:t]), t = 1 ..
    log_likelihood: float  # their sum in nats: armm.score's log_likelihood
    num_units: int  # the modality's units the scored tokens cover (bytes, residues…)
    unit: str
    vocab_size: int

    @property
    def num_tokens(self) -> int:
        return self.token_logprobs.numel()

    @property
    def surprisal_bits(self) -> Tensor:
        """``-log2 P`` of every scored token."""
        return -self.token_logprobs / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.log_likelihood / self.num_tokens)

    @property
    def bits_per_token(self) -> float:
        return -self.log_likelihood / (self.num_tokens * math.log(2))

    @property
    def bits_per_unit(self) -> float:
        return -self.log_likelihood / (self.num_units * math.log(2))


def surprise(
    model: Transformer, tokenizer: Tokenizer | None, ids: Sequence[int] | Tensor, *, num_units: int | None = None,
    backend: str = "auto",
) -> Surprise:
    """Score ``ids`` with ``armm.score`` (start them with bos to score the first real token too). ``num_units``
    is what bits per unit divides by (e.g. ``tokenizer.num_units(sample)``); it defaults to the scored tokens.
    ``backend`` is ``armm.score``'s."""
    ids = _ids_tensor(model, ids).tolist()
    if len(ids) < 2:
        raise ValueError(f"surprise needs at least 2 tokens (a condition and one scored token), got {len(ids)}; "
                         "is the text empty?")
    result = score(model, ids, backend=backend)
    texts = text_pieces(tokenizer, ids) if tokenizer is not None else [None] * len(ids)
    unit = tokenizer.unit if tokenizer is not None and num_units is not None else "token"
    return Surprise(ids, token_labels(tokenizer, ids), texts, result.token_logprobs, result.log_likelihood,
                    result.num_tokens if num_units is None else num_units, unit, model.config.vocab_size)


# --- generation, step by step ------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationStep:
    """One step of generation: the context, the candidates after the sampler chain, and the token drawn."""

    step: int
    context: list[int]
    candidates: list[Candidate]  # the ``top`` most likely after the chain
    token: int
    label: str
    p_before: float  # the drawn token's probability under the model
    p_after: float  # … and under the filtered distribution it was drawn from


@dataclass(frozen=True)
class Generation:
    prompt: list[int]
    sampler: str
    seed: int | None
    steps: list[GenerationStep] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return [step.token for step in self.steps]


def generation_steps(
    model: Transformer,
    tokenizer: Tokenizer | None,
    prompt_ids: Sequence[int] | Tensor,
    steps: int,
    sampler: str | Sampler = "greedy",
    top: int = 5,
    seed: int | None = None,
    *,
    stop_tokens: Sequence[int] | None = None,
    backend: str = "auto",
) -> Generation:
    """Generate up to ``steps`` tokens after ``prompt_ids`` and show each step. The tokens are drawn by
    ``armm.generate`` itself (same sampler, seed and ``stop_tokens``, by default the tokenizer's eos), so they
    are exactly what ``armm.generate`` returns (with ``backend``); the candidates come from one causal pass over the
    result."""
    _check_top(top)
    ids = _ids_tensor(model, prompt_ids)
    context = model.config.max_seq_len
    if ids.numel() + steps > context:
        raise ValueError(f"{ids.numel()} prompt tokens + {steps} steps is more than the model's context "
                         f"(max_seq_len={context}), in which the steps are shown; lower --steps to at most "
                         f"{max(context - ids.numel(), 0)} or shorten the prompt")
    chain = _sampler(tokenizer, sampler)
    if stop_tokens is None:
        stop_tokens = [tokenizer.eos_id] if tokenizer is not None and tokenizer.eos_id is not None else []
    drawn = generate(model, [ids.tolist()], max_new_tokens=steps, sampler=chain, stop_tokens=list(stop_tokens),
                     seed=seed, backend=backend)[0]
    P = ids.numel()
    sequence = torch.cat([ids, torch.tensor(drawn, dtype=torch.long, device=ids.device)])
    logits = _logits(model, sequence[:-1])[P - 1:]  # (steps, V): the prediction before each drawn token
    result = Generation(ids.tolist(), chain.spec, seed)
    for s, token in enumerate(drawn):
        context = sequence[:P + s]
        filtered = chain.filter(logits[s:s + 1], context[None])
        p_before, p_after = logits[s].float().softmax(-1).cpu(), filtered[0].float().softmax(-1).cpu()
        result.steps.append(GenerationStep(
            s, context.tolist(), _ranked(tokenizer, p_before, p_after, top), token,
            token_labels(tokenizer, [token])[0], float(p_before[token]), float(p_after[token]),
        ))
    return result
