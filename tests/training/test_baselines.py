"""Held-out evaluation: ``armm baselines`` against direct computations and ``armm validate``, and ``armm score
--layout`` on the validation split's documents against the ``val/bpu`` training logged."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

import armm
from armm.cli import main
from armm.training.baselines import run_baselines
from armm.training.cli import run_training_cli
from tests.training.conftest import WORDS, cli_args

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SEQ_LEN = 32
TINY_TEXT = ["--data.tokenizer", "bytes", "--data.tokenizer_options", "{}", "--model.overrides",
             f"{{n_layer: 1, n_head: 2, d_model: 32, max_seq_len: {SEQ_LEN}}}"]


def window_multiple_text(folder: Path) -> Path:
    """15 documents of 73 bytes: with val_fraction 0.2 the validation split is 3 documents of bos + 73 + eos, a stream
    of 225 = 7 * 32 + 1 tokens, so its windows of ``SEQ_LEN + 1`` score every target once and drop no tail."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(15):
        words = " ".join(rng.choices(WORDS["animals"], k=40))
        (folder / f"{i:02d}.txt").write_text(words[:73])
    return folder


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Path, Path, float]:
    """(root, data folder, val/bpu) of a byte-level model fitted for 10 steps, its export under root/run/export."""
    root = tmp_path_factory.mktemp("text")
    data = window_multiple_text(root / "text")
    cli = run_training_cli(cli_args("fit", root, data, *TINY_TEXT, steps=10))
    return root, data, cli.trainer.callback_metrics["val/bpu"].item()


def val_documents(val_tokens: np.ndarray, bos: int, eos: int) -> list[list[int]]:
    """The validation stream cut back into its documents (each bos … eos)."""
    ends = [i + 1 for i, token in enumerate(val_tokens.tolist()) if token == eos]
    starts = [0, *ends[:-1]]
    documents = [val_tokens[s:e].tolist() for s, e in zip(starts, ends)]
    assert all(d[0] == bos for d in documents) and ends[-1] == len(val_tokens)
    return documents


def printed_bits_per_unit(out: str, unit: str) -> float:
    return float(re.search(rf"bits per {unit}\s*│\s*([\d.]+)", out).group(1))


def test_baselines_match_a_direct_unigram_and_armm_validate(text_run, capsys):
    root, data, val_bpu = text_run
    export = root / "run" / "export" / "final"
    rows = run_baselines(cli_args("baselines", root, data, *TINY_TEXT, "--trained", str(export))[1:])
    assert "| unigram (training-split frequencies)" in capsys.readouterr().out  # a Markdown table
    module = run_training_cli(cli_args("validate", root, data, *TINY_TEXT))
    datamodule = module.datamodule
    untrained_bpu = module.trainer.callback_metrics["val/bpu"].item()

    train, val = np.asarray(datamodule.train_tokens), np.asarray(datamodule.val_tokens)
    counts = np.bincount(train[1:], minlength=259) + 1.0
    windows = min(4 * 8, (len(val) - 1) // SEQ_LEN)  # limit_val_batches 4 of 8 windows, disjoint
    targets = val[1:1 + windows * SEQ_LEN]
    unigram = -np.log(counts[targets] / counts.sum()).mean() / math.log(2)
    assert [row.tokens for row in rows] == [len(targets)] * 3
    assert rows[0].bits_per_token == pytest.approx(unigram, rel=1e-6)  # float32 cross-entropy
    units_per_token = datamodule.meta["val"]["units"] / (len(val) - 1)
    assert rows[1].bits_per_token / units_per_token == pytest.approx(untrained_bpu, abs=1e-4)
    assert rows[2].bits_per_token / units_per_token == pytest.approx(val_bpu, abs=1e-4)


def test_score_with_layout_packed_equals_val_bpu(text_run, tmp_path, capsys):
    root, _, val_bpu = text_run
    export = root / "run" / "export" / "final"
    model, tok = armm.load_model(export)
    cache = next(p for p in (root / "cache").iterdir() if (p / "meta.json").is_file())
    documents = val_documents(np.load(cache / "val.npy"), tok.bos_id, tok.eos_id)
    assert sum(map(len, documents)) % SEQ_LEN == 1  # every target scored by validation: no tail is left out
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    tok.write([tok.decode(d) for d in documents], held_out / "doc")
    main(["score", str(export), "--file", str(held_out), "--layout", "packed"])
    out = capsys.readouterr().out
    assert printed_bits_per_unit(out, "byte") == pytest.approx(val_bpu, abs=1.5e-4)  # printed to 4 decimals
    main(["score", str(export), "--file", str(held_out)])  # each document alone after bos, no eos: other figures
    assert printed_bits_per_unit(capsys.readouterr().out, "byte") != pytest.approx(val_bpu, abs=1e-3)


def test_score_with_layout_samples_equals_val_bpu_of_an_image_model(tmp_path, capsys):
    args = ["fit", "-c", str(RECIPES / "image.yaml"), "--data.cache_dir", str(tmp_path / "cache"),
            "--model.overrides", "{n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 65}", "--trainer.max_steps", "10",
            "--trainer.val_check_interval", "10", "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    cli = run_training_cli(args)
    val_bpu = cli.trainer.callback_metrics["val/bpu"].item()
    tok, rows = cli.datamodule.tokenizer, np.asarray(cli.datamodule.val_tokens)
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    for i, row in enumerate(rows):
        tok.write([tok.decode(row.tolist())], held_out / f"{i:04d}.png")
    main(["score", str(tmp_path / "run" / "export" / "final"), "--file", str(held_out), "--layout", "samples"])
    assert printed_bits_per_unit(capsys.readouterr().out, "dim") == pytest.approx(val_bpu, abs=1.5e-4)
