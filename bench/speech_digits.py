"""Evidence for spoken digits through a learned codec: does a model asked for "seven" say something a classifier of
real spoken digits hears as seven, and how does classifier-free guidance change that?

Run as ``python bench/speech_digits.py MODEL_DIR`` on a model trained with ``recipes/speech_digits.yaml`` or
``recipes/speech_digits_flattened.yaml`` (a mixed layout: a ``classes`` label part named "zero" .. "nine" as the
prompt part, then an ``audio-codec`` part, in the delay pattern or flattened; condition dropout in training):

1. A classifier (log-mel spectrogram of the fixed-length clip in dB below its loudest bin, flattened, then scikit-learn's
   logistic regression) learns the real training clips of ``espeak-digits`` at the audio part's rate and clip length.
   Its accuracy on held-out real clips, said at speeds and pitches the dataset never has (and with white noise added
   at 20 dB SNR, as a codec's artefacts might be), says how far to trust it;
   its accuracy on those clips passed through the model's codec (encode → decode) is the ceiling for generated clips.
2. For every digit and every guidance scale, the model draws ``--samples-per-class`` clips from
   ``bos <|label|> WORD <|/label|> <|audio|>`` (with the pads of a layout of K streams), keeping to the layout's
   grammar (the audio span is a fixed number of ids in codebook order), as ``armm sample MODEL --prompt WORD
   --guidance SCALE`` does. Scale "none" is plain
   conditional sampling (no unconditional rows at all).
3. It prints a Markdown table: per scale, the fraction of clips the classifier assigns to the requested digit (chance
   10%), per digit and overall, and the sampling time. ``--plots`` writes waveforms and log-mel spectrograms of real
   against generated clips; ``--listen`` writes one generated and one real WAV per digit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import armm
from armm.layout import VocabLayout
from armm.tokenizer import Tokenizer
from armm_audio.datasets import DIGITS
from armm_audio.spoken_digits import spoken_digits

sys.path.insert(0, str(Path(__file__).parent))
from tables import cpu_summary, print_table  # noqa: E402

HELD_OUT = {"speeds": (140, 180), "pitches": (42, 60)}  # words per minute and pitches espeak-digits never has
PLOT_DIGITS = (1, 4, 7, 9)
DYNAMIC_RANGE_DB = 40.0  # classifier features: dB below each clip's loudest bin, floored here


# --- real clips and the classifier -------------------------------------------------------------------
def audio_part(layout: VocabLayout) -> str:
    """The name of the layout's audio part."""
    for name, tokenizer in layout.parts.items():
        if tokenizer.modality == "audio":
            return name
    raise ValueError(f"the layout's parts ({', '.join(layout.parts)}) include no audio part")


def clip_length(tokenizer: Tokenizer) -> int:
    """Samples of one fixed-length clip of ``tokenizer`` (1 s when it has no ``clip_seconds``)."""
    return tokenizer.clip_samples or tokenizer.sample_rate


def fixed_length(waveforms: list[torch.Tensor], length: int) -> torch.Tensor:
    """Waveforms cut or padded with silence to ``length`` samples → ``[N, length]``."""
    return torch.stack([torch.nn.functional.pad(w[:length], (0, max(0, length - len(w)))) for w in waveforms])


def real_clips(tokenizer: Tokenizer, **variation) -> tuple[torch.Tensor, torch.Tensor]:
    """``spoken_digits`` at ``tokenizer``'s rate and clip length (``variation``: its voices, speeds, pitches)
    → (clips ``[N, L]``, digit labels ``[N]``)."""
    seconds = tokenizer.clip_seconds or 1.0
    words, clips, _ = spoken_digits(tokenizer.sample_rate, seconds, **variation)
    return fixed_length(clips, clip_length(tokenizer)), torch.tensor([DIGITS.index(w) for w in words])


