"""Every entry of docs/errors.md, triggered once by its id: the message a user sees and that it is one clear line.

Command-line cases run ``armm`` in-process and check exit status 2, exactly one ``error:`` line on stderr and no
traceback; Python API cases check the exception and its one-line message; server cases check the status and the
OpenAI error shape. ``test_the_catalogue_lists_exactly_the_tested_errors`` keeps docs/errors.md and these tables
in step. Related behaviour is tested in more depth elsewhere (test_cli, test_checkpoint, test_chat, test_server,
test_sampling, tests/plugins); here each error class appears once, as a user meets it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import lightning.pytorch  # noqa: F401  (imported at collection: its log handler must not keep a test's stderr)
import numpy as np
import pytest
import soundfile
import torch
from fastapi.testclient import TestClient
from PIL import Image

import armm
from armm.chat import get_template, render
from armm.cli import main
from armm.generation import Guidance
from armm.layout import VocabLayout
from armm.registry import PluginError, Registry
from armm.serving.app import Limits, create_app
from armm.serving.engine import Engine
from armm_audio import MuLawTokenizer
from armm_image import PixelTokenizer, VQTokenizer
from armm_protein import ProteinTokenizer
from armm_text import BPETokenizer
from tests.conftest import tiny_recipe
from tests.plugins.test_image import png_claiming

CATALOGUE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclass(frozen=True)
class World:
    """Model directories, data files and a tiny recipe shared by the command-line cases (never modified)."""

    root: Path
    text: Path  # gpt2-tiny over bytes
    image: Path  # 2x2 grey pixels
    protein: Path
    audio: Path
    no_bos: Path  # a text-bpe without a bos token
    mixed: Path  # text + image layout
    llama_weights: Path  # llama-tiny weights of the same vocabulary as `text`
    recipe: Path

    def copy(self, tmp_path: Path, name: str = "text") -> Path:
        """A private copy of one of the model directories, to break."""
        return Path(shutil.copytree(getattr(self, name.replace("-", "_")), tmp_path / name))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("errors")
    torch.manual_seed(0)

    def model_dir(name: str, tokenizer: armm.Tokenizer, preset: str = "gpt2-tiny") -> Path:
        config = armm.ModelConfig.from_name(preset, vocab_size=tokenizer.vocab_size)
        return armm.save_model(root / name, armm.Transformer(config), tokenizer)

    no_bos = BPETokenizer(vocab_size=270, bos=None)
    no_bos.fit(["abc abd abe " * 40])
    layout = VocabLayout({"text": armm.ByteTokenizer(), "image": PixelTokenizer(size=2, channels=1, bits=2)})
    world = World(
        root=root,
        text=model_dir("text", armm.ByteTokenizer()),
        image=model_dir("image", PixelTokenizer(size=2, channels=1, bits=2)),
        protein=model_dir("protein", ProteinTokenizer()),
        audio=model_dir("audio", MuLawTokenizer(bits=4)),
        no_bos=model_dir("no-bos", no_bos),
        mixed=model_dir("mixed", layout),
        llama_weights=model_dir("llama", armm.ByteTokenizer(), preset="llama-tiny") / "model.safetensors",
        recipe=root / "tiny.yaml",
    )
    (root / "empty").mkdir()
    (root / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "fake.wav", format="PNG")  # a PNG named .wav
    soundfile.write(root / "fake.png", np.zeros(64, np.float32), 8000, format="WAV")  # a WAV named .png
    (root / "bad.fasta").write_text(">x\nACDJ\n")
    (root / "headless.fasta").write_text("MKV\n")
    (root / "data").mkdir()
    for i in range(3):
        (root / "data" / f"{i}.txt").write_text(f"document {i}: the cat sat on the mat. " * 8)
    (root / "one.txt").write_text("a single document " * 20)
    (root / "short").mkdir()
    for i in range(2):
        (root / "short" / f"{i}.txt").write_text("ab")
    (root / "bogus.yaml").write_text("data:\n  bogus: 1\n")
    recipe = tiny_recipe(root, max_steps=1, enable_checkpointing=False)
    world.recipe.write_text(json.dumps(recipe))  # JSON is YAML
    return world


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def broken_config(value: Any) -> Callable[[World, Path], list]:
    """`armm sample` on a copy of the text model whose config.json holds ``value`` (a dict is merged in)."""

    def args(w: World, tmp: Path) -> list:
        directory = w.copy(tmp)
        if isinstance(value, dict):
            edit_json(directory / "config.json", lambda config: {**config, **value})
        elif isinstance(value, bytes):
            (directory / "config.json").write_bytes(value)
        else:
            (directory / "config.json").write_text(json.dumps(value))
        return ["sample", directory]

    return args


def broken_dir(name: str, breaks: Callable[[Path], Any]) -> Callable[[World, Path], list]:
    """`armm sample` on a copy of model directory ``name`` after ``breaks(directory)``."""

    def args(w: World, tmp: Path) -> list:
        directory = w.copy(tmp, name)
        breaks(directory)
        return ["sample", directory, "--output", tmp / "out" / "s"]

    return args


def fit(*extra: Any) -> Callable[[World, Path], list]:
    """`armm fit` of the tiny recipe with ``extra`` arguments, in which {root} and {tmp} name those folders."""
    return lambda w, tmp: ["fit", "-c", w.recipe,
                           *[str(e).replace("{root}", str(w.root)).replace("{tmp}", str(tmp)) for e in extra]]


def checkpoint(contents: bytes | dict) -> Callable[[World, Path], list]:
    """`armm fit --ckpt_path` a file holding ``contents`` (raw bytes, or a dict written by torch.save)."""

    def args(w: World, tmp: Path) -> list:
        path = tmp / "given.ckpt"
        if isinstance(contents, bytes):
            path.write_bytes(contents)
        else:
            torch.save(contents, path)
        return fit("--ckpt_path", path)(w, tmp)

    return args


# --- the command line ---------------------------------------------------------------------------------------------
def existing_output(w: World, tmp: Path) -> list:
    """`armm sample --output notes.txt` where notes.txt holds the user's own text."""
    (tmp / "notes.txt").write_text("mine")
    return ["sample", w.text, "--max-new-tokens", "2", "--output", tmp / "notes.txt"]


