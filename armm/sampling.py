"""Logits transforms, the sampler registry, and the draw.

Every transform is a callable ``(logits [B, V], tokens [B, T]) -> logits`` that sets the entries
it removes to ``-inf``, so ``softmax`` of its output is the filtered distribution. ``tokens`` is the
context so far, left-padded with ``-1``. A ``Sampler`` is a chain of transforms, built from a spec
such as ``"temperature=0.7,top_p=0.9"`` and applied left to right, followed by one draw.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from armm.hookspecs import hookimpl
from armm.plugins import get_plugins
from armm.tokenizer import Tokenizer

NEG_INF = float("-inf")


class LogitsTransform(Protocol):
    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor: ...


def _keep(logits: Tensor, keep: Tensor) -> Tensor:
    return logits.masked_fill(~keep, NEG_INF)


def _check_number(name: str, value: object, allowed: str, ok: Callable[[float], bool]) -> float:
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int too large for a float
        number = math.nan
    if not math.isfinite(number) or not ok(number):
        raise ValueError(f"{name} must be {allowed}, got {value!r:.60}")
    return number


def _check_int(name: str, value: object, minimum: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value)) or value != int(value) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def token_counts(tokens: Tensor, vocab_size: int) -> Tensor:
    """How often each id occurs in each row of ``tokens [B, T]`` (``-1`` padding ignored) → ``[B, V]``."""
    counts = torch.zeros(tokens.size(0), vocab_size + 1, device=tokens.device)
    counts.scatter_add_(1, tokens + 1, torch.ones_like(tokens, dtype=counts.dtype))  # padding lands in column 0
    return counts[:, 1:]


# --- filters ---------------------------------------------------------------------------------------
class Greedy:
    """Keep only the most likely token (the first one, on ties)."""

    deterministic = True

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.argmax(-1, keepdim=True), True)
        return _keep(logits, keep)


class Temperature:
    """Divide logits by ``t`` (t > 1 flattens, t < 1 sharpens); ``t = 0`` is greedy.

    A row whose largest logit over ``t`` leaves the float range (a tiny ``t``) takes the limit ``t → 0``:
    it keeps only its largest logits.
    """

    def __init__(self, t: float) -> None:
        self.t = _check_number("temperature", t, "a number >= 0 (0 means greedy)", lambda x: x >= 0)
        self.deterministic = self.t == 0

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        if self.deterministic:
            return Greedy()(logits, tokens)
        top = logits.amax(-1, keepdim=True)  # (B, 1)
        overflow = ~(top / self.t).isfinite() & top.isfinite()  # in the logits' dtype, where t may round to 0
        scaled = logits / self.t
        if logits.device.type == "cpu" and not overflow.any():  # the host checks at no cost: the plain division
            return scaled
        return torch.where(overflow, _keep(logits, logits == top), scaled)


class TopK:
    """Keep exactly the ``k`` most likely tokens."""

    def __init__(self, k: int) -> None:
        self.k = _check_int("top_k", k, 1)
        self.deterministic = self.k == 1

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        k = min(self.k, logits.size(-1))
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
        return _keep(logits, keep)


NUCLEUS_CANDIDATES = 1024  # top_p on the CPU ranks this many likeliest tokens first (bench/sampling.py)


class TopP:
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches ``p``."""

    deterministic = False

    def __init__(self, p: float) -> None:
        self.p = _check_number("top_p", p, "in (0, 1]", lambda x: 0 < x <= 1)

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        if self.p == 1:  # keeps every token; the float32 cumsum would round the tail's mass up to 1 and drop it
            return logits
        log_total = logits.float().logsumexp(-1, keepdim=True)  # (B, 1)
        if logits.device.type == "cpu" and logits.size(-1) > NUCLEUS_CANDIDATES:
            # Sort only the likeliest candidates when they hold p in every row (the host checks at no cost on the
            # CPU): the same nucleus, at a fraction of a full sort's cost over a large vocabulary.
            values, order = logits.topk(NUCLEUS_CANDIDATES, dim=-1)  # (B, k), most likely first
            probs = (values.float() - log_total).exp()
            if bool((probs.sum(-1) >= self.p).all()):
                return _keep(logits, self.nucleus(logits, probs, order))
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        return _keep(logits, self.nucleus(logits, (sorted_logits.float() - log_total).exp(), order))

    def nucleus(self, logits: Tensor, probs: Tensor, order: Tensor) -> Tensor:
        """Bool ``[B, V]``: the tokens ranked (``order``, with their ``probs``, most likely first) before the mass
        above them reaches ``p``."""
        mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each one
        keep_sorted = mass_before < self.p
        keep_sorted[..., 0] = True
        return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, keep_sorted)