def through_codec(tokenizer: Tokenizer, clips: torch.Tensor) -> torch.Tensor:
    """Clips as the model hears them: the codec's encode → decode."""
    return fixed_length([tokenizer.decode(ids) for ids in tokenizer.encode_batch(list(clips))], clips.size(1))


def log_mel(clips: torch.Tensor, sample_rate: int, dynamic_range_db: float = DYNAMIC_RANGE_DB) -> torch.Tensor:
    """Log-mel spectrograms ``[N, 40, frames]`` in dB below each clip's loudest bin, floored ``dynamic_range_db``
    down (so the classifier hears words, not recording levels): 50 ms windows every 20 ms, 40 mel bands."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=sample_rate // 20, hop_length=sample_rate // 50,
                                               n_mels=40)
    decibels = 10 * mel(clips).clamp(min=1e-10).log10()
    return (decibels - decibels.amax(dim=(1, 2), keepdim=True)).clamp(min=-dynamic_range_db)


def features(clips: torch.Tensor, sample_rate: int) -> np.ndarray:
    """Flattened log-mel spectrograms scaled to [-1, 0]. Not standardised per feature: bins that are silent in
    every real clip have ~0 variance, and standardising them made the classifier judge the noise floor."""
    return (log_mel(clips, sample_rate) / DYNAMIC_RANGE_DB).flatten(1).numpy()


def train_classifier(clips: torch.Tensor, labels: torch.Tensor, sample_rate: int, seed: int = 0):
    """Logistic regression on ``features``."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(C=1.0, max_iter=3000, random_state=seed)
    return classifier.fit(features(clips, sample_rate), labels.numpy())


def with_noise(clips: torch.Tensor, snr_db: float, seed: int = 0) -> torch.Tensor:
    """Clips plus white noise ``snr_db`` below each clip's power: the classifier should still hear the digit."""
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(seed))
    power = clips.pow(2).mean(1, keepdim=True)
    return clips + noise * (power * 10 ** (-snr_db / 10)).sqrt()


def assigned_fractions(classifier, clips: torch.Tensor, labels: torch.Tensor, sample_rate: int,
                       valid: torch.Tensor | None = None) -> tuple[float, list[float]]:
    """The fraction of clips the classifier assigns to their own label, overall and per digit; clips not ``valid``
    count as misses."""
    hits = classifier.predict(features(clips, sample_rate)) == labels.numpy()
    if valid is not None:
        hits &= valid.numpy()
    return float(hits.mean()), [float(hits[labels.numpy() == d].mean()) for d in range(len(DIGITS))]


