"""Dataset ``espeak-digits``: the ten digit words said by every installed English espeak-ng voice, made on the spot.

Each word is rendered by every English voice espeak-ng ships (its ``gmw/`` voices: en-gb, en-us, Scotland,
Lancaster, RP, West Midlands, Caribbean, New York), each in ``VARIANTS`` (espeak's speaker variants: male and
female timbres) at ``SPEEDS`` words per minute and ``PITCHES``, resampled to the tokenizer's rate, trimmed of
silence and placed at the start of a clip of the tokenizer's ``clip_seconds`` (silence after; a word longer than
the clip is cut). 8 voices × 4 variants × 3 speeds × 3 pitches = 288 clips per digit.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch

from armm.datasource import in_layout_order, label_part, modality_part
from armm.layout import Part
from armm.tokenizer import Tokenizer
from armm_audio.datasets import DIGITS, speak, trim_silence

VARIANTS = ("", "+f2", "+m3", "+f4")
SPEEDS = (120, 160, 200)  # words per minute (espeak's default is 175)
PITCHES = (35, 50, 70)  # 0..99 (espeak's default is 50)
LEAD_IN = 0.05  # seconds of silence before each word


class Utterance(NamedTuple):
    digit: str
    voice: str
    pitch: int
    speed: int


@functools.cache
def english_voices() -> tuple[str, ...]:
    """The English voices espeak-ng ships (``espeak-ng --voices=en``, its own ``gmw/`` voice files, not MBROLA)."""
    listing = subprocess.run(["espeak-ng", "--voices=en"], check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in listing.splitlines()[1:]]
    return tuple(sorted({row[1] for row in rows if len(row) >= 5 and row[4].startswith("gmw/")}))


def utterances(voices: Sequence[str] | None = None, speeds: Sequence[int] = SPEEDS,
               pitches: Sequence[int] = PITCHES) -> Iterator[Utterance]:
    """Every (digit, voice + variant, pitch, speed) said, digit by digit (default: the dataset's)."""
    for digit in DIGITS:
        for voice in voices if voices is not None else english_voices():
            for variant in VARIANTS:
                for speed in speeds:
                    for pitch in pitches:
                        yield Utterance(digit, voice + variant, pitch, speed)


def render(utterance: Utterance, sample_rate: int, clip_samples: int) -> torch.Tensor:
    """One utterance as a clip of ``clip_samples`` at ``sample_rate``: lead-in silence, the trimmed word, silence."""
    from scipy.signal import resample_poly

    waveform, rate = speak(utterance.digit, utterance.voice, utterance.pitch, utterance.speed)
    divisor = math.gcd(rate, sample_rate)
    word = trim_silence(torch.from_numpy(resample_poly(waveform.numpy(), sample_rate // divisor, rate // divisor)
                                         .astype("float32")).clamp(-1.0, 1.0))
    clip = torch.zeros(clip_samples)
    start = round(LEAD_IN * sample_rate)
    word = word[: clip_samples - start]
    clip[start:start + len(word)] = word
    return clip


def spoken_digits(sample_rate: int, clip_seconds: float, voices: Sequence[str] | None = None,
                  speeds: Sequence[int] = SPEEDS, pitches: Sequence[int] = PITCHES,
                  workers: int = 4) -> tuple[list[str], list[torch.Tensor], list[Utterance]]:
    """→ (digit words, clips, what said each) of ``utterances``, rendered by ``workers`` espeak-ng processes at a
    time. Speeds and pitches outside the dataset's give clips no model trained on it has heard."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("dataset 'espeak-digits' needs espeak-ng (Debian/Ubuntu: apt install espeak-ng; "
                           "macOS: brew install espeak-ng), or give your own clips with --data.path")
    said = list(utterances(voices, speeds, pitches))
    length = round(clip_seconds * sample_rate)
    with ThreadPoolExecutor(workers) as pool:
        clips = list(pool.map(lambda u: render(u, sample_rate, length), said))
    return [u.digit for u in said], clips, said


def espeak_digits(tokenizer: Tokenizer) -> list[list[Part]]:
    """Dataset ``espeak-digits``: for a mixed layout with a ``classes`` part and an audio part, every clip of
    ``spoken_digits`` at the audio tokenizer's ``sample_rate`` and ``clip_seconds`` (1 s when it has none), labelled
    by its digit word: ``[(label, "seven"), (audio, clip)]``."""
    audio = modality_part(tokenizer, "audio", "dataset 'espeak-digits'")
    label = label_part(tokenizer)
    part = tokenizer.parts[audio]
    words, clips, _ = spoken_digits(part.sample_rate, part.clip_seconds or 1.0)
    return [in_layout_order(tokenizer, {label: word, audio: clip}) for word, clip in zip(words, clips)]