def output_on_a_folder(w: World, tmp: Path) -> list:
    """Two samples numbered s-0.txt, s-1.txt, where a folder s-0.txt exists."""
    (tmp / "s-0.txt").mkdir()
    return ["sample", w.text, "--max-new-tokens", "2", "--num-samples", "2", "--output", tmp / "s.txt"]


def huge_png(w: World, tmp: Path) -> list:
    """`armm score` of an image whose PNG header claims 20000 x 20000 pixels (a few bytes on disk)."""
    (tmp / "huge.png").write_bytes(png_claiming(20000, 20000))
    return ["score", w.image, "--file", tmp / "huge.png"]


def sparse(path: Path, size: int) -> None:
    """Make ``path`` ``size`` bytes long without writing them (a sparse file)."""
    with path.open("r+b") as handle:
        handle.truncate(size)


def existing_plot(w: World, tmp: Path) -> list:
    """`armm inspect next --plot next.png` where next.png is the user's own file."""
    (tmp / "next.png").write_text("mine")
    return ["inspect", "next", w.text, "--prompt", "ab", "--plot", tmp / "next.png"]


def convert_into_a_full_folder(w: World, tmp: Path) -> list:
    """`armm convert` into a folder that holds the user's own notes."""
    (tmp / "hf").mkdir()
    (tmp / "hf" / "notes.txt").write_text("mine")
    return ["convert", w.text, tmp / "hf", "--to", "hf"]


def existing_plugin_folder(w: World, tmp: Path) -> list:
    """`armm new-plugin chess-moves` where chess-moves/ is a folder of the user's."""
    (tmp / "chess-moves").mkdir()
    return ["new-plugin", "chess-moves", "--directory", tmp]


