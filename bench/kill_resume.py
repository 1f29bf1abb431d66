"""Crash test: kill ``armm fit`` with SIGKILL at random moments, resume, repeat; nothing may be lost.

Run as ``python bench/kill_resume.py`` (see ``--help``); ``tests/training/test_kill_resume.py`` runs a short
version in CI. It writes a small recipe (a byte-level ``gpt2-tiny`` on the built-in pydoc topics, a checkpoint
every ``--every`` steps, dropout 0, a fixed seed, so the data order and the arithmetic are deterministic), then:

1. trains it once without interruption, to ``--steps`` steps (the reference);
2. starts the same run in another folder, kills it with SIGKILL after a random delay, and checks the checkpoint
   folder: ``last.ckpt`` must load (``weights_only=True``) and its step must never go backwards; it resumes
   with ``--ckpt_path last`` and repeats, ``--kills`` times, then lets the run finish;
3. compares the final exported weights with the reference (they must match to float tolerance).

Every other kill is aimed at a checkpoint write: it fires as soon as a temporary checkpoint file appears (armm
writes each checkpoint beside its name, then renames it: ``armm.training.checkpoint_io``). The kills that
landed during a write (the temporary file was left behind) are counted. It prints one line per kill and a
summary. Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

RECIPE = """\
seed_everything: 0
model:
  preset: gpt2-tiny
  overrides: {{max_seq_len: 64, dropout: 0.0}}
  warmup_steps: 5
data:
  tokenizer: bytes
  dataset: pydoc-topics
  seq_len: 64
  batch_size: 8
  val_fraction: 0.05
  cache_dir: {cache}
optimizer:
  lr: 0.003
trainer:
  default_root_dir: run
  accelerator: cpu
  devices: 1
  max_steps: {steps}
  val_check_interval: {every}
  check_val_every_n_epoch: null
  limit_val_batches: 2
  num_sanity_val_steps: 0
  enable_progress_bar: false
  logger: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: run/checkpoints, save_last: true, save_top_k: -1, every_n_train_steps: {every}}}
"""


@dataclass
class Report:
    kills: int = 0
    during_write: int = 0
    steps_seen: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def write_recipe(folder: Path, steps: int, every: int, cache: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(steps=steps, every=every, cache=cache.resolve()))
    return recipe


def fit_command(recipe: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "armm.cli", "fit", "-c", str(recipe), *(["--ckpt_path", "last"] if resume else [])]


@dataclass(frozen=True)
class Timing:
    """How long a run takes to start (to its first step) and to make one step."""

    startup: float
    per_step: float


def run_to_end(folder: Path, recipe: Path, resume: bool, threads: int, every: int | None = None) -> Timing | None:
    """Run ``armm fit`` to the end; with ``every`` (the checkpoint interval), also time it from the moments the
    first checkpoint and the end arrive."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    log_path = folder / "fit.log"
    checkpoints = folder / "run" / "checkpoints"
    with open(log_path, "w") as log_file:
        start = time.monotonic()
        process = subprocess.Popen(fit_command(recipe, resume), cwd=folder, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
        first = None
        while process.poll() is None:
            if first is None and checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
                first = time.monotonic() - start
            time.sleep(0.01)
        total = time.monotonic() - start
    if process.returncode:
        raise RuntimeError(f"armm fit failed in {folder}:\n{log_path.read_text()[-3000:]}")
    if every is None or first is None:
        return None
    steps = int(torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["global_step"])
    per_step = (total - first) / max(1, steps - every)
    return Timing(startup=max(0.0, first - every * per_step), per_step=per_step)


def last_step(checkpoints: Path) -> int | None:
    """The global step in ``last.ckpt``, loaded as armm loads checkpoints (tensors and plain data only)."""
    last = checkpoints / "last.ckpt"
    if not last.is_file():
        return None
    return int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])


