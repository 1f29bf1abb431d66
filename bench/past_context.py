"""Benchmark: generation past the model's context, each ``past_context`` mode side by side, on one model.

Run as ``python bench/past_context.py`` (see ``--help``). A random model of a preset (weights do not change the
cost) continues a one-token prompt by ``--new-tokens`` tokens, ``--factor`` times its context, greedily, at batch 1
and the batch of ``--batch``. Per mode it prints tokens/s and ms per token over the whole generation and over the
tokens past the context only, against the same number of tokens inside the context (a plain decode, the floor).
Timings are the median of ``--repeats`` rounds after a warm-up, each round running every mode in turn.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import armm
from tables import cpu_summary, print_table  # bench/tables.py (this folder is on sys.path)

MODES = ("recompute", "rolling", "chunked")


def timed(model: armm.Transformer, batch: int, new_tokens: int, mode: str, backend: str) -> float:
    began = time.perf_counter()
    out = armm.generate(model, [[1]] * batch, max_new_tokens=new_tokens, past_context=mode, backend=backend)
    elapsed = time.perf_counter() - began
    assert all(len(row) == new_tokens for row in out)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["llama-mini", "gpt2-mini"])
    parser.add_argument("--factor", type=int, default=3, help="new tokens per context length")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    print(cpu_summary())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {args.backend}\n")
    torch.manual_seed(0)
    for preset in args.presets:
        model = armm.Transformer(armm.ModelConfig.from_name(preset)).eval()
        context = model.config.max_seq_len
        rows = []
        for batch in (1, args.batch):
            modes = [m for m in MODES if m != "rolling" or model.config.position == "rope"]
            runs = {"within": context - 1, **{m: context * args.factor for m in modes}}
            times: dict[str, list[float]] = {name: [] for name in runs}
            for round_ in range(args.repeats + 1):
                for name, tokens in runs.items():
                    elapsed = timed(model, batch, tokens, "recompute" if name == "within" else name, args.backend)
                    if round_:
                        times[name].append(elapsed)
            inside = statistics.median(times["within"])
            for name, tokens in runs.items():
                total = statistics.median(times[name])
                past = (total - inside) / (tokens - runs["within"]) if name != "within" else inside / tokens
                rows.append([
                    str(batch), name if name != "within" else "inside the context", str(tokens),
                    f"{batch * tokens / total:,.0f}", f"{1000 * total / tokens:.2f}", f"{1000 * past:.2f}",
                    f"{past / (inside / runs['within']):.1f}x",
                ])
        print(f"{preset}: {model.num_params() / 1e6:.2f}M parameters, context {context}, "
              f"{model.config.position} positions")
        print_table(["batch", "mode", "new tokens", "tokens/s", "ms/step", "ms/step past the context",
                     "cost vs inside"], rows)


if __name__ == "__main__":
    main()
