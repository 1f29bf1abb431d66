"""Built-in audio datasets, made on the spot (no download): ``espeak-phrases`` (speech synthesised by espeak-ng),
``synthetic-tones`` (harmonic tones, its fallback when espeak-ng is not installed), and for mixed layouts
``synthetic-notes`` (tones labelled by note name) and ``synthetic-notes-captioned`` (tones with captions).

Both give fixed-length clips at the tokenizer's ``sample_rate``, ``clip_seconds`` long (``DEFAULT_CLIP_SECONDS``
when the tokenizer has none), so a tiny model trains on them in minutes.
"""

from __future__ import annotations

import functools
import io
import math
import random
import shutil
import subprocess
import warnings

import torch

from armm.datasource import caption_part, in_layout_order, label_part, modality_part
from armm.layout import Part
from armm.tokenizer import Tokenizer
from armm_audio.mulaw import MuLawTokenizer

DEFAULT_CLIP_SECONDS = 0.125
SILENCE = 0.01  # |amplitude| below which the start and end of an utterance count as silence

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WORDS = [
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "red", "green", "blue", "yellow",
    "orange", "purple", "black", "white", "cat", "dog", "bird", "horse", "fish", "mouse", "apple", "banana",
    "water", "music", "window", "garden", "morning", "evening", "hello", "goodbye", "thank you", "please",
]  # fmt: skip
NUMBERS = [
    "eleven", "twelve", "twenty one", "thirty three", "forty two", "fifty five", "sixty eight", "seventy",
    "eighty nine", "ninety nine", "one hundred", "two hundred and six", "three thousand", "nineteen eighty four",
]  # fmt: skip
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck?", "Turn left at the next corner.", "The train leaves at seven.",
    "Please close the door behind you.", "It is going to rain tomorrow.", "My phone number is five five five.",
    "The cat sat on the mat.", "We need more coffee.", "Open the window, it is warm.", "Where is the station?",
    "I would like a cup of tea.", "The meeting starts at nine.", "Look at the stars tonight.",
    "Count from one to ten.", "The music is too loud.", "Bring me the red book.", "A bird in the hand.",
    "Time flies like an arrow.", "Speech is one sample at a time.", "Models learn from data.",
    "Every tree has its own leaves.", "The river runs to the sea.", "Small steps make long roads.",
    "Switch off the lights.", "Is it Monday or Tuesday?", "The bread is fresh today.", "Call me later.",
    "Seven green apples on the table.",
]  # fmt: skip
PHRASES = DIGITS + WORDS + NUMBERS + SENTENCES
# (voice, pitch 0..99, speed in words per minute): four distinct speakers, each saying every phrase.
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
NOTE_CAPTIONS = ("a {length} {timbre} {note}", "{note}, {timbre}", "the note {note}", "a {timbre} {note} tone",
                 "{note}", "play a {length} {note}")
SPEAKERS = [("en-us", 50, 160), ("en-gb+f3", 70, 150), ("en-gb-scotland+m3", 35, 170), ("en-029+f2", 60, 140)]


def clip_samples(tokenizer: MuLawTokenizer) -> int:
    """Samples per clip: the tokenizer's ``clip_seconds`` (or ``DEFAULT_CLIP_SECONDS``) at its sample rate."""
    return max(1, round((tokenizer.clip_seconds or DEFAULT_CLIP_SECONDS) * tokenizer.sample_rate))


@functools.cache
def speak(text: str, voice: str, pitch: int, speed: int) -> tuple[torch.Tensor, int]:
    """espeak-ng's rendering of ``text`` → (mono float32 waveform, its sample rate); cached per process."""
    import soundfile

    command = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text]
    wav = subprocess.run(command, check=True, capture_output=True).stdout
    frames, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return torch.from_numpy(frames), rate


def trim_silence(waveform: torch.Tensor) -> torch.Tensor:
    """The waveform from its first to its last sample louder than ``SILENCE``."""
    loud = (waveform.abs() > SILENCE).nonzero()
    return waveform[int(loud[0]):int(loud[-1]) + 1] if len(loud) else waveform[:0]


