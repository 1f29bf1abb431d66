"""Benchmark: speculative decoding (``speculative_generate``) against plain greedy ``armm.generate``, on CPU.

Run as ``python bench/speculative.py`` (see ``--help``). By default it first trains, within a time
budget, a target (the gpt2-10m preset, over UTF-8 bytes) and a small draft (2 layers, d_model 128)
on the English text of Python's own help topics (``pydoc_data.topics``, shipped with Python: no
download), so that the draft really agrees with the target often. With ``--target DIR --draft DIR``
it loads two model directories instead (``armm.load_model``; prompts are encoded with the target's
tokenizer when it reads text, else random ids). ``--save DIR`` keeps the trained pair for later runs.

It then continues held-out text prompts, one at a time (batch 1, the latency case), with plain
greedy decoding and with speculative decoding for each ``--num-draft-tokens``, and prints a table:
tokens/s, ms per token, target forwards per token, mean accepted draft tokens per target forward,
the acceptance rate, the speed-up, and whether the tokens are identical to plain greedy decoding
(they must be: the script exits with status 1 otherwise). Timings are the median of ``--repeats``
rounds after a warm-up, each round running every path in turn, in float32 under ``torch.inference_mode``.

Caveat: models trained for a few minutes are weak and their greedy text repeats itself, which is
easy for a draft to predict; the acceptance rate of well-trained models on varied text is lower.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import armm
from armm import ByteTokenizer, ModelConfig, Tokenizer, Transformer
from armm.speculative import SpeculativeStats, speculative_generate
from tables import print_table  # bench/tables.py (this folder is on sys.path)


# --- machine and output (as in bench/generate.py) -----------------------------------------------------
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
              f"other processes are competing for the cores, so timings are inflated and noisy; "
              f"rerun on an idle machine.", flush=True)


# --- data ----------------------------------------------------------------------------------------------
def corpus(heldout_every: int = 10) -> tuple[list[str], list[str]]:
    """Python's help topics (about 0.8 MB of English) split into training and held-out documents."""
    from pydoc_data.topics import topics

    docs = [topics[name] for name in sorted(topics)]
    train = [d for i, d in enumerate(docs) if i % heldout_every]
    heldout = [d for i, d in enumerate(docs) if not i % heldout_every]
    return train, heldout


def text_prompts(docs: list[str], tokenizer: Tokenizer, count: int, length: int, seed: int) -> list[list[int]]:
    """``count`` prompts of ``length`` tokens, each starting at a line start of a held-out document."""
    rng = random.Random(seed)
    starts = [(i, j) for i, d in enumerate(docs) for j in range(len(d))
              if (j == 0 or d[j - 1] == "\n") and d[j].isalpha()]
    prompts = []
    for i, j in rng.sample(starts, len(starts)):
        tokens = tokenizer.encode(docs[i][j:j + 4 * length])[:length]
        if len(tokens) == length:
            prompts.append(tokens)
        if len(prompts) == count:
            return prompts
    raise ValueError(f"could not cut {count} prompts of {length} tokens from the held-out text")


