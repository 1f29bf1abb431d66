"""The ``armm`` command line. Every subcommand is a plain function; jsonargparse turns its signature and
docstring into ``--help``. Options may be written ``--max-new-tokens`` or ``--max_new_tokens``."""

from __future__ import annotations

import argparse
import math
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import torch
from jsonargparse import CLI
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from armm.backends import Backend, Quantize
from armm.chat.cli import chat
from armm.checkpoint import CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE, load_model_with_tokenizer, save_model
from armm.config import ModelConfig
from armm.generation import Guidance, PastContext, generate
from armm.hf import convert
from armm.inspect.cli import COMMANDS as INSPECT_COMMANDS
from armm.layout import VocabLayout, sampler_for
from armm.model import Transformer
from armm.outputs import check_new, sample_output, write_new, write_samples
from armm.plugins import get_plugins
from armm.prompts import prompt_ids
from armm.scaffold import new_plugin
from armm.scoring import score as score_ids
from armm.scoring import Layout, score_documents
from armm.serving.cli import serve
from armm.textstream import stream_text
from armm.tokenizer import Tokenizer

console = Console()
DEFAULT_NEW_TOKENS = 100  # armm sample's --max-new-tokens when nothing fixes the length


def plugins() -> None:
    """List every registered tokenizer, sampler and dataset with the distribution that provides it."""
    registries = get_plugins()
    table = Table(title="armm plugins")
    for column in ("kind", "name", "provided by"):
        table.add_column(column)
    for registry in (registries.tokenizers, registries.samplers, registries.datasets):
        for entry in registry:
            table.add_row(registry.kind, entry.name, entry.provider)
    console.print(table)


def init(
    model_dir: Path, preset: str = "gpt2-mini", tokenizer: str = "bytes", data: Path | None = None, seed: int = 0,
    overwrite: bool = False,
) -> None:
    """Create a model directory with randomly initialised weights (a starting point, or a quick demo).

    Args:
        model_dir: Where to write config.json, model.safetensors and the tokenizer.
        preset: A ModelConfig preset (gpt2-tiny, gpt2-mini, gpt2-10m, llama-tiny, …).
        tokenizer: A registered tokenizer name (see `armm plugins`); vocab_size follows it.
        data: A file, folder or glob to fit the tokenizer on first (for tokenizers that learn a vocabulary).
        seed: Seed of the random initialisation.
        overwrite: Replace the model a directory already holds (refused otherwise).
    """
    check_new([Path(model_dir) / name for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR)], overwrite)
    tok = get_plugins().tokenizers.get(tokenizer)()
    if data is not None:
        tok.fit(tok.read(data))
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_name(preset, vocab_size=tok.vocab_size))
    save_model(model_dir, model, tok)
    console.print(f"wrote {model_dir} ({model.num_params() / 1e6:.2f}M parameters, preset {preset}, tokenizer {tokenizer})")


