"""Benchmark: the armm training loop (``ARModule`` + ``lightning.Trainer``) against a plain PyTorch loop.

Run as ``python bench/train.py`` (see ``--help``; about 2-3 minutes on an idle 2-core CPU);
``python bench/train.py --steps 3 --rounds 1`` is a quick smoke run. Both loops train the same randomly
initialised model (same seed, same ``ModelConfig``) on the same pre-made batches of random tokens, served by the
same kind of ``DataLoader``, with the same optimiser: AdamW with ARModule's default hyper-parameters and its
decay / no-decay groups, ARModule's warmup + cosine learning-rate schedule, and gradient clipping at norm 1.0.

- plain: the nanoGPT loop. ``with autocast: loss = next_token_loss(model(x), y)`` (ARModule's cross-entropy); ``loss.backward()``;
  ``clip_grad_norm_``; ``opt.step()``; ``opt.zero_grad(set_to_none=True)``; the learning rate set by hand.
- armm: ``ARModule`` fitted by a ``lightning.Trainer`` with ``precision="32-true"`` or ``"bf16-mixed"``,
  ``gradient_clip_val=1.0``, and no logger, checkpoints, progress bar, model summary or validation.

Each (loop, precision) runs in its own worker process, so its peak memory is its own: on CPU the growth of
the peak resident set size over the RSS before the model was built; on CUDA ``torch.cuda.max_memory_allocated``.
The workers stay alive and take turns: every round, each worker runs ``--warmup`` untimed steps and then
``--steps`` timed steps while the others wait, and the order of the two loops alternates between rounds
(plain, armm, armm, plain, ...), so machine noise hits both loops alike.

A step is timed from the end of one step to the end of the next, so it includes everything a loop does
between steps (fetching the batch, the Trainer's hooks, logging, the scheduler). On CPU every step is timed
on its own and the figure is the median step (``--clock cpu`` times CPU time instead of elapsed time,
steadier with ``--threads 1`` on a busy machine); on CUDA the timed steps of a round are timed as one block
(synchronised at both ends only, as a real run would be) and the figure is their mean.

Model FLOPs per token use the PaLM / nanoGPT estimate ``6 * N + 12 * n_layer * d_model * seq_len``, where N is
the parameter count without position embeddings (the tied token embedding counts once: it is the output
matmul). MFU divides the achieved model FLOP/s by the machine's matmul peak, measured here as the best of
several large square ``torch.matmul`` in the same dtype (float32 for fp32, bfloat16 for bf16 autocast), once
before and once after the loops (other processes only ever lower it). On CPU it also prints, for reference, an
fp32 product through oneDNN: on some CPUs (AMD) MKL, which ``torch.matmul`` uses for float32, runs AVX2 kernels
and reaches about half of what the cores can do.

On Linux, glibc hands large freed buffers (activations, logits) back to the kernel and faults fresh pages in at
the next step: tens of thousands of page faults per step, 5-10% of a CPU step, and a different amount for each
loop, depending only on the order in which it allocates and frees. ``--malloc-tuned`` starts the workers with
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set so that glibc keeps that memory (jemalloc or
tcmalloc through ``LD_PRELOAD`` do the same; the workers inherit the environment).

``--finetune`` compares fine-tuning instead: full fine-tuning against LoRA (``model.lora``, rank ``--lora-rank`` on
``--lora-targets``), both ``ARModule`` fitted by the Trainer from the same pretrained folder (``model.init_from``: the
randomly initialised model saved with ``armm.save_model``), on the same batches, timed the same way. It reports the
trainable parameters, the optimizer's state (the bytes of every tensor in ``optimizer.state`` after the last step),
the peak memory and tokens/s of each, side by side.

This is a benchmark, not a test: it asserts nothing and always exits 0 unless something crashes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import torch
from torch.utils.data import DataLoader, Dataset

import armm
from armm import ModelConfig, Transformer
from armm.training.lora import DEFAULT_TARGETS, TARGETS, LoraOptions
from armm.training.module import DEFAULT_OPTIMIZER, ARModule, next_token_loss, warmup_cosine
from tables import cpu_summary, print_table  # bench/tables.py (this folder is on sys.path)

LOOPS = ("plain", "armm")
FINETUNE_LOOPS = ("full", "lora")  # --finetune: ARModule from model.init_from, all weights or LoRA adapters
PRECISIONS = {"fp32": (torch.float32, "32-true"), "bf16": (torch.bfloat16, "bf16-mixed")}  # matmul dtype, Lightning
LR_WARMUP = 10  # ARModule's warmup_steps, and the same schedule in the plain loop
CLIP = 1.0
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
TAG = "@@bench "  # prefix of the worker's protocol lines on stdout (anything else there is ignored)


@dataclass
class Spec:
    """What one worker runs: one loop at one precision, ``rounds`` x (``warmup`` + ``steps``) steps."""

    loop: str
    precision: str
    device: str
    threads: int | None
    preset: str
    overrides: dict[str, Any]
    batch_size: int
    seq_len: int
    warmup: int
    steps: int
    rounds: int
    seed: int
    clock: str = "wall"
    compile: bool = False  # --compile: torch.compile the network in both loops
    init_from: str | None = None  # --finetune: the pretrained folder both loops start from
    lora: dict[str, Any] | None = None  # LoraOptions of the "lora" loop

    @property
    def total_steps(self) -> int:
        return self.rounds * (self.warmup + self.steps)


@dataclass
class Outcome:
    """What a worker reports: step seconds per round, peak memory, the last loss, and the model's size."""

    rounds: list[list[float]] = field(default_factory=list)  # timed step seconds, one list per round
    round_seconds: list[float] = field(default_factory=list)  # the timed block of each round
    peak_memory: int = 0  # bytes
    final_loss: float = math.nan
    params: int = 0
    trainable: int = 0  # parameters the optimizer updates
    total: int = 0  # every parameter of the model, adapters included
    optimizer_state: int = 0  # bytes of the optimizer's state after the last step


