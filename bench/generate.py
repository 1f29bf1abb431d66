"""Benchmark: armm's KV-cached decoding against Hugging Face ``transformers`` ``generate()`` on the same weights.

Run as ``python bench/generate.py`` (see ``--help``; ``transformers`` must be installed: it is a dev dependency,
not a runtime one). For each model below, a ``transformers`` model is built with seeded random weights and
loaded into armm through armm's checkpoint importer (``armm.hf.load_hf``), or an armm model is exported to a
``transformers`` checkpoint (``armm.hf.export_hf``), so both sides run the same architecture and the same weights:

- ``gpt2``: GPT-2 style, n_layer 6, n_head 6, d_model 384, vocab 50304 (``GPT2LMHeadModel``);
- ``llama``: Llama style, 6 layers, d_model 384, 6 heads, 2 KV heads, d_ff 1024, vocab 32000 (``LlamaForCausalLM``);
- ``small``: armm's ``gpt2-10m`` preset (6 x 384, vocab 4096, the size the recipes train), exported to ``transformers``.

It prints these tables:

1. Greedy throughput, prompt 16 tokens, 256 new tokens, batch 1 and 8: tokens/s of each, the ratio armm /
   transformers, and whether both produced identical tokens (checked here, not assumed). armm decodes with
   its default backend, ``auto``: per shape class, the faster of armm's native C step and PyTorch with packed
   weights, as measured on this machine (``armm.backends.auto``; its warm-up run measures).
2. armm's backends side by side (``auto``; ``native``, the C step for every short forward; ``eager``, PyTorch with
   packed weights; both again with weight-only ``int8`` copies), which path auto chose for a decode step, whether
   native and eager drew the same tokens, and how many int8 tokens equal the float32 ones. The models are random,
   so their next-token distributions are nearly flat and int8 noise flips many argmaxes; on a trained model greedy
   int8 tokens stay close to float32 (tests/test_backend_eager.py states the tolerance).
3. The physical floor of batch-1 decoding: bytes of weights read per token divided by this machine's memory
   read bandwidth, and armm's ms/token as a multiple of it. The bandwidth is measured here, each pass by the
   faster of torch's ``sum()`` and a C read loop with software prefetch (``bench/membw.py``), twice per round: the
   peak (best of five 1 GiB passes right before the generation) and the mean during the generation (a 256 MB pass
   after every 16 tokens, timed apart from them), because a shared machine's bandwidth changes within seconds.
4. With ``--compile``: ``armm.generate(..., backend="compiled")`` (the static-shape decode step under ``torch.compile``;
   CUDA graphs on a GPU): the cost of its first call and its steady-state speed, against armm's eager decoding
   (on the CPU, the native step).
5. ms/token at early (~50) and late (~1000) positions (each model, batch 1), for both: a prompt fills the cache
   up to 10 tokens before the position, then 20 steps are timed; early and late runs alternate (in reversed
   order every other round), ``--position-rounds`` rounds. The late/early ratio shows whether anything recomputes
   the prefix; the bound beside it is what reading the cache at the weights' rate would cost.

Every table is printed under the CPU's model name and vector flags (``tables.cpu_summary``): which path wins
depends on them. On a GPU (``--device cuda``, as ``bench/gpu.sh`` runs it) armm decodes with ``backend="compiled"``
in every table, the path its docs recommend there, and ``transformers`` with ``cache_implementation="static"``, which
its ``generate`` compiles there (CUDA graphs too); on the CPU armm with its default, ``auto``, and ``transformers``
with its default dynamic cache.

Both sides run under ``torch.inference_mode`` with the same number of threads; timings alternate
between the two (A, B, A, B, …) so a noisy machine slows both alike, and each figure is the median of
``--repeats`` runs after a warm-up run. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import armm
from armm import ModelConfig, Transformer
from armm.backends import auto, compiled, library
from armm.hf import export_hf, load_hf
from membw import ReadProbe, sync  # bench/membw.py (this folder is on sys.path)
from tables import cpu_summary, print_table

PATHS = [("auto", None), ("native", None), ("eager", None), ("native", "int8"), ("eager", "int8")]  # table 2


def table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A table under its title and the CPU it was measured on."""
    print(f"{title}\n{cpu_summary()}, {torch.get_num_threads()} threads\n")
    print_table(headers, rows)


