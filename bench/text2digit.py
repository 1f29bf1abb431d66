"""Evidence for text-to-image with classifier-free guidance: does a caption such as "a handwritten seven" give a
digit that a classifier of real digits calls 7, and how does guidance change that?

Run as ``python bench/text2digit.py MODEL_DIR`` on a model trained with ``recipes/text2digit.yaml`` (a mixed
layout: a text part, then an image part; condition dropout in training), or with ``--caption "{word}"`` on one
trained with ``recipes/image_folder.yaml`` (a ``classes`` part named "zero" .. "nine" as the prompt part):

1. The classifier of ``bench/digit_classes.py`` (logistic regression on the real train digits, as the image
   part's tokenizer sees them) is trained; its accuracy on the real held-out digits says how far to trust it.
2. For every digit and every guidance scale, the model draws ``--samples-per-class`` images from
   ``bos <|text|> CAPTION <|/text|> <|image|>`` (the caption is ``--caption`` with the digit's word), keeping to the
   layout's grammar. Scale "none" is plain conditional sampling (no unconditional rows at all).
3. It prints a Markdown table: per scale, the fraction of images assigned to the requested digit (chance 10%),
   per digit and overall, and the sampling time; ``--grid`` writes one PNG per scale (row = digit).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import armm
from armm.layout import VocabLayout
from armm_image import load_digits_images
from armm_image.base import ImageTokenizer
from armm_image.digits import DIGIT_WORDS

sys.path.insert(0, str(Path(__file__).parent))
from digit_classes import assigned_fractions, train_classifier, write_class_grid  # noqa: E402


def image_part(layout: VocabLayout) -> str:
    """The name of the layout's image part."""
    for name, tokenizer in layout.parts.items():
        if isinstance(tokenizer, ImageTokenizer):
            return name
    raise ValueError(f"the layout's parts ({', '.join(layout.parts)}) include no image part")


def sample_digits(model: armm.Transformer, layout: VocabLayout, caption: str, samples_per_class: int, sampler: str,
                  scale: float | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``samples_per_class`` images per digit from its caption → (uint8 images [N, C, H, W], labels [N], number of
    samples whose image part was missing or short, drawn as blank images so they count as misses)."""
    image = image_part(layout)
    span, tokenizer = layout.span(image), layout.parts[image]
    images, labels, broken = [], [], 0
    for digit in range(10):
        text = caption.format(word=DIGIT_WORDS[digit], digit=digit)
        prompt = [layout.bos_id, *layout.encode_part(layout.prompt_part, text), span.begin_id]
        prompts = [prompt] * samples_per_class
        guidance = None if scale is None else layout.guidance(prompts, scale)
        seeds = [seed + digit * samples_per_class + i for i in range(samples_per_class)]
        new = armm.generate(model, prompts, max_new_tokens=tokenizer.sequence_length + 1,
                            sampler=layout.sampler(sampler), stop_tokens=[span.end_id], seed=seeds, guidance=guidance)
        for ids in new:
            parts = [p for p in layout.decode(prompt + ids) if p.name == image]
            complete = len(ids) == tokenizer.sequence_length + 1 and ids[-1] == span.end_id
            broken += not complete
            images.append(parts[-1].sample if complete else torch.zeros(tokenizer.shape, dtype=torch.uint8))
        labels += [digit] * samples_per_class
    return torch.stack(images), torch.tensor(labels), broken


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a model directory with a mixed text + image layout")
    parser.add_argument("--caption", default="a handwritten {word}", help="{word} and {digit} are filled in")
    parser.add_argument("--scales", default="none,2,4", help="guidance scales, comma-separated; none = no guidance")
    parser.add_argument("--samples-per-class", type=int, default=50)
    parser.add_argument("--sampler", default="temperature=1.0", help="a sampler spec (not greedy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=None, help="write PNG grids here, one per scale (row = digit)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; 1 is fastest on a busy machine")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, layout = armm.load_model(args.model_dir)
    if not isinstance(layout, VocabLayout):
        raise SystemExit(f"error: {args.model_dir} has tokenizer {getattr(layout, 'name', None)!r}, not a mixed layout")
    tokenizer = layout.parts[image_part(layout)]
    classifier = train_classifier(tokenizer, seed=args.seed)
    test_images, test_labels = load_digits_images(8, "test")
    real = assigned_fractions(classifier, tokenizer, test_images, test_labels, 10)

    print(f"model {args.model_dir}: {model.num_params() / 1e6:.2f}M parameters, layout parts "
          f"{', '.join(f'{n} ({t.name})' for n, t in layout.parts.items())}")
    print(f"classifier: logistic regression on the real train digits; accuracy on real test digits {real[0]:.3f}")
    print(f"caption {args.caption!r}, sampler {args.sampler!r}, {args.samples_per_class} samples per digit, "
          f"seed {args.seed}\n")
    print("| guidance scale | " + " | ".join(str(d) for d in range(10)) + " | all | incomplete images | seconds |")
    print("|---" * 14 + "|")
    for raw in args.scales.split(","):
        scale = None if raw.strip() == "none" else float(raw)
        start = time.perf_counter()
        images, labels, broken = sample_digits(model, layout, args.caption, args.samples_per_class, args.sampler,
                                               scale, args.seed)
        seconds = time.perf_counter() - start
        overall, per_digit = assigned_fractions(classifier, tokenizer, images, labels, 10)
        cells = " | ".join(f"{f:.2f}" for f in per_digit)
        print(f"| {raw.strip()} | {cells} | **{overall:.3f}** | {broken} | {seconds:.0f} |", flush=True)
        if args.grid is not None:
            path = args.grid.with_name(f"{args.grid.stem}-{raw.strip()}{args.grid.suffix or '.png'}")
            write_class_grid(images, labels, path, columns=10, scale=4)


if __name__ == "__main__":
    main()
