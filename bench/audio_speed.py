"""Seconds to generate 1 s of audio on this CPU: codec tokens against mu-law samples.

Run as ``python bench/audio_speed.py MODEL_DIR [MODEL_DIR …]`` on models trained with ``recipes/speech_digits.yaml``
(the codec's ids in the delay pattern, 2 a position) or ``recipes/speech_digits_flattened.yaml`` (one a position).

- Codec: that model continues ``bos <|label|> seven <|/label|> <|audio|>`` by the clip's audio ids (50 frames of K
  codebook ids) and ``<|/audio|>``, sampling inside the layout's grammar; the layout then decodes the ids to a
  waveform with the codec's decoder. Also ten such clips as one batch (times per clip).
- Mu-law: the sample-level model of ``recipes/audio.yaml`` (its preset and overrides, and its tokenizer, 8-bit mu-law
  at 8 kHz), with ``max_seq_len`` 8001 so that one context holds bos and 1 s of samples; it continues bos by 8000
  samples, and mu-law decodes them. Its weights are random (seeded): speed does not depend on them, only on the
  architecture and the number of tokens. It is drawn without stop tokens, so it always runs the full 8000 steps.

Both draw with the same sampler (``--sampler``, through ``armm.generate`` with its default backend, ``auto``), batch
1, in the same process and thread count. Generation and decoding are timed apart, each side in turn (A, B, A, B, …),
one warm-up run each (which also lets ``auto`` measure its paths), then the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

import armm
from armm.datasource import modality_part
from armm.layout import VocabLayout, sampler_for
from armm_audio.mulaw import MuLawTokenizer
from generate import alternate  # bench/generate.py (this folder is on sys.path)
from tables import cpu_summary, print_table  # bench/tables.py

RECIPE = Path(__file__).parent.parent / "recipes" / "audio.yaml"
SECONDS = 1.0


@dataclass
class Side:
    """One way to make a clip: a model, its prompts (one per clip), and how its new ids become waveforms."""

    name: str
    model: armm.Transformer
    prompts: list[list[int]]
    new_tokens: int
    stop_tokens: list[int]
    sampler: armm.Sampler
    to_waveform: Callable[[list[int], list[int]], torch.Tensor]  # (prompt, new ids) → waveform

    def generate(self, seed: int) -> list[list[int]]:
        seeds = [seed + i for i in range(len(self.prompts))]
        return armm.generate(self.model, self.prompts, max_new_tokens=self.new_tokens, sampler=self.sampler,
                             stop_tokens=self.stop_tokens, seed=seeds)

    def decode(self, rows: list[list[int]]) -> list[torch.Tensor]:
        return [self.to_waveform(prompt, ids) for prompt, ids in zip(self.prompts, rows)]


def codec_side(model_dir: Path, word: str, batch: int, sampler: str) -> Side:
    """A speech_digits model drawing ``batch`` clips of ``word``."""
    model, layout = armm.load_model(model_dir)
    if not isinstance(layout, VocabLayout):
        raise SystemExit(f"error: {model_dir} has tokenizer {getattr(layout, 'name', None)!r}, not a mixed layout")
    audio = modality_part(layout, "audio", "bench/audio_speed.py")
    span = layout.span(audio)
    prompt = layout.prompt_for(audio, [(layout.prompt_part, word)])

    def to_waveform(prompt: list[int], ids: list[int]) -> torch.Tensor:
        return next(part.sample for part in layout.decode(prompt + ids) if part.name == audio)

    pattern = getattr(span.tokenizer, "pattern", "flattened")
    return Side(f"codec ({span.tokenizer.name}, {pattern}), batch {batch}", model, [prompt] * batch, span.length + 1,
                [span.end_id], sampler_for(layout, sampler), to_waveform)


def mulaw_side(sampler: str, seed: int) -> Side:
    """``recipes/audio.yaml``'s model and tokenizer with a context of bos + ``SECONDS`` of samples, random weights."""
    recipe = yaml.safe_load(RECIPE.read_text())
    options = recipe["data"]["tokenizer_options"]
    tokenizer = MuLawTokenizer(sample_rate=options["sample_rate"], bits=options["bits"])
    samples = round(SECONDS * tokenizer.sample_rate)
    config = armm.ModelConfig.from_name(recipe["model"]["preset"], **{
        **recipe["model"]["overrides"], "max_seq_len": samples + 1, "vocab_size": tokenizer.vocab_size})
    torch.manual_seed(seed)
    model = armm.Transformer(config).eval()
    return Side(f"mu-law ({tokenizer.name} {tokenizer.bits}-bit), random weights", model, [[tokenizer.bos_id]],
                samples, [], sampler_for(tokenizer, sampler), lambda prompt, ids: tokenizer.decode(ids))


def describe(side: Side, waveforms: list[torch.Tensor]) -> str:
    """One line: the side's model size and what it made."""
    lengths = sorted({len(w) for w in waveforms})
    return (f"{side.name}: {side.model.num_params() / 1e6:.2f}M parameters, context {side.model.config.max_seq_len}, "
            f"{side.new_tokens} new tokens a clip; waveform lengths {lengths} samples")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", type=Path, nargs="+", metavar="MODEL_DIR",
                        help="model directories trained with recipes/speech_digits(_flattened).yaml")
    parser.add_argument("--word", default="seven", help="the label the codec model is prompted with")
    parser.add_argument("--sampler", default="temperature=1.0")
    parser.add_argument("--batch", type=int, default=10, help="clips of the codec's batched row (0 skips it)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the median is shown")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    sides = [mulaw_side(args.sampler, args.seed)]
    for model_dir in args.model_dirs:
        sides.append(codec_side(model_dir, args.word, 1, args.sampler))
        if args.batch > 1:
            sides.append(codec_side(model_dir, args.word, args.batch, args.sampler))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cpu_summary()}\ntorch {torch.__version__}, {torch.get_num_threads()} threads, 1-min load average "
          f"{load:.2f} on {os.cpu_count()} CPUs; sampler {args.sampler!r}, armm.generate backend 'auto'")
    generation, rows = alternate([lambda side=side: side.generate(args.seed) for side in sides], args.repeats)
    decoding, waveforms = alternate([lambda side=side, r=r: side.decode(r) for side, r in zip(sides, rows)],
                                    args.repeats)
    for side, made in zip(sides, waveforms):
        print(describe(side, made))
    print(f"median of {args.repeats} runs after a warm-up; times per clip of {SECONDS:g} s (a batch's time / its "
          "clips); ms/step = generation time / model steps (one a token, one a position of K ids for K streams)\n")
    totals = [(g + d) / len(side.prompts) for side, g, d in zip(sides, generation, decoding)]
    table = []
    for side, g, d, total in zip(sides, generation, decoding, totals):
        clips, steps = len(side.prompts), -(-side.new_tokens // side.model.config.num_streams)
        table.append([side.name, str(side.new_tokens), str(steps), f"{g / clips / steps * 1e3:.3f}", f"{g / clips:.3f}",
                      f"{d / clips:.4f}", f"{total:.3f}", f"{totals[0] / total:.1f}x"])
    columns = ["model", "tokens for 1 s", "model steps", "ms/step", "generation s", "decode s", "total s", "speed-up"]
    print_table(columns, table)


if __name__ == "__main__":
    main()
