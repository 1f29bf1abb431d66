"""Baselines for a recipe's validation bits per unit: what a trained model has to beat.

Run from the folder the recipe trains in (its ``data.cache_dir`` is relative, so the tokenised data and any fitted
tokenizer are reused)::

    python bench/baselines.py -c recipes/text.yaml                                  # the two baselines
    python bench/baselines.py -c recipes/text.yaml --model runs/text/export/final  # and the trained model

It builds the recipe's data module, takes the validation batches training validates on (the first
``trainer.limit_val_batches`` of them) and scores their targets, as ``val/bpu`` does, under:

- **unigram**: every token predicted from the training split's token frequencies (add-one smoothing over the
  vocabulary, so a token unseen in training costs a finite amount): the cross-entropy of the training unigram
  distribution on the validation tokens;
- **untrained**: the recipe's model at its random initialisation (seeded with ``seed_everything``);
- **model** (with ``--model``): an exported model directory.

Bits per token are converted to bits per unit (byte, residue, dim, sample) with the validation split's
units/token, exactly as training does. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import yaml

import armm
from armm.training.data import IGNORE_INDEX, TokenDataModule
from armm.training.module import ARModule


def validation_batches(data: TokenDataModule, limit: int | float | None) -> list[dict[str, torch.Tensor]]:
    """The batches Lightning validates on under ``limit_val_batches`` (an int counts batches, a float is a share)."""
    loader = data.val_dataloader()
    if limit is None:
        count = len(loader)
    elif isinstance(limit, float):
        count = int(len(loader) * limit)
    else:
        count = min(limit, len(loader))
    return [batch for _, batch in zip(range(count), loader)]


def training_targets(data: TokenDataModule) -> np.ndarray:
    """Every token the training split asks the model to predict: the stream after its first token, or each row's
    tokens after bos up to the padding."""
    tokens = np.asarray(data.train_tokens)
    if data.layout == "packed":
        return tokens[1:]
    targets = tokens[:, 1:]
    return targets[targets != data.tokenizer.pad_id]


def unigram_nats(data: TokenDataModule, batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """(summed nats, tokens) of the validation targets under add-one-smoothed training unigram frequencies."""
    counts = np.bincount(training_targets(data), minlength=data.tokenizer.vocab_size) + 1.0
    log_probs = torch.from_numpy(np.log(counts / counts.sum()))
    targets = torch.cat([batch["targets"].flatten() for batch in batches])
    targets = targets[targets != IGNORE_INDEX]
    return float(-log_probs[targets].sum()), len(targets)


@torch.no_grad()
def model_nats(model: Callable[[torch.Tensor], torch.Tensor], batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """(summed nats, tokens) of the validation targets under a model's next-token predictions."""
    nats, tokens = 0.0, 0
    for batch in batches:
        logits = model(batch["input_ids"])
        nats += float(F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(),
                                      ignore_index=IGNORE_INDEX, reduction="sum"))
        tokens += int((batch["targets"] != IGNORE_INDEX).sum())
    return nats, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", type=Path, required=True, help="a recipe (recipes/*.yaml)")
    parser.add_argument("--model", type=Path, help="an exported model directory to score as well")
    args = parser.parse_args()

    recipe = yaml.safe_load(args.config.read_text())
    data = TokenDataModule(**recipe["data"])
    data.prepare_data()
    data.setup()
    batches = validation_batches(data, recipe["trainer"].get("limit_val_batches"))
    tokenizer, units_per_token = data.tokenizer, data.units_per_token

    L.seed_everything(recipe.get("seed_everything", 0), verbose=False)
    untrained = ARModule(**recipe["model"], vocab_size=tokenizer.vocab_size).eval()
    rows = [("unigram (training-split frequencies)", unigram_nats(data, batches)),
            ("untrained model (random init)", model_nats(untrained, batches))]  # fmt: skip
    if args.model is not None:
        trained, _ = armm.load_model(args.model)
        rows.append((f"model {args.model}", model_nats(trained.eval(), batches)))

    print(f"recipe {args.config}: {len(batches)} validation batches, {rows[0][1][1]} tokens scored, "
          f"{units_per_token:.4f} {tokenizer.unit}s per token, vocabulary {tokenizer.vocab_size}")
    print(f"\n| predictor | bits per token | bits per {tokenizer.unit} |\n|---|---:|---:|")
    for name, (nats, tokens) in rows:
        bits_per_token = nats / tokens / math.log(2)
        print(f"| {name} | {bits_per_token:.4f} | {bits_per_token / units_per_token:.4f} |")


if __name__ == "__main__":
    main()
