"""Training a VQ-VAE with Lightning; imported only by ``VQTokenizer.fit``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from armm_image.vqvae import VQVAE


class VQVAETraining(L.LightningModule):
    """Loss = reconstruction MSE + beta · commitment; the codebook itself follows EMA updates, not gradients."""

    def __init__(self, model: VQVAE, lr: float, beta: float) -> None:
        super().__init__()
        self.model, self.lr, self.beta = model, lr, beta

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (images,) = batch
        reconstruction, _, commitment = self.model(images)
        return F.mse_loss(reconstruction, images) + self.beta * commitment

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


@contextmanager
def _quiet() -> Iterator[None]:
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


def train_vqvae(
    model: VQVAE,
    images: torch.Tensor,
    *,
    steps: int | None,
    epochs: int | None,
    batch_size: int,
    lr: float,
    beta: float,
    seed: int,
    accelerator: str,
) -> None:
    """Train ``model`` in place on float images [N, C, H, W] in [-1, 1] for ``steps`` optimizer steps or ``epochs``."""
    if (steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of steps or epochs, got steps={steps}, epochs={epochs}")
    loader = DataLoader(
        TensorDataset(images), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    model.train()
    with _quiet(), torch.random.fork_rng():
        torch.manual_seed(seed)  # dead-code restarts draw from the global generator
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            max_steps=steps if steps is not None else -1,
            max_epochs=epochs if epochs is not None else -1,
            enable_checkpointing=False,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(VQVAETraining(model, lr, beta), loader)
    model.cpu().eval()