class Sizes(NamedTuple):
    """What a training loop reports about its model and optimizer."""

    params: int  # N, for the FLOPs estimate
    trainable: int
    total: int
    optimizer_state: int  # bytes


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor))


# --- data: the same pre-made batches for both loops ---------------------------------------------------
class PremadeBatches(Dataset):
    """Item ``i`` is batch ``i`` (a dict like ``TokenDataModule``'s); use with ``DataLoader(batch_size=None)``."""

    def __init__(self, spec: Spec, vocab_size: int) -> None:
        gen = torch.Generator().manual_seed(spec.seed)
        tokens = torch.randint(0, vocab_size, (spec.total_steps, spec.batch_size, spec.seq_len + 1), generator=gen)
        self.batches = [{"input_ids": t[:, :-1].contiguous(), "targets": t[:, 1:].contiguous()} for t in tokens]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batches[i]


def model_config(spec: Spec) -> ModelConfig:
    config = ModelConfig.from_name(spec.preset, **spec.overrides)
    if spec.seq_len > config.max_seq_len:
        raise SystemExit(f"--seq-len {spec.seq_len} is longer than the model's max_seq_len {config.max_seq_len}")
    return config


def flops_per_token(config: ModelConfig, params: int, seq_len: int) -> float:
    """PaLM / nanoGPT: 6 N for the weights (forward + backward) + 12 L d T for attention scores and values."""
    return 6 * params + 12 * config.n_layer * config.d_model * seq_len


# --- the worker side: pacing rounds and timing steps -----------------------------------------------------
class RoundClock:
    """Splits a run into rounds of ``warmup`` untimed + ``steps`` timed steps and times the timed ones.

    Before the first step of a round it waits for the parent's ``go``; after the last step of a round it
    reports the round's timed block to the parent. Steps are timed between consecutive step ends.
    """

    def __init__(self, spec: Spec, channel: TextIO, reply: TextIO) -> None:
        self.spec, self.channel, self.reply = spec, channel, reply
        self.per_round = spec.warmup + spec.steps
        self.cuda = spec.device == "cuda"
        self.now = time.process_time if spec.clock == "cpu" else time.perf_counter
        self.marks: list[float] = []
        self.outcome = Outcome()

    def before_step(self, step: int) -> None:
        if step % self.per_round == 0:
            command = self.channel.readline().strip()
            if command != "go":
                raise SystemExit(f"worker: expected 'go', got {command!r}")

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        index = step % self.per_round
        if index < self.spec.warmup - 1:
            return
        if self.cuda and index in (self.spec.warmup - 1, self.per_round - 1):
            torch.cuda.synchronize()
        self.marks.append(self.now())
        if index == self.per_round - 1:
            steps = [b - a for a, b in zip(self.marks, self.marks[1:])]
            self.outcome.rounds.append(steps)
            self.outcome.round_seconds.append(self.marks[-1] - self.marks[0])
            self.marks = []
            if step == self.spec.total_steps - 1:
                self.outcome.final_loss = float(loss)
            send(self.reply, {"round": len(self.outcome.rounds), "seconds": self.outcome.round_seconds[-1]})