def sample(
    model_dir: Path,
    prompt: str = "",
    prompt_file: Path | None = None,
    prompt_units: int | None = None,
    prompt_index: int | None = None,
    sampler: str = "greedy",
    max_new_tokens: int | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    stream: bool = False,
    output: str | None = None,
    overwrite: bool = False,
    part_samplers: dict[str, str] | None = None,
    guidance: float | None = None,
    guidance_tokens: int | None = None,
    backend: Backend = "auto",
    quantize: Quantize | None = None,
    past_context: PastContext = "recompute",
) -> None:
    """Generate samples from a saved model, in any modality its tokenizer plugin handles.

    Args:
        model_dir: A model directory (config.json, model.safetensors, tokenizer/).
        prompt: Text to continue (text, code, residues…); the tokenizer's bos token is put in front.
        prompt_file: Or a file to continue, in the modality's own format (.txt, .py, .fasta, .wav, .png, a mixed
            model's .jsonl manifest), read by the tokenizer as training reads data; of several samples it holds (FASTA
            records, audio clips, manifest lines) the first, or --prompt-index. Generation goes on from its end (a
            mixed sample: inside its last part).
        prompt_units: Continue only the file's first N units: characters of text or code, residues, audio samples
            (audio-codec: the whole frames among them), pixels in raster order (image-vq: the whole rows of codes
            among them); of a mixed sample, its last part's.
        prompt_index: Which sample of --prompt-file to continue, from 0.
        sampler: A sampler spec such as "greedy", "top_k=40" or "temperature=0.7,top_p=0.9".
        max_new_tokens: How many tokens to generate at most (generation also stops at eos, and a model of several
            streams at the end of its context). Default: when --output opens a part of fixed length (an audio clip,
            an image), exactly enough for it and eos; else 100.
        seed: Random seed; sample i uses seed + i, so results are reproducible.
        num_samples: How many samples to draw.
        stream: Print text as it is generated.
        output: Write the samples to this file in the modality's format (.txt, .fasta, .wav, .png…: a suffix the
            tokenizer writes, or none, and it adds its own); required for modalities whose samples are not text.
            Several samples are numbered (out-0.txt, out-1.txt) or gathered in one file (a FASTA, an image grid), as
            the modality does. An existing folder, or a path ending with "/", gets them inside it as sample.txt
            (sample-0.txt, …). For a mixed model, a suffix of one part's files (seven.wav: the audio part) opens
            that part's span after --prompt, so that part is what the model generates.
        overwrite: Replace files --output would write that exist already (refused otherwise).
        part_samplers: For a mixed-modality model, a sampler per part, e.g. '{"image": "top_k=64"}'
            (--sampler applies elsewhere); generation always keeps to the layout's spans.
        guidance: Classifier-free guidance scale for a mixed-modality model trained with condition dropout
            (1 = none; 2 to 4 follow the prompt more closely).
        guidance_tokens: Guide only the first N tokens of each span.
        backend: How the forwards run: auto (on the CPU, the faster of armm's native C step and PyTorch, measured
            once per shape class on this machine; PyTorch elsewhere), eager (PyTorch), native (the C step for
            short forwards), compiled (torch.compile of the decode step, CUDA graphs on a GPU: the first
            generation compiles it; it pays on a GPU, not on the CPU).
        quantize: int8: decode from weight-only int8 copies on the CPU (a quarter of the bytes; approximate).
        past_context: How tokens past the model's context (max_seq_len) are predicted: recompute (exact: from the
            last max_seq_len tokens, run afresh; a forward over the window per token), rolling (RoPE models: a
            rolling KV-cache, as fast as any step; sliding-window attention, not a recomputed window) or chunked
            (approximate: keep the last half of the window, prefill it again, go on).
    """
    model, tok = load_model_with_tokenizer(model_dir)
    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    if output is None and not tok.decodes_text:
        raise ValueError(f"{tok.modality} samples are files: pass --output PATH (written as {tok.file_suffix})")
    target = None if output is None else sample_output(output, tok)
    ids = _prompt_ids(tok, prompt, prompt_file, prompt_units, prompt_index)
    opened = tok.part_written_as(target.suffix) if isinstance(tok, VocabLayout) and target else None
    if opened is not None and opened != tok.prompt_part and prompt_file is None:  # a file's last span is open already
        at, length = len(ids) - len(tok.start_ids), tok.span(opened).length
        opening = tok.span_of_ids(opened, [], close=False, at=at)
        ids += opening
        if max_new_tokens is None and length is not None:  # the rest of the span (content, end, pads), then eos
            max_new_tokens = len(tok.span_of_ids(opened, [0] * length, at=at)) - len(opening) + 1
    max_new_tokens = DEFAULT_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    streams = model.config.num_streams
    if streams > 1:  # it cannot go past its context: stop there
        max_new_tokens = max(1, min(max_new_tokens, (model.config.max_seq_len + 1) * streams - len(ids)))
    sampler = sampler_for(tok, sampler, part_samplers)
    guided = guidance is not None or guidance_tokens is not None
    if guided and not isinstance(tok, VocabLayout):
        raise ValueError(f"--guidance needs a mixed-modality model (tokenizer: mixed); this one's is {tok.name!r}")

    def guide(rows: int) -> Guidance | None:
        scale = 1.0 if guidance is None else guidance
        return tok.guidance([ids] * rows, scale, first_tokens=guidance_tokens) if guided else None

    stops = [tok.eos_id] if tok.eos_id is not None else []
    seeds = None if seed is None else [seed + i for i in range(num_samples)]
    if stream and output is None:
        for i in range(num_samples):
            steps = generate(model, [ids], max_new_tokens=max_new_tokens, sampler=sampler, stop_tokens=stops,
                             seed=None if seeds is None else seeds[i], stream=True, guidance=guide(1),
                             backend=backend, quantize=quantize, past_context=past_context)
            console.print(prompt or tok.decode(ids), end="", markup=False, highlight=False)
            for piece in stream_text(tok, (step[0] for step in steps)):
                console.print(piece, end="", markup=False, highlight=False)
            console.print()
        return
    outputs = generate(model, [ids] * num_samples, max_new_tokens=max_new_tokens, sampler=sampler,
                       stop_tokens=stops, seed=seeds, guidance=guide(num_samples), backend=backend,
                       quantize=quantize, past_context=past_context)
    samples = [tok.decode(ids + new) for new in outputs]
    if target is not None:
        for path in write_new(target, lambda path: write_samples(tok, samples, path), overwrite):
            console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
        return
    for i, text in enumerate(samples):
        if num_samples > 1:
            console.rule(f"sample {i}")
        console.print(text, markup=False, highlight=False)