class MinP:
    """Keep tokens whose probability is at least ``p`` times that of the most likely token."""

    deterministic = False

    def __init__(self, p: float) -> None:
        self.p = _check_number("min_p", p, "in (0, 1]", lambda x: 0 < x <= 1)

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        probs = logits.float().softmax(-1)
        return _keep(logits, probs >= self.p * probs.amax(-1, keepdim=True))


class Typical:
    """Locally typical sampling (Meister et al. 2022): keep the tokens whose surprise is closest to the
    entropy, in that order, until their probability reaches ``p``."""

    deterministic = False

    def __init__(self, p: float) -> None:
        self.p = _check_number("typical", p, "in (0, 1]", lambda x: 0 < x <= 1)

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        if self.p == 1:  # keeps every token, as in TopP
            return logits
        log_probs = logits.float().log_softmax(-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs).nan_to_num().sum(-1, keepdim=True)
        distance = (-log_probs - entropy).abs()
        sorted_distance, order = distance.sort(dim=-1)
        sorted_probs = probs.gather(-1, order)
        keep_sorted = ((sorted_probs.cumsum(-1) - sorted_probs) < self.p) & sorted_distance.isfinite()
        keep_sorted[..., 0] = True
        return _keep(logits, keep_sorted.scatter(-1, order, keep_sorted))


# --- penalties -------------------------------------------------------------------------------------
def _overflow_limit(logits: Tensor, penalised: Tensor) -> Tensor:
    """``penalised`` (``logits`` after a penalty), except in rows the penalty pushed out of the float range (a tiny
    or huge repetition penalty, a float16 frequency penalty): where a finite logit overflowed to ``+inf``, or every
    one to ``-inf``. There the limit of an ever stronger penalty keeps only the largest logits that overflowed."""
    up = penalised.isposinf()
    lost = torch.where(up.any(-1, keepdim=True), up, penalised.amax(-1, keepdim=True).isneginf()) & logits.isfinite()
    top = logits.masked_fill(~lost, NEG_INF).amax(-1, keepdim=True)  # (B, 1)
    return torch.where(lost.any(-1, keepdim=True), _keep(logits, lost & (logits == top)), penalised)


class RepetitionPenalty:
    """CTRL's penalty on every token in the context: positive logits divided by ``penalty``, negative ones multiplied."""

    deterministic = False

    def __init__(self, penalty: float) -> None:
        self.penalty = _check_number("repetition_penalty", penalty, "a number > 0 (1 = off)", lambda x: x > 0)

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        seen = token_counts(tokens, logits.size(-1)) > 0
        divided, multiplied = seen & (logits > 0), seen & (logits < 0) & logits.isfinite()  # -inf stays -inf
        penalised = torch.where(divided, logits / self.penalty, torch.where(multiplied, logits * self.penalty, logits))
        return _overflow_limit(logits, penalised)


ADDITIVE_RANGE = "a finite number in [-100, 100] (0 = off)"


def _additive(penalty: float) -> bool:
    """Whether an additive penalty is in range: 100 already makes a token e**-100 times as likely (below float32's
    smallest normal number), and 100 x any context length is a finite float32."""
    return abs(penalty) <= 100


