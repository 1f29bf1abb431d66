"""The Markdown table every benchmark prints (readable in a terminal, pastes straight into docs)."""

from __future__ import annotations


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Right-aligned Markdown pipe table, then a blank line."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in rows:
        print(line(row))
    print(flush=True)
