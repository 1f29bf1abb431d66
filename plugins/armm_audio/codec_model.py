"""A small neural audio codec: a convolutional encoder at the frame rate, residual vector quantisation, and a
convolutional decoder that predicts a short-time spectrum and returns the waveform by inverse STFT (Vocos,
Siuzdak 2023; WavTokenizer). Waveforms ``[B, 1, L]`` → codes ``[B, K, L / hop]`` → waveforms ``[B, 1, L]``.

Every convolution after the first runs at the frame rate (50 frames a second at 8 kHz with hop 160), not the
sample rate, so the codec trains on two CPU cores in minutes; SoundStream/EnCodec's sample-rate stacks of strided
and transposed convolutions trained more than twice as slowly per step here and reached a worse log-mel distance in
the same time (docs/modalities.md).
"""

from __future__ import annotations

import torch
from torch import nn

from armm.quantize import ResidualVectorQuantizer


class ResidualUnit(nn.Module):
    """x + Conv1x1(ELU(Conv7(ELU(x)), dilated)): SEANet's unit, widening the receptive field without striding."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ELU(), nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation),
            nn.ELU(), nn.Conv1d(channels, channels, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class AudioCodec(nn.Module):
    """Encoder → ``ResidualVectorQuantizer`` (``num_codebooks`` × ``codebook_size`` EMA codebooks) → decoder.

    The encoder's first convolution reads windows of ``4 · hop`` samples every ``hop`` samples (a learned analysis
    filter bank); ``layers`` residual units (dilations 1, 3, 9, 1, …) of ``channels`` follow, in the encoder and the
    decoder. The decoder ends in a log magnitude and a phase per STFT bin (n_fft = 4 · hop, Hann window), which
    ``torch.istft`` turns into samples.
    """

    def __init__(self, hop: int, channels: int, layers: int, code_dim: int, num_codebooks: int, codebook_size: int,
                 ema_decay: float, dead_code_threshold: float) -> None:
        super().__init__()
        self.hop, self.n_fft = hop, 4 * hop
        dilations = [3 ** (i % 3) for i in range(layers)]
        self.encoder = nn.Sequential(
            nn.Conv1d(1, channels, self.n_fft, stride=hop, padding=(self.n_fft - hop) // 2),  # (B, C, L / hop)
            *(ResidualUnit(channels, d) for d in dilations), nn.ELU(), nn.Conv1d(channels, code_dim, 3, padding=1),
        )  # fmt: skip
        self.quantizer = ResidualVectorQuantizer(num_codebooks, codebook_size, code_dim, ema_decay, dead_code_threshold)
        self.decoder = nn.Sequential(
            nn.Conv1d(code_dim, channels, 7, padding=3), *(ResidualUnit(channels, d) for d in dilations),
            nn.ELU(), nn.Conv1d(channels, self.n_fft + 2, 1),  # (B, 2 · (n_fft / 2 + 1), T)
        )  # fmt: skip
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def synthesize(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Decoder output ``[B, n_fft + 2, T]`` (log magnitudes, then phases) → waveforms ``[B, 1, T · hop]``."""
        log_magnitude, phase = spectrum.chunk(2, dim=1)  # (B, n_fft / 2 + 1, T) each
        complex_spectrum = torch.polar(log_magnitude.clamp(max=7.0).exp(), phase)
        samples = torch.istft(complex_spectrum, self.n_fft, self.hop, window=self.window, center=True,
                              length=spectrum.shape[-1] * self.hop)  # fmt: skip
        return samples[:, None]

    def encode(self, waveforms: torch.Tensor) -> torch.Tensor:
        """``[B, 1, L]`` (L a multiple of ``hop``) → codes ``[B, K, L / hop]``."""
        return self.quantizer.codes(self.encoder(waveforms))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, k, T]`` (the first k ≤ K codebooks) → waveforms ``[B, 1, T · hop]``."""
        return self.decode_vectors(self.quantizer.lookup(codes))

    def decode_vectors(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantised vectors ``[B, code_dim, T]`` → waveforms ``[B, 1, T · hop]``."""
        return self.synthesize(self.decoder(quantized))

    def forward(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (reconstruction ``[B, 1, L]``, codes ``[B, K, L / hop]``, commitment loss)."""
        quantized, codes, commitment = self.quantizer(self.encoder(waveforms))
        return self.decode_vectors(quantized), codes, commitment
