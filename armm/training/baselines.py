"""``armm baselines -c RECIPE [--trained DIR]``: what a trained model has to beat, in the units of ``val/bpu``.

The recipe and its overrides are parsed exactly as ``armm fit`` parses them (``--data.path my.txt --data.dataset
null`` works the same), its data module is prepared (the cache is shared with training), and the batches training
validates on (the first ``trainer.limit_val_batches`` of the validation split) are scored under:

- **unigram**: the training split's target-token frequencies (add-one smoothed over the vocabulary, so a token
  unseen in training costs a finite amount): their cross-entropy on the validation targets;
- **untrained**: the recipe's model at its seeded random initialisation (the weights ``armm fit`` starts from);
- **trained** (``--trained DIR``): an exported model directory, e.g. ``runs/text/export/final``.

Bits per token become bits per unit (byte, residue, dim, sample) with the validation split's units per token, as
``val/bpu`` does.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningArgumentParser
from rich import box
from rich.console import Console
from rich.table import Table

from armm.checkpoint import load_model_with_tokenizer
from armm.tokenizer import Tokenizer
from armm.training.cli import ArmmCLI, run_training_cli
from armm.training.data import IGNORE_INDEX, TokenDataModule
from armm.training.module import ARModule

CHUNK = 1 << 24  # tokens counted at a time, so a large memory-mapped split never loads whole


@dataclass(frozen=True)
class Baseline:
    """One predictor's summed cross-entropy over the validation targets."""

    name: str
    nats: float
    tokens: int

    @property
    def bits_per_token(self) -> float:
        return self.nats / self.tokens / math.log(2)


class BaselinesCLI(ArmmCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--trained", type=Path | None, default=None,
                            help="An exported model directory (e.g. runs/text/export/final) to score as well.")


def validation_batches(data: TokenDataModule, limit: int | float | None) -> Iterator[dict[str, torch.Tensor]]:
    """The batches Lightning validates on under ``limit_val_batches`` (an int counts batches, a float is a share)."""
    loader = data.val_dataloader()
    if limit is None:
        count = len(loader)
    elif isinstance(limit, float):
        count = int(len(loader) * limit)
    else:
        count = min(limit, len(loader))
    return islice(loader, count)


def training_target_counts(data: TokenDataModule) -> np.ndarray:
    """How often each id is a target of the training split: the stream after its first token (chat: the scored
    tokens only), or each row's tokens after bos up to the padding."""
    tokens, vocab = data.train_tokens, data.tokenizer.vocab_size
    counts = np.zeros(vocab, dtype=np.int64)
    if data.layout == "samples":
        rows = max(1, CHUNK // tokens.shape[1])
        for start in range(0, len(tokens), rows):
            targets = np.asarray(tokens[start:start + rows, 1:])
            counts += np.bincount(targets[targets != data.tokenizer.pad_id], minlength=vocab)
        return counts
    scored = data.scored["train"]
    for start in range(1, len(tokens), CHUNK):
        targets = np.asarray(tokens[start:start + CHUNK])
        if scored is not None:
            targets = targets[np.asarray(scored[start:start + CHUNK], dtype=bool)]
        counts += np.bincount(targets, minlength=vocab)
    return counts


def unigram(counts: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    """A predictor whose logits at every position are the add-one-smoothed log-frequencies of ``counts``."""
    smoothed = counts + 1.0
    log_probs = torch.from_numpy(np.log(smoothed / smoothed.sum())).float()
    return lambda input_ids: log_probs.to(input_ids.device).expand(*input_ids.shape, len(log_probs))


@torch.no_grad()
def cross_entropy(name: str, model: Callable[[torch.Tensor], torch.Tensor],
                  batches: Iterator[dict[str, torch.Tensor]], device: torch.device) -> Baseline:
    """Summed nats and the number of targets of ``batches`` under ``model``'s next-token predictions."""
    nats, tokens = 0.0, 0
    for batch in batches:
        targets = batch["targets"].to(device)
        logits = model(batch["input_ids"].to(device))
        nats += float(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                                      reduction="sum"))
        tokens += int((targets != IGNORE_INDEX).sum())
    return Baseline(name, nats, tokens)


def untrained_module(module: ARModule, vocab_size: int, seed: int) -> ARModule:
    """The recipe's module as ``armm fit`` starts it: built with the data's vocabulary right after seeding."""
    arguments = {name: module.hparams[name] for name in inspect.signature(ARModule).parameters}
    L.seed_everything(seed, verbose=False)
    return ARModule(**{**arguments, "vocab_size": arguments["vocab_size"] or vocab_size}).eval()


def check_trained(directory: Path, data: TokenDataModule, context: int, theirs: Tokenizer) -> None:
    """The trained model (of ``context`` tokens, reading ids of ``theirs``) must read the data's ids and fit its
    windows."""
    tokenizer = data.tokenizer
    if context < data.seq_len:
        raise ValueError(f"the model {directory} has a context of {context} tokens but data.seq_len is {data.seq_len}; "
                         f"pass --data.seq_len {context} (or less)")
    if (theirs.name, theirs.vocab_size) != (tokenizer.name, tokenizer.vocab_size):
        raise ValueError(f"the model {directory} reads ids of tokenizer {theirs.name!r} ({theirs.vocab_size} ids) but "
                         f"the recipe's data are tokenised by {tokenizer.name!r} ({tokenizer.vocab_size} ids); give the "
                         f"recipe (and overrides) the model was trained with")


def baselines(args: list[str]) -> tuple[TokenDataModule, list[Baseline]]:
    """Parse ``args`` (``-c RECIPE``, overrides, ``--trained DIR``) and score the validation batches under each
    predictor."""
    cli = run_training_cli(args, cli=BaselinesCLI, run=False)
    data, limit = cli.datamodule, cli.trainer.limit_val_batches
    data.prepare_data()
    data.setup("validate")
    device = cli.trainer.strategy.root_device
    tokenizer = data.tokenizer
    rows = [cross_entropy("unigram (training-split frequencies)", unigram(training_target_counts(data)),
                          validation_batches(data, limit), device)]
    init_from = cli.model.hparams.init_from
    start = untrained_module(cli.model, tokenizer.vocab_size, cli.config.seed_everything).to(device)
    rows.append(cross_entropy(f"starting model (model.init_from {init_from})" if init_from else
                              "untrained model (random init)", start, validation_batches(data, limit), device))
    if cli.config.trained is not None:
        model, theirs = load_model_with_tokenizer(cli.config.trained)
        check_trained(cli.config.trained, data, model.config.max_seq_len, theirs)
        rows.append(cross_entropy(f"model {cli.config.trained}", model.eval().to(device),
                                  validation_batches(data, limit), device))
    return data, rows


def run_baselines(args: list[str]) -> list[Baseline]:
    """``armm baselines``: print the table (Markdown) and return its rows."""
    data, rows = baselines(args)
    tokenizer, units_per_token = data.tokenizer, data.units_per_token
    table = Table(title=f"{rows[0].tokens} validation tokens scored, {units_per_token:.4f} {tokenizer.unit}s per "
                        f"token, vocabulary {tokenizer.vocab_size}", box=box.MARKDOWN)
    for column, justify in (("predictor", "left"), ("bits per token", "right"), (f"bits per {tokenizer.unit}", "right")):
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(row.name, f"{row.bits_per_token:.4f}", f"{row.bits_per_token / units_per_token:.4f}")
    Console().print(table)
    return rows
