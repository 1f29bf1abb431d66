"""Benchmark: the cost of drawing one token, armm's samplers against ``transformers``' logits warpers.

Run as ``python bench/sampling.py`` (``transformers`` is a dev dependency). For each vocabulary size and batch, the
same random logits go through armm's sampler chain (``armm.build_sampler(spec)``: the filters, then the draw) and
through the ``transformers`` equivalent (its ``LogitsProcessorList`` of warpers, then ``softmax`` and
``torch.multinomial``, as its ``generate`` samples). The calls alternate (A, B, A, B, …) and each figure is the
median over ``--repeats`` rounds of ``--calls`` calls, in microseconds per call (one call draws one token per row).
Decoding a small model on the CPU takes about a millisecond a token, so these costs are part of every sampled
token. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import armm
from tables import cpu_summary, print_table  # bench/tables.py (this folder is on sys.path)

SPECS = ["greedy", "temperature=0.8", "temperature=0.8,top_k=50", "temperature=0.8,top_p=0.9",
         "temperature=0.8,min_p=0.05"]


def hf_sampler(spec: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``transformers``' warpers for ``spec``, then its draw: ``softmax`` and ``multinomial`` (argmax for greedy)."""
    from transformers import (LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    warpers = {"temperature": TemperatureLogitsWarper, "top_k": TopKLogitsWarper, "top_p": TopPLogitsWarper,
               "min_p": MinPLogitsWarper}
    items = [item.split("=") for item in spec.split(",")]
    if items == [["greedy"]]:
        return lambda logits, context: logits.argmax(-1)
    chain = LogitsProcessorList(warpers[name](int(value) if name == "top_k" else float(value)) for name, value in items)

    def sample(logits: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        scores = chain(context, logits)
        return torch.multinomial(scores.softmax(-1), 1)[:, 0]

    return sample


def timed(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[4096, 32000, 50304])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calls", type=int, default=50, help="calls per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is shown")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import transformers

    print(f"armm {armm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n{cpu_summary()}\n")
    rows = []
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for vocab in args.vocab_sizes:
            for batch in args.batch_sizes:
                logits = torch.randn(batch, vocab, generator=generator) * 3
                context = torch.randint(0, vocab, (batch, 64), generator=generator)
                for spec in SPECS:
                    ours, theirs = armm.build_sampler(spec), hf_sampler(spec)
                    runs = {"armm": [], "transformers": []}
                    for _ in range(args.repeats + 1):  # the first round warms up
                        runs["armm"].append(timed(lambda: ours(logits, context), args.calls))
                        runs["transformers"].append(timed(lambda: theirs(logits, context), args.calls))
                    a, h = (statistics.median(runs[name][1:]) for name in ("armm", "transformers"))
                    rows.append([str(vocab), str(batch), spec, f"{a:,.0f}", f"{h:,.0f}", f"{h / a:.2f}x"])
    print_table(["vocab", "batch", "sampler", "armm µs/call", "transformers µs/call", "armm speed-up"], rows)


if __name__ == "__main__":
    main()
