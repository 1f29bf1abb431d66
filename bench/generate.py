"""Benchmark: KV-cached generation (``armm.generate``) against an uncached, nanoGPT-style loop, on CPU.

Run as ``python bench/generate.py`` (see ``--help``). It prints two tables:

1. Throughput of greedy generation, cached versus uncached, per batch size: tokens/s
   (batch * new tokens / seconds), ms per decode step, the speed-up, and whether both paths
   produced the same tokens.
2. The cost of one decode step at an early and a late position of a long context, for both
   paths, and the late/early ratio: flat-ish for the cache, growing for the uncached loop.

The model is randomly initialised (weights do not change the cost) and runs in float32 under
``torch.inference_mode``. Every timing is the median of ``--repeats`` runs after a warm-up run.
This is a benchmark, not a test: it asserts nothing and always exits 0 unless something crashes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

import armm
from armm import ModelConfig, Transformer


# --- the two generation paths ------------------------------------------------------------------
def cached_generate(model: Transformer, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``armm.generate``, greedy: prefill once, then one token per step from the static KV-cache."""
    out = armm.generate(model, prompts.tolist(), max_new_tokens=new_tokens, sampler="greedy")
    return torch.tensor(out)


@torch.inference_mode()
def uncached_generate(model: Transformer, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The nanoGPT loop: every step is a full forward over the whole prefix, keeping the last logits."""
    assert not model.has_cache
    seq = prompts
    for _ in range(new_tokens):
        token = model(seq)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        seq = torch.cat([seq, token], dim=1)
    return seq[:, prompts.size(1):]


# --- timing helpers ----------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float], object]:
    """Median seconds of ``repeats`` timed calls (after the caller's warm-up), all times, last result."""
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(fn)
        times.append(seconds)
    return statistics.median(times), times, result


@torch.inference_mode()
def cached_step_ms(model: Transformer, batch: int, position: int, steps: int, repeats: int) -> float:
    """Median ms of one cached decode step at slots ``position - steps//2 ..`` (prefix prefilled first)."""
    vocab, max_len = model.config.vocab_size, model.config.max_seq_len
    first = max(1, position - steps // 2)
    assert first + steps <= max_len, (first, steps, max_len)
    gen = torch.Generator().manual_seed(position)
    prefix = torch.randint(0, vocab, (batch, first), generator=gen)
    token = torch.randint(0, vocab, (batch, 1), generator=gen)
    times = []
    model.setup_cache(batch, max_len)
    try:
        for rep in range(repeats + 1):  # the first pass is a warm-up
            model(prefix, start=0)  # prefill slots 0 .. first-1 (not timed)
            for slot in range(first, first + steps):
                seconds, logits = timed(lambda: model(token, start=slot))
                token = logits[:, -1].argmax(-1, keepdim=True)
                if rep:
                    times.append(seconds)
    finally:
        model.clear_cache()
    return statistics.median(times) * 1e3


@torch.inference_mode()
def uncached_step_ms(model: Transformer, batch: int, position: int, repeats: int) -> float:
    """Median ms of the uncached step that predicts the token at ``position``: a forward over ``position`` tokens."""
    gen = torch.Generator().manual_seed(position)
    seq = torch.randint(0, model.config.vocab_size, (batch, position), generator=gen)
    step = lambda: model(seq)[:, -1].argmax(-1)  # noqa: E731
    step()  # warm-up
    return median_time(step, repeats)[0] * 1e3


def load_average() -> float | None:
    """The 1-minute load average (Unix only): other busy processes make these timings meaningless."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def warn_if_busy(when: str) -> None:
    """Warn when other processes share the cores. At the end, this run's own threads are part of the load."""
    load, cpus = load_average(), os.cpu_count() or 1
    own = 0 if when == "start" else torch.get_num_threads()
    if load is not None and load > own + 0.25 * cpus + 0.5:
        print(f"WARNING ({when}): 1-min load average {load:.1f} on {cpus} CPU(s) (this run: {own} thread(s)): "
              f"other processes are competing for the cores, so timings are inflated and noisy "
              f"(especially with more than one thread); rerun on an idle machine.", flush=True)


# --- output ----------------------------------------------------------------------------------------
def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A Markdown pipe table (readable in a terminal, pastes straight into docs)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in rows:
        print(line(row))


def compare(cached: torch.Tensor, uncached: torch.Tensor) -> str:
    if cached.shape == uncached.shape and torch.equal(cached, uncached):
        return "yes"
    if cached.shape != uncached.shape:
        return f"NO (shapes {tuple(cached.shape)} vs {tuple(uncached.shape)})"
    diff = (cached != uncached).any(0).nonzero()
    rows = (cached != uncached).any(1).sum().item()
    return f"NO ({rows} row(s) differ from step {diff[0].item()})"


# --- main ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", default="gpt2-10m", help="model preset (default: gpt2-10m, about 10M parameters)")
    parser.add_argument("--max-seq-len", type=int, default=1024,
                        help="model context; the late-position timing runs near its end (default: 1024)")
    parser.add_argument("--new-tokens", type=int, default=256, help="new tokens per prompt (default: 256)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt length in tokens (default: 16)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is shown (default: 3)")
    parser.add_argument("--uncached-repeats", type=int, default=1,
                        help="timed runs of the (slow) uncached loop in the throughput table (default: 1)")
    parser.add_argument("--step-window", type=int, default=16,
                        help="decode steps timed around each position in the position table (default: 16)")
    parser.add_argument("--early", type=int, default=50, help="early position (default: 50)")
    parser.add_argument("--late", type=int, default=None, help="late position (default: max-seq-len - 10)")
    parser.add_argument("--skip-positions", action="store_true", help="skip the early/late position table")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    late = args.late if args.late is not None else args.max_seq_len - 10
    config = ModelConfig.from_name(args.preset, max_seq_len=args.max_seq_len)
    model = Transformer(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(args.seed)

    print(f"armm {armm.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    load = load_average()
    print(f"threads: {torch.get_num_threads()} intra-op, os.cpu_count()={os.cpu_count()}, "
          f"1-min load average before start: {'n/a' if load is None else f'{load:.2f}'}")
    print(f"model: {args.preset}, max_seq_len={config.max_seq_len}, {model.num_params() / 1e6:.2f}M parameters "
          f"({model.num_params(non_embedding=False) / 1e6:.2f}M with position embeddings), float32, CPU")
    print(f"greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens; median of {args.repeats} "
          f"run(s) (uncached throughput: {args.uncached_repeats}) after a warm-up run\n")

    warn_if_busy("start")

    # --- 1. throughput -----------------------------------------------------------------------------
    rows = []
    for batch in args.batch_sizes:
        prompts = torch.randint(0, config.vocab_size, (batch, args.prompt_len), generator=gen)
        n = args.new_tokens

        cached_generate(model, prompts, n)  # warm-up
        c_sec, c_times, c_out = median_time(lambda: cached_generate(model, prompts, n), args.repeats)

        uncached_generate(model, prompts, min(n, 16))  # warm-up (short: the full loop is the slow part)
        u_sec, u_times, u_out = median_time(lambda: uncached_generate(model, prompts, n), args.uncached_repeats)

        same = compare(c_out, u_out)
        for name, sec, times in (("cached (armm.generate)", c_sec, c_times), ("uncached (full forward)", u_sec, u_times)):
            spread = f"{min(times):.2f}-{max(times):.2f}" if len(times) > 1 else "-"
            rows.append([str(batch), name, f"{batch * n / sec:,.0f}", f"{sec / n * 1e3:.2f}", f"{sec:.2f}", spread,
                         f"{u_sec / c_sec:.1f}x" if name.startswith("cached") else "1.0x",
                         same if name.startswith("cached") else ""])
        print(f"  batch {batch}: cached {c_sec:.2f}s, uncached {u_sec:.2f}s, identical tokens: {same}", flush=True)
    print()
    print_table(["batch", "path", "tokens/s", "ms/token", "total s", "min-max s", "speed-up", "same tokens"], rows)
    print("\nms/token = ms per decode step (one token for every row of the batch); "
          "cached time includes the prompt prefill.\n")

    if args.skip_positions:
        warn_if_busy("end")
        return

    # --- 2. cost of one decode step, early vs late -------------------------------------------------
    rows = []
    for batch in args.batch_sizes:
        c_early = cached_step_ms(model, batch, args.early, args.step_window, args.repeats)
        c_late = cached_step_ms(model, batch, late, args.step_window, args.repeats)
        u_early = uncached_step_ms(model, batch, args.early, args.repeats)
        u_late = uncached_step_ms(model, batch, late, args.repeats)
        rows.append([str(batch), "cached", f"{c_early:.2f}", f"{c_late:.2f}", f"{c_late / c_early:.2f}x"])
        rows.append([str(batch), "uncached", f"{u_early:.2f}", f"{u_late:.2f}", f"{u_late / u_early:.2f}x"])
        print(f"  batch {batch}: done", flush=True)
    print()
    print_table(["batch", "path", f"ms/step @ pos ~{args.early}", f"ms/step @ pos ~{late}", "late/early"], rows)
    print(f"\ncached: median of {args.step_window} single-token steps around each position "
          f"(model(token, start=slot) on a prefilled cache) x {args.repeats} repeats; "
          f"uncached: one full forward over that many tokens, median of {args.repeats}.")
    warn_if_busy("end")


if __name__ == "__main__":
    main()
