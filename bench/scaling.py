"""Scaling sweep: train several model sizes on the same corpus for the same token budget, then fit a power law.

Run as ``python bench/scaling.py`` (see ``--help``). Every size is a real ``armm fit`` of one recipe (default
``recipes/text.yaml``: byte-level BPE over the built-in pydoc topics), with only the model's shape and the step
count overridden, so the same script runs on GPUs through the recipe's trainer settings (pass them after
``--``, e.g. ``-- --trainer.accelerator gpu --trainer.precision bf16-mixed``). Steps = token budget / (batch
size × sequence length), so every size sees the same tokens in the same order.

For each size it records N (non-embedding parameters, as Kaplan et al. count them), training compute
C ≈ 6·N·D for D training tokens, and the final validation loss. It fits L(N) = a·N^(-α) and L(C) = b·C^(-β)
by least squares in log-log space, prints a Markdown table and the fitted exponents, and writes a plot of
loss against parameters and against compute (``--plot``). With 4-5 small models on a CPU, the exponent is a
rough local slope, not a law: it ignores the irreducible loss and the learning-rate tuning a real sweep
would do per size.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

DEFAULT_SIZES = "2x32x2,2x64x4,4x96x4,4x128x4,6x192x6"  # n_layer x d_model x n_head


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    try:
        sizes = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        raise SystemExit(f"error: --sizes takes LAYERSxDMODELxHEADS items separated by commas, got {text!r}") from None
    if not sizes or any(len(s) != 3 or min(s) < 1 or s[1] % s[2] for s in sizes):
        raise SystemExit(f"error: each size is LAYERSxDMODELxHEADS with d_model divisible by heads, got {text!r}")
    return sizes


def train(recipe: Path, size: tuple[int, int, int], steps: int, out: Path, cache: Path, extra: list[str]) -> float:
    """One ``armm fit`` in its own folder (the recipe's run paths are relative); returns its wall-clock seconds."""
    layers, width, heads = size
    overrides = {"n_layer": layers, "d_model": width, "n_head": heads, "d_ff": 4 * width}
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "armm.cli", "fit", "-c", str(recipe.resolve()),
               "--model.overrides", json.dumps(overrides), "--trainer.max_steps", str(steps),
               "--trainer.val_check_interval", str(max(1, steps // 4)), "--data.cache_dir", str(cache.resolve()),
               *extra]
    start = time.perf_counter()
    with open(out / "fit.log", "w") as log:
        result = subprocess.run(command, cwd=out, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"error: training {size} failed; see {out / 'fit.log'}")
    return time.perf_counter() - start


def final_val_loss(out: Path) -> float:
    """The last ``val/loss`` the CSV logger wrote under ``out``."""
    files = sorted(out.glob("runs/*/logs/version_*/metrics.csv"))
    if not files:
        raise SystemExit(f"error: no metrics.csv under {out}/runs; does the recipe use a CSVLogger?")
    losses = [float(row["val/loss"]) for row in csv.DictReader(open(files[-1])) if row.get("val/loss")]
    return losses[-1]


def non_embedding_params(out: Path) -> int:
    from armm import load_model

    exports = sorted(out.glob("runs/*/export/final"))
    model, _ = load_model(exports[-1])
    return model.num_params(non_embedding=True) - (model.tok_emb.weight.numel() if model.config.tie_embeddings else 0)


def power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares fit of y = a·x^(-alpha) in log-log space → (a, alpha)."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return math.exp(intercept), -slope


def plot(rows: list[dict], fits: dict[str, tuple[float, float]], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=110)
    for axis, key, label in zip(figure.subplots(1, 2), ("params", "flops"),
                                ("non-embedding parameters N", "training compute C = 6ND (FLOPs)")):
        x = np.array([r[key] for r in rows], dtype=float)
        y = np.array([r["loss"] for r in rows])
        a, alpha = fits[key]
        grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 50)
        axis.loglog(x, y, "o", label="measured")
        axis.loglog(grid, a * grid ** -alpha, "--", label=f"fit: {a:.3g}·x^(-{alpha:.3f})")
        axis.set_xlabel(label)
        axis.set_ylabel("validation loss (nats/token)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle("armm scaling sweep: same corpus, same token budget per size")
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/text.yaml"))
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="LAYERSxDMODELxHEADS,… (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=1_228_800, help="training tokens per size (default: 300 steps)")
    parser.add_argument("--out", type=Path, default=Path("runs/scaling"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: OUT/scaling.png)")
    parser.add_argument("extra", nargs="*", help="extra `armm fit` arguments, after --")
    args = parser.parse_args()
    recipe = yaml.safe_load(args.recipe.read_text())
    tokens_per_step = recipe["data"]["batch_size"] * recipe["data"]["seq_len"]
    steps = max(1, args.tokens // tokens_per_step)
    tokens = steps * tokens_per_step
    print(f"recipe {args.recipe}, {steps} steps of {tokens_per_step} tokens = {tokens:,} training tokens per size")

    rows = []
    for size in parse_sizes(args.sizes):
        out = args.out / "x".join(map(str, size))
        seconds = train(args.recipe, size, steps, out, args.out / "cache", args.extra)
        params = non_embedding_params(out)
        rows.append({"size": size, "params": params, "flops": 6 * params * tokens, "loss": final_val_loss(out),
                     "seconds": seconds})
        print(f"  {size}: N={params:,}, val loss {rows[-1]['loss']:.4f}, {seconds:.0f} s", flush=True)

    fits = {key: power_law(np.array([r[key] for r in rows], dtype=float), np.array([r["loss"] for r in rows]))
            for key in ("params", "flops")}
    print("\n| n_layer | d_model | heads | N (non-embedding) | C = 6ND (FLOPs) | val loss | train s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        layers, width, heads = r["size"]
        print(f"| {layers} | {width} | {heads} | {r['params']:,} | {r['flops']:.3g} | {r['loss']:.4f} | "
              f"{r['seconds']:.0f} |")
    (a, alpha), (b, beta) = fits["params"], fits["flops"]
    print(f"\nL(N) = {a:.4g} · N^(-{alpha:.4f});  L(C) = {b:.4g} · C^(-{beta:.4f})")
    path = args.plot or args.out / "scaling.png"
    plot(rows, fits, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
