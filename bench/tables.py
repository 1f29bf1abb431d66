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


VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "amx_bf16", "amx_tile", "asimd", "sve", "sve2")


def cpu_summary() -> str:
    """The CPU's model name and its vector flags (every ``avx512*`` one, the others in ``VECTOR_FLAGS``), from
    /proc/cpuinfo: a speed figure means little without them."""
    import platform
    from pathlib import Path

    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info) if v}
    name = fields.get("model name") or fields.get("CPU part") or platform.processor()
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    vector = [f for f in flags if f in VECTOR_FLAGS or f.startswith("avx512")]
    return f"CPU: {name}, {platform.machine()}; vector flags: {' '.join(vector) or 'none'}"
