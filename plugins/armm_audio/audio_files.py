"""Audio files ↔ waveforms through soundfile (torchaudio's own file I/O needs FFmpeg, which armm does not)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from armm_audio.waveform import as_waveform

READ_SUFFIXES = (".wav", ".flac", ".ogg")
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}  # suffix → soundfile format, each 16-bit PCM


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


def write_audio(path: str | Path, sample: torch.Tensor, sample_rate: int, suffix: str = ".wav") -> None:
    """A waveform → a 16-bit PCM mono file in the format ``suffix`` names (a key of ``WRITE_FORMATS``)."""
    import soundfile

    soundfile.write(path, as_waveform(sample).numpy(), sample_rate, subtype="PCM_16", format=WRITE_FORMATS[suffix])


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


def write_clips(samples: Sequence[torch.Tensor], path: str | Path, sample_rate: int,
                suffix: str = ".wav") -> list[Path]:
    """Waveforms → 16-bit WAV or FLAC files (``suffix``) named from ``path`` (``out.wav``, or ``out-0.wav``,
    ``out-1.wav``, …); a ValueError before writing any when one is empty and the format FLAC."""
    from armm.files import numbered_paths

    empty = [i for i, sample in enumerate(samples) if as_waveform(sample).numel() == 0]
    if suffix == ".flac" and empty:  # libsndfile would write an empty file no program reads
        raise ValueError(f"sample {empty[0]} holds no audio, which FLAC cannot store (generation may have ended at "
                         "once); write .wav, which can")
    paths = numbered_paths(path, len(samples), suffix)
    for sample, target in zip(samples, paths):
        write_audio(target, sample, sample_rate, suffix)
    return paths
