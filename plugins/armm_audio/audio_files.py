"""Audio files ↔ waveforms through soundfile (torchaudio's own file I/O needs FFmpeg, which armm does not)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from armm_audio.waveform import as_waveform

READ_SUFFIXES = (".wav", ".flac", ".ogg")


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """One audio file → mono float32 waveform in [-1, 1] at ``sample_rate`` (channels averaged, then resampled).

    Raises ValueError naming the file when soundfile cannot decode it or it holds no frames.
    """
    import soundfile
    import torchaudio.functional

    try:
        frames, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except soundfile.SoundFileError as err:
        raise ValueError(f"{path} is not a readable audio file ({', '.join(READ_SUFFIXES)}): {err}") from None
    if len(frames) == 0:
        raise ValueError(f"{path} holds no audio frames")
    mono = torch.from_numpy(frames).mean(dim=1)
    if file_rate != sample_rate:
        mono = torchaudio.functional.resample(mono, file_rate, sample_rate)
    return mono.clamp(-1.0, 1.0)


def write_wav(path: str | Path, sample: torch.Tensor, sample_rate: int) -> None:
    """A waveform → a 16-bit PCM mono WAV file."""
    import soundfile

    soundfile.write(path, as_waveform(sample).numpy(), sample_rate, subtype="PCM_16", format="WAV")


def read_clips(source: str | Path, sample_rate: int, clip_seconds: float | None, *,
               pad_last: bool = False) -> list[torch.Tensor]:
    """Every audio file under ``source`` at ``sample_rate``, whole, or cut into consecutive clips of ``clip_seconds``
    (the last one shorter, or padded with silence to a full clip when ``pad_last``)."""
    from armm.files import find_files

    clips = []
    for path in find_files(source, READ_SUFFIXES, what="audio files"):
        waveform = read_audio(path, sample_rate)
        if clip_seconds is None:
            clips.append(waveform)
            continue
        length = int(clip_seconds * sample_rate)
        pieces = list(torch.split(waveform, length))
        if pad_last and len(pieces[-1]) < length:
            pieces[-1] = torch.nn.functional.pad(pieces[-1], (0, length - len(pieces[-1])))
        clips.extend(pieces)
    return clips


def write_clips(samples: Sequence[torch.Tensor], path: str | Path, sample_rate: int) -> list[Path]:
    """Waveforms → 16-bit WAV files named from ``path`` (``out.wav``, or ``out-0.wav``, ``out-1.wav``, …)."""
    from armm.files import numbered_paths

    paths = numbered_paths(path, len(samples), ".wav")
    for sample, target in zip(samples, paths):
        write_wav(target, sample, sample_rate)
    return paths
