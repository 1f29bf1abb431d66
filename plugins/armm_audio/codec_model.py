"""A small neural audio codec over short-time spectra: a convolutional encoder of log-magnitude STFT frames, residual
vector quantisation, a convolutional decoder back to log magnitudes, and Griffin-Lim phase (Griffin & Lim 1984, as
Tacotron's first vocoder) for the waveform. Waveforms ``[B, 1, L]`` → codes ``[B, K, L / hop]`` → waveforms.

Every convolution runs at the frame rate (50 frames a second at 8 kHz with hop 160), so the codec trains on two CPU
cores in minutes. A learned phase (an inverse-STFT decoder trained on the waveform and multi-resolution spectra, as
Vocos, but without its adversarial losses) and a SEANet sample-rate stack (SoundStream, EnCodec) both trained here
to decoders whose clips a digit classifier could not place (docs/modalities.md): without a discriminator, the
magnitude is what a small codec can learn on two cores, and Griffin-Lim gives it a phase.
"""

from __future__ import annotations

import torch
from torch import nn

from armm.quantize import ResidualVectorQuantizer

MAGNITUDE_FLOOR = 1e-2  # log(|STFT| + floor): ~-50 dB below a loud speech bin, so silence does not dominate the loss
GRIFFIN_LIM_ITERATIONS = 32


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
    """Log-magnitude spectra → encoder → ``ResidualVectorQuantizer`` (``num_codebooks`` × ``codebook_size`` EMA
    codebooks of ``code_dim``-wide codes) → decoder → log-magnitude spectra → Griffin-Lim waveform.

    The STFT has a Hann window of ``n_fft = 4 · hop`` samples every ``hop`` samples; frame t is centred on sample
    t · hop. Encoder and decoder are ``layers`` residual units (dilations 1, 3, 9, 1, …) of ``channels``.
    """

    def __init__(self, hop: int, channels: int, layers: int, code_dim: int, num_codebooks: int, codebook_size: int,
                 ema_decay: float, dead_code_threshold: float) -> None:
        super().__init__()
        self.hop, self.n_fft = hop, 4 * hop
        bins = self.n_fft // 2 + 1
        dilations = [3 ** (i % 3) for i in range(layers)]
        self.encoder = nn.Sequential(
            nn.Conv1d(bins, channels, 3, padding=1), *(ResidualUnit(channels, d) for d in dilations),
            nn.ELU(), nn.Conv1d(channels, code_dim, 3, padding=1),
        )  # fmt: skip
        self.quantizer = ResidualVectorQuantizer(num_codebooks, codebook_size, code_dim, ema_decay, dead_code_threshold)
        self.decoder = nn.Sequential(
            nn.Conv1d(code_dim, channels, 3, padding=1), *(ResidualUnit(channels, d) for d in dilations),
            nn.ELU(), nn.Conv1d(channels, bins, 1),
        )  # fmt: skip
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def log_magnitude(self, waveforms: torch.Tensor) -> torch.Tensor:
        """``[B, 1, L]`` (L a multiple of ``hop``) → log(|STFT| + floor) ``[B, n_fft / 2 + 1, L / hop]``."""
        spectrum = torch.stft(waveforms[:, 0], self.n_fft, self.hop, window=self.window, pad_mode="constant",
                              return_complex=True)  # silence beyond the edges, so a one-frame clip works too
        return (spectrum[..., : waveforms.shape[-1] // self.hop].abs() + MAGNITUDE_FLOOR).log()

    def synthesize(self, log_magnitude: torch.Tensor) -> torch.Tensor:
        """Log magnitudes ``[B, n_fft / 2 + 1, T]`` → waveforms ``[B, 1, T · hop]`` (Griffin-Lim from a fixed start,
        so decoding is deterministic)."""
        from torchaudio.functional import griffinlim  # heavy: imported when a codec first decodes

        frames = log_magnitude.shape[-1]
        magnitude = (log_magnitude.clamp(max=10.0).exp() - MAGNITUDE_FLOOR).clamp(min=0)
        # The STFT of T · hop samples has T + 1 frames; Griffin-Lim's reflect padding needs > n_fft / 2 samples, so
        # a clip of fewer than 4 frames is extended with silent ones and cut back.
        magnitude = nn.functional.pad(magnitude, (0, 1 + max(0, 4 - frames)))
        samples = griffinlim(
            magnitude, self.window, self.n_fft, self.hop, self.n_fft, power=1.0, n_iter=GRIFFIN_LIM_ITERATIONS,
            momentum=0.99, length=(magnitude.shape[-1] - 1) * self.hop, rand_init=False,
        )  # fmt: skip
        return samples[:, None, : frames * self.hop]

    def encode(self, waveforms: torch.Tensor) -> torch.Tensor:
        """``[B, 1, L]`` (L a multiple of ``hop``) → codes ``[B, K, L / hop]``."""
        return self.quantizer.codes(self.encoder(self.log_magnitude(waveforms)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, k, T]`` (the first k ≤ K codebooks) → waveforms ``[B, 1, T · hop]``."""
        return self.decode_vectors(self.quantizer.lookup(codes))

    def decode_vectors(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantised vectors ``[B, code_dim, T]`` → waveforms ``[B, 1, T · hop]``."""
        return self.synthesize(self.decoder(quantized))

    def forward(self, waveforms: torch.Tensor, quantize: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (the input's log magnitudes, the decoder's ``[B, n_fft / 2 + 1, L / hop]``, commitment loss);
        ``quantize=False`` skips the quantizer (an autoencoder, warming the encoder up before the codebooks start
        from its vectors)."""
        target = self.log_magnitude(waveforms)
        latent = self.encoder(target)
        if not quantize:
            return target, self.decoder(latent), latent.new_zeros(())
        quantized, _, commitment = self.quantizer(latent)
        return target, self.decoder(quantized), commitment
