"""Draw what ``armm.inspect.api`` computes: PNG figures (matplotlib, Agg, no pyplot state) and an HTML page.

Every ``plot_*`` function returns a ``matplotlib.figure.Figure`` and, given a ``path``, also saves it as a PNG.
matplotlib is imported inside them, so ``import armm`` stays light.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

from armm.inspect.api import Attention, NextToken, Surprise

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MONO = "DejaVu Sans Mono"  # ships with matplotlib, and draws ⏎ · ⇥ μ ≈


def surprise_colour(bits: float, max_bits: float) -> tuple[int, int, int]:
    """RGB for a token's surprisal: green (expected, 0 bits) → yellow → red (``max_bits`` or more, e.g.
    log2 of the vocabulary: what a uniform guess costs). The terminal, the PNG and the HTML share it."""
    x = min(max(bits / max_bits, 0.0), 1.0) if max_bits > 0 else 0.0
    green, yellow, red = (46, 160, 67), (240, 200, 40), (215, 48, 39)
    a, b, f = (green, yellow, x * 2) if x < 0.5 else (yellow, red, x * 2 - 1)
    return tuple(round(u + (v - u) * f) for u, v in zip(a, b))


def max_surprise_bits(result: Surprise) -> float:
    """The top of the colour scale: what a uniform guess over the vocabulary costs, in bits."""
    return math.log2(result.vocab_size)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    return fig


# --- the next-token distribution ---------------------------------------------------------------------
def plot_next_token(result: NextToken, path: str | Path | None = None, *, context: str | None = None) -> Figure:
    """Grouped bars: each top token's probability under the model (before) and after the sampler chain."""
    import numpy as np

    labels = [c.label for c in result.top]
    x = np.arange(len(labels))
    fig = _figure(max(6.0, 0.7 * len(labels) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.4
    ax.bar(x - width / 2, [c.p_before for c in result.top], width, label="model (softmax of logits)", color="#4c72b0")
    ax.bar(x + width / 2, [c.p_after for c in result.top], width, label=f"after sampler: {result.sampler}",
           color="#dd8452")
    rotation = 45 if max(map(len, labels), default=0) > 3 else 0
    ax.set_xticks(x, labels, fontfamily=MONO, fontsize=11, rotation=rotation, parse_math=False)
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1.05 * max([c.p_before for c in result.top] + [c.p_after for c in result.top] + [1e-9]))
    title = "next-token distribution" + (f" after {context!r}" if context else "")
    ax.set_title(f"{title}\nentropy {result.entropy_before:.2f} → {result.entropy_after:.2f} bits · "
                 f"{result.kept} of {result.p_after.numel()} tokens kept", fontfamily=MONO, fontsize=9,
                 parse_math=False)
    ax.legend(fontsize=8)
    return _save(fig, path)


# --- attention ---------------------------------------------------------------------------------------
def _draw_map(ax, probs, labels: list[str] | None, title: str, *, fontsize: float = 7) -> object:
    """One ``[T, T]`` map; the causally masked cells above the diagonal are light grey, not dark (= near 0)."""
    import numpy as np
    from matplotlib import colormaps

    T = probs.size(0)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    cmap = colormaps["viridis"].with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_array(probs.numpy(), future), cmap=cmap, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    ax.set_title(title, fontsize=fontsize + 2)
    if labels is not None:
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels, rotation=90, fontfamily=MONO, fontsize=fontsize, parse_math=False)
        ax.set_yticks(ticks, labels, fontfamily=MONO, fontsize=fontsize, parse_math=False)
        ax.set_xlabel("key (attended to)", fontsize=fontsize + 1)
        ax.set_ylabel("query (attending)", fontsize=fontsize + 1)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return image


