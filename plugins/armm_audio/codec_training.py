"""Training the audio codec with Lightning; imported only by ``CodecTokenizer.fit``.

Loss: L1 between the decoder's log magnitudes and the input's, plus beta · the RVQ commitment loss; the codebooks
follow EMA updates, not gradients.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from armm.training.tokenizer_fit import fit_tokenizer_module
from armm_audio.codec_model import AudioCodec


class RandomCrops(Dataset):
    """Clips ``[N, L]`` → one random ``segment``-sample crop per item, drawn from a generator seeded by ``seed``."""

    def __init__(self, clips: torch.Tensor, segment: int, seed: int) -> None:
        self.clips, self.segment = clips, min(segment, clips.shape[1])
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> torch.Tensor:
        start = int(torch.randint(self.clips.shape[1] - self.segment + 1, (), generator=self.generator))
        return self.clips[index, start:start + self.segment]


class CodecTraining(L.LightningModule):
    """The first ``warmup_steps`` train encoder and decoder without the quantizer, whose codebooks then start from
    k-means of the warmed-up encoder's vectors."""

    def __init__(self, model: AudioCodec, lr: float, beta: float, warmup_steps: int) -> None:
        super().__init__()
        self.model, self.lr, self.beta, self.warmup_steps = model, lr, beta, warmup_steps

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        target, estimate, commitment = self.model(batch[:, None], quantize=self.global_step >= self.warmup_steps)
        return F.l1_loss(estimate, target) + self.beta * commitment

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=(0.9, 0.99))


def train_codec(model: AudioCodec, clips: torch.Tensor, *, steps: int | None, epochs: int | None, segment: int,
                batch_size: int, lr: float, beta: float, warmup_steps: int, seed: int, accelerator: str) -> None:
    """Train ``model`` in place on clips ``[N, L]`` (L a multiple of its hop) on random ``segment``-sample crops."""
    segment -= segment % model.hop
    loader = DataLoader(RandomCrops(clips, segment, seed), batch_size=batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(seed))
    fit_tokenizer_module(CodecTraining(model, lr, beta, warmup_steps), loader, steps=steps, epochs=epochs, seed=seed,
                         accelerator=accelerator, gradient_clip_val=1.0)
