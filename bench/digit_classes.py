"""Evidence for class conditioning: does a model asked for digit c draw something a digit classifier calls c?

Run as ``python bench/digit_classes.py MODEL_DIR`` (see ``--help``), on a model trained with
``recipes/image_cond.yaml`` (``image-pixels`` with ``num_classes=10``):

1. A logistic-regression classifier (scikit-learn) learns the 1,438 real train digits of
   ``load_digits_images`` as the model sees them: at the tokenizer's size and channels, quantised by
   its ``encode`` → ``decode`` (bin centres at its bit depth). Its accuracy on the 359 real held-out
   digits says how far to trust it.
2. For each class c the model draws ``--samples-per-class`` images from bos + c's class token with a
   sampler (greedy would draw one image per class), and the classifier labels them.
3. It prints a Markdown table: per class, the fraction of samples the classifier assigns to the
   requested class (chance is 10%), beside the classifier's accuracy on real test digits of that
   class; with ``--grid`` it writes a PNG of the first samples, one row per class.

Generated and real images go through the same path (``tokenizer_view`` → ``features`` → the
classifier), so on real test digits the "assigned" fraction is the classifier's accuracy.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import armm
from armm import Tokenizer, Transformer
from armm_image import load_digits_images
from armm_image.image_io import write_grid


# --- the classifier of real digits -------------------------------------------------------------
def tokenizer_view(tokenizer: Tokenizer, images: torch.Tensor) -> torch.Tensor:
    """Images as the model sees them: converted to the tokenizer's channels and size, then encode → decode."""
    return torch.stack([tokenizer.decode(tokenizer.encode(tokenizer.prepare(image))) for image in images])


def features(tokenizer: Tokenizer, images: torch.Tensor) -> np.ndarray:
    """The classifier's input: each image's tokenizer view, flattened, scaled to [0, 1]."""
    return tokenizer_view(tokenizer, images).flatten(1).double().numpy() / 255


def train_classifier(tokenizer: Tokenizer, seed: int = 0):
    """Logistic regression on the real train digits, as ``tokenizer`` sees them."""
    from sklearn.linear_model import LogisticRegression

    images, labels = load_digits_images(8, "train")
    return LogisticRegression(max_iter=5000, random_state=seed).fit(features(tokenizer, images), labels.numpy())


def assigned_fractions(
    classifier, tokenizer: Tokenizer, images: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[float, list[float]]:
    """The fraction of images the classifier assigns to their own label: overall, and per class (NaN for a
    class without images)."""
    labels = labels.numpy()
    hits = classifier.predict(features(tokenizer, images)) == labels
    per_class = [float(hits[labels == c].mean()) if (labels == c).any() else math.nan for c in range(num_classes)]
    return float(hits.mean()), per_class


# --- samples of each class ---------------------------------------------------------------------
def class_count(tokenizer: Tokenizer) -> int:
    """How many classes a class-conditional tokenizer has; ValueError for any other tokenizer."""
    num_classes = getattr(tokenizer, "num_classes", None)
    if not num_classes:
        raise ValueError(f"tokenizer {tokenizer.name!r} has no classes; train with tokenizer_options.num_classes")
    return num_classes


def sample_classes(
    model: Transformer, tokenizer: Tokenizer, samples_per_class: int, sampler: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples_per_class`` images of every class, drawn from bos + the class token; sample ``i`` of class
    ``c`` uses seed ``seed + c * samples_per_class + i``. → (uint8 images [N, C, H, W], labels [N])."""
    images, labels = [], []
    for label in range(class_count(tokenizer)):
        prompt = [tokenizer.bos_id, *tokenizer.encode_prompt(str(label))]
        budget = min(tokenizer.sequence_length + 1, model.config.max_seq_len - len(prompt))  # room for eos
        seeds = [seed + label * samples_per_class + i for i in range(samples_per_class)]
        new = armm.generate(model, [prompt] * samples_per_class, max_new_tokens=budget, sampler=sampler,
                            stop_tokens=[tokenizer.eos_id], seed=seeds)
        images += [tokenizer.decode(prompt + ids) for ids in new]
        labels += [label] * samples_per_class
    return torch.stack(images), torch.tensor(labels)


def write_class_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, columns: int, scale: int) -> Path:
    """The first ``columns`` images of each class, one row per class, each pixel ``scale`` x ``scale``."""
    rows = [images[labels == label][:columns] for label in labels.unique().tolist()]
    tiles = F.interpolate(torch.cat(rows).float(), scale_factor=scale, mode="nearest").to(torch.uint8)
    return write_grid(list(tiles), path, nrow=columns)


# --- the report --------------------------------------------------------------------------------
def format_table(generated: tuple[float, list[float]], real: tuple[float, list[float]], samples_per_class: int,
                 real_counts: list[int]) -> str:
    lines = ["| class | samples | assigned to the requested class | classifier accuracy on real test digits |",
             "|---|---|---|---|"]
    for label, (fraction, accuracy) in enumerate(zip(generated[1], real[1])):
        lines.append(f"| {label} | {samples_per_class} | {fraction:.2f} | {accuracy:.2f} ({real_counts[label]} digits) |")
    total = samples_per_class * len(generated[1])
    lines.append(f"| all | {total} | **{generated[0]:.3f}** | {real[0]:.3f} ({sum(real_counts)} digits) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a model directory with a class-conditional image tokenizer")
    parser.add_argument("--samples-per-class", type=int, default=50)
    parser.add_argument("--sampler", default="temperature=1.0", help="a sampler spec (not greedy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG grid of samples here (row = class)")
    parser.add_argument("--grid-columns", type=int, default=10, help="samples of each class in the grid")
    parser.add_argument("--grid-scale", type=int, default=4, help="pixel upscaling of the grid")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own); 1 is fastest on a busy machine")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, tokenizer = armm.load_model(args.model_dir)
    num_classes = class_count(tokenizer)
    classifier = train_classifier(tokenizer, seed=args.seed)
    test_images, test_labels = load_digits_images(8, "test")
    real = assigned_fractions(classifier, tokenizer, test_images, test_labels, num_classes)

    start = time.perf_counter()
    images, labels = sample_classes(model, tokenizer, args.samples_per_class, args.sampler, args.seed)
    seconds = time.perf_counter() - start
    generated = assigned_fractions(classifier, tokenizer, images, labels, num_classes)

    print(f"model {args.model_dir}: {model.num_params() / 1e6:.2f}M parameters, tokenizer {tokenizer.name} "
          f"{list(tokenizer.shape)} with {tokenizer.num_codes} levels and {num_classes} classes")
    print(f"classifier: logistic regression on the real train digits; accuracy on real test digits {real[0]:.3f}")
    print(f"sampled {len(images)} images ({args.samples_per_class} per class, sampler {args.sampler!r}, "
          f"seed {args.seed}) in {seconds:.1f} s\n")
    counts = [int((test_labels == label).sum()) for label in range(num_classes)]
    print(format_table(generated, real, args.samples_per_class, counts))
    if args.grid is not None:
        print(f"\nwrote {write_class_grid(images, labels, args.grid, args.grid_columns, args.grid_scale)}")


if __name__ == "__main__":
    main()