@dataclass
class Pair:
    """One architecture with the same weights in armm and in transformers."""

    name: str
    armm: Transformer
    hf: torch.nn.Module

    @property
    def weight_bytes(self) -> int:
        """Bytes of parameters a batch-1 decode step reads: everything but the embedding tables' unused rows
        (the tied output layer still reads the whole token embedding)."""
        model = self.armm
        return model.num_params(non_embedding=True) * model.tok_emb.weight.element_size()


# --- building the models -------------------------------------------------------------------------------------------
def hf_pair(name: str, hf_model: torch.nn.Module, folder: Path) -> Pair:
    """Save a transformers model as a checkpoint and load it into armm through the importer."""
    hf_model.save_pretrained(folder)
    model, _ = load_hf(folder, tokenizer=False)
    return Pair(name, model.eval(), hf_model.eval())


def build_pairs(names: list[str], max_len: int, folder: Path) -> list[Pair]:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, AutoModelForCausalLM

    pairs = []
    for name in names:
        torch.manual_seed(0)
        if name == "gpt2":
            config = GPT2Config(n_layer=6, n_head=6, n_embd=384, vocab_size=50304, n_positions=max_len)
            pairs.append(hf_pair(name, GPT2LMHeadModel(config), folder / name))
        elif name == "llama":
            config = LlamaConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, num_key_value_heads=2,
                                 intermediate_size=1024, vocab_size=32000, max_position_embeddings=max_len,
                                 tie_word_embeddings=False)
            pairs.append(hf_pair(name, LlamaForCausalLM(config), folder / name))
        elif name == "llama-1b":  # TinyLlama's shape: for the GPU run (bench/gpu.sh)
            config = LlamaConfig(num_hidden_layers=22, hidden_size=2048, num_attention_heads=32, num_key_value_heads=4,
                                 intermediate_size=5632, vocab_size=32000, max_position_embeddings=max_len,
                                 tie_word_embeddings=False)
            pairs.append(hf_pair(name, LlamaForCausalLM(config), folder / name))
        elif name == "small":
            model = Transformer(ModelConfig.from_name("gpt2-10m", max_seq_len=max_len))
            armm.save_model(folder / "small-armm", model)
            export_hf(folder / "small-armm", folder / name)
            hf_model = AutoModelForCausalLM.from_pretrained(folder / name, torch_dtype=torch.float32)
            pairs.append(Pair(name, model.eval(), hf_model.eval()))
        else:
            raise SystemExit(f"unknown model {name!r}; choose from gpt2, llama, llama-1b, small")
    return pairs


# --- the two generation paths ------------------------------------------------------------------------------------
BACKEND = "auto"  # armm's backend for the tables; main() sets "compiled" on a GPU
HF_CACHE: str | None = None  # transformers' cache_implementation; main() sets "static" (compiled there) on a GPU


def armm_generate(model: Transformer, prompts: torch.Tensor, new_tokens: int, backend: str | None = None,
                  quantize: str | None = None) -> torch.Tensor:
    """``armm.generate``, greedy, with ``backend`` (default: ``BACKEND``) and ``quantize`` (``armm.backends``)."""
    return torch.tensor(armm.generate(model, prompts.tolist(), max_new_tokens=new_tokens, sampler="greedy",
                                      backend=backend or BACKEND, quantize=quantize))


def auto_choice(model: Transformer, rows: int) -> str:
    """The path auto takes for a forward of ``rows`` rows on this machine (measured if not yet)."""
    with torch.inference_mode():
        return "native" if auto.prefers_native(model, None, rows) else "eager"


@torch.inference_mode()
def hf_generate(model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int, processors=None) -> torch.Tensor:
    device = next(model.parameters()).device
    prompts = prompts.to(device)
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                         logits_processor=processors, cache_implementation=HF_CACHE)
    return out[:, prompts.size(1):].cpu()


