"""Training the network inside a learned tokenizer (a VQ-VAE, an audio codec) with a quiet Lightning ``Trainer``.

A tokenizer's ``fit`` runs inside ``armm fit``'s data preparation, so it keeps Lightning's banners, tips and
progress bar out of the user's terminal and leaves the global random state as it found it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from torch.utils.data import DataLoader


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banners and tips and its warnings about a small CPU data loader."""
    log = logging.getLogger("lightning.pytorch")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
            yield
    finally:
        log.setLevel(level)


def fit_tokenizer_module(module: L.LightningModule, loader: DataLoader, *, steps: int | None, epochs: int | None,
                         seed: int, accelerator: str = "cpu",
                         gradient_clip_val: float | None = None) -> None:
    """Train ``module`` on ``loader`` for ``steps`` optimizer steps or ``epochs`` (exactly one), seeded by ``seed``,
    (gradients clipped to norm ``gradient_clip_val`` when given) without logs, checkpoints or a progress bar; the
    module ends on the CPU in eval mode."""
    if (steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of steps or epochs, got steps={steps}, epochs={epochs}")
    module.train()
    with quiet_lightning(), torch.random.fork_rng():
        torch.manual_seed(seed)  # dead-code restarts and crops draw from the global generator
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            max_steps=steps if steps is not None else -1,
            max_epochs=epochs if epochs is not None else -1,
            enable_checkpointing=False,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=gradient_clip_val,
        )
        trainer.fit(module, loader)
    module.cpu().eval()