CLI_CASES: dict[str, tuple[Callable[[World, Path], list], str]] = {
    "cli-unknown-command": (lambda w, tmp: ["samplex", w.text], "invalid choice: 'samplex'"),
    "cli-unknown-option": (fit("--data.bogus", "1"), "unrecognized arguments: --data.bogus 1 (see `armm fit --help`)"),
    "cli-bad-option-value": (lambda w, tmp: ["sample", w.text, "--num-samples", "many"],
                             'Parser key "num_samples": Expected a <class \'int\'>. Got value: many'),
    "cli-missing-argument": (lambda w, tmp: ["sample"], "the following arguments are required: sample.model_dir"),
    "cli-text-or-file": (lambda w, tmp: ["score", w.text, "--text", "a", "--file", w.root / "data"],
                         "give exactly one of --text or --file"),
    "cli-samples-are-files": (lambda w, tmp: ["sample", w.image], "image samples are files: pass --output PATH"),
    "cli-text-of-a-file-modality": (lambda w, tmp: ["score", w.image, "--text", "hi"],
                                    "--text scores text, but image samples are files: pass --file PATH"),
    "cli-num-samples": (lambda w, tmp: ["sample", w.text, "--num-samples", "0"], "--num-samples must be >= 1"),
    "cli-output-exists": (existing_output, "notes.txt already exists: pass --overwrite to replace it, or choose "
                                           "another path"),
    "cli-output-suffix": (lambda w, tmp: ["sample", w.text, "--output", tmp / "notes.md"],
                          "tokenizer 'bytes' writes .txt or .jsonl files, not .md; end --output with .txt, or leave "
                          "the suffix out"),
    "cli-output-folder": (output_on_a_folder, "s-0.txt is a folder: choose another path"),
    "cli-init-exists": (lambda w, tmp: ["init", w.text, "--preset", "gpt2-tiny"],
                        "tokenizer already exist: pass --overwrite to replace them, or choose another path"),
    "cli-plot-exists": (existing_plot, "next.png already exists: pass --overwrite to replace it, or choose another path"),
    "cli-plot-suffix": (lambda w, tmp: ["inspect", "next", w.text, "--plot", tmp / "notes.txt"],
                        "notes.txt: it writes a PNG image; end --plot with .png"),
    "cli-convert-onto-source": (lambda w, tmp: ["convert", w.copy(tmp), tmp / "text", "--to", "hf"],
                                "text is the source folder: convert into a folder outside it"),
    "cli-convert-exists": (convert_into_a_full_folder, "hf is not empty: pass --overwrite to replace the files convert "
                                                       "writes there, or choose a new folder"),
    "cli-no-bos-no-prompt": (lambda w, tmp: ["sample", w.no_bos],
                             "has no bos token, so generation needs a non-empty --prompt"),
    "cli-mixed-options-on-one-modality": (lambda w, tmp: ["sample", w.text, "--guidance-tokens", "2"],
                                          "--guidance needs a mixed-modality model"),
    "sampler-unknown": (lambda w, tmp: ["sample", w.text, "--sampler", "top_k=5,beam=4"],
                        "unknown sampler 'beam'; available: "),
    "sampler-bad-value": (lambda w, tmp: ["sample", w.text, "--sampler", "temperature=-1"],
                          "temperature must be a number >= 0"),
    "sampler-not-a-number": (lambda w, tmp: ["sample", w.text, "--sampler", "top_p=high"],
                             "sampler 'top_p' takes a number, got 'high'"),
    "sampler-malformed": (lambda w, tmp: ["sample", w.text, "--sampler", "top_k=5,"], "malformed sampler item ''"),
    "sampler-value-arity": (lambda w, tmp: ["sample", w.text, "--sampler", "greedy=1"],
                            "sampler 'greedy' takes no value"),
    "prompt-too-long": (lambda w, tmp: ["sample", w.text, "--prompt", "x" * 200],
                        "more than the model's context allows (max_seq_len=128); shorten it to at most 128 tokens"),
    "config-unknown-preset": (fit("--model.preset", "gpt5"), "unknown model preset 'gpt5'; available: gpt2-10m"),
    "config-not-an-object": (broken_config([1, 2]), "config.json should hold a JSON object (a ModelConfig)"),
    "config-invalid-json": (broken_config(b"\x89PNG\r\n"), "config.json is not valid JSON"),
    "config-wrong-type": (broken_config({"n_layer": "two"}), "ModelConfig.n_layer must be an integer, got 'two'"),
    "config-out-of-range": (broken_config({"d_model": -64}), "ModelConfig.d_model must be >= 1, got -64"),
    "config-unknown-field": (broken_config({"n_layers": 3}), "unknown ModelConfig field(s) ['n_layers']"),
    "model-dir-missing": (lambda w, tmp: ["sample", tmp / "nowhere"], "does not exist"),
    "model-dir-missing-file": (broken_dir("text", lambda d: (d / "config.json").unlink()),
                               "is not an armm model directory: config.json is missing"),
    "weights-corrupt": (broken_dir("text", lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64)),
                        "model.safetensors is corrupt or not a safetensors file"),
    "weights-from-another-model": (lambda w, tmp: broken_dir("text", lambda d: shutil.copy(w.llama_weights, d))(w, tmp),
                                   "has shape [128, 64] in the weights but [192, 64] under the config; the weights "
                                   "and the config come from different models"),
    "tokenizer-larger-than-model": (broken_dir("text", lambda d: armm.save_model(d, tiny_model(vocab_size=100))),
                                    "has 259 ids but the model's vocab_size is 100"),
    "tokenizer-missing": (broken_dir("text", lambda d: shutil.rmtree(d / "tokenizer")), "has no tokenizer/ folder"),
    "tokenizer-meta-missing": (broken_dir("text", lambda d: (d / "tokenizer" / "armm_tokenizer.json").unlink()),
                               "has no armm_tokenizer.json; it was not written by armm.save_model"),
    "tokenizer-meta-malformed": (broken_dir("text", lambda d: (d / "tokenizer" / "armm_tokenizer.json")
                                            .write_text("[]")), "armm_tokenizer.json should hold a JSON object"),
    "tokenizer-not-installed": (broken_dir("text", lambda d: edit_json(d / "tokenizer" / "armm_tokenizer.json",
                                                                       lambda meta: {**meta, "name": "not-installed"})),
                                "unknown tokenizer 'not-installed'; available:"),
    "tokenizer-files-missing": (broken_dir("protein", lambda d: (d / "tokenizer" / "protein.json").unlink()),
                                "protein.json is missing; it should hold the alphabet ProteinTokenizer.save wrote"),
    "tokenizer-files-malformed": (broken_dir("audio", lambda d: (d / "tokenizer" / "audio_mulaw.json").write_text(
        '{"bitz": 4}')), "do not fit tokenizer 'audio-mulaw' (TypeError"),
    "tokenizer-files-mixed": (broken_dir("text", lambda d: edit_json(d / "tokenizer" / "armm_tokenizer.json",
                                                                     lambda meta: {**meta, "vocab_size": 300})),
                              "says 300 ids but the tokenizer files"),
    "layout-bad-part": (broken_dir("mixed", lambda d: edit_json(d / "tokenizer" / "layout.json", lambda layout: {
        **layout, "parts": [{**part, "name": "../x"} for part in layout["parts"]]})),
        "names a part '../x', which is not a valid part name"),
    "recipe-unknown-key": (fit("-c", "{root}/bogus.yaml"), "does not accept option 'data.bogus'"),
    "recipe-file-missing": (fit("-c", "{tmp}/nowhere.yaml"), "File does not exist"),
    "recipe-bad-value": (fit("--data.seq_len", "0"), "data.seq_len and data.batch_size must be >= 1"),
    "recipe-dataset-and-path": (fit("--data.dataset", "pydoc-topics"), "give exactly one of data.dataset"),
    "recipe-unknown-dataset": (fit("--data.path", "null", "--data.dataset", "nope"), "unknown dataset 'nope'"),
    "recipe-unknown-tokenizer": (fit("--data.tokenizer", "klingon"), "unknown tokenizer 'klingon'"),
    "recipe-tokenizer-options": (fit("--data.tokenizer", "audio-mulaw", "--data.tokenizer_options", '{"bitz": 8}',
                                     "--data.cache_dir", "{tmp}/cache"),
                                 "tokenizer 'audio-mulaw' cannot be built with the options {'bitz': 8}"),
    "recipe-context-too-short": (fit("--data.seq_len", "64", "--data.cache_dir", "{tmp}/cache"),
                                 "data.seq_len=64 is larger than the model's context (max_seq_len=32)"),
    "recipe-one-sample": (fit("--data.path", "{root}/one.txt", "--data.layout", "samples", "--data.seq_len", "400",
                              "--data.cache_dir", "{tmp}/cache"),
                          "holds 1 sample; a validation split needs at least 2"),
    "recipe-too-few-tokens": (fit("--data.path", "{root}/short", "--data.cache_dir", "{tmp}/cache"),
                              "tokens, too few for one window of data.seq_len=16 + 1"),
    "checkpoint-not-a-checkpoint": (checkpoint(b"not a zip archive"), "is not a PyTorch Lightning checkpoint"),
    "checkpoint-unsafe": (checkpoint({"state_dict": {}, "path": PurePosixPath("a")}),
                          "was refused: loading it would import pathlib.PurePosixPath"),
    "checkpoint-weights-only-false": (fit("--weights_only", "false"), "--weights_only false would let a checkpoint"),
    "data-missing": (lambda w, tmp: ["score", w.text, "--file", tmp / "nowhere.txt"],
                     "does not exist (expected a file, a folder or a glob of text files)"),
    "data-empty": (lambda w, tmp: ["score", w.text, "--file", w.root / "empty"], "no text files (.txt, .md, .txt.gz, .md.gz) found in"),
    "data-not-text": (lambda w, tmp: ["score", w.text, "--file", w.root / "binary.txt"],
                      "is not UTF-8 text (byte 0); is it a binary file?"),
    "data-not-audio": (lambda w, tmp: ["score", w.audio, "--file", w.root / "fake.wav"],
                       "is not a readable audio file"),
    "data-not-image": (lambda w, tmp: ["score", w.image, "--file", w.root / "fake.png"],
                       "is not a readable PNG or JPEG image"),
    "data-fasta-invalid-residue": (lambda w, tmp: ["score", w.protein, "--file", w.root / "bad.fasta"],
                                   "record 'x' has invalid residue 'J' at position 4 (line 2)"),
    "data-not-fasta": (lambda w, tmp: ["score", w.protein, "--file", w.root / "headless.fasta"],
                       "is not FASTA: line 1 comes before the first '>' header"),
    "protein-invalid-residue": (lambda w, tmp: ["sample", w.protein, "--prompt", "MKJ", "--output", tmp / "s"],
                                "invalid residue 'J' at position 2"),
    "image-prompt": (lambda w, tmp: ["sample", w.image, "--prompt", "cat", "--output", tmp / "s"],
                     "has no classes, so an image prompt must be empty, got 'cat'"),
    "tokenizer-not-fitted": (lambda w, tmp: ["init", tmp / "new", "--tokenizer", "text-bpe"],
                             "tokenizer 'text-bpe' has no vocabulary yet"),
    "config-too-large": (broken_config({"n_layer": 1000000}),
                         "ModelConfig.n_layer must be <= 4096 (past any model built so far), got 1000000"),
    "config-nested-too-deep": (broken_config(b'{"n_layer": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
                               "config.json nests arrays or objects more than 64 levels deep; it should hold a "
                               "ModelConfig"),
    "json-file-too-large": (broken_dir("text", lambda d: sparse(d / "config.json", 2**28 + 1)),
                            "config.json is 268435457 bytes, more than the 268435456 armm reads as JSON"),
    "weights-layers-mismatch": (broken_config({"n_layer": 3}),
                                "n_layer=3 under the config but 2 layers in the weights; the weights and "
                                "the config come from different models"),
    "image-too-many-pixels": (huge_png, "huge.png is over 178956970 pixels, more than the 67108864 armm reads; "
                                        "shrink the image first, or raise armm_image.image_io.MAX_PIXELS"),
    "cli-prompt-and-prompt-file": (lambda w, tmp: ["sample", w.text, "--prompt", "Hi", "--prompt-file",
                                                   w.root / "one.txt"], "give --prompt or --prompt-file, not both"),
    "cli-prompt-units": (lambda w, tmp: ["sample", w.text, "--prompt-file", w.root / "one.txt", "--prompt-units", "0"],
                         "--prompt-units must be >= 1, got 0"),
    "cli-prompt-options-without-file": (lambda w, tmp: ["sample", w.text, "--prompt-units", "5"],
                                        "--prompt-units and --prompt-index choose what of --prompt-file to continue: "
                                        "give --prompt-file"),
    "cli-prompt-index": (lambda w, tmp: ["sample", w.text, "--prompt-file", w.root / "one.txt", "--prompt-index", "1"],
                         "one.txt holds 1 sample(s), 0 .. 0"),
    "cli-plugin-name": (lambda w, tmp: ["new-plugin", "Chess", "--directory", tmp],
                        "plugin name 'Chess' is not usable: use lower-case letters, digits and single dashes or "
                        "underscores, starting with a letter (e.g. chess-moves)"),
    "cli-plugin-name-taken": (lambda w, tmp: ["new-plugin", "bytes", "--directory", tmp],
                              "the tokenizer 'bytes' is taken by armm (built-in): choose another plugin name"),
    "cli-plugin-exists": (existing_plugin_folder, "chess-moves already exists: pass --overwrite to replace it, or "
                                                  "choose another path"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_command_line_mistakes_exit_2_with_one_error_line(case, world, tmp_path, capsys):
    make_args, message = CLI_CASES[case]
    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in make_args(world, tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert message in line


# --- the Python API ----------------------------------------------------------------------------------------------
def tiny_model(vocab_size: int = 259) -> armm.Transformer:
    return armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=vocab_size)).eval()


def two_stream_model() -> armm.Transformer:
    """gpt2-tiny reading 2 ids a position (``num_streams``, as the delay pattern's codebooks)."""
    return armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=259, num_streams=2,
                                                       tie_embeddings=False)).eval()  # fmt: skip