# --- generated clips -----------------------------------------------------------------------------------
def sample_digits(model: armm.Transformer, layout: VocabLayout, samples_per_class: int, sampler: str,
                  scale: float | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``samples_per_class`` clips per digit, all of a digit in one batch; sample ``i`` of digit ``d`` uses seed
    ``seed + d * samples_per_class + i`` → (clips ``[N, L]``, labels ``[N]``, whether each audio span is complete
    ``[N]``; an incomplete one is decoded as far as it goes)."""
    audio = audio_part(layout)
    span, tokenizer = layout.span(audio), layout.parts[audio]
    clips, complete = [], []
    for digit, word in enumerate(DIGITS):
        prompt = layout.prompt_for(audio, [(layout.prompt_part, word)])
        prompts = [prompt] * samples_per_class
        guidance = None if scale is None else layout.guidance(prompts, scale)
        seeds = [seed + digit * samples_per_class + i for i in range(samples_per_class)]
        new = armm.generate(model, prompts, max_new_tokens=span.length + 1, sampler=layout.sampler(sampler),
                            stop_tokens=[span.end_id], seed=seeds, guidance=guidance)
        for ids in new:
            clips.append(next(p.sample for p in layout.decode(prompt + ids) if p.name == audio))
            complete.append(len(ids) == span.length + 1 and ids[-1] == span.end_id)
    labels = torch.arange(len(DIGITS)).repeat_interleave(samples_per_class)
    return fixed_length(clips, clip_length(tokenizer)), labels, torch.tensor(complete)


# --- files ---------------------------------------------------------------------------------------------
def listen_paths(directory: Path) -> list[Path]:
    """The WAV files ``--listen`` writes: a generated and a real clip per digit."""
    return [directory / f"{kind}-{word}.wav" for word in DIGITS for kind in ("generated", "real")]


def refuse_existing(paths: list[Path]) -> None:
    """Exit with a message naming the files that exist (pass --overwrite to replace them)."""
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise SystemExit(f"error: {len(existing)} of the files to write exist ({', '.join(existing[:3])}"
                         f"{', …' if len(existing) > 3 else ''}); pass --overwrite to replace them")


def write_listen(tokenizer: Tokenizer, directory: Path, generated: torch.Tensor, real: torch.Tensor) -> list[Path]:
    """One generated and one real clip per digit (``generated`` and ``real``: ``[10, L]``, digit order) as WAVs."""
    directory.mkdir(parents=True, exist_ok=True)
    clips = [clip for pair in zip(generated, real) for clip in pair]
    return [tokenizer.write([clip], path)[0] for clip, path in zip(clips, listen_paths(directory))]


def write_plots(path: Path, generated: torch.Tensor, real: torch.Tensor, sample_rate: int) -> Path:
    """A PNG, one row per digit of ``PLOT_DIGITS``: real waveform, its log-mel, generated waveform, its log-mel
    (``generated`` and ``real``: ``[10, L]``, digit order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PLOT_DIGITS), 4, figsize=(14, 2.2 * len(PLOT_DIGITS)), squeeze=False)
    seconds = np.arange(real.size(1)) / sample_rate
    for row, digit in zip(axes, PLOT_DIGITS):
        clips = {"real": real[digit], "generated": generated[digit]}
        mels = log_mel(torch.stack(list(clips.values())), sample_rate).numpy()  # one colour scale a row
        for col, (kind, clip) in enumerate(clips.items()):
            wave, spec = row[2 * col], row[2 * col + 1]
            wave.plot(seconds, clip.numpy(), linewidth=0.5)
            wave.set(ylim=(-1, 1), title=f"{kind} {DIGITS[digit]}", xlabel="s")
            spec.imshow(mels[col], origin="lower", aspect="auto", extent=(0, seconds[-1], 0, mels.shape[1]),
                        vmin=mels.min(), vmax=mels.max())
            spec.set(title=f"{kind} {DIGITS[digit]}: log-mel", xlabel="s", ylabel="mel band")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the report ----------------------------------------------------------------------------------------
def parse_scales(text: str) -> list[float | None]:
    """``"none,2,4"`` → ``[None, 2.0, 4.0]``."""
    return [None if raw.strip() == "none" else float(raw) for raw in text.split(",")]


