"""The ``audio-codec`` tokenizer: a learned neural codec's residual-VQ codes, K codebooks a frame, frame by frame or
in MusicGen's delay pattern."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from armm.files import read_json_object
from armm.tokenizer import Tokenizer
from armm_audio.audio_files import READ_SUFFIXES, WRITE_FORMATS, read_clips, write_clips
from armm_audio.codec_model import AudioCodec
from armm_audio.waveform import as_waveform

CONFIG_FILE = "audio_codec.json"
WEIGHTS_FILE = "audio_codec.safetensors"
PATTERNS = ("flattened", "delay")


def delay(codes: torch.Tensor, empty: int) -> torch.Tensor:
    """Codes ``[K, F]`` → steps ``[F + K - 1, K]``: step s holds codebook k's code of frame s − k, ``empty`` where
    that frame does not exist (MusicGen's delay pattern)."""
    num_codebooks, frames = codes.shape
    steps = torch.full((frames + num_codebooks - 1, num_codebooks), empty, dtype=codes.dtype)
    for k in range(num_codebooks):
        steps[k : k + frames, k] = codes[k]
    return steps


def undelay(steps: torch.Tensor, frames: int) -> torch.Tensor:
    """Steps ``[frames + K - 1, K]`` → codes ``[K, frames]``, the inverse of ``delay``."""
    return torch.stack([steps[k : k + frames, k] for k in range(steps.shape[1])])


class CodecTokenizer(Tokenizer):
    """Audio as the codes of ``AudioCodec`` (a convolutional encoder of log-magnitude spectra, residual vector
    quantisation, a decoder of log magnitudes, Griffin-Lim phase), trained by ``fit`` on the training clips:
    ``sample_rate / hop`` frames a second, each frame ``num_codebooks`` ids, codebook k's code c being id
    ``k · codebook_size + c``; then bos, eos, pad. In the ``"delay"`` pattern (MusicGen, Copet et al. 2023) a model
    position reads K ids at once (``num_streams``): step s holds codebook k's code of frame s − k for every k, or the
    content id EMPTY (``empty_id``, before bos) where that frame does not exist, so a clip of F frames is F + K − 1
    steps of K ids, step by step.

    A sample is a 1-D float32 waveform in [-1, 1] at ``sample_rate``, as for ``audio-mulaw``. Lossy: ``decode``
    returns the decoder's reconstruction, ``hop`` samples a frame (a waveform is padded with silence to whole frames,
    or to ``clip_seconds`` when set). The unit is the audio sample, so bits per sample compare with ``audio-mulaw``.
    A new tokenizer holds a randomly initialised codec (seeded by ``seed``) and ``needs_fit`` until ``fit``.

    Args:
        sample_rate: Rate (Hz) that ``read`` resamples every file to and ``write`` records.
        clip_seconds: If set, every sample is one clip this long: ``read`` cuts files into clips (padding the last
            with silence), ``encode`` pads shorter waveforms, and every sample has the same number of ids.
        hop: Samples a frame (160 at 8 kHz: 50 frames a second).
        num_codebooks: K, residual codebooks a frame; ids a second = K · sample_rate / hop.
        codebook_size: Codes in each codebook (bits a frame = K · log2 of it).
        code_dim, channels, layers: Width of the codes (narrow: 8 bits of a codebook cannot describe a wide vector),
            of the convolutions, and residual units in encoder and decoder.
        ema_decay, dead_code_threshold: Codebook moving-average decay; codes used less than this restart.
        seed: Seeds the codec's initial weights.
        fit_steps: Optimizer steps ``fit`` trains for unless told otherwise.
        pattern: ``"flattened"`` (frame by frame, one id a position) or ``"delay"`` (MusicGen's delay pattern, K
            streams; needs ``clip_seconds``). Settings saved without it are flattened.
    """

    name = "audio-codec"
    modality = "audio"
    unit = "sample"
    file_suffixes = tuple(WRITE_FORMATS)
    read_suffixes = READ_SUFFIXES

    def __init__(
        self,
        sample_rate: int = 8000,
        clip_seconds: float | None = 1.0,
        hop: int = 160,
        num_codebooks: int = 4,
        codebook_size: int = 256,
        code_dim: int = 8,
        channels: int = 192,
        layers: int = 6,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.5,
        seed: int = 0,
        fit_steps: int = 1000,
        pattern: str = "flattened",
    ) -> None:
        for option, value in (("sample_rate", sample_rate), ("hop", hop), ("num_codebooks", num_codebooks),
                              ("codebook_size", codebook_size), ("code_dim", code_dim), ("channels", channels),
                              ("layers", layers), ("fit_steps", fit_steps)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive integer, got {value!r}")
        if clip_seconds is not None and not clip_seconds * sample_rate >= hop:
            raise ValueError(f"clip_seconds must hold at least one frame of hop={hop} samples at {sample_rate} Hz, "
                             f"got {clip_seconds!r}")
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be 'flattened' or 'delay', got {pattern!r}")
        if pattern == "delay" and clip_seconds is None:
            raise ValueError("pattern='delay' needs a fixed clip length: set clip_seconds (e.g. 1.0)")
        self.config = {
            "sample_rate": sample_rate, "clip_seconds": clip_seconds, "hop": hop, "num_codebooks": num_codebooks,
            "codebook_size": codebook_size, "code_dim": code_dim, "channels": channels, "layers": layers,
            "ema_decay": ema_decay, "dead_code_threshold": dead_code_threshold, "seed": seed, "fit_steps": fit_steps,
            "pattern": pattern,
        }  # fmt: skip
        self.sample_rate, self.clip_seconds, self.hop, self.pattern = sample_rate, clip_seconds, hop, pattern
        self.num_codebooks, self.codebook_size = num_codebooks, codebook_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = AudioCodec(hop, channels, layers, code_dim, num_codebooks, codebook_size, ema_decay,
                                    dead_code_threshold).eval()  # fmt: skip
        self.fitted = False

    # --- the id space ---------------------------------------------------------------------------------
    @property
    def num_codes(self) -> int:
        """Content ids: every codebook's codes."""
        return self.num_codebooks * self.codebook_size

    @property
    def empty_id(self) -> int | None:
        """The delay pattern's EMPTY (``num_codes``), a content id where a codebook's frame does not exist; None when
        flattened."""
        return self.num_codes if self.pattern == "delay" else None

    @property
    def num_content(self) -> int:
        """Content ids: the codes, and EMPTY in the delay pattern; bos, eos and pad follow."""
        return self.num_codes + (self.empty_id is not None)

    @property
    def vocab_size(self) -> int:
        return self.num_content + 3

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"bos": self.num_content, "eos": self.num_content + 1, "pad": self.num_content + 2}

    @property
    def num_streams(self) -> int:
        """K in the delay pattern (a position reads one step: K ids), 1 when flattened."""
        return self.num_codebooks if self.pattern == "delay" else 1

    @property
    def needs_fit(self) -> bool:
        return not self.fitted

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop

    @property
    def clip_samples(self) -> int | None:
        """Samples a clip, rounded up to whole frames (None without ``clip_seconds``)."""
        if self.clip_seconds is None:
            return None
        return math.ceil(round(self.clip_seconds * self.sample_rate) / self.hop) * self.hop

    @property
    def clip_frames(self) -> int | None:
        """Frames a clip (None without ``clip_seconds``)."""
        return None if self.clip_samples is None else self.clip_samples // self.hop

    @property
    def sample_length(self) -> int | None:
        if self.clip_frames is None:
            return None
        steps = self.clip_frames + self.num_codebooks - 1 if self.pattern == "delay" else self.clip_frames
        return steps * self.num_codebooks

    @property
    def content_cycle(self) -> list[Sequence[int]]:
        """What each content position may hold; sampling in a mixed layout keeps to it. Flattened: frame by frame,
        codebook 0's ids, then codebook 1's, … (a cycle of K). Delay: the whole clip, position s·K + k holding
        codebook k's ids where frame s − k exists, else ``[empty_id]``."""
        books = [range(k * self.codebook_size, (k + 1) * self.codebook_size) for k in range(self.num_codebooks)]
        if self.pattern == "flattened":
            return books
        frames = self.clip_frames
        return [books[k] if 0 <= s - k < frames else [self.empty_id]
                for s in range(frames + self.num_codebooks - 1) for k in range(self.num_codebooks)]  # fmt: skip

    def token_name(self, token: int) -> str | None:
        """``"codebook 2 code 17"`` (``"empty"`` for EMPTY), for ``armm inspect``."""
        if token == self.empty_id:
            return "empty"
        if not 0 <= token < self.num_codes:
            return None
        return f"codebook {token // self.codebook_size} code {token % self.codebook_size}"

    # --- waveforms ↔ codes ----------------------------------------------------------------------------
    def frames(self, sample: Any) -> torch.Tensor:
        """A waveform → float32 ``[L]`` padded with silence to whole frames (to ``clip_samples`` when set)."""
        waveform = as_waveform(sample)
        target = self.clip_samples or math.ceil(len(waveform) / self.hop) * self.hop
        if len(waveform) > target:
            raise ValueError(f"an audio-codec sample is at most one clip of clip_seconds={self.clip_seconds} "
                             f"({target} samples at {self.sample_rate} Hz), got {len(waveform)} samples; "
                             "cut it into clips first (read() does)")
        return torch.nn.functional.pad(waveform, (0, target - len(waveform)))

    @torch.no_grad()
    def codes(self, samples: Sequence[Any]) -> list[torch.Tensor]:
        """Waveforms → codes ``[K, frames]`` each (samples of one length are encoded as one batch)."""
        waveforms = [self.frames(sample) for sample in samples]
        by_length: dict[int, list[int]] = {}
        for i, waveform in enumerate(waveforms):
            by_length.setdefault(len(waveform), []).append(i)
        out: list[torch.Tensor] = [torch.empty(0)] * len(waveforms)
        for length, indices in by_length.items():
            if length == 0:
                for i in indices:
                    out[i] = torch.zeros(self.num_codebooks, 0, dtype=torch.long)
                continue
            batch = torch.stack([waveforms[i] for i in indices])[:, None]  # (N, 1, L)
            for i, codes in zip(indices, self.model.encode(batch)):
                out[i] = codes
        return out

    def ids_of(self, codes: torch.Tensor) -> list[int]:
        """Codes ``[K, frames]`` → ids frame by frame (delay: step by step): codebook k's code c is
        k · codebook_size + c."""
        offsets = torch.arange(self.num_codebooks)[:, None] * self.codebook_size
        ids = codes + offsets  # (K, frames)
        rows = delay(ids, self.empty_id) if self.pattern == "delay" else ids.T  # (steps or frames, K)
        return rows.reshape(-1).tolist()

    def encode(self, sample: Any) -> list[int]:
        return self.ids_of(self.codes([sample])[0])

    def encode_batch(self, samples: Sequence[Any]) -> list[list[int]]:
        return [self.ids_of(codes) for codes in self.codes(samples)]

    def encode_prefix(self, sample: Any, units: int) -> list[int]:
        """A prompt of the n whole frames among ``sample``'s first ``units`` audio samples (``armm.prompt_ids``): the
        first n·K ids of the sample's own encoding, so generation continues at frame n's codebook 0. Flattened, that
        is frames 0 .. n − 1; in the delay pattern, steps 0 .. n − 1, which hold codebook k's frames 0 .. n − 1 − k
        (after k EMPTYs): the model writes the rest of the staircase."""
        frames = units // self.hop
        if frames == 0:
            raise ValueError(f"the first {units} audio samples hold no whole frame: audio-codec prompts continue from "
                             f"whole frames of hop={self.hop} samples; keep at least {self.hop}")
        return self.encode(sample)[: frames * self.num_codebooks]

    def decode(self, ids: Sequence[int]) -> torch.Tensor:
        """Content ids → waveform, ``hop`` samples a frame; bos, eos and pad are skipped. Flattened, content position
        i is codebook ``i % K`` of frame ``i // K``; in the delay pattern, step s = i // K holds codebook k = i % K's
        code of frame s − k, and frame f decodes once step f is there (at most a clip's frames). An id of another
        codebook counts as its code number; a frame missing codebooks (generation stopped early, EMPTY where a code
        should be) decodes with the codebooks it has; a code where EMPTY should be is ignored."""
        self.check_ids(ids)
        content = torch.tensor([token for token in ids if token < self.num_content], dtype=torch.long)
        rows = math.ceil(len(content) / self.num_codebooks)  # frames (flattened) or steps (delay)
        if self.pattern == "flattened":
            return self.waveform(self.code_rows(content, rows).T)
        frames = min(rows, self.clip_frames)
        return self.waveform(undelay(self.code_rows(content, frames + self.num_codebooks - 1), frames))

    def code_rows(self, content: torch.Tensor, rows: int) -> torch.Tensor:
        """Content ids → code numbers ``[rows, K]``, K ids a row; -1 where an id is EMPTY or missing."""
        slots = torch.full((rows * self.num_codebooks,), -1, dtype=torch.long)
        kept = content[: len(slots)]
        slots[: len(kept)] = torch.where(kept < self.num_codes, kept % self.codebook_size, -1)  # EMPTY: -1
        return slots.view(rows, self.num_codebooks)

    @torch.no_grad()
    def waveform(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[K, frames]`` (-1: missing, left out of the frame's sum of codebook vectors) → the decoder's
        waveform."""
        if codes.shape[1] == 0:
            return torch.zeros(0)
        quantized = sum(
            layer.codebook[codes[k].clamp(min=0)].T * (codes[k] >= 0)  # (code_dim, frames)
            for k, layer in enumerate(self.model.quantizer.layers)
        )
        return self.model.decode_vectors(quantized[None])[0, 0].clamp(-1.0, 1.0)

    def num_units(self, sample: Any) -> int:
        return len(self.frames(sample))

    # --- fitting, files, persistence --------------------------------------------------------------------
    def fit(
        self,
        samples: Iterable[Any],
        *,
        steps: int | None = None,
        epochs: int | None = None,
        segment_seconds: float = 0.5,
        batch_size: int = 16,
        lr: float = 2e-3,
        beta: float = 0.25,
        warmup_fraction: float = 0.1,
        seed: int = 0,
        accelerator: str = "cpu",
    ) -> None:
        """Train the codec with Lightning on random ``segment_seconds`` crops of ``samples`` for ``steps`` optimizer
        steps or ``epochs`` (neither: the ``fit_steps`` option); ``beta`` weighs the commitment loss; the first
        ``warmup_fraction`` of the steps train without the quantizer (with ``epochs``, none do)."""
        from armm_audio.codec_training import train_codec

        if steps is None and epochs is None:
            steps = self.config["fit_steps"]
        segment = max(self.hop, round(segment_seconds * self.sample_rate) // self.hop * self.hop)
        stream = torch.cat([as_waveform(sample) for sample in samples])
        rows = len(stream) // (2 * segment)
        if rows == 0:
            raise ValueError(f"fitting audio-codec needs at least {2 * segment / self.sample_rate:g} s of audio, "
                             f"got {len(stream) / self.sample_rate:g} s")
        clips = stream[: rows * 2 * segment].view(rows, 2 * segment)  # crops of `segment` are drawn from each row
        warmup_steps = round(warmup_fraction * steps) if steps is not None else 0
        train_codec(self.model, clips, steps=steps, epochs=epochs, segment=segment, batch_size=batch_size, lr=lr,
                    beta=beta, warmup_steps=warmup_steps, seed=seed, accelerator=accelerator)  # fmt: skip
        self.fitted = True

    def read(self, source: str | Path) -> list[torch.Tensor]:
        return read_clips(source, self.sample_rate, self.clip_seconds, pad_last=True)

    def write(self, samples: Sequence[Any], path: str | Path, format: str | None = None) -> list[Path]:
        """One 16-bit WAV (or FLAC, as ``format`` says) file per sample."""
        return write_clips(samples, path, self.sample_rate, self.write_format(path, format))

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(self.config) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> CodecTokenizer:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        tokenizer = cls(**read_json_object(directory / CONFIG_FILE, "settings written by CodecTokenizer.save"))
        try:
            tokenizer.model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        except (SafetensorError, RuntimeError) as err:
            raise ValueError(
                f"{directory / WEIGHTS_FILE} is not an audio codec matching {directory / CONFIG_FILE} ({err})"
            ) from None
        tokenizer.fitted = True
        return tokenizer