def send(stream: TextIO, message: dict[str, Any]) -> None:
    stream.write(TAG + json.dumps(message) + "\n")
    stream.flush()


def current_rss() -> int:
    """Resident set size now, in bytes (Linux); elsewhere the peak so far, a lower bound of the growth."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def train_plain(spec: Spec, loader: DataLoader, clock: RoundClock) -> Sizes:
    """The nanoGPT loop over ``Transformer``.

    As in nanoGPT, ``logits`` and ``loss`` stay referenced until the next step's forward replaces them."""
    dtype, _ = PRECISIONS[spec.precision]
    device = torch.device(spec.device)
    torch.manual_seed(spec.seed)  # the same initial weights as ARModule's network
    model = Transformer(model_config(spec)).to(device)
    model.train()
    network = torch.compile(model) if spec.compile else model
    loss_of = torch.compile(next_token_loss) if spec.compile else next_token_loss  # as ARModule(compile=True)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2]},  # ARModule's groups: matrices and embeddings decay
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    hparams = DEFAULT_OPTIMIZER["init_args"]
    optimizer = torch.optim.AdamW(groups, **hparams)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    for step, batch in enumerate(loader):
        clock.before_step(step)
        lr = hparams["lr"] * warmup_cosine(step, LR_WARMUP, spec.total_steps, 0.1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batch["input_ids"].to(device), batch["targets"].to(device)
        with autocast:
            logits = network(x)  # (B, T, V)
            loss = loss_of(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.after_step(step, loss.detach())
    total = sum(p.numel() for p in params)
    return Sizes(model.num_params(), total, total, optimizer_state_bytes(optimizer))


def train_armm(spec: Spec, loader: DataLoader, clock: RoundClock) -> Sizes:
    """``ARModule`` fitted by a bare ``lightning.Trainer``: trained from scratch, or (``--finetune``) from
    ``spec.init_from``, all of it or LoRA adapters."""
    import lightning as L

    class Pace(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any,
                                 batch_idx: int) -> None:
            clock.before_step(batch_idx)

        def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            clock.after_step(batch_idx, outputs["loss"])

    config = model_config(spec)
    torch.manual_seed(spec.seed)  # the same initial weights as the plain loop's model
    if spec.init_from is not None:
        lora = LoraOptions(**spec.lora) if spec.loop == "lora" else None
        module = ARModule(init_from=spec.init_from, lora=lora, warmup_steps=LR_WARMUP, min_lr_ratio=0.1,
                          compile=spec.compile)
    else:
        module = ARModule(preset=spec.preset, overrides={k: v for k, v in spec.overrides.items() if k != "vocab_size"},
                          vocab_size=config.vocab_size, warmup_steps=LR_WARMUP, min_lr_ratio=0.1,
                          compile=spec.compile)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator=spec.device, devices=1, precision=PRECISIONS[spec.precision][1], max_steps=spec.total_steps,
            gradient_clip_val=CLIP, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
            callbacks=[Pace()], default_root_dir=root,
        )
        trainer.fit(module, train_dataloaders=loader)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    with torch.device("meta"):  # N of the network without its adapters, allocating nothing
        params = Transformer(module.config).num_params()
    total = sum(p.numel() for p in module.parameters())
    return Sizes(params, trainable, total, optimizer_state_bytes(trainer.optimizers[0]))


def worker(spec: Spec) -> None:
    """One (loop, precision): waits for ``go`` before each round, reports the outcome at the end."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    reply = sys.stdout
    sys.stdout = sys.stderr  # anything else printed (Lightning's notices) stays off the protocol stream
    loader = DataLoader(PremadeBatches(spec, model_config(spec).vocab_size), batch_size=None, shuffle=False)
    clock = RoundClock(spec, sys.stdin, reply)
    if spec.init_from is not None:
        import peft  # noqa: F401  (both fine-tuning workers: LoRA's imports, transformers too, are not its memory)
    if spec.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = current_rss()
    send(reply, {"ready": True})
    sizes = (train_plain if spec.loop == "plain" else train_armm)(spec, loader, clock)
    outcome = clock.outcome
    outcome.params, outcome.trainable, outcome.total, outcome.optimizer_state = sizes
    outcome.peak_memory = torch.cuda.max_memory_allocated() if spec.device == "cuda" else peak_rss() - baseline
    send(reply, {"outcome": asdict(outcome)})


# --- the parent side ----------------------------------------------------------------------------------
class Worker:
    """A worker process for one (loop, precision), driven over stdin / stdout."""

    def __init__(self, spec: Spec, env: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(asdict(spec))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        bufsize=1, env=env)

    @property
    def name(self) -> str:
        return f"{self.spec.loop} {self.spec.precision}"

    def receive(self) -> dict[str, Any]:
        for line in self.process.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.process.wait()
        self.log.seek(0)
        tail = self.log.read()[-4000:]
        raise SystemExit(f"worker '{self.name}' exited with code {self.process.returncode}:\n{tail}")

    def go(self) -> dict[str, Any]:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: str, n: int, repeats: int, clock: str = "wall") -> float:
    """Best FLOP/s of ``repeats`` timed ``n x n @ n x n`` products (on CUDA each timing covers 10 products)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    inner = 10 if device == "cuda" else 1
    now = time.process_time if clock == "cpu" else time.perf_counter
    a @ b
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = now()
        for _ in range(inner):
            a @ b
        synchronize(device)
        best = min(best, now() - start)
    return 2 * n**3 * inner / best


def onednn_fp32_peak(n: int, repeats: int, clock: str = "wall") -> float | None:
    """Best FLOP/s of an fp32 ``n x n`` linear through oneDNN (CPU), for reference: ``torch.matmul`` uses MKL."""
    try:
        x, w = torch.randn(n, n).to_mkldnn(), torch.randn(n, n).to_mkldnn()
        linear = torch._C._nn.mkldnn_linear
        now = time.process_time if clock == "cpu" else time.perf_counter
        linear(x, w, None)
        best = math.inf
        for _ in range(repeats):
            start = now()
            linear(x, w, None)
            best = min(best, now() - start)
        return 2 * n**3 / best
    except (AttributeError, RuntimeError):
        return None


def load_average() -> float | None:
    """The 1-minute load average (Unix only): other busy processes make these timings meaningless."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def warn_if_busy(when: str, threads: int) -> None:
    """Warn when other processes share the cores. At the end, this run's own threads are part of the load."""
    load, cpus = load_average(), os.cpu_count() or 1
    own = 0 if when == "start" else threads
    if load is not None and load > own + 0.25 * cpus + 0.5:
        print(f"WARNING ({when}): 1-min load average {load:.1f} on {cpus} CPU(s) (this run: {own} thread(s)): "
              f"other processes are competing for the cores, so timings are inflated and noisy; "
              f"rerun on an idle machine.", flush=True)


def step_seconds(outcome: Outcome, device: str) -> float:
    """The figure of a loop: the median timed step on CPU, the mean over all timed blocks on CUDA."""
    if device == "cuda":
        return sum(outcome.round_seconds) / sum(len(r) for r in outcome.rounds)
    return statistics.median(s for steps in outcome.rounds for s in steps)


def round_step_seconds(outcome: Outcome, device: str) -> list[float]:
    """The same figure for each round on its own: its spread shows how noisy the machine was."""
    return [step_seconds(Outcome(rounds=[steps], round_seconds=[block]), device)
            for steps, block in zip(outcome.rounds, outcome.round_seconds)]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (numbers, booleans), strings otherwise."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--overrides takes key=value pairs, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default: cpu)")
    parser.add_argument("--preset", default=None,
                        help="model preset (default: gpt2-10m on CPU, about 12M parameters; gpt2-124m on CUDA)")
    parser.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="ModelConfig fields that replace the preset's, e.g. n_layer=4 dropout=0.0")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary size (default: the preset's, 4096 for gpt2-10m). The issue's GPT-2 config\n"
                             "is gpt2-10m with --vocab-size 50304")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (default: 8)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default: 256)")
    parser.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=None,
                        help="fp32 and/or bf16 (autocast; Lightning bf16-mixed)\n"
                             "(default: fp32 bf16 on CPU, bf16 on CUDA)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and loop (default: 10)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps before each round's timed steps (default: 1)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds; each runs every loop once, alternating which goes first (default: 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--peak-size", type=int, default=None,
                        help="side of the square matmuls that measure the peak (default: 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--peak-repeats", type=int, default=10,
                        help="timed matmuls per dtype; the best counts (default: 10)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time (default). cpu: the worker's CPU time (user + system), which\n"
                             "does not count time the OS gave to other processes: with --threads 1 it is a\n"
                             "steadier figure on a busy machine (CPU only; caches and memory are still shared)")
    parser.add_argument("--malloc-tuned", action="store_true",
                        help="start the workers with glibc malloc set to keep freed memory (fewer page faults)")
    parser.add_argument("--finetune", action="store_true",
                        help="compare full fine-tuning with LoRA (from the same pretrained folder) instead of the\n"
                             "plain loop with armm's")
    parser.add_argument("--lora-rank", type=int, default=8, help="--finetune: the adapters' rank (default: 8)")
    parser.add_argument("--lora-targets", nargs="+", choices=tuple(TARGETS), default=list(DEFAULT_TARGETS),
                        help=f"--finetune: the layers with adapters (default: {' '.join(DEFAULT_TARGETS)})")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network in both loops (ARModule(compile=True) in armm's); the\n"
                             "warm-up steps of the first round absorb the compilation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker(Spec(**json.loads(args.worker)))
        return
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        raise SystemExit("--warmup, --steps and --rounds must be >= 1 (a timed step starts where a warm-up step ends)")
    if args.device == "cuda" and args.clock == "cpu":
        raise SystemExit("--clock cpu times CPU work only; use the default wall clock with --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    preset = args.preset or ("gpt2-124m" if cuda else "gpt2-10m")
    precisions = args.precisions or (["bf16"] if cuda else ["fp32", "bf16"])
    overrides = parse_overrides(args.overrides)
    if args.vocab_size is not None:
        overrides["vocab_size"] = args.vocab_size
    spec = Spec(loop="plain", precision=precisions[0], device=args.device, threads=args.threads, preset=preset,
                overrides=overrides, batch_size=args.batch_size, seq_len=args.seq_len, warmup=args.warmup,
                steps=args.steps, rounds=args.rounds, seed=args.seed, clock=args.clock, compile=args.compile)
    config = model_config(spec)
    tokens_per_step = args.batch_size * args.seq_len

    print(f"armm {armm.__version__}, torch {torch.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, " + (f"GPU {torch.cuda.get_device_name()}" if cuda else
                                        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"))
    if not cuda:
        print(cpu_summary())
    load = load_average()
    print(f"threads: {torch.get_num_threads()} intra-op, os.cpu_count()={os.cpu_count()}, "
          f"1-min load average before start: {'n/a' if load is None else f'{load:.2f}'}")
    print(f"model: {preset} {json.dumps(overrides) if overrides else ''} (n_layer={config.n_layer}, "
          f"n_head={config.n_head}, d_model={config.d_model}, vocab_size={config.vocab_size}); batch "
          f"{args.batch_size} x seq {args.seq_len} = {tokens_per_step} tokens/step; AdamW "
          f"{json.dumps(DEFAULT_OPTIMIZER['init_args'])}, clip {CLIP}")
    allocator = " ".join(f"{k}={v}" for k, v in MALLOC_TUNED.items()) if args.malloc_tuned else "default settings"
    print(f"{args.rounds} round(s) x ({args.warmup} warm-up + {args.steps} timed steps) per loop and precision; "
          f"malloc: {allocator}; torch.compile {'on' if args.compile else 'off'}\n")
    warn_if_busy("start", 0)
    env = {**os.environ, **MALLOC_TUNED} if args.malloc_tuned else None
    if args.finetune:
        with tempfile.TemporaryDirectory() as root:
            pretrained = save_pretrained(config, args.seed, Path(root))
            lora = {"rank": args.lora_rank, "targets": args.lora_targets}
            print(f"pretrained model: {pretrained} (random weights); LoRA {json.dumps(lora)}", flush=True)
            spec = Spec(**{**asdict(spec), "init_from": str(pretrained), "lora": lora})
            outcomes = run_loops(spec, FINETUNE_LOOPS, precisions, args.rounds, env)
        warn_if_busy("end", torch.get_num_threads())
        report_finetune(outcomes, precisions, tokens_per_step, args)
        return

    # --- the machine's matmul peak, per dtype -------------------------------------------------------------
    n = args.peak_size or (8192 if cuda else 2048)
    peaks = {p: matmul_peak(PRECISIONS[p][0], args.device, n, args.peak_repeats, args.clock) for p in precisions}
    onednn = onednn_fp32_peak(n, args.peak_repeats, args.clock) if not cuda and "fp32" in precisions else None
    print("  matmul peak (first): " + ", ".join(f"{p} {peaks[p] / 1e9:,.1f} GFLOP/s" for p in precisions), flush=True)
    outcomes = run_loops(spec, LOOPS, precisions, args.rounds, env)
    for p in precisions:  # again, now that the workers have warmed the machine up; the best counts
        peaks[p] = max(peaks[p], matmul_peak(PRECISIONS[p][0], args.device, n, args.peak_repeats, args.clock))
    if onednn is not None:
        onednn = max(onednn, onednn_fp32_peak(n, args.peak_repeats, args.clock) or 0.0)
    warn_if_busy("end", torch.get_num_threads())

    # --- results ----------------------------------------------------------------------------------------------
    rows = [[p, str(PRECISIONS[p][0]).removeprefix("torch."), f"{n}", f"{peaks[p] / 1e9:,.1f}"] for p in precisions]
    if onednn is not None:
        rows.append(["(reference)", "float32 via oneDNN", f"{n}", f"{onednn / 1e9:,.1f}"])
    print()
    print_table(["precision", "matmul dtype", "n", "peak GFLOP/s"], rows)
    print(f"\nbest of 2 x {args.peak_repeats} torch.matmul of two n x n matrices (2 n^3 FLOPs), before and after "
          f"the loops; MFU divides by this.")
    params = outcomes[LOOPS[0], precisions[0]].params
    flops = flops_per_token(config, params, args.seq_len)
    rows, speed = [], {}
    for p in precisions:
        for loop in LOOPS:
            outcome = outcomes[loop, p]
            seconds = step_seconds(outcome, args.device)
            speed[loop, p] = tokens_per_step / seconds
            ratio = speed[loop, p] / speed["plain", p]
            rows.append([loop, p, f"{speed[loop, p]:,.0f}", rounds_range(outcome, tokens_per_step, args.device),
                         f"{seconds * 1e3:.1f}", f"{ratio:.3f}" if loop == "armm" else "1.000",
                         f"{flops * speed[loop, p] / peaks[p]:.1%}", f"{outcome.peak_memory / 2**20:,.0f} MiB",
                         f"{outcome.final_loss:.4f}"])
    print()
    print_table(["loop", "precision", "tokens/s", "rounds' tokens/s", "ms/step", "armm/plain", "MFU", "peak memory",
                 "last loss"], rows)
    print(f"\n{params / 1e6:.2f}M parameters (N, without position embeddings); model FLOPs/token = 6N + 12 L d T = "
          f"{flops / 1e6:.1f}M; {measures(args)}; last loss = the loss of the final step (the same maths gives the "
          f"same loss).")
    logits = ", ".join(f"{tokens_per_step * config.vocab_size * PRECISIONS[p][0].itemsize / 2**20:,.0f} MiB in {p}"
                       for p in precisions)
    print(f"The plain loop keeps the last step's logits (B x T x V: {logits}) alive through the next forward, as "
          f"nanoGPT's loop does, so its peak memory can be higher by that much.")
    for p in precisions:
        overhead = speed["plain", p] / speed["armm", p] - 1
        print(f"armm overhead at {p}: {overhead:+.1%} per step (target: at most +5%)")
    if "fp32" in precisions and "bf16" in precisions:
        print("bf16 autocast speed-up over fp32: " + ", ".join(
            f"{loop} {speed[loop, 'bf16'] / speed[loop, 'fp32']:.2f}x" for loop in LOOPS) + " (target: >= 1.6x)")


def run_loops(spec: Spec, loops: tuple[str, ...], precisions: list[str], rounds: int,
              env: dict[str, str] | None) -> dict[tuple[str, str], Outcome]:
    """One worker per (loop, precision), taking turns round by round, the loops' order alternating."""
    tokens = spec.batch_size * spec.seq_len * spec.steps
    workers = {(loop, p): Worker(Spec(**{**asdict(spec), "loop": loop, "precision": p}), env)
               for p in precisions for loop in loops}
    try:
        for w in workers.values():
            w.receive()  # ready: imported, data made
        for r in range(rounds):
            for p in precisions:
                order = loops if r % 2 == 0 else loops[::-1]
                seconds = {loop: workers[loop, p].go()["seconds"] for loop in order}
                rates = (f"{loop} {tokens / seconds[loop]:,.0f} tokens/s" for loop in order)
                print(f"  round {r + 1} {p}: " + ", ".join(rates), flush=True)
        return {key: Outcome(**w.receive()["outcome"]) for key, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()


def save_pretrained(config: ModelConfig, seed: int, root: Path) -> Path:
    """A randomly initialised model saved as an armm model directory (with the byte tokenizer, which
    ``model.init_from`` requires; the benchmark's batches are random ids), for ``--finetune``."""
    tokenizer = armm.get_plugins().tokenizers.get("bytes")()
    if config.vocab_size < tokenizer.vocab_size:
        raise SystemExit(f"--finetune saves the model with the byte tokenizer ({tokenizer.vocab_size} ids); "
                         f"use --vocab-size {tokenizer.vocab_size} or more")
    torch.manual_seed(seed)
    return armm.save_model(root / "pretrained", Transformer(config), tokenizer)


def rounds_range(outcome: Outcome, tokens_per_step: int, device: str) -> str:
    per_round = [tokens_per_step / s for s in round_step_seconds(outcome, device)]
    return f"{min(per_round):,.0f}-{max(per_round):,.0f}"


def measures(args: argparse.Namespace) -> str:
    """How ms/step and peak memory were measured, in words."""
    cuda = args.device == "cuda"
    statistic = "mean of the timed steps (timed as blocks)" if cuda else f"median timed step ({args.clock} clock)"
    memory = "torch.cuda.max_memory_allocated" if cuda else "peak RSS growth of the worker process"
    return f"ms/step = {statistic} over {args.rounds} x {args.steps}; peak memory = {memory}"


def report_finetune(outcomes: dict[tuple[str, str], Outcome], precisions: list[str], tokens_per_step: int,
                    args: argparse.Namespace) -> None:
    """Full fine-tuning and LoRA side by side: what each trains and keeps, and how fast."""
    rows = []
    for p in precisions:
        speed = {loop: tokens_per_step / step_seconds(outcomes[loop, p], args.device) for loop in FINETUNE_LOOPS}
        for loop in FINETUNE_LOOPS:
            outcome = outcomes[loop, p]
            rows.append([loop, p, f"{outcome.trainable:,}", f"{outcome.trainable / outcome.total:.2%}",
                         f"{outcome.optimizer_state / 2**20:,.2f} MiB", f"{outcome.peak_memory / 2**20:,.0f} MiB",
                         f"{speed[loop]:,.0f}", rounds_range(outcome, tokens_per_step, args.device),
                         f"{speed[loop] / speed['full']:.2f}x", f"{outcome.final_loss:.4f}"])
    print()
    print_table(["fine-tuning", "precision", "trainable params", "of all", "optimizer state", "peak memory", "tokens/s",
                 "rounds' tokens/s", "vs full", "last loss"], rows)
    params = outcomes[FINETUNE_LOOPS[0], precisions[0]].params
    print(f"N = {params / 1e6:.2f}M parameters (without position embeddings); optimizer state = the bytes of the "
          f"AdamW moments after the last step; {measures(args)}.")


if __name__ == "__main__":
    main()