def firsts(clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The first clip of each digit → ``[10, L]``."""
    return torch.stack([clips[labels == d][0] for d in range(len(DIGITS))])


def fit_classifiers(tokenizer: Tokenizer, clips: torch.Tensor, labels: torch.Tensor, seed: int,
                    on_codec: bool) -> dict:
    """The classifier of real clips, and when ``on_codec`` one of their codec reconstructions, by name."""
    classifiers = {"real clips": train_classifier(clips, labels, tokenizer.sample_rate, seed)}
    if on_codec:
        codec = through_codec(tokenizer, clips)
        classifiers["codec clips"] = train_classifier(codec, labels, tokenizer.sample_rate, seed)
    return classifiers


def table_row(name: str, classifiers: dict, clips: torch.Tensor, labels: torch.Tensor, sample_rate: int,
              valid: torch.Tensor | None = None) -> tuple[float, list[str]]:
    """Per-digit fractions of the first classifier, the overall fraction of each → (the first's overall, cells)."""
    results = [assigned_fractions(c, clips, labels, sample_rate, valid) for c in classifiers.values()]
    return results[0][0], [name, *(f"{f:.2f}" for f in results[0][1]), *(f"**{r[0]:.3f}**" for r in results)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a model directory with a mixed label + audio layout")
    parser.add_argument("--scales", default="none,2,4", help="guidance scales, comma-separated; none = no guidance")
    parser.add_argument("--samples-per-class", type=int, default=30)
    parser.add_argument("--sampler", default="temperature=1.0", help="a sampler spec (not greedy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codec-classifier", action="store_true",
                        help="also train a classifier on codec reconstructions of the training clips")
    parser.add_argument("--plots", type=Path, default=None, help="write a PNG of real against generated clips here")
    parser.add_argument("--listen", type=Path, default=None, help="write generated-WORD.wav and real-WORD.wav here")
    parser.add_argument("--overwrite", action="store_true", help="replace files --plots and --listen find")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    scales = parse_scales(args.scales)
    if not args.overwrite:
        refuse_existing(([args.plots] if args.plots else []) + (listen_paths(args.listen) if args.listen else []))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"{cpu_summary()}, {torch.get_num_threads()} threads")

    model, layout = armm.load_model(args.model_dir)
    if not isinstance(layout, VocabLayout):
        raise SystemExit(f"error: {args.model_dir} has tokenizer {getattr(layout, 'name', None)!r}, not a mixed layout")
    tokenizer = layout.parts[audio_part(layout)]
    rate = tokenizer.sample_rate
    print(f"model {args.model_dir}: {model.num_params() / 1e6:.2f}M parameters, layout parts "
          f"{', '.join(f'{n} ({t.name})' for n, t in layout.parts.items())}")
    start = time.perf_counter()
    train, train_labels = real_clips(tokenizer)
    test, test_labels = real_clips(tokenizer, **HELD_OUT)
    classifiers = fit_classifiers(tokenizer, train, train_labels, args.seed, args.codec_classifier)
    real_rows = [table_row(name, classifiers, clips, test_labels, rate)[1] + ["", ""] for name, clips in
                 (("held-out real clips", test), ("the same + white noise at 20 dB SNR", with_noise(test, 20.0)),
                  ("the same through the codec", through_codec(tokenizer, test)))]
    print(f"classifiers of {', '.join(classifiers)}: log-mel + logistic regression on {len(train)} real training "
          f"clips; {len(test)} held-out clips (speeds {HELD_OUT['speeds']}, pitches {HELD_OUT['pitches']}); "
          f"{time.perf_counter() - start:.0f} s to render, encode and fit")
    print(f"sampler {args.sampler!r}, {args.samples_per_class} samples per digit, seed {args.seed}\n")

    rows, best = [], (-1.0, "", torch.empty(0))
    for scale in scales:
        start = time.perf_counter()
        clips, labels, complete = sample_digits(model, layout, args.samples_per_class, args.sampler, scale, args.seed)
        seconds = time.perf_counter() - start
        name = "none" if scale is None else f"{scale:g}"
        overall, row = table_row(name, classifiers, clips, labels, rate, complete)
        rows.append([*row, str(int((~complete).sum())), f"{seconds:.0f}"])
        if overall > best[0]:
            best = (overall, name, firsts(clips, labels))
    print_table(["guidance scale", *DIGITS, *(f"all ({name} classifier)" for name in classifiers),
                 "incomplete clips", "seconds"], rows + real_rows)

    _, name, generated = best
    if args.plots is not None:
        print(f"wrote {write_plots(args.plots, generated, firsts(test, test_labels), rate)} (generated: scale {name})")
    if args.listen is not None:
        paths = write_listen(tokenizer, args.listen, generated, firsts(test, test_labels))
        print(f"wrote {len(paths)} WAV files to {args.listen} (generated: scale {name})")


if __name__ == "__main__":
    main()