def plot_attention(result: Attention, path: str | Path | None = None, *, layer: int | None = None,
                   head: int | None = None) -> Figure:
    """One head's map with token labels (the first selected layer and head unless given)."""
    layer = result.layers[0] if layer is None else layer
    head = result.heads[0] if head is None else head
    T = len(result.ids)
    side = min(max(4.0, 0.28 * T + 2.0), 30.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = _draw_map(ax, result.map(layer, head), result.labels, f"layer {layer}, head {head}",
                      fontsize=9 if T <= 24 else 7 if T <= 64 else 4)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention probability")
    return _save(fig, path)


def plot_attention_grid(result: Attention, path: str | Path | None = None) -> Figure:
    """Every selected head: one row per layer, one column per head (token labels on the first column)."""
    rows, cols = len(result.layers), len(result.heads)
    T = len(result.ids)
    cell = min(max(2.2, 0.12 * T + 1.2), 6.0)
    fig = _figure(cell * cols + 1.0, cell * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for i, layer in enumerate(result.layers):
        for j, head in enumerate(result.heads):
            ax = axes[i][j]
            image = _draw_map(ax, result.probs[i, j], None, f"L{layer} H{head}", fontsize=6)
            if j == 0 and T <= 40:
                ax.set_yticks(range(T), result.labels, fontfamily=MONO, fontsize=6, parse_math=False)
            if i == rows - 1 and T <= 40:
                ax.set_xticks(range(T), result.labels, fontfamily=MONO, fontsize=6, rotation=90, parse_math=False)
    fig.suptitle("attention maps (rows: queries attending, columns: keys attended to; grey: masked future)",
                 fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    return _save(fig, path)


# --- surprise ----------------------------------------------------------------------------------------
def display_pieces(result: Surprise) -> list[tuple[str, float | None, int]]:
    """What to show per token: ``(text, surprisal in bits or None for the unscored condition, tokens)``.

    Text-like tokens show their own text (newlines kept); others their label and a space. The bytes of a
    character split over several tokens are shown once, as that character, with their summed surprisal
    (the surprisal of the character), so ``tokens`` is how many tokens the piece covers."""
    bits = [None, *result.surprisal_bits.tolist()]
    sep = "" if any(text is not None for text in result.texts) else " "
    shown: list[tuple[str, float | None, int]] = []
    carried, count = 0.0, 0  # surprisal of the leading bytes of a character not complete yet
    for label, text, b in zip(result.labels, result.texts, bits):
        if text == "" and b is not None:
            carried, count = carried + b, count + 1
            continue
        shown.append((text if text else label + sep, None if b is None else b + carried, count + 1))
        carried, count = 0.0, 0
    if count:  # the text ends inside a character
        shown.append(("\ufffd", carried, count))
    return shown


def plot_surprise(result: Surprise, path: str | Path | None = None, *, columns: int = 80,
                  max_tokens: int = 3000) -> Figure:
    """The tokens as coloured text (green: expected, red: surprising), wrapped at ``columns`` characters;
    the first ``max_tokens`` only."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    top = max_surprise_bits(result)
    lines: list[list[tuple[int, str, float | None]]] = [[]]
    column = 0
    for text, bits, _ in display_pieces(result)[:max_tokens]:
        for n, part in enumerate(text.split("\n")):
            if n:  # a newline inside the token: mark it, then break the line
                lines[-1].append((column, "⏎", bits))
                lines.append([])
                column = 0
            part = part.replace("\t", "⇥").replace("\r", "\\r")
            if not part:
                continue
            if column and column + len(part) > columns:
                lines.append([])
                column = 0
            lines[-1].append((column, part, bits))
            column += len(part)
    columns = max(20, max((col + len(part) for line in lines for col, part, _ in line), default=0))
    fontsize, margin, top_in, bottom_in = 9, 0.3, 0.5, 0.8
    char_in, line_in = 0.602 * fontsize / 72, 1.6 * fontsize / 72  # DejaVu Sans Mono: 0.602 em per character
    text_w, text_h = char_in * columns, line_in * len(lines)
    W, H = max(text_w, 4.5) + 2 * margin, text_h + top_in + bottom_in
    fig = Figure(figsize=(W, H), dpi=150)
    ax = fig.add_axes((margin / W, bottom_in / H, text_w / W, text_h / H))
    ax.set_xlim(0, columns)
    ax.set_ylim(len(lines), 0)
    ax.axis("off")
    for row, line in enumerate(lines):
        for col, part, bits in line:
            colour = "#dddddd" if bits is None else "#%02x%02x%02x" % surprise_colour(bits, top)
            ax.add_patch(Rectangle((col, row + 0.05), len(part), 0.9, facecolor=colour, edgecolor="white",
                                   linewidth=0.6))
            ax.text(col, row + 0.5, part, fontfamily=MONO, fontsize=fontsize, va="center_baseline", ha="left",
                    parse_math=False)
    cmap = LinearSegmentedColormap.from_list(
        "surprise", ["#%02x%02x%02x" % surprise_colour(top * x / 10, top) for x in range(11)])
    bar = fig.add_axes((margin / W, 0.3 / H, 4.0 / W, 0.12 / H))
    fig.colorbar(ScalarMappable(Normalize(0, top), cmap), cax=bar, orientation="horizontal")
    bar.tick_params(labelsize=7)
    bar.set_title("surprisal −log₂ P(token | context), bits", fontsize=7, loc="left")
    fig.text(margin / W, 1 - 0.3 / H, f"log-likelihood {result.log_likelihood:.2f} nats · perplexity "
             f"{result.perplexity:.2f} · {result.bits_per_unit:.3f} bits per {result.unit}", fontsize=9, va="center")
    return _save(fig, path)


def surprise_html(result: Surprise, *, title: str = "armm inspect surprise") -> str:
    """A standalone HTML page: every token coloured by its surprisal, with its probability on hover."""
    top = max_surprise_bits(result)
    spans = []
    for text, bits, count in display_pieces(result):
        if bits is None:
            spans.append(f'<span class="cond" title="condition (not scored)">{html.escape(text)}</span>')
            continue
        r, g, b = surprise_colour(bits, top)
        tip = f"p = {2 ** -bits:.4g} · {bits:.2f} bits" + (f" · {count} tokens" if count > 1 else "")
        spans.append(f'<span style="background: rgb({r}, {g}, {b})" title="{html.escape(tip)}">'
                     f"{html.escape(text)}</span>")
    rows = [("tokens scored", f"{result.num_tokens}"), ("log-likelihood (nats)", f"{result.log_likelihood:.4f}"),
            ("perplexity", f"{result.perplexity:.4f}"), ("bits per token", f"{result.bits_per_token:.4f}"),
            (f"bits per {result.unit}", f"{result.bits_per_unit:.4f}")]
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body { font-family: sans-serif; margin: 2em; }"
        ".text { font-family: monospace; white-space: pre-wrap; line-height: 1.6; }"
        ".text span { border-radius: 2px; } .cond { background: #ddd; }"
        "td { padding: 0 1em 0 0; }"
        f"</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>Green: the model expected the token; red: it was surprised (≥ {top:.1f} bits, a uniform guess). "
        "Hover a token for its probability.</p>"
        f"<div class=\"text\">{''.join(spans)}</div><table>{table}</table></body></html>\n"
    )


def write_surprise_html(result: Surprise, path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(surprise_html(result, **kwargs), encoding="utf-8")
    return path
