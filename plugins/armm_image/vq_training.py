"""Training a VQ-VAE with Lightning; imported only by ``VQTokenizer.fit``."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from armm.training.tokenizer_fit import fit_tokenizer_module
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
    loader = DataLoader(
        TensorDataset(images), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    fit_tokenizer_module(VQVAETraining(model, lr, beta), loader, steps=steps, epochs=epochs, seed=seed,
                         accelerator=accelerator)