class FrequencyPenalty:
    """Subtract ``penalty`` × (occurrences of the token in the context), as OpenAI's frequency_penalty."""

    deterministic = False

    def __init__(self, penalty: float) -> None:
        self.penalty = _check_number("frequency_penalty", penalty, ADDITIVE_RANGE, _additive)

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        return _overflow_limit(logits, logits - self.penalty * token_counts(tokens, logits.size(-1)).to(logits.dtype))


class PresencePenalty:
    """Subtract ``penalty`` from every token present in the context, as OpenAI's presence_penalty."""

    deterministic = False

    def __init__(self, penalty: float) -> None:
        self.penalty = _check_number("presence_penalty", penalty, ADDITIVE_RANGE, _additive)

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        return logits - self.penalty * (token_counts(tokens, logits.size(-1)) > 0).to(logits.dtype)


class NoRepeatNGram:
    """Forbid any token that would complete an n-gram already present in the context."""

    deterministic = False

    def __init__(self, n: int) -> None:
        self.n = _check_int("no_repeat_ngram", n, 1)

    def __call__(self, logits: Tensor, tokens: Tensor) -> Tensor:
        B, V = logits.shape
        n = self.n
        if tokens.size(1) < n:
            return logits
        windows = tokens.unfold(1, n, 1)  # (B, T-n+1, n)
        suffix = tokens[:, tokens.size(1) - n + 1:]  # (B, n-1): the n-gram prefix the next token would complete
        matches = (windows[..., :-1] == suffix[:, None]).all(-1) & (windows >= 0).all(-1)  # (B, T-n+1)
        if n > 1:
            matches &= (suffix >= 0).all(-1, keepdim=True)
        banned_ids = torch.where(matches, windows[..., -1], V)  # V is a dump column
        banned = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device).scatter_(1, banned_ids, True)
        return _keep(logits, ~banned[:, :V])


BUILTIN_TRANSFORMS: dict[str, Callable[..., LogitsTransform]] = {
    "greedy": Greedy,
    "temperature": Temperature,
    "top_k": TopK,
    "top_p": TopP,
    "min_p": MinP,
    "typical": Typical,
    "repetition_penalty": RepetitionPenalty,
    "frequency_penalty": FrequencyPenalty,
    "presence_penalty": PresencePenalty,
    "no_repeat_ngram": NoRepeatNGram,
}


@hookimpl
def armm_register_samplers(register) -> None:
    for name, factory in BUILTIN_TRANSFORMS.items():
        register(name, factory)


# --- the sampler -----------------------------------------------------------------------------------
class Sampler:
    """A chain of logits transforms followed by one draw from the softmax of what remains.

    When a transform in the chain leaves a single token (greedy, ``top_k=1``, ``temperature=0``)
    the draw is an argmax and needs no randomness.
    """

    def __init__(self, transforms: Sequence[LogitsTransform], spec: str = "") -> None:
        self.transforms = list(transforms)
        self.spec = spec or ",".join(type(t).__name__ for t in self.transforms)
        self.is_greedy = any(getattr(t, "deterministic", False) for t in self.transforms)
        # greedy, top_k=1 and temperature=0, alone or chained, keep exactly the argmax of the raw logits
        self.plain_argmax = bool(self.transforms) and all(getattr(t, "deterministic", False) for t in self.transforms)

    def __repr__(self) -> str:
        return f"Sampler({self.spec!r})"

    def filter(self, logits: Tensor, tokens: Tensor) -> Tensor:
        """Apply the chain: the logits of the distribution the draw samples from."""
        for transform in self.transforms:
            logits = transform(logits, tokens)
        return logits

    def __call__(self, logits: Tensor, tokens: Tensor, generators: Sequence[torch.Generator] | None = None) -> Tensor:
        """Draw one token id per row → ``[B]``.

        A row the chain leaves without a distribution (every token ``-inf``, or NaN) takes the argmax of its raw
        logits. Raw logits that are NaN are an error on the CPU (``check_logits``).
        """
        top = logits.argmax(-1)  # (B,); a row holding NaN has its argmax on a NaN
        check_logits(logits, top, tokens)
        if self.plain_argmax:
            return top
        filtered = self.filter(logits, tokens)
        token = filtered.argmax(-1) if self.is_greedy else draw(filtered, generators)
        return torch.where(filtered.amax(-1).isfinite(), token, top)