def kill_and_resume(folder: Path, recipe: Path, steps: int, kills: int, timing: Timing, seed: int, threads: int,
                    log=print) -> Report:
    """Start, kill at a random moment of the work left (after start-up), check the checkpoints, resume;
    ``kills`` times, then finish the run. Every other kill waits for a checkpoint write instead."""
    rng = random.Random(seed)
    report = Report()
    checkpoints = folder / "run" / "checkpoints"
    previous = None
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for number in range(kills):
        log_path = folder / f"fit-{number}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(fit_command(recipe, previous is not None), cwd=folder, env=env,
                                       stdout=log_file, stderr=subprocess.STDOUT)
        targeted = number % 2 == 1  # every other kill waits for a checkpoint write to begin
        left = timing.per_step * (steps - (previous or 0))
        started = time.monotonic()
        # random kills land in the first 60% of the work left: the reference run's start-up also built the data cache
        # the later runs share, so it overestimates theirs, and a kill late in the window came after the end
        wait = timing.startup + (2 * left if targeted else rng.uniform(0.05, 0.6) * left)
        while time.monotonic() - started < wait and process.poll() is None:
            if targeted and checkpoints.is_dir() and any(checkpoints.glob(".*.tmp")):
                break
            time.sleep(0.0002 if targeted else 0.05)
        delay = time.monotonic() - started
        if process.poll() is not None:  # finished (or failed) before the kill
            if process.returncode:
                report.violations.append(f"kill {number}: the run failed by itself: {log_path.read_text()[-2000:]}")
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        report.kills += 1
        leftovers = [p.name for p in checkpoints.glob(".*.tmp")] if checkpoints.is_dir() else []
        report.during_write += bool(leftovers)
        try:
            step = last_step(checkpoints)
        except Exception as err:  # noqa: BLE001 - any failure to load is the violation being tested for
            report.violations.append(f"kill {number}: last.ckpt does not load: {err}")
            break
        if step is not None and previous is not None and step < previous:
            report.violations.append(f"kill {number}: the step went back from {previous} to {step}")
        log(f"  kill {number + 1} ({'at a checkpoint write' if targeted else 'at random'}) after {delay:.1f} s: "
            f"last checkpoint at step {step}"
            + (f", temporary files left: {leftovers}" if leftovers else ""))
        report.steps_seen.append(-1 if step is None else step)
        previous = step if step is not None else previous
        for leftover in leftovers:  # a resumed run must cope with them; clear them so the next count is fresh
            (checkpoints / leftover).unlink()
    run_to_end(folder, recipe, resume=previous is not None, threads=threads)
    return report


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "run" / "export" / "final" / "model.safetensors"))


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two weight sets with the same names."""
    if a.keys() != b.keys():
        raise ValueError(f"different weight names: {sorted(a.keys() ^ b.keys())}")
    return max((a[name] - b[name]).abs().max().item() for name in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/kill_resume"))
    args = parser.parse_args()
    cache = args.out / "cache"
    reference = args.out / "reference"
    recipe = write_recipe(reference, args.steps, args.every, cache)
    timing = run_to_end(reference, recipe, resume=False, threads=args.threads, every=args.every)
    print(f"reference run: {args.steps} steps; start-up {timing.startup:.1f} s, {timing.per_step * 1e3:.1f} ms a step")
    killed = args.out / "killed"
    report = kill_and_resume(killed, write_recipe(killed, args.steps, args.every, cache), args.steps, args.kills,
                             timing, args.seed, args.threads)
    difference = compare(final_weights(reference), final_weights(killed))
    print("\n| kills | during a checkpoint write | steps at each kill | violations | max |Δweight| vs uninterrupted |")
    print("|---:|---:|---|---:|---:|")
    print(f"| {report.kills} | {report.during_write} | {' '.join(map(str, report.steps_seen))} | "
          f"{len(report.violations)} | {difference:.2e} |")
    for violation in report.violations:
        print("violation:", violation)
    sys.exit(1 if report.violations or difference > 1e-5 else 0)


if __name__ == "__main__":
    main()