def score(model_dir: Path, text: str | None = None, file: Path | None = None, layout: Layout | None = None,
          backend: Backend = "auto") -> None:
    """Score data under a saved model: log-likelihood, perplexity, bits per token and bits per unit
    of the modality (byte, residue, pixel value, audio sample…).

    Args:
        model_dir: A model directory.
        text: A text to score (for text-like modalities).
        file: Or a file, folder or glob, read by the model's tokenizer plugin; every sample is scored.
        layout: Unset: each sample on its own, after bos (no eos). `packed` or `samples`: the samples as training
            documents (bos … eos) laid out as validation lays out its split with that data.layout (`packed`: one
            stream in windows of the model's context), so bits per unit count what `val/bpu` counts.
        backend: How the forwards run (auto, eager, native, compiled; see `armm sample --help`).
    """
    if (text is None) == (file is None):
        raise ValueError("give exactly one of --text or --file")
    model, tok = load_model_with_tokenizer(model_dir)
    if text is not None and not tok.decodes_text:
        raise ValueError(f"--text scores text, but {tok.modality} samples are files: pass --file PATH")
    samples = [text] if text is not None else tok.read(file)
    if layout is None:
        results = [score_ids(model, _sample_ids(tok, s), backend=backend) for s in samples]
    else:
        results = score_documents(model, [tok.encode_document(s) for s in samples], layout, backend=backend)
    log_likelihood = sum(r.log_likelihood for r in results)
    tokens = sum(r.num_tokens for r in results)
    units = sum(tok.num_units(s) for s in samples)
    table = Table(title=f"score under {model_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("samples", str(len(samples)))
    table.add_row("tokens scored", str(tokens))
    table.add_row("log-likelihood (nats)", f"{log_likelihood:.4f}")
    table.add_row("perplexity", f"{math.exp(-log_likelihood / tokens):.4f}")
    table.add_row("bits per token", f"{-log_likelihood / (tokens * math.log(2)):.4f}")
    table.add_row(f"bits per {tok.unit}", f"{-log_likelihood / (units * math.log(2)):.4f}")
    console.print(table)


# --- helpers ---------------------------------------------------------------------------------------
def _prompt_ids(tok: Tokenizer, prompt: str, file: Path | None = None, units: int | None = None,
                index: int | None = None) -> list[int]:
    """bos, then the prompt as the plugin reads it, or the sample of ``file`` to continue (``armm.prompt_ids``, its
    first ``units`` units); an empty prompt is bos alone."""
    if file is None and (units is not None or index is not None):
        raise ValueError("--prompt-units and --prompt-index choose what of --prompt-file to continue: give --prompt-file")
    if file is not None and prompt:
        raise ValueError("give --prompt or --prompt-file, not both")
    if units is not None and units < 1:
        raise ValueError(f"--prompt-units must be >= 1, got {units}")
    if file is not None:
        ids = prompt_ids(tok, _file_sample(tok, file, index), units)
    else:
        ids = tok.start_ids + tok.encode_prompt(prompt)
    if not ids:
        raise ValueError(f"tokenizer {tok.name!r} has no bos token, so generation needs a non-empty --prompt")
    return ids


def _file_sample(tok: Tokenizer, file: Path, index: int | None) -> typing.Any:
    """Sample ``index`` of ``file`` as the tokenizer reads it; of several, the first when ``index`` is None (said on
    stderr)."""
    samples = tok.read(file)
    if index is None and len(samples) > 1:
        Console(stderr=True).print(f"note: {file} holds {len(samples)} samples; continuing the first (--prompt-index "
                                   "picks another)", markup=False, highlight=False, soft_wrap=True)
    chosen = 0 if index is None else index
    if not 0 <= chosen < len(samples):
        raise ValueError(f"--prompt-index {chosen} is out of range: {file} holds {len(samples)} sample(s), "
                         f"0 .. {len(samples) - 1}")
    return samples[chosen]


def _sample_ids(tok: Tokenizer, sample) -> list[int]:
    """bos, then the sample's ids: what scoring conditions on and scores."""
    return tok.start_ids + tok.encode(sample)


def _normalise_args(argv: list[str]) -> list[str]:
    """Accept ``--max-new-tokens`` for ``--max_new_tokens``, and a bare boolean flag (``--stream``) for ``--stream=true``."""
    command = _command(argv)
    flags = {n for n, t in typing.get_type_hints(command).items() if t is bool} if command else set()
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            following = argv[i + 1].lower() if i + 1 < len(argv) else ""
            if name in flags and not sep and following not in ("true", "false"):
                sep, value = "=", "true"
            arg = "--" + name + sep + value
        out.append(arg)
    return out


def _command(argv: list[str]) -> Callable | None:
    """The function ``argv`` runs (for ``inspect NAME``, that subcommand's), if any."""
    if argv[:1] == ["inspect"]:
        found = INSPECT_COMMANDS.get(argv[1]) if len(argv) > 1 else None
    else:
        found = COMMANDS.get(argv[0]) if argv else None
    return found if callable(found) else None


COMMANDS = {c.__name__.replace("_", "-"): c for c in [plugins, init, sample, score, chat, serve, convert, new_plugin]}


TRAINING_COMMANDS = ("fit", "validate", "test")
USER_ERRORS = (ValueError, OSError, FloatingPointError, argparse.ArgumentError)  # one line; PluginError is a ValueError


def main(argv: list[str] | None = None) -> None:
    args = _normalise_args(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in TRAINING_COMMANDS:
            from armm.training.cli import run_training_cli  # Lightning loads only for training

            run_training_cli(args)
        elif args and args[0] == "baselines":
            from armm.training.baselines import run_baselines

            run_baselines(args[1:])
        else:
            CLI({**COMMANDS, "inspect": INSPECT_COMMANDS}, args=args, as_positional=True,
                exit_on_error=False)  # parsing errors reach the one-line report below
    except USER_ERRORS as err:
        message = escape(_one_line(err, args))
        Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


def _one_line(err: BaseException, args: list[str]) -> str:
    """The error on one line; a command-line parsing error also says where the accepted options are listed."""
    message = " ".join(str(err).split())
    if isinstance(err, argparse.ArgumentError):
        named = bool(args) and not args[0].startswith("-") and "invalid choice" not in message
        message += f" (see `armm {args[0] + ' ' if named else ''}--help`)"
    return message


if __name__ == "__main__":
    main()
