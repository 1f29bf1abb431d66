"""Training the audio codec with Lightning; imported only by ``CodecTokenizer.fit``.

Loss (SoundStream / EnCodec without the adversarial terms): L1 on the waveform, a multi-resolution STFT loss
(spectral convergence + L1 of log magnitudes at several window sizes) and beta · the RVQ commitment loss; the
codebooks follow EMA updates, not gradients.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from armm.training.tokenizer_fit import fit_tokenizer_module
from armm_audio.codec_model import AudioCodec

STFT_SIZES = (128, 256, 512, 1024)  # window lengths (samples) of the multi-resolution spectral loss


def stft_magnitude(waveforms: torch.Tensor, n_fft: int) -> torch.Tensor:
    """``[B, L]`` → magnitudes ``[B, n_fft / 2 + 1, frames]`` (Hann window, hop n_fft / 4)."""
    window = torch.hann_window(n_fft, device=waveforms.device)
    spectrum = torch.stft(waveforms, n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
    return torch.view_as_real(spectrum).pow(2).sum(-1).clamp(min=1e-10).sqrt()  # |.| whose gradient is finite at 0


def spectral_loss(estimate: torch.Tensor, reference: torch.Tensor, sizes: tuple[int, ...] = STFT_SIZES) -> torch.Tensor:
    """Mean over window sizes of spectral convergence ||S - Ŝ||_F / ||S||_F (over the whole batch, so a silent
    clip does not divide by ~0) plus mean |log S - log Ŝ|."""
    total = estimate.new_zeros(())
    for n_fft in sizes:
        s, s_hat = stft_magnitude(reference, n_fft), stft_magnitude(estimate, n_fft)
        convergence = torch.linalg.norm(s - s_hat) / torch.linalg.norm(s).clamp(min=1e-3)
        total = total + convergence + (s.log() - s_hat.log()).abs().mean()
    return total / len(sizes)


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
    def __init__(self, model: AudioCodec, lr: float, beta: float) -> None:
        super().__init__()
        self.model, self.lr, self.beta = model, lr, beta

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        reconstruction, _, commitment = self.model(batch[:, None])  # (B, 1, L)
        reconstruction = reconstruction[:, 0]
        return F.l1_loss(reconstruction, batch) + spectral_loss(reconstruction, batch) + self.beta * commitment

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=(0.5, 0.9))


def train_codec(model: AudioCodec, clips: torch.Tensor, *, steps: int | None, epochs: int | None, segment: int,
                batch_size: int, lr: float, beta: float, seed: int, accelerator: str) -> None:
    """Train ``model`` in place on clips ``[N, L]`` (L a multiple of its hop) on random ``segment``-sample crops."""
    segment -= segment % model.hop
    loader = DataLoader(RandomCrops(clips, segment, seed), batch_size=batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(seed))
    fit_tokenizer_module(CodecTraining(model, lr, beta), loader, steps=steps, epochs=epochs, seed=seed,
                         accelerator=accelerator, gradient_clip_val=1.0)