def check_logits(logits: Tensor, top: Tensor, tokens: Tensor) -> None:
    """Raise if a row of the model's logits ``[B, V]`` holds NaN, naming the row and the position drawn next; ``top``
    is the rows' argmax, which torch puts on a NaN when there is one, so only those B logits are read.

    On the CPU only: on an accelerator the check would wait for the device every step, so ``armm.generate`` notes
    NaN rows on the device and raises this error where it waits for the device anyway.
    """
    if logits.device.type != "cpu":
        return
    bad = logits.gather(-1, top[:, None])[:, 0].isnan()  # (B,)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise nan_logits_error(row, int((tokens[row] >= 0).sum()))


def nan_logits_error(row: int, position: int) -> ValueError:
    """The error for NaN logits of row ``row`` where it draws its token at ``position``."""
    return ValueError(f"the model's logits are NaN at position {position} of row {row}: its weights or activations "
                      f"overflowed; check the checkpoint's weights for NaN or inf, or run it in float32 or bfloat16")


def draw(logits: Tensor, generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Sample ``[B]`` ids from ``softmax(logits)`` as ``argmax(p / E)`` with ``E ~ Exp(1)`` — no host sync.

    ``generators`` (one per row) make each row's draw depend only on its own seed.
    """
    probs = logits.float().softmax(-1)
    if generators is None:
        uniform = torch.rand_like(probs)
    else:
        uniform = torch.stack([torch.rand(probs.shape[-1], generator=g, device=probs.device) for g in generators])
    noise = uniform.log_().neg_()  # Exp(1) as -log U: on the CPU several times faster than Tensor.exponential_
    return (probs / noise.clamp_(min=torch.finfo(noise.dtype).tiny)).argmax(-1)


def parse_spec(spec: str) -> list[tuple[str, int | float | None]]:
    """``"temperature=0.7,top_p=0.9"`` → ``[("temperature", 0.7), ("top_p", 0.9)]``; a bare name has value None."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"sampler spec must be a non-empty string such as 'greedy' or 'temperature=0.7,top_p=0.9', got {spec!r}")
    items = []
    for item in spec.split(","):
        name, sep, raw = (part.strip() for part in item.partition("="))
        if not name or (sep and not raw):
            raise ValueError(f"malformed sampler item {item.strip()!r} in {spec!r}; write name or name=value")
        items.append((name, _parse_number(raw, name) if sep else None))
    return items


def _parse_number(raw: str, name: str) -> int | float:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"sampler {name!r} takes a number, got {raw!r}") from None


def build_sampler(spec: str | Sampler, *, tokenizer: Tokenizer | None = None) -> Sampler:
    """A ``Sampler`` from a spec string, using every registered transform (built-in and plugins).

    A transform whose factory takes a keyword ``tokenizer`` (such as ``spans``, which needs a mixed layout)
    is given the model's ``tokenizer``.
    """
    if isinstance(spec, Sampler):
        return spec
    registry = get_plugins().samplers
    transforms = []
    for name, value in parse_spec(spec):
        factory = registry.get(name)
        kwargs = {"tokenizer": tokenizer} if _takes_tokenizer(factory) else {}
        try:
            transforms.append(factory(**kwargs) if value is None else factory(value, **kwargs))
        except TypeError:
            needs = "takes no value" if value is not None else "needs a value: write name=value"
            raise ValueError(f"sampler {name!r} {needs} (in {spec!r})") from None
    return Sampler(transforms, spec)


def _takes_tokenizer(factory: Callable[..., LogitsTransform]) -> bool:
    try:
        return "tokenizer" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False
