"""Rate against quality: the ``audio-codec`` tokenizer with its first k codebooks against mu-law at the same bits/s.

Run as ``python bench/audio_codec.py MODEL_DIR`` on a model trained with ``recipes/speech_digits.yaml`` (or its
flattened twin): the codec measured is the audio part of its mixed layout. The clips are held out: ``spoken_digits``
at speeds 140 and 180 words a minute and pitches 42 and 60, none of which the dataset (speeds 120, 160, 200; pitches
35, 50, 70) uses.

Rows, ordered by bits per second:

- the codec decoding the first k = 1 .. K codebooks of each frame (``AudioCodec.decode(codes[:, :k])``): k · 50
  tokens a second of 8 bits each, 400 bits/s a codebook;
- mu-law at the same bits per second: the clip resampled down to a lower rate (``scipy.signal.resample_poly``), mu-law
  encoded and decoded there at fewer bits (``audio-mulaw``), and resampled back up to 8 kHz;
- the reference, 8-bit mu-law at 8 kHz (64 kbit/s): the tokenizer of ``recipes/audio.yaml``.

Columns:

- SNR (dB), over all held-out clips at once: 10 · log10(Σ x² / Σ (x − x̂)²);
- log-mel distance (dB): ``armm_audio.snr.log_mel_distance``, the mean over clips, frames and mel bands of the
  absolute dB difference of 40-band mel power spectra (n_fft 256, hop 64 at 8 kHz), both floored 50 dB below the
  reference's loudest bin (so digital silence is not an infinite distance);
- for a codec row, the usage of the codebook that row adds (codebook k − 1, counting from 0) over the held-out
  clips: the distinct codes used (of ``codebook_size``), the entropy of their frequencies in bits (what an entropy
  coder would spend per code, of the 8 bits the row pays), and the perplexity 2^entropy.

The codec codes magnitude spectra only and its decoder takes the phase from Griffin-Lim, so its waveform does not line
up sample by sample with the input: its SNR is near 0 dB or below even where it sounds right, and the log-mel distance
is the column that tracks its quality. Mu-law keeps phase, so for it both columns count.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

import armm
from armm.datasource import modality_part
from armm_audio.codec import CodecTokenizer
from armm_audio.mulaw import MuLawTokenizer
from armm_audio.snr import log_mel_distance, snr_db
from armm_audio.spoken_digits import spoken_digits
from tables import cpu_summary, print_table  # bench/tables.py (this folder is on sys.path)

SAMPLE_RATE = 8000
HELD_OUT = {"speeds": (140, 180), "pitches": (42, 60)}
MULAW = ((200, 2), (400, 2), (600, 2), (400, 3), (800, 2), (400, 4), (SAMPLE_RATE, 8))  # (Hz, bits)


def load_codec(model_dir: Path) -> CodecTokenizer:
    """The audio part of a model directory's mixed layout."""
    _, layout = armm.load_model(model_dir)
    codec = layout.parts[modality_part(layout, "audio", "bench/audio_codec.py")]
    if not isinstance(codec, CodecTokenizer):
        raise SystemExit(f"error: the audio part of {model_dir} is {codec.name!r}, not 'audio-codec'")
    return codec


def quality(reference: torch.Tensor, estimate: torch.Tensor) -> list[str]:
    """The SNR and log-mel distance cells of waveforms ``[N, L]``."""
    snr, distance = snr_db(reference.flatten(), estimate.flatten()), log_mel_distance(estimate, reference, SAMPLE_RATE)
    return [f"{snr:.1f}", f"{distance:.2f}"]


def usage(codes: torch.Tensor, codebook_size: int) -> list[str]:
    """Codes of one codebook → cells: distinct codes used, entropy of their frequencies (bits), perplexity."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    entropy = -(p * p.log2()).sum().item()
    return [f"{len(p)} / {codebook_size}", f"{entropy:.2f}", f"{2**entropy:.0f}"]


def codec_rows(codec: CodecTokenizer, clips: torch.Tensor) -> list[tuple[float, list[str]]]:
    """(bits/s, row) of the codec decoding its first k codebooks, for every k."""
    codes = torch.stack(codec.codes(list(clips)))  # (N, K, frames)
    bits = math.log2(codec.codebook_size)
    rows = []
    for k in range(1, codec.num_codebooks + 1):
        with torch.no_grad():
            estimate = codec.model.decode(codes[:, :k])[:, 0].clamp(-1.0, 1.0)  # (N, L)
        rate = k * codec.frames_per_second
        rows.append((rate * bits, [f"codec, first {k} of {codec.num_codebooks} codebooks", f"{rate:g}",
                                   f"{rate * bits:,.0f}", *quality(clips, estimate),
                                   *usage(codes[:, k - 1], codec.codebook_size)]))
    return rows


def mulaw_round_trip(clips: torch.Tensor, rate: int, bits: int) -> torch.Tensor:
    """Waveforms ``[N, L]`` at 8 kHz → resampled to ``rate``, mu-law coded at ``bits``, resampled back to 8 kHz."""
    divisor = math.gcd(rate, SAMPLE_RATE)
    up, down = rate // divisor, SAMPLE_RATE // divisor
    low = resample_poly(clips.double().numpy(), up, down, axis=-1)  # (N, L · rate / 8000)
    tokenizer = MuLawTokenizer(sample_rate=rate, bits=bits)
    coded = tokenizer.decode(tokenizer.encode(torch.from_numpy(low.reshape(-1).astype(np.float32))))
    back = resample_poly(coded.double().numpy().reshape(low.shape), down, up, axis=-1)[:, : clips.shape[1]]
    return torch.from_numpy(back).float().clamp(-1.0, 1.0)


def mulaw_rows(clips: torch.Tensor) -> list[tuple[float, list[str]]]:
    """(bits/s, row) of mu-law at every (rate, bits) of ``MULAW``."""
    rows = []
    for rate, bits in MULAW:
        estimate = mulaw_round_trip(clips, rate, bits)
        name = f"mu-law {bits}-bit at {rate:,} Hz" + (" (recipes/audio.yaml)" if rate == SAMPLE_RATE else "")
        rows.append((rate * bits, [name, f"{rate:,}", f"{rate * bits:,}", *quality(clips, estimate), "", "", ""]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a model directory trained with recipes/speech_digits.yaml")
    args = parser.parse_args(argv)

    codec = load_codec(args.model_dir)
    if codec.sample_rate != SAMPLE_RATE:
        raise SystemExit(f"error: the codec runs at {codec.sample_rate} Hz; this benchmark compares at {SAMPLE_RATE}")
    start = time.perf_counter()
    _, clips, _ = spoken_digits(SAMPLE_RATE, 1.0, **HELD_OUT)
    clips = torch.stack(clips)  # (N, 8000)
    print(f"{cpu_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"codec of {args.model_dir}: {sum(p.numel() for p in codec.model.parameters()) / 1e6:.2f}M parameters, "
          f"{codec.num_codebooks} codebooks of {codec.codebook_size}, {codec.frames_per_second:g} frames/s")
    print(f"{len(clips)} held-out clips of 1 s (speeds {HELD_OUT['speeds']}, pitches {HELD_OUT['pitches']}), "
          f"rendered in {time.perf_counter() - start:.0f} s\n")
    rows = sorted(codec_rows(codec, clips) + mulaw_rows(clips), key=lambda row: row[0])
    print_table(["tokenizer", "tokens/s", "bits/s", "SNR (dB)", "log-mel distance (dB)", "codes used",
                 "code entropy (bits)", "code perplexity"], [row for _, row in rows])


if __name__ == "__main__":
    main()