def alternate(fns: list[Callable[[], torch.Tensor]], repeats: int) -> tuple[list[float], list[torch.Tensor]]:
    """Median seconds of each function, timed in turn ``repeats`` times after one warm-up call each."""
    times: list[list[float]] = [[] for _ in fns]
    results = [fn() for fn in fns]  # warm-up
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], results


def same_tokens(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape == b.shape and torch.equal(a, b):
        return "yes"
    if a.shape != b.shape:
        return f"NO (shapes {tuple(a.shape)} vs {tuple(b.shape)})"
    first = int((a != b).any(0).nonzero()[0])
    return f"NO ({int((a != b).any(1).sum())} row(s) differ from step {first})"


# --- per-step timings ---------------------------------------------------------------------------------------------
def armm_step_times(model: Transformer, prompt: torch.Tensor, new_tokens: int) -> list[float]:
    """Seconds between consecutive tokens of one streamed greedy generation (armm's default backend)."""
    stamps = [time.perf_counter()]
    for _ in armm.generate(model, prompt.tolist(), max_new_tokens=new_tokens, sampler="greedy", stream=True,
                           backend=BACKEND):
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def hf_step_times(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> list[float]:
    """Seconds between consecutive calls of a logits processor: one call per generated token."""
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    hf_generate(model, prompt, new_tokens, LogitsProcessorList([Stamp()]))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def decode_between_probes(model: Transformer, prompts: torch.Tensor, new_tokens: int, quantize: str | None,
                          reader: ReadProbe, probe: torch.Tensor, every: int = 16) -> tuple[float, float]:
    """One greedy generation with a read of ``probe`` after every ``every`` tokens → (ms per token without the
    probes, the probes' mean read bandwidth in bytes/s): both measured over the same seconds."""
    decoding = probing = 0.0
    passes = 0
    start = time.perf_counter()
    for i, _ in enumerate(armm.generate(model, prompts.tolist(), max_new_tokens=new_tokens, stream=True,
                                        backend=BACKEND, quantize=quantize)):
        if (i + 1) % every == 0:
            now = time.perf_counter()
            decoding += now - start
            probing += reader.fastest(probe)
            passes += 1
            start = time.perf_counter()
    decoding += time.perf_counter() - start
    return decoding / new_tokens * 1e3, passes * probe.numel() * probe.element_size() / probing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama", "small"], help="gpt2 llama small")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the median is shown")
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--late", type=int, default=1000, help="late position of the position table (0 skips it)")
    parser.add_argument("--position-rounds", type=int, default=7,
                        help="rounds of the position table (early and late in turn; the median is shown)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true",
                        help="also time backend='compiled' against the default: compile cost, steady state")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and activations")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    global BACKEND, HF_CACHE
    BACKEND = "compiled" if device.type == "cuda" else "auto"  # on a GPU: the static-shape step as CUDA graphs
    HF_CACHE = "static" if device.type == "cuda" else None  # on a GPU, generate() then compiles its decode forward
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"armm {armm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"python {platform.python_version()}, {platform.machine()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"1-min load average {load:.2f} on {os.cpu_count()} CPUs; native decode step: "
          f"{'built' if library.available() else 'NOT available (armm decodes in PyTorch)'}; armm decodes with "
          f"backend={BACKEND!r}, transformers with cache_implementation={HF_CACHE!r}\n{cpu_summary()}")

    with tempfile.TemporaryDirectory() as folder:
        pairs = build_pairs(args.models, args.max_seq_len, Path(folder))
    for pair in pairs:
        pair.armm.to(device=device, dtype=dtype)
        pair.hf.to(device=device, dtype=dtype)
    for pair in pairs:
        print(f"{pair.name}: {pair.armm.num_params(non_embedding=False) / 1e6:.1f}M parameters, "
              f"{pair.weight_bytes / 1e6:.1f} MB of weights read per decode step")
    print(f"greedy, {args.dtype} on {device}, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, median of "
          f"{args.repeats} after a warm-up\n")

    # 1. throughput
    rows = []
    gen = torch.Generator().manual_seed(0)
    for pair in pairs:
        for batch in args.batch_sizes:
            prompts = torch.randint(0, pair.armm.config.vocab_size, (batch, args.prompt_len), generator=gen)
            n = args.new_tokens
            (a_sec, h_sec), (a_out, h_out) = alternate(
                [lambda: armm_generate(pair.armm, prompts, n), lambda: hf_generate(pair.hf, prompts, n)], args.repeats)
            rows.append([pair.name, str(batch), f"{batch * n / a_sec:,.0f}", f"{batch * n / h_sec:,.0f}",
                         f"{h_sec / a_sec:.2f}x", f"{a_sec / n * 1e3:.2f}", f"{h_sec / n * 1e3:.2f}",
                         same_tokens(a_out, h_out)])
            print(f"  {pair.name} batch {batch}: armm {a_sec:.2f} s, transformers {h_sec:.2f} s", flush=True)
    print()
    table(f"armm (backend={BACKEND!r}) against transformers, greedy:",
          ["model", "batch", "armm tok/s", "transformers tok/s", "armm / transformers", "armm ms/step",
           "transformers ms/step", "identical tokens"], rows)

    # 2. armm's backends side by side (CPU kernels)
    rows = []
    for pair in pairs if device.type == "cpu" else []:
        for batch in args.batch_sizes:
            prompts = torch.randint(0, pair.armm.config.vocab_size, (batch, args.prompt_len), generator=gen)
            n = args.new_tokens
            seconds, outputs = alternate([lambda p=p: armm_generate(pair.armm, prompts, n, *p) for p in PATHS],
                                         args.repeats)
            sec, out = dict(zip(PATHS, seconds)), dict(zip(PATHS, outputs))
            cells = [f"{batch * n / sec[p]:,.0f}" for p in PATHS]
            native, eager = out["native", None], out["eager", None]
            rows.append([pair.name, str(batch), *cells, auto_choice(pair.armm, batch),
                         f"{sec['eager', None] / sec['native', None]:.2f}x", same_tokens(native, eager),
                         f"{(out['native', 'int8'] == eager).float().mean():.0%}"])
    if rows:
        table("armm's backends (armm.backends), greedy, tokens/s:",
              ["model", "batch", *(f"{b}{' int8' if q else ''}" for b, q in PATHS), "auto's step",
               "native / eager", "native tokens = eager tokens", "int8 tokens = float32 tokens"], rows)

    # 3. the bandwidth floor, measured side by side with batch-1 decoding. This machine's bandwidth is not constant
    #    (other tenants): it switches between about 42 and 75 GB/s within seconds. So each round measures it twice:
    #    the peak (best of five 1 GiB passes right before decoding) and the mean during the decode itself (a 256 MB
    #    pass after every 16 tokens, timed apart from the tokens). Each pass reads by every method ReadProbe has and
    #    counts the fastest.
    probe, reader = torch.ones(2**30 // 4, device=device), ReadProbe()
    first = {method: probe.numel() * 4 / sec / 1e9 for method, sec in reader.seconds(probe).items()}
    print("memory read bandwidth, one 1 GiB pass each: "
          + ", ".join(f"{method} {gbs:.1f} GB/s" for method, gbs in first.items()) + "\n")
    rows = []
    for pair in pairs:
        size = pair.armm.tok_emb.weight.element_size()
        prompts = torch.randint(0, pair.armm.config.vocab_size, (1, args.prompt_len), generator=gen)
        for label, quantize, bytes_per_weight in ((args.dtype, None, size), ("int8", "int8", 1)):
            if quantize == "int8" and device.type != "cpu":
                continue  # int8 runs on the CPU only; on a GPU, decode in bfloat16 (--dtype)
            weight_bytes = pair.weight_bytes // size * bytes_per_weight
            armm_generate(pair.armm, prompts, args.new_tokens, quantize=quantize)  # warm-up
            rounds = []
            for _ in range(args.repeats):
                peak = reader.peak(probe)
                ms, during = decode_between_probes(pair.armm, prompts, args.new_tokens, quantize, reader,
                                                   probe[:2**26])
                rounds.append((ms / (weight_bytes / during * 1e3), ms, peak, during))
            _, ms, peak, during = sorted(rounds)[len(rounds) // 2]  # the median round
            rows.append([pair.name, label, f"{weight_bytes / 1e6:.1f}", f"{ms:.2f}", f"{peak / 1e9:.1f}",
                         f"{weight_bytes / peak * 1e3:.2f}", f"{ms / (weight_bytes / peak * 1e3):.2f}x",
                         f"{during / 1e9:.1f}", f"{weight_bytes / during * 1e3:.2f}",
                         f"**{ms / (weight_bytes / during * 1e3):.2f}x**"])
    del probe
    table(f"batch 1 against the bandwidth floor; the median of {args.repeats} rounds (by armm / floor during):",
          ["model", "weights", "weights read / token (MB)", "armm ms/token", "peak GB/s", "floor ms",
           "armm / floor (peak)", "GB/s during", "floor ms (during)", "armm / floor (during)"], rows)

    # 4. backend="compiled", opt-in: does it pay?
    if args.compile:
        rows = []
        for pair in pairs:
            prompts = torch.randint(0, pair.armm.config.vocab_size, (1, args.prompt_len), generator=gen)
            n = args.new_tokens
            compiled._steps.pop(pair.armm, None)
            start = time.perf_counter()
            armm_generate(pair.armm, prompts, n, "compiled")  # compiles the decode step (and records CUDA graphs)
            sync(device)
            first = time.perf_counter() - start
            (eager, steady), (a, b) = alternate([lambda: armm_generate(pair.armm, prompts, n, "auto"),
                                                 lambda: armm_generate(pair.armm, prompts, n, "compiled")],
                                                args.repeats)
            rows.append([pair.name, f"{first:.1f}", f"{eager / n * 1e3:.2f}", f"{steady / n * 1e3:.2f}",
                         f"{eager / steady:.2f}x", f"{first / max(eager - steady, 1e-9) * n:,.0f}" if eager > steady
                         else "never", same_tokens(a, b)])
        table("backend='compiled', batch 1, against backend='auto':",
              ["model", "first call s (compile)", "eager ms/token", "compiled ms/token", "speed-up",
               "tokens to repay the compile", "identical tokens"], rows)

    # 5. early and late positions, interleaved: a decode step with ~50 and with ~1000 positions in the cache, each
    #    measured on a prompt that fills the cache up to there, in turn, so that a change of the machine's state hits
    #    both alike (one long generation would time its early steps seconds before its late ones).
    if args.late:
        window, rows = 20, []
        for pair in pairs:
            if pair.armm.config.max_seq_len < args.late + window:
                continue
            prompts = {position: torch.randint(0, pair.armm.config.vocab_size, (1, position - window // 2),
                                               generator=gen) for position in (50, args.late)}
            runs = {(label, position): [] for label in ("armm", "transformers") for position in prompts}
            for round_ in range(args.position_rounds + 1):  # the first round warms up
                order = list(runs.items())
                for (label, position), times in order if round_ % 2 else order[::-1]:  # no side always first
                    if label == "armm":
                        steps = armm_step_times(pair.armm, prompts[position], window)
                    else:
                        steps = hf_step_times(pair.hf, prompts[position], window)
                    times.append(statistics.median(steps[1:]) * 1e3)  # steps[0] includes the prefill
            c = pair.armm.config
            cache_mb = c.n_layer * 2 * c.n_kv_head * c.head_dim * args.late * pair.armm.tok_emb.weight.element_size()
            bound = 1 + cache_mb / pair.weight_bytes  # the cache read at the weights' rate
            for label in ("armm", "transformers"):
                early, late = (statistics.median(runs[label, position][1:]) for position in prompts)
                rows.append([pair.name, label, f"{early:.2f}", f"{late:.2f}", f"{late / early:.2f}x",
                             f"{cache_mb / 1e6:.1f}", f"{bound:.2f}x"])
        table(f"batch 1: ms per decode step with ~50 and ~{args.late} positions in the cache (a prompt of position - "
              f"{window // 2} tokens, then {window} steps; the median step), median of {args.position_rounds} rounds, "
              "early and late in turn; the bound is 1 + cache bytes / weight bytes",
              ["model", "library", "ms/token @ ~50", f"ms/token @ ~{args.late}", "late / early",
               f"cache read @ ~{args.late} (MB)", "bound"], rows)


if __name__ == "__main__":
    main()