def _prepare_streams(tmp: Path, layout: str, seq_len: int) -> None:
    """Prepare a split of the delay-pattern codec's clips with ``layout`` and ``seq_len``."""
    from armm.training.prepare import Source, prepare_splits
    from armm_audio import CodecTokenizer

    codec = CodecTokenizer(clip_seconds=0.1, hop=80, num_codebooks=2, codebook_size=4, channels=8, layers=1,
                           pattern="delay")  # fmt: skip
    codec.fitted = True
    prepare_splits(codec, Source.of_samples("clips", [torch.zeros(800)] * 4), tmp, layout=layout, seq_len=seq_len,
                   val_fraction=0.25, seed=0)  # fmt: skip


def sandbox_escape(tmp: Path) -> None:
    template = tmp / "escape.jinja"
    template.write_text("{{ cycler.__init__.__globals__.os.system('true') }}")
    render([{"role": "user", "content": "hi"}], get_template(str(template)))


def syntax_error(tmp: Path) -> None:
    (tmp / "broken.jinja").write_text("{% for m in messages %}{{ m.content }")
    get_template(str(tmp / "broken.jinja"))


def stale_cache() -> None:
    model = tiny_model()
    cache = model.new_caches(1, 4)
    model.bfloat16()(torch.tensor([[1]]), cache=cache)


