"""Reconstruction error and codebook usage of trained vs untrained VQ-VAEs on held-out digits.

    python -m armm_image.vq_report [--steps 1500] [--seed 0] [--accelerator cpu]

Trains one VQ-VAE per setting on the digits' train split and prints a Markdown table measured on the
held-out split: MSE (grey levels²), PSNR (dB), the fraction of codes used and the perplexity of the code
frequencies (exp of their entropy; the codebook size if all codes were used equally).
"""

from __future__ import annotations

import argparse
import time

from armm_image.digits import load_digits_images
from armm_image.metrics import code_usage, mse, psnr
from armm_image.vq import VQTokenizer

COMMON = dict(channels=1, code_dim=16, res_blocks=2)
SETTINGS = {
    "8x8": dict(size=8, downsample=2, codebook_size=64, hidden=64, **COMMON),
    "32x32 (bicubic upscaled)": dict(size=32, downsample=4, codebook_size=128, hidden=32, **COMMON),
}
COLUMNS = ["digits", "codes / image", "codebook", "model", "held-out MSE", "PSNR (dB)", "codes used", "perplexity",
           "train time"]  # fmt: skip


def evaluate(tokenizer: VQTokenizer, images) -> str:
    codes = tokenizer.codes(images)
    reconstruction = tokenizer.reconstruct(codes)
    used, perplexity = code_usage(codes, tokenizer.num_codes)
    return f"{mse(reconstruction, images):.1f} | {psnr(reconstruction, images):.2f} | {used:.2f} | {perplexity:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|---" * len(COLUMNS) + "|")
    for label, options in SETTINGS.items():
        train = load_digits_images(options["size"], "train", seed=args.seed)[0]
        held_out = load_digits_images(options["size"], "test", seed=args.seed)[0]
        untrained, trained = VQTokenizer(**options, seed=args.seed), VQTokenizer(**options, seed=args.seed)
        start = time.perf_counter()
        trained.fit(train, steps=args.steps, batch_size=args.batch_size, seed=args.seed, accelerator=args.accelerator)
        seconds = time.perf_counter() - start
        prefix = f"| {label} | {trained.sequence_length} | {trained.num_codes}"
        print(f"{prefix} | untrained | {evaluate(untrained, held_out)} | - |")
        print(f"{prefix} | trained, {args.steps} steps | {evaluate(trained, held_out)} | {seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
