"""Round-trip quality of ``audio-mulaw``: the SNR of decode(encode(x)) against x, for speech and a pure tone.

Run ``python -m armm_audio.snr`` (needs ``espeak-ng`` on PATH for the speech column).
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from pathlib import Path

import torch

from armm_audio.mulaw import MuLawTokenizer

PHRASE = "The quick brown fox jumps over the lazy dog. Speech tokenized one sample at a time."


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Signal-to-noise ratio in dB: 10 log10(Σ reference² / Σ (reference − estimate)²)."""
    reference, estimate = reference.double(), estimate.double()
    return 10 * math.log10(reference.square().sum().item() / (reference - estimate).square().sum().item())


def round_trip_snr(tokenizer: MuLawTokenizer, waveform: torch.Tensor) -> float:
    return snr_db(waveform, tokenizer.decode(tokenizer.encode(waveform)))


def tone(frequency: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> torch.Tensor:
    """A sine wave as a float32 waveform."""
    t = torch.arange(round(seconds * sample_rate), dtype=torch.float64) / sample_rate
    return (amplitude * torch.sin(2 * math.pi * frequency * t)).float()


def espeak_speech(text: str, tokenizer: MuLawTokenizer) -> torch.Tensor:
    """``text`` spoken by espeak-ng (22050 Hz WAV), read back through ``tokenizer.read`` at its sample rate."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        return tokenizer.read(path)[0]


def main() -> None:
    speech = espeak_speech(PHRASE, MuLawTokenizer())
    sine = tone(440.0, 1.0, 16000)
    print("| bits | levels | SNR speech (dB) | SNR 440 Hz tone, amplitude 0.5 (dB) |")
    print("|---:|---:|---:|---:|")
    for bits in (4, 6, 8, 10, 12, 16):
        tokenizer = MuLawTokenizer(bits=bits)
        speech_snr, sine_snr = round_trip_snr(tokenizer, speech), round_trip_snr(tokenizer, sine)
        print(f"| {bits} | {2**bits} | {speech_snr:.1f} | {sine_snr:.1f} |")


if __name__ == "__main__":
    main()