def registered_twice() -> None:
    registry = Registry("tokenizer")
    registry.add("x", object, provider="armm-x")
    registry.add("x", object, provider="armm-x-fork")


def nan_weights(tmp: Path) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.tok_emb.weight.fill_(math.nan)  # tied to lm_head: every logit NaN
    armm.generate(model, [[1, 2]], max_new_tokens=1)


def too_large_for_memory(tmp: Path) -> None:
    directory = armm.save_model(tmp / "m", tiny_model())
    with mock.patch("armm.checkpoint.available_memory", return_value=2**16):
        armm.load_model(directory)


def npy_of_floats(tmp: Path) -> list:
    """An image tokenizer reading a .npy file that holds no uint8 images."""
    np.save(tmp / "floats.npy", np.zeros((2, 8, 8), np.float32))
    return PixelTokenizer(size=8, channels=1).read(tmp / "floats.npy")


class _Notes(armm.SymbolTokenizer):  # a symbol tokenizer for the catalogue's SymbolTokenizer cases
    name, modality, unit = "catalogue-notes", "music", "note"
    groups = {"pitch": range(60, 80), "duration": ["1/8", "1/4"], "rest": None}
    grammar = {"pitch": ["duration"], "duration": ["pitch", "rest"], "rest": ["durations"]}
    read = write = None


def _saved_with_other_groups(tmp: Path) -> None:
    (tmp / "catalogue-notes.json").write_text(json.dumps({"groups": {"pitch": [60]}}))
    _Notes.load(tmp)


