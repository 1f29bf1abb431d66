"""``armm inspect next|attention|surprise|generation``: the ideas of autoregressive modelling, on your own model.

Each command computes with ``armm.inspect.api``, prints to the terminal with rich, and with ``--plot`` (or
``--html``) draws with ``armm.inspect.plots``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.columns import Columns
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from armm.backends import Backend
from armm.checkpoint import load_model_with_tokenizer
from armm.inspect.api import (
    Attention, Candidate, attention, generation_steps, next_token, prompt_ids, surprise, text_pieces, token_labels,
    visible,
)
from armm.outputs import check_new, write_new
from armm.tokenizer import Tokenizer

console = Console()

SHADES = "░▒▓█"  # attention ≥ 0.05, 0.25, 0.5, 0.75
THRESHOLDS = (0.05, 0.25, 0.5, 0.75)
MAX_TERMINAL_TOKENS = 48  # attention maps wider than this are cut to the last tokens in the terminal


FORMATS = {"plot": ("a PNG image", ".png"), "html": ("an HTML page", ".html")}  # what --plot and --html write


def _check_outputs(overwrite: bool, **outputs: Path | None) -> None:
    """Before any compute: each file given (``plot=``, ``html=``) ends with the suffix of what it receives, and is new
    unless ``overwrite``; a ValueError or FileExistsError otherwise."""
    given = {option: path for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        kind, suffix = FORMATS[option]
        if path.suffix.lower() != suffix:
            raise ValueError(f"--{option} {path}: it writes {kind}; end --{option} with {suffix}")
    check_new(given.values(), overwrite)


def _write(path: Path, draw: Callable[[Path], object], overwrite: bool) -> None:
    """``draw(file)`` writes ``path`` whole: into a temporary file beside it, then moved into place."""
    def staged(file: Path) -> list[Path]:
        draw(file)
        return [file]

    for written in write_new(path, staged, overwrite):
        console.print(f"wrote {written}", markup=False, highlight=False, soft_wrap=True)


def _context_text(tok: Tokenizer, ids: list[int], limit: int = 70) -> str:
    """Ids as one line: text-like tokens as their text (whitespace visible), others as labels joined by spaces;
    the end only when it is longer than ``limit``."""
    pieces, labels = text_pieces(tok, ids), token_labels(tok, ids)
    if any(piece is not None for piece in pieces):
        text = "".join(label if piece is None else visible(piece) for piece, label in zip(pieces, labels))
    else:
        text = " ".join(labels)
    return text if len(text) <= limit else "…" + text[-limit + 1:]


def _bar(p: float, width: int = 20) -> str:
    filled = p * width
    return "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")


def _candidates_table(candidates: list[Candidate], title: str | None, drawn: int | None = None) -> Table:
    table = Table(title=None if title is None else Text(title), title_justify="left", title_style="bold")
    for column, justify in (("#", "right"), ("id", "right"), ("token", "left"), ("p model", "right"),
                            ("p after sampler", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for rank, c in enumerate(candidates, 1):
        mark = "◀ drawn" if c.id == drawn else ""
        table.add_row(str(rank), str(c.id), Text(c.label), f"{c.p_before:.4f}", f"{c.p_after:.4f}",
                      Text(_bar(c.p_after) + (" " + mark if mark else ""), style="bold" if mark else "cyan"))
    return table


# --- next ------------------------------------------------------------------------------------------------
def inspect_next(model_dir: Path, prompt: str = "", top: int = 10, sampler: str | None = None,
                 plot: Path | None = None, overwrite: bool = False) -> None:
    """The distribution over the next token: the model's softmax and what the sampler chain leaves of it.

    Args:
        model_dir: A model directory.
        prompt: The context (after the tokenizer's bos token).
        top: How many of the most likely tokens to list.
        sampler: A sampler spec such as "temperature=0.7,top_p=0.9" (default temperature=1: the model's own
            distribution).
        plot: Write a bar chart of both distributions to this PNG file (.png).
        overwrite: Replace the --plot file if it exists (refused otherwise).
    """
    _check_outputs(overwrite, plot=plot)
    model, tok = load_model_with_tokenizer(model_dir)
    ids = prompt_ids(tok, prompt)
    result = next_token(model, tok, ids, sampler=sampler, top=top)
    console.print(Text(f"next token after: {_context_text(tok, ids)}", style="bold"))
    console.print(f"sampler {result.sampler} · entropy {result.entropy_before:.2f} → {result.entropy_after:.2f} "
                  f"bits · {result.kept} of {result.p_after.numel()} tokens kept", markup=False, highlight=False)
    console.print(_candidates_table(result.top, None))
    if plot is not None:
        from armm.inspect.plots import plot_next_token

        context = _context_text(tok, ids)
        _write(plot, lambda file: plot_next_token(result, file, context=context), overwrite)


# --- attention -----------------------------------------------------------------------------------------
def _shade(p: float) -> Text:
    level = sum(p >= t for t in THRESHOLDS)
    if level == 0:
        return Text("⋅ ", style="grey50")  # under 0.05
    r, g = round(60 + 195 * p), round(80 + 120 * p)
    return Text(SHADES[level - 1] * 2, style=f"rgb({r},{g},40)")


def _heat_map(result: Attention, i: int, j: int, *, labels: bool) -> Text:
    probs = result.probs[i, j]
    T = probs.size(0)
    first = max(0, T - MAX_TERMINAL_TOKENS)
    width = max((len(label) for label in result.labels[first:]), default=1) if labels else 0
    width = min(width, 12)
    out = Text()
    for q in range(first, T):
        if labels:
            out.append(result.labels[q][:12].rjust(width) + " ", style="bold")
        for k in range(first, T):
            out.append(_shade(float(probs[q, k])) if k <= q else Text("  "))
        out.append("\n")
    return out


def inspect_attention(model_dir: Path, prompt: str = "", layer: int | None = None, head: int | None = None,
                      plot: Path | None = None, overwrite: bool = False) -> None:
    """Attention maps of the prompt: which earlier tokens each token looks at, in every layer and head.

    Args:
        model_dir: A model directory.
        prompt: The text whose attention is shown (after the tokenizer's bos token).
        layer: Only this layer (0-based; negative counts from the end).
        head: Only this head.
        plot: Write a PNG (.png): the heat map of one head when --layer and --head are given, else a grid of the
            selected heads.
        overwrite: Replace the --plot file if it exists (refused otherwise).
    """
    _check_outputs(overwrite, plot=plot)
    model, tok = load_model_with_tokenizer(model_dir)
    ids = prompt_ids(tok, prompt)
    result = attention(model, ids, layer, head, tokenizer=tok)
    T = len(ids)
    if T > MAX_TERMINAL_TOKENS:
        console.print(f"(the terminal shows the last {MAX_TERMINAL_TOKENS} of {T} tokens; the PNG shows all)")
    legend = ("rows: attending token · columns: attended-to token · blank: masked (future)\n⋅  < 0.05  "
              + "  ".join(f"{shade * 2} ≥ {t}" for shade, t in zip(SHADES, THRESHOLDS)))
    if len(result.layers) == 1 and len(result.heads) == 1:
        console.print(Text(f"layer {result.layers[0]}, head {result.heads[0]}", style="bold"))
        console.print(_heat_map(result, 0, 0, labels=True), end="")
    else:
        console.print(Text("tokens: " + " ".join(f"{n}:{label}" for n, label in enumerate(result.labels)),
                           overflow="fold"))
        maps = [Group(Text(f"layer {layer_}, head {head_}", style="bold"), _heat_map(result, i, j, labels=False))
                for i, layer_ in enumerate(result.layers) for j, head_ in enumerate(result.heads)]
        console.print(Columns(maps, padding=(0, 3)))
    console.print(Text(legend, style="grey50"))
    if plot is not None:
        from armm.inspect.plots import plot_attention, plot_attention_grid

        single = len(result.layers) == 1 and len(result.heads) == 1
        _write(plot, lambda file: (plot_attention if single else plot_attention_grid)(result, file), overwrite)


# --- surprise ------------------------------------------------------------------------------------------
def _read_sample(tok: Tokenizer, file: Path):
    """The first sample the tokenizer reads from ``file``; an unreadable file is a ValueError naming it."""
    try:
        samples = tok.read(file)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"cannot read {file}: {err.strerror or err}") from None
    if not samples:
        raise ValueError(f"{file} holds no sample")
    if len(samples) > 1:
        console.print(f"({file} holds {len(samples)} samples; inspecting the first)", markup=False, highlight=False)
    return samples[0]


def inspect_surprise(model_dir: Path, text: Path | None = None, plot: Path | None = None,
                     html: Path | None = None, backend: Backend = "auto", overwrite: bool = False) -> None:
    """How surprised the model is by each token of a file: -log2 P(token | everything before it).

    Args:
        model_dir: A model directory.
        text: The file to score, read by the model's tokenizer plugin (the first sample it holds).
        plot: Write the tokens, coloured by surprisal, to this PNG file (.png).
        html: Write them as an HTML page (.html; hover a token for its probability).
        backend: How the forwards run (auto, eager, native, compiled; see `armm sample --help`).
        overwrite: Replace the --plot and --html files if they exist (refused otherwise).
    """
    from armm.inspect.plots import display_pieces, max_surprise_bits, surprise_colour

    if text is None:
        raise ValueError("give the file to score with --text FILE")
    _check_outputs(overwrite, plot=plot, html=html)
    model, tok = load_model_with_tokenizer(model_dir)
    sample = _read_sample(tok, text)
    ids = tok.start_ids + tok.encode(sample)
    result = surprise(model, tok, ids, num_units=tok.num_units(sample), backend=backend)
    top = max_surprise_bits(result)
    line = Text()
    for shown, bits, _ in display_pieces(result):
        if bits is None:
            line.append(shown, style="grey50")
            continue
        r, g, b = surprise_colour(bits, top)
        line.append(shown.replace("\n", "⏎\n"), style=f"black on rgb({r},{g},{b})")
    console.print(line)
    console.print(Text(f"green: expected (0 bits) … red: surprising (≥ {top:.1f} bits, a uniform guess)",
                       style="grey50"))
    table = Table(title=Text(f"surprise under {model_dir}"), title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("tokens scored", str(result.num_tokens))
    table.add_row("log-likelihood (nats)", f"{result.log_likelihood:.4f}")
    table.add_row("perplexity", f"{result.perplexity:.4f}")
    table.add_row("bits per token", f"{result.bits_per_token:.4f}")
    table.add_row(f"bits per {result.unit}", f"{result.bits_per_unit:.4f}")
    worst = result.surprisal_bits.argsort(descending=True)[:3].tolist()
    worst_text = "  ".join(f"{result.labels[i + 1]} {float(result.surprisal_bits[i]):.1f}" for i in worst)
    table.add_row("most surprising (bits)", Text(worst_text))
    console.print(table)
    if plot is not None:
        from armm.inspect.plots import plot_surprise

        _write(plot, lambda file: plot_surprise(result, file), overwrite)
    if html is not None:
        from armm.inspect.plots import write_surprise_html

        title = f"surprise of {text.name} under {model_dir}"
        _write(html, lambda file: write_surprise_html(result, file, title=title), overwrite)


# --- generation ----------------------------------------------------------------------------------------
def inspect_generation(model_dir: Path, prompt: str = "", steps: int = 8, sampler: str = "greedy",
                       seed: int | None = None, top: int = 5, backend: Backend = "auto") -> None:
    """Generation one step at a time: the context, the candidates after the sampler chain, the token drawn.

    Args:
        model_dir: A model directory.
        prompt: The text to continue (after the tokenizer's bos token).
        steps: How many tokens to generate (fewer if eos is drawn).
        sampler: A sampler spec such as "greedy" or "temperature=0.8,top_k=40".
        seed: Random seed; the tokens are those `armm sample` draws with the same sampler and seed.
        top: How many candidates to list per step.
        backend: How the forwards run (auto, eager, native, compiled; see `armm sample --help`).
    """
    model, tok = load_model_with_tokenizer(model_dir)
    ids = prompt_ids(tok, prompt)
    result = generation_steps(model, tok, ids, steps, sampler=sampler, top=top, seed=seed, backend=backend)
    console.print(Text(f"sampler {result.sampler}" + (f", seed {seed}" if seed is not None else ""), style="bold"))
    for step in result.steps:
        title = f"step {step.step + 1} · context: {_context_text(tok, step.context)}"
        console.print(_candidates_table(step.candidates, title, drawn=step.token))
        if step.token not in {c.id for c in step.candidates}:
            console.print(f"  drew {step.label} (id {step.token}, p model {step.p_before:.4f}, "
                          f"p after sampler {step.p_after:.4f})", markup=False, highlight=False)
    console.print(Text(f"generated: {_context_text(tok, result.tokens, limit=10_000)}", style="bold"))


COMMANDS = {
    "_help": "Look inside a model: next-token distributions, attention maps, per-token surprise, generation.",
    "next": inspect_next,
    "attention": inspect_attention,
    "surprise": inspect_surprise,
    "generation": inspect_generation,
}
