"""The command line chooses the progress bar of any recipe: off, the recipe's, or another one added."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

import armm
from armm.cli import main
from armm.training.cli import run_training_cli
from tests.conftest import tiny_recipe
from tests.test_recipes import RECIPES, load_recipe, tiny_overrides


def built_trainer(recipe: Path, *overrides: str):
    """The trainer ``armm fit -c recipe`` would build with ``overrides`` (shrunk to a tiny model, nothing run); a
    fine-tuning recipe starts from scratch here, since its pretrained folder does not exist."""
    args = ["-c", str(recipe), *tiny_overrides(load_recipe(recipe)), "--model.init_from", "null", *overrides]
    return run_training_cli(args, run=False).trainer


def bars(trainer) -> list[type]:
    return [type(callback) for callback in trainer.callbacks if isinstance(callback, ProgressBar)]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_every_recipe_turns_its_progress_bar_off_or_swaps_it_from_the_command_line(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bars(built_trainer(recipe)) == [RichProgressBar]
    assert bars(built_trainer(recipe, "--trainer.enable_progress_bar", "false")) == []
    assert bars(built_trainer(recipe, "--trainer.callbacks+=TQDMProgressBar")) == [TQDMProgressBar]


def test_armm_fit_trains_with_the_recipes_progress_bar_turned_off(tmp_path):
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"{i}.txt").write_text(f"document {i}: the cat sat on the mat. " * 8)
    rich = {"class_path": "lightning.pytorch.callbacks.RichProgressBar"}
    recipe = tiny_recipe(tmp_path, max_steps=1, limit_val_batches=1, enable_checkpointing=False,
                         enable_progress_bar=True, callbacks=[rich])
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))
    main(["fit", "-c", str(tmp_path / "recipe.yaml"), "--trainer.enable_progress_bar", "false"])
    assert armm.load_model(tmp_path / "run" / "export" / "final")[0].config.n_layer == 1
