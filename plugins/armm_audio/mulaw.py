"""The ``audio-mulaw`` tokenizer: resampled waveform → WaveNet-style mu-law companding → one token per sample."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from armm.files import read_json_object
from armm.tokenizer import Tokenizer
from armm_audio.audio_files import READ_SUFFIXES, WRITE_FORMATS, read_clips, write_clips
from armm_audio.waveform import as_waveform

CONFIG_FILE = "audio_mulaw.json"
BITS_RANGE = range(2, 17)


class MuLawTokenizer(Tokenizer):
    """Audio samples as mu-law levels 0 .. 2**bits - 1 (mu = 2**bits - 1), then bos, eos, pad.

    A sample is a 1-D float32 ``torch.Tensor`` in [-1, 1] at ``sample_rate`` (numpy arrays are accepted;
    values outside [-1, 1] are clipped). Lossy: ``decode(encode(x))`` is within the mu-law quantisation
    step of ``x``, and ``encode(decode(ids)) == ids`` for every level.

    Args:
        sample_rate: Rate (Hz) that ``read`` resamples every file to and ``write`` records.
        bits: Bits per sample; 2**bits mu-law levels (2 .. 16).
        clip_seconds: If set, ``read`` cuts each file into consecutive clips of at most this long.
        augment_gain_db: Training augmentation (``augment``): each training clip is made louder or softer by a gain
            drawn uniformly from -this .. +this decibels (0: off).
    """

    name = "audio-mulaw"
    modality = "audio"
    unit = "sample"
    file_suffixes = tuple(WRITE_FORMATS)
    read_suffixes = READ_SUFFIXES

    def __init__(self, sample_rate: int = 16000, bits: int = 8, clip_seconds: float | None = None,
                 augment_gain_db: float = 0.0) -> None:
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
        if not isinstance(bits, int) or bits not in BITS_RANGE:
            raise ValueError(f"bits must be an integer from {BITS_RANGE.start} to {BITS_RANGE.stop - 1}, got {bits!r}")
        if clip_seconds is not None and not clip_seconds * sample_rate >= 1:
            raise ValueError(f"clip_seconds must hold at least one sample at {sample_rate} Hz, got {clip_seconds!r}")
        if not isinstance(augment_gain_db, (int, float)) or not 0 <= augment_gain_db < math.inf:
            raise ValueError(f"augment_gain_db must be a finite number of decibels >= 0 (0: off), got {augment_gain_db!r}")
        self.sample_rate = sample_rate
        self.bits = bits
        self.clip_seconds = clip_seconds
        self.levels = 2**bits
        self.augment_gain_db = float(augment_gain_db)

    @property
    def vocab_size(self) -> int:
        return self.levels + 3

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"bos": self.levels, "eos": self.levels + 1, "pad": self.levels + 2}

    def encode(self, sample: Any) -> list[int]:
        import torchaudio.functional

        waveform = as_waveform(sample).to(torch.float64)
        return torchaudio.functional.mu_law_encoding(waveform, self.levels).tolist()

    def decode(self, ids: Sequence[int]) -> torch.Tensor:
        import torchaudio.functional

        self.check_ids(ids)
        levels = torch.tensor([token for token in ids if token < self.levels], dtype=torch.float64)
        return torchaudio.functional.mu_law_decoding(levels, self.levels).clamp(-1.0, 1.0).to(torch.float32)

    def augment(self, ids: np.ndarray, rng: random.Random) -> np.ndarray:
        """A random gain within ±``augment_gain_db``: the levels are decoded to amplitudes, scaled (clipped to
        [-1, 1]) and encoded again; bos, eos and pad stay. The identity when ``augment_gain_db`` is 0."""
        import torchaudio.functional

        if not self.augment_gain_db:
            return ids
        gain = 10 ** (rng.uniform(-self.augment_gain_db, self.augment_gain_db) / 20)
        out = np.array(ids)
        content = out < self.levels
        amplitude = torchaudio.functional.mu_law_decoding(torch.from_numpy(out[content].astype(np.int64)), self.levels)
        louder = (amplitude.double() * gain).clamp(-1.0, 1.0)
        out[content] = torchaudio.functional.mu_law_encoding(louder, self.levels).numpy()
        return out

    def num_units(self, sample: Any) -> int:
        return as_waveform(sample).numel()

    def token_name(self, token: int) -> str | None:
        """``"μ-law 131 ≈ +0.000645"``: a level and the amplitude ``decode`` gives it, for ``armm inspect``."""
        if not 0 <= token < self.levels:
            return None
        mu = self.levels - 1
        x = token / mu * 2 - 1  # mu-law expansion, as torchaudio.functional.mu_law_decoding
        return f"μ-law {token} ≈ {math.copysign((math.exp(abs(x) * math.log1p(mu)) - 1) / mu, x):+.3g}"

    def read(self, source: str | Path) -> list[torch.Tensor]:
        return read_clips(source, self.sample_rate, self.clip_seconds)

    def write(self, samples: Sequence[Any], path: str | Path, format: str | None = None) -> list[Path]:
        """One 16-bit WAV (or FLAC, as ``format`` says) file per sample."""
        return write_clips(samples, path, self.sample_rate, self.write_format(path, format))

    def save(self, directory: str | Path) -> None:
        config = {"sample_rate": self.sample_rate, "bits": self.bits, "clip_seconds": self.clip_seconds,
                  "augment_gain_db": self.augment_gain_db}
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(config) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> MuLawTokenizer:
        return cls(**read_json_object(Path(directory) / CONFIG_FILE, "settings written by MuLawTokenizer.save"))