def espeak_phrases(tokenizer: MuLawTokenizer) -> list[torch.Tensor]:
    """Dataset ``espeak-phrases``: the ``PHRASES`` (digits, words, numbers, sentences) said by four espeak-ng
    ``SPEAKERS``, resampled from espeak's 22050 Hz to the tokenizer's rate, silence trimmed, and cut into
    consecutive clips of ``clip_samples`` (an utterance's last, shorter piece is dropped). Without espeak-ng it
    warns and returns ``synthetic_tones`` instead.

    Resampling uses scipy's polyphase filter (``scipy.signal.resample_poly``; scipy comes with scikit-learn):
    on 2 CPU cores it is about 30 times faster here than ``torchaudio.functional.resample``, which rebuilds
    its filter for every call."""
    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        warnings.warn("espeak-ng is not installed, so dataset 'espeak-phrases' falls back to 'synthetic-tones' "
                      "(harmonic tones, not speech)", stacklevel=2)
        return synthetic_tones(tokenizer)
    length, clips = clip_samples(tokenizer), []
    for speaker in SPEAKERS:
        for phrase in PHRASES:
            waveform, rate = speak(phrase, *speaker)
            divisor = math.gcd(rate, tokenizer.sample_rate)
            resampled = resample_poly(waveform.numpy(), tokenizer.sample_rate // divisor, rate // divisor)
            speech = trim_silence(torch.from_numpy(resampled.astype("float32")).clamp(-1.0, 1.0))
            clips.extend(speech[start:start + length] for start in range(0, len(speech) - length + 1, length))
    return clips


def synthetic_tones(tokenizer: MuLawTokenizer, num_clips: int = 2000, seed: int = 0) -> list[torch.Tensor]:
    """Dataset ``synthetic-tones``: ``num_clips`` clips of ``clip_samples``, each one note (110–880 Hz, a
    semitone of A2..A5) rendered by ``render_tones``. Drawn from a ``torch.Generator`` seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    f0 = 110.0 * 2 ** (torch.randint(0, 37, (num_clips, 1), generator=generator) / 12)
    return render_tones(f0, tokenizer, generator)[0]


def render_tones(f0: torch.Tensor, tokenizer: MuLawTokenizer,
                 generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One clip of ``clip_samples`` per fundamental frequency in ``f0 [N, 1]`` (Hz), with 1–8 harmonics below the
    Nyquist frequency (amplitude 1/k times a random weight in [0.3, 1], random phase), a 2–20 ms linear attack from
    silence and an exponential decay (time constant 20–200 ms), scaled to a peak amplitude of 0.2–0.8, drawn from
    ``generator`` → (clips, harmonics [N, 1], decay time constants [N, 1] in seconds)."""
    num_clips = len(f0)
    rate, length = tokenizer.sample_rate, clip_samples(tokenizer)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand((num_clips, *shape), generator=generator, dtype=torch.float64)

    below_nyquist = (torch.ceil(rate / 2 / f0) - 1).clamp(min=1)
    harmonics = torch.minimum(torch.randint(1, 9, (num_clips, 1), generator=generator), below_nyquist)
    weights, phases = uniform(0.3, 1.0, 8), uniform(0.0, 2 * math.pi, 8)
    attack, decay, peak = uniform(0.002, 0.02, 1), uniform(0.02, 0.2, 1), uniform(0.2, 0.8, 1)
    time = torch.arange(length, dtype=torch.float64) / rate
    tones = torch.zeros(num_clips, length, dtype=torch.float64)
    for k in range(1, 9):
        partial = weights[:, k - 1:k] / k * torch.sin(2 * math.pi * k * f0 * time + phases[:, k - 1:k])
        tones += partial * (k <= harmonics)
    tones *= torch.clamp(time / attack, max=1.0) * torch.exp(-torch.clamp(time - attack, min=0.0) / decay)
    tones *= peak / tones.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    return list(tones.to(torch.float32).unbind()), harmonics, decay


def notes(tokenizer: MuLawTokenizer, num_clips: int, seed: int) -> tuple[list[str], list[torch.Tensor], list[str]]:
    """``num_clips`` tones of the octave C4..B4 (``render_tones``), each a random note → (note names such as "C#4",
    clips, captions such as "a short bright C#4" naming the note, its decay and how many harmonics it has)."""
    generator = torch.Generator().manual_seed(seed)
    semitones = torch.randint(0, 12, (num_clips, 1), generator=generator)
    clips, harmonics, decay = render_tones(440.0 * 2 ** ((semitones - 9) / 12), tokenizer, generator)
    names = [f"{NOTE_NAMES[int(s)]}4" for s in semitones[:, 0]]
    timbres = ["pure" if h <= 2 else "warm" if h <= 5 else "bright" for h in harmonics[:, 0].tolist()]
    lengths = ["short" if d < 0.08 else "long" for d in decay[:, 0].tolist()]
    captions = [random.Random(i).choice(NOTE_CAPTIONS).format(note=name, timbre=timbre, length=length)
                for i, (name, timbre, length) in enumerate(zip(names, timbres, lengths))]
    return names, clips, captions


def synthetic_notes(tokenizer: Tokenizer, num_clips: int = 1200, seed: int = 0) -> list[list[Part]]:
    """Dataset ``synthetic-notes``: for a mixed layout with a ``classes`` part and an audio part, tones of the 12
    notes C4..B4 (``notes``) labelled by note name, in layout order: ``[(label, "C#4"), (audio, the clip)]``."""
    audio = modality_part(tokenizer, "audio", "dataset 'synthetic-notes'")
    label = label_part(tokenizer)
    names, clips, _ = notes(tokenizer.parts[audio], num_clips, seed)
    return [in_layout_order(tokenizer, {label: name, audio: clip}) for name, clip in zip(names, clips)]


def synthetic_notes_captioned(tokenizer: Tokenizer, num_clips: int = 1200, seed: int = 0) -> list[list[Part]]:
    """Dataset ``synthetic-notes-captioned``: for a mixed layout with a text part and an audio part, the tones of
    ``notes`` with their captions, in layout order: ``[(text, "a short bright C#4"), (audio, the clip)]``."""
    audio = modality_part(tokenizer, "audio", "dataset 'synthetic-notes-captioned'")
    text = caption_part(tokenizer, [audio])
    if text != tokenizer.prompt_part:
        raise ValueError("dataset 'synthetic-notes-captioned' needs tokenizer: mixed with a text part as its prompt_part "
                         "(prompts are captions) and an audio part")
    _, clips, captions = notes(tokenizer.parts[audio], num_clips, seed)
    return [in_layout_order(tokenizer, {text: caption, audio: clip}) for caption, clip in zip(captions, clips)]