API_CASES: dict[str, tuple[Callable[[Path], Any], type[Exception], str]] = {
    "sampler-empty": (lambda tmp: armm.build_sampler(""), ValueError, "sampler spec must be a non-empty string"),
    "prompt-id-outside-vocabulary": (lambda tmp: armm.generate(tiny_model(), [[1, 500]], max_new_tokens=1),
                                     ValueError, "token id 500 at position 1, outside the model's vocabulary"),
    "prompt-empty": (lambda tmp: armm.generate(tiny_model(), [[]], max_new_tokens=1), ValueError, "prompt 0 is empty"),
    "prompts-not-a-list-of-lists": (lambda tmp: armm.generate(tiny_model(), [1, 2], max_new_tokens=1), ValueError,
                                    "wrap a single prompt as [ids]"),
    "max-new-tokens": (lambda tmp: armm.generate(tiny_model(), [[1]], max_new_tokens=0), ValueError,
                       "max_new_tokens must be an integer >= 1, got 0"),
    "stop-token-outside-vocabulary": (lambda tmp: armm.generate(tiny_model(), [[1]], max_new_tokens=1,
                                                                stop_tokens=[999]),
                                      ValueError, "stop token 999 is outside the vocabulary"),
    "seed-invalid": (lambda tmp: armm.generate(tiny_model(), [[1]], max_new_tokens=1, sampler="temperature=1",
                                               seed="x"), ValueError, "seed must be an integer"),
    "per-row-count": (lambda tmp: armm.generate(tiny_model(), [[1]], max_new_tokens=1, sampler="temperature=1",
                                                seed=[1, 2]), ValueError, "seed must be one int or one per prompt (1)"),
    "guidance-scale": (lambda tmp: Guidance(scale=-1, unconditional=[[1]]), ValueError,
                       "guidance scale must be a number >= 0"),
    "streams-prompt-partial-position": (lambda tmp: armm.generate(two_stream_model(), [[1, 2, 3]], max_new_tokens=1),
                                        ValueError, "prompt 0 has 3 ids, but the model reads 2 ids a position"),
    "streams-one-stream-feature": (lambda tmp: armm.speculative_generate(two_stream_model(), two_stream_model(),
                                                                         [[1, 2]], max_new_tokens=1),
                                   ValueError, "speculative decoding reads one id a position, but this model reads "
                                   "num_streams=2"),
    "streams-tied-embeddings": (lambda tmp: armm.ModelConfig(num_streams=2), ValueError,
                                "ModelConfig.tie_embeddings needs one output per position, but num_streams=2"),
    "streams-packed-layout": (lambda tmp: _prepare_streams(tmp, "packed", 64), ValueError,
                              "tokenizer 'audio-codec' lays its ids out in 2 streams, whose windows must start at "
                              "whole positions; set data.layout: samples"),
    "streams-seq-len": (lambda tmp: _prepare_streams(tmp, "samples", 63), ValueError,
                        "data.seq_len=63 must be a multiple of the tokenizer's 2 streams"),
    "decode-id-outside-vocabulary": (lambda tmp: armm.ByteTokenizer().decode([1, 300]), ValueError,
                                     "token id 300 at position 1 is outside the vocabulary of tokenizer 'bytes'"),
    "decode-id-not-integer": (lambda tmp: armm.ByteTokenizer().decode([1.5]), ValueError,
                              "token id 1.5 at position 0 is not an integer"),
    "encode-wrong-type": (lambda tmp: armm.ByteTokenizer().encode(b"hi"), TypeError, "encodes str, got bytes"),
    "score-id-outside-vocabulary": (lambda tmp: armm.score(tiny_model(), [1, 400]), ValueError,
                                    "token id 400 at position 1 is outside the model's vocabulary"),
    "score-too-short": (lambda tmp: armm.score(tiny_model(), [1]), ValueError, "scoring needs at least 2 tokens"),
    "score-not-ids": (lambda tmp: armm.score(tiny_model(), "hello"), ValueError,
                      "scoring takes a flat sequence of integer token ids"),
    "score-stride": (lambda tmp: armm.score(tiny_model(), [1, 2, 3], stride=0), ValueError,
                     "stride must be in [1, window - 1]"),
    "logits-to-keep": (lambda tmp: tiny_model()(torch.tensor([[1, 2]]), logits_to_keep=-1), ValueError,
                       "logits_to_keep must be an integer >= 0"),
    "backend": (lambda tmp: armm.generate(tiny_model(), [[1]], max_new_tokens=1, backend="fast"), ValueError,
                "backend must be one of auto, eager, native, compiled, got 'fast'"),
    "quantize": (lambda tmp: armm.generate(tiny_model(), [[1]], max_new_tokens=1, quantize="fp8"), ValueError,
                 "quantize must be None (the model's own weights) or 'int8', got 'fp8'"),
    "forward-start": (lambda tmp: tiny_model()(torch.tensor([[1]]), start=-1), ValueError,
                      "start must be an integer cache slot >= 0, got -1"),
    "cache-dtype": (lambda tmp: stale_cache(), ValueError,
                    "the KV-cache is torch.float32 on cpu but the model's weights are torch.bfloat16 on cpu"),
    "config-inconsistent": (lambda tmp: armm.ModelConfig(d_model=100, n_head=3), ValueError,
                            "d_model (100) must be divisible by n_head (3)"),
    "config-bad-choice": (lambda tmp: armm.ModelConfig(position="alibi"), ValueError,
                          "ModelConfig.position='alibi' is not one of ('learned', 'rope')"),
    "audio-sample-invalid": (lambda tmp: MuLawTokenizer().encode(torch.zeros(2, 10)), ValueError,
                             "an audio sample is a 1-D (mono) waveform, got shape (2, 10)"),
    "image-sample-shape": (lambda tmp: PixelTokenizer(size=4).encode(torch.zeros(3, 5, 5, dtype=torch.uint8)),
                           ValueError, "convert it with tokenizer.prepare(image)"),
    "tokenizer-fit-empty": (lambda tmp: BPETokenizer(vocab_size=300).fit([]), ValueError, "(empty corpus)"),
    "tokenizer-option-invalid": (lambda tmp: PixelTokenizer(size="big"), ValueError,
                                 "image size must be a positive integer or [height, width], got 'big'"),
    "plugin-duplicate": (lambda tmp: registered_twice(), PluginError,
                         "tokenizer 'x' is registered twice: by armm-x and by armm-x-fork"),
    "chat-unknown-template": (lambda tmp: get_template("nope"), ValueError, "unknown chat template 'nope'"),
    "chat-template-file-missing": (lambda tmp: get_template(str(tmp / "nowhere.jinja")), FileNotFoundError,
                                   "nowhere.jinja does not exist"),
    "chat-template-syntax": (syntax_error, ValueError, "chat template has a Jinja syntax error at line 1"),
    "chat-template-sandbox": (sandbox_escape, ValueError, "was refused by the sandbox: access to attribute"),
    "chat-template-raise": (lambda tmp: render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                               get_template("llama-2")), ValueError,
                            "failed to render: Conversation roles must alternate"),
    "chat-invalid-message": (lambda tmp: render([{"role": "wizard", "content": "hi"}], get_template("chatml")),
                             ValueError, "message 0 has role 'wizard'; allowed roles: system, user, assistant"),
    "model-logits-nan": (nan_weights, ValueError, "the model's logits are NaN at position 2 of row 0"),
    "model-larger-than-memory": (too_large_for_memory, ValueError,
                                 "MiB of memory to load but 0.1 MiB is available; its largest tensor"),
    "prompt-units": (lambda tmp: armm.prompt_ids(armm.ByteTokenizer(), "abc", units=0), ValueError,
                     "units must be an integer >= 1 (how much of the sample to keep), got 0"),
    "prompt-units-below-a-whole-token": (
        lambda tmp: armm.prompt_ids(VQTokenizer(size=8, channels=1, downsample=4, codebook_size=16, code_dim=4,
                                                hidden=8, res_blocks=1), torch.zeros(1, 8, 8, dtype=torch.uint8),
                                    units=31),
        ValueError, "the first 31 pixels hold no whole row of codes: image-vq prompts continue from whole code rows"),
    "prompt-units-unsupported": (lambda tmp: armm.prompt_ids(armm.ByteTokenizer(), [1, 2], units=1), ValueError,
                                 "tokenizer 'bytes' cannot keep the first units of a list sample"),
    "prompt-mixed-not-parts": (
        lambda tmp: armm.prompt_ids(VocabLayout({"text": armm.ByteTokenizer(),
                                                 "image": PixelTokenizer(size=2, channels=1, bits=2)}), "a two"),
        ValueError, "a mixed prompt is a non-empty list of (part name, sample) pairs"),
    "write-format-unknown": (lambda tmp: armm.ByteTokenizer().write(["hi"], tmp / "out", format=".mid"), ValueError,
                             "tokenizer 'bytes' writes .txt or .jsonl files, not '.mid'; pass format= one of them"),
    "mixed-write-format": (lambda tmp: VocabLayout({"text": armm.ByteTokenizer(),
                                                    "image": PixelTokenizer(size=2, channels=1, bits=2)}).write(
                               [], tmp / "s", format=".mid"), ValueError,
                           "a mixed layout writes a .jsonl manifest, or one part as its plugin's file suffix; '.mid' "
                           "is neither"),
    "audio-flac-empty": (lambda tmp: MuLawTokenizer().write([torch.zeros(0)], tmp / "out.flac"), ValueError,
                         "sample 0 holds no audio, which FLAC cannot store (generation may have ended at once); "
                         "write .wav, which can"),
    "image-npy-not-images": (npy_of_floats, ValueError, "floats.npy holds a float32 array of shape [2, 8, 8]; image "
                             ".npy files hold uint8 images [C, H, W] or [N, C, H, W] with C in 1..4"),
    "symbol-invalid": (lambda tmp: _Notes().encode([60, "1/16"]), ValueError,
                       "invalid note '1/16' at position 1; allowed: pitch: 60, 61, 62, …, 79; duration: 1/8, 1/4"),
    "symbol-ambiguous": (lambda tmp: type("Twice", (_Notes,), {"groups": {"a": ["x"], "b": ["x"]}})().encode(["x"]),
                         ValueError, "note 'x' at position 0 is in groups ['a', 'b']; give it as a (group, symbol) pair"),
    "symbol-groups-changed": (_saved_with_other_groups, ValueError, "catalogue-notes.json was saved with groups"),
    "symbol-grammar-unknown-group": (lambda tmp: _Notes().sampler("greedy"), ValueError,
                                     "the grammar names group 'durations', which is not one of the groups"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_python_api_mistakes_raise_one_clear_message(case, tmp_path):
    call, kind, message = API_CASES[case]
    with pytest.raises(kind) as raised:
        call(tmp_path)
    assert message in str(raised.value) and "\n" not in str(raised.value)


# --- the server --------------------------------------------------------------------------------------------------
SERVED = "tiny"
SERVER_CASES: dict[str, tuple[str, str, Any, dict[str, str], int, str | None, str]] = {
    # id: (method, route, JSON body or raw bytes, headers, status, param, message)
    "server-invalid-json": ("POST", "/v1/completions", b'{"model": ', {}, 400, None,
                            "the request body is not valid JSON"),
    "server-invalid-field": ("POST", "/v1/completions", {"prompt": "a", "max_tokens": "4"}, {}, 400, "max_tokens",
                             "max_tokens: Input should be a valid integer"),
    "server-out-of-range": ("POST", "/v1/completions", {"prompt": "a", "temperature": 5}, {}, 400, "temperature",
                            "less than or equal to 2"),
    "server-not-finite": ("POST", "/v1/completions",
                          b'{"model": "tiny", "prompt": "a", "repetition_penalty": Infinity}', {}, 400,
                          "repetition_penalty", "Input should be a finite number"),
    "server-unsupported-parameter": ("POST", "/v1/completions", {"prompt": "a", "best_of": 2}, {}, 400, None,
                                     "'best_of' is not supported by armm serve"),
    "server-unknown-model": ("POST", "/v1/completions", {"prompt": "a", "model": "gpt-4"}, {}, 404, "model",
                             "model 'gpt-4' does not exist; this server serves 'tiny'"),
    "server-unauthorized": ("GET", "/v1/models", None, {"Authorization": "Bearer wrong"}, 401, None,
                            "missing or incorrect API key"),
    "server-prompt-too-long": ("POST", "/v1/completions", {"prompt": "x" * 100}, {}, 400, "prompt",
                               "this server accepts at most 63"),
    "server-context-exceeded": ("POST", "/v1/completions", {"prompt": "x" * 40, "max_tokens": 30}, {}, 400,
                                "max_tokens", "lower max_tokens to at most 23"),
    "server-max-tokens-over-limit": ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 33}, {}, 400,
                                     "max_tokens", "max_tokens is 33; this server allows at most 32"),
    "server-too-many-choices": ("POST", "/v1/completions", {"prompt": "a", "n": 3}, {}, 400, "n",
                                "3 choices requested (prompts × n); this server allows at most 2"),
    "server-token-id-outside-vocabulary": ("POST", "/v1/completions", {"prompt": [1, 999]}, {}, 400, "prompt",
                                           "token id 999 is outside the vocabulary (0 .. 258)"),
    "server-empty-token-prompt": ("POST", "/v1/completions", {"prompt": [[]]}, {}, 400, "prompt",
                                  "a prompt of token ids is empty"),
    "server-empty-stop": ("POST", "/v1/completions", {"prompt": "a", "stop": [""]}, {}, 400, "stop",
                          "stop strings must be non-empty"),
    "server-body-too-large": ("POST", "/v1/completions", b" " * (4 * 2**20 + 1), {}, 413, None,
                              "the request body is larger than this server's limit of 4194304 bytes"),
    "server-too-many-prompts": ("POST", "/v1/completions", {"prompt": ["a"] * 1025}, {}, 400, "prompt",
                                "at most 1024 prompts in one request, got 1025"),
    "server-too-many-messages": ("POST", "/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": "a"}] * 2049}, {}, 400, "messages",
                                 "List should have at most 2048 items"),
    "server-too-many-stops": ("POST", "/v1/completions", {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, {},
                              400, "stop", "at most 4 stop strings, got 5"),
    "server-stop-too-long": ("POST", "/v1/completions", {"prompt": "a", "stop": "z" * 129}, {}, 400, "stop",
                             "a stop string has 129 characters; at most 128"),
    "server-not-unicode": ("POST", "/v1/completions", b'{"model": "tiny", "prompt": "a\\ud800"}', {}, 400,
                           "prompt", "the text has a lone surrogate (U+D800) at character 1, which is not Unicode"),
    "server-seed-out-of-range": ("POST", "/v1/completions", {"prompt": "a", "seed": 2**70}, {}, 400, "seed",
                                 "less than 9223372036854775808"),
    "server-template-error": ("POST", "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, {},
                              400, "messages", "Conversation roles must alternate"),
    "server-unknown-route": ("GET", "/v1/nothing-here", None, {}, 404, None, "Not Found"),
    "server-method-not-allowed": ("GET", "/v1/completions", None, {}, 405, None, "Method Not Allowed"),
}