# --- training ------------------------------------------------------------------------------------------
def train(model: Transformer, data: torch.Tensor, *, seconds: float, batch_size: int, seq_len: int, lr: float,
          seed: int, label: str) -> None:
    """AdamW on random windows of ``data`` for ``seconds`` of wall time: warm-up, then cosine decay over the budget."""
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    model.train()
    start, step, losses, warmup = time.perf_counter(), 0, [], 20
    while (elapsed := time.perf_counter() - start) < seconds:
        progress = elapsed / seconds
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        offsets = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=gen)
        window = torch.stack([data[o:o + seq_len + 1] for o in offsets.tolist()])  # (B, T+1)
        logits = model(window[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"  {label}: step {step}, {elapsed:.0f}s, loss {statistics.mean(losses[-50:]):.3f}", flush=True)
    model.eval()
    print(f"  {label}: {step} steps in {time.perf_counter() - start:.0f}s, "
          f"final loss {statistics.mean(losses[-20:]):.3f} nats/token", flush=True)


def trained_pair(args: argparse.Namespace) -> tuple[Transformer, Transformer, Tokenizer]:
    tokenizer = ByteTokenizer()
    docs, _ = corpus()
    data = torch.tensor([t for d in docs for t in tokenizer.encode(d) + [tokenizer.eos_id]])
    print(f"training data: {len(docs)} help topics, {data.numel() / 1e3:.0f}k bytes")
    shared = dict(vocab_size=tokenizer.vocab_size, max_seq_len=args.max_seq_len)
    target_config = ModelConfig.from_name(args.target_preset, **shared)
    draft_config = ModelConfig.from_name(args.target_preset, **shared, n_layer=args.draft_layers,
                                         d_model=args.draft_d_model, n_head=args.draft_heads, n_kv_head=None, d_ff=None)
    torch.manual_seed(args.seed)
    target, draft = Transformer(target_config), Transformer(draft_config)
    for label, model, seconds, lr in (("target", target, args.target_seconds, args.target_lr),
                                      ("draft", draft, args.draft_seconds, args.draft_lr)):
        print(f"training the {label} ({model.num_params() / 1e6:.2f}M parameters) for {seconds:.0f}s", flush=True)
        train(model, data, seconds=seconds, batch_size=args.train_batch, seq_len=args.train_seq_len, lr=lr,
              seed=args.seed, label=label)
    if args.save:
        for label, model in (("target", target), ("draft", draft)):
            armm.save_model(Path(args.save) / label, model, tokenizer)
        print(f"saved to {args.save}/target and {args.save}/draft (rerun with --target and --draft)")
    return target, draft, tokenizer


def loaded_pair(args: argparse.Namespace) -> tuple[Transformer, Transformer, Tokenizer | None]:
    target, tokenizer = armm.load_model(args.target)
    draft, draft_tokenizer = armm.load_model(args.draft)
    if tokenizer is not None and draft_tokenizer is not None and tokenizer.name != draft_tokenizer.name:
        print(f"WARNING: the target's tokenizer is {tokenizer.name!r} but the draft's is {draft_tokenizer.name!r}; "
              f"speculative decoding needs both to share one", flush=True)
    return target.float(), draft.float(), tokenizer


# --- timing --------------------------------------------------------------------------------------------
def timed_interleaved(paths: dict, repeats: int) -> dict:
    """Median seconds of each path over ``repeats`` rounds, after a warm-up call of each.

    Every round runs all paths one after the other, so a change in the machine's load hits them alike.
    """
    times = {name: [] for name in paths}
    for name, run in paths.items():
        run()
    for round_ in range(repeats):
        for name, run in paths.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
        print(f"  round {round_ + 1}/{repeats}: " + ", ".join(
            f"{'plain' if name is None else f'k={name}'} {ts[-1]:.2f}s" for name, ts in times.items()), flush=True)
    return {name: statistics.median(ts) for name, ts in times.items()}


# --- main ----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--target", help="target model directory (with --draft); default: train a pair first")
    parser.add_argument("--draft", help="draft model directory (with --target)")
    parser.add_argument("--save", help="save the trained target and draft under this directory")
    parser.add_argument("--target-preset", default="gpt2-10m", help="target architecture (default: gpt2-10m)")
    parser.add_argument("--max-seq-len", type=int, default=256, help="context of the trained models (default: 256)")
    parser.add_argument("--draft-layers", type=int, default=2, help="draft layers (default: 2)")
    parser.add_argument("--draft-d-model", type=int, default=128, help="draft width (default: 128)")
    parser.add_argument("--draft-heads", type=int, default=4, help="draft attention heads (default: 4)")
    parser.add_argument("--target-seconds", type=float, default=180, help="target training time (default: 180)")
    parser.add_argument("--draft-seconds", type=float, default=40, help="draft training time (default: 40)")
    parser.add_argument("--target-lr", type=float, default=2e-3, help="target peak learning rate (default: 2e-3)")
    parser.add_argument("--draft-lr", type=float, default=3e-3, help="draft peak learning rate (default: 3e-3)")
    parser.add_argument("--train-batch", type=int, default=16, help="training batch size (default: 16)")
    parser.add_argument("--train-seq-len", type=int, default=128, help="training window in tokens (default: 128)")
    parser.add_argument("--prompts", type=int, default=4, help="held-out prompts, generated one at a time (default: 4)")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt length in tokens (default: 32)")
    parser.add_argument("--new-tokens", type=int, default=128, help="new tokens per prompt (default: 128)")
    parser.add_argument("--num-draft-tokens", type=int, nargs="+", default=[2, 3, 4, 6],
                        help="draft tokens per round to compare (default: 2 3 4 6)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is shown (default: 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.target is None) != (args.draft is None):
        parser.error("--target and --draft go together")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"armm {armm.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    load = load_average()
    print(f"threads: {torch.get_num_threads()} intra-op, os.cpu_count()={os.cpu_count()}, "
          f"1-min load average before start: {'n/a' if load is None else f'{load:.2f}'}")
    warn_if_busy("start")

    target, draft, tokenizer = loaded_pair(args) if args.target else trained_pair(args)
    try:
        if tokenizer is None:
            raise ValueError("no tokenizer")
        prompts = text_prompts(corpus()[1], tokenizer, args.prompts, args.prompt_len, args.seed)
        source = "held-out help topics"
    except (TypeError, ValueError):  # no tokenizer, or one that does not encode text
        gen = torch.Generator().manual_seed(args.seed)
        prompts = torch.randint(0, target.config.vocab_size, (args.prompts, args.prompt_len), generator=gen).tolist()
        source = "random ids"
    print(f"\ntarget: {target.num_params() / 1e6:.2f}M parameters, draft: {draft.num_params() / 1e6:.2f}M "
          f"(non-embedding); float32, CPU")
    print(f"{len(prompts)} prompts of {args.prompt_len} tokens ({source}), one at a time, {args.new_tokens} new "
          f"tokens each, greedy; median of {args.repeats} round(s) after a warm-up\n")

    n, ks = args.new_tokens, args.num_draft_tokens
    total = len(prompts) * n
    stats = {k: SpeculativeStats() for k in ks}

    def plain() -> list[list[int]]:
        return [armm.generate(target, [p], max_new_tokens=n)[0] for p in prompts]

    def speculative(k: int) -> list[list[int]]:
        stats[k] = SpeculativeStats()  # keep the last run's counters (every run makes the same tokens)
        return [speculative_generate(target, draft, [p], max_new_tokens=n, num_draft_tokens=k, stats=stats[k])[0]
                for p in prompts]

    paths = {None: plain, **{k: (lambda k=k: speculative(k)) for k in ks}}
    seconds = timed_interleaved(paths, args.repeats)
    reference = plain()
    p_sec = seconds[None]
    rows = [["armm.generate", "-", f"{total / p_sec:,.1f}", f"{p_sec / total * 1e3:.2f}", "1.00", "-", "-", "1.00x",
             "-"]]
    all_same = True
    for k in ks:
        same = speculative(k) == reference
        all_same &= same
        s_sec, st = seconds[k], stats[k]
        rows.append(["speculative", str(k), f"{total / s_sec:,.1f}", f"{s_sec / total * 1e3:.2f}",
                     f"{st.rounds / st.tokens:.2f}", f"{st.mean_accepted:.2f}", f"{st.acceptance_rate:.0%}",
                     f"{p_sec / s_sec:.2f}x", "yes" if same else "NO"])
    print()
    print_table(["path", "k", "tokens/s", "ms/token", "target fwd/token", "accepted/fwd", "acceptance", "speed-up",
                 "same tokens"], rows)
    print("\nk = draft tokens per round; accepted/fwd = mean draft tokens kept per target forward (at most k); "
          "acceptance = kept / proposed.\nTimes include the prompt prefill and, for speculative decoding, the draft.")
    if tokenizer is not None:
        sample = tokenizer.decode(reference[0])
        print(f"\nfirst continuation: {tokenizer.decode(prompts[0])!r} -> {sample!r}")
    warn_if_busy("end")
    if not all_same:
        print("ERROR: speculative decoding did not reproduce plain greedy decoding", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