@pytest.fixture(scope="module")
def client():
    torch.manual_seed(0)
    tokenizer = armm.ByteTokenizer()
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=tokenizer.vocab_size,
                                                        max_seq_len=64)).eval()
    app = create_app(Engine(model, tokenizer), SERVED, get_template("llama-2"), api_key="key",
                     limits=Limits(max_tokens_limit=32, max_choices=2))
    with TestClient(app, headers={"Authorization": "Bearer key"}) as client:
        yield client


@pytest.mark.parametrize("case", sorted(SERVER_CASES))
def test_bad_requests_get_4xx_in_the_openai_error_shape(case, client):
    method, route, body, headers, status, param, message = SERVER_CASES[case]
    if isinstance(body, dict):
        body = json.dumps({"model": SERVED, **body}).encode()
    response = client.request(method, route, content=body, headers={"content-type": "application/json", **headers})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and message in error["message"]


# --- the catalogue -------------------------------------------------------------------------------------------------
def test_the_catalogue_lists_exactly_the_tested_errors():
    documented = re.findall(r"^\| `([a-z0-9-]+)`", CATALOGUE.read_text(), re.M)
    tested = [*CLI_CASES, *API_CASES, *SERVER_CASES]
    assert len(documented) == len(set(documented)) and len(tested) == len(set(tested))
    assert sorted(documented) == sorted(tested)
