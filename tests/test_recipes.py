"""Every recipe in recipes/ parses, keeps its outputs under its own run folder, and trains a few steps end to end
(with a tiny model, tokenizer and VQ-VAE) on its built-in dataset; a fine-tuning recipe starts from a tiny run of the
recipe whose export its ``model.init_from`` names."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

import armm
from armm.cli import main

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
TINY_MODEL = {"n_layer": 1, "n_head": 2, "d_model": 32}
TINY_TOKENIZER = {
    "text-bpe": {"vocab_size": 300}, "code-bpe": {"vocab_size": 300}, "image-vq": {"fit_steps": 2},
    "audio-codec": {"fit_steps": 2, "channels": 16, "layers": 1},
}  # fmt: skip


def tiny_tokenizer_options(tokenizer: str, options: dict) -> dict:
    """``options`` of ``tokenizer`` shrunk by ``TINY_TOKENIZER``; a mixed layout's parts each shrunk the same way."""
    if tokenizer == "mixed":
        parts = {name: {**part, "options": tiny_tokenizer_options(part["tokenizer"], part.get("options") or {})}
                 for name, part in options["parts"].items()}  # fmt: skip
        return {**options, "parts": parts}
    return {**options, **TINY_TOKENIZER.get(tokenizer, {})}


def load_recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def tiny_overrides(recipe: dict) -> list[str]:
    """Command-line overrides that keep the recipe's data and layout but shrink the run to seconds."""
    data = recipe["data"]
    model = {**(recipe["model"].get("overrides") or {}), **TINY_MODEL}
    options = tiny_tokenizer_options(data["tokenizer"], data.get("tokenizer_options") or {})
    return [
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1", "--model.warmup_steps", "1",
        "--model.overrides", json.dumps(model), "--data.tokenizer_options", json.dumps(options),
    ]  # fmt: skip


@pytest.fixture(params=RECIPES, ids=lambda path: path.stem)
def recipe(request) -> Path:
    return request.param


def test_every_recipe_documents_its_command_and_writes_under_its_own_run_folder(recipe):
    config = load_recipe(recipe)
    run = config["trainer"]["default_root_dir"]
    assert f"armm fit -c recipes/{recipe.name}" in recipe.read_text()
    assert run == f"runs/{recipe.stem}"
    paths = [item["init_args"].get(key) for section in ("logger", "callbacks") for item in config["trainer"][section]
             for key in ("save_dir", "dirpath")]  # fmt: skip
    assert all(path.startswith(run) for path in paths if path is not None)


def pretrain(init_from: str) -> None:
    """Run, shrunk, the recipe whose run folder holds ``init_from`` (``runs/text/export/best``: text.yaml)."""
    (upstream,) = [path for path in RECIPES if init_from.startswith(load_recipe(path)["trainer"]["default_root_dir"] + "/")]
    main(["fit", "-c", str(upstream), *tiny_overrides(load_recipe(upstream))])
    assert Path(init_from, "config.json").is_file()


def test_recipe_parses_and_trains_a_few_steps(recipe, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)  # every path in a recipe is relative: the run lands in tmp_path/runs/
    config = load_recipe(recipe)
    if config["model"].get("init_from"):
        pretrain(config["model"]["init_from"])
        capsys.readouterr()  # the upstream run's output is not this recipe's printed config
    args = ["fit", "-c", str(recipe), *tiny_overrides(config)]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--print_config"])
    assert exited.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["overrides"] == {**(config["model"].get("overrides") or {}), **TINY_MODEL}
    assert printed["data"]["dataset"] == config["data"]["dataset"]

    main(args)
    run = tmp_path / config["trainer"]["default_root_dir"]
    model, tokenizer = armm.load_model(run / "export" / "final")
    assert tokenizer.name == config["data"]["tokenizer"] and model.config.vocab_size == tokenizer.vocab_size
    assert model.config.n_layer == 1
    (metrics,) = run.glob("logs/version_*/metrics.csv")
    with open(metrics, newline="") as handle:
        bpu = [float(row["val/bpu"]) for row in csv.DictReader(handle) if row.get("val/bpu")]
    assert len(bpu) == 1 and math.isfinite(bpu[0]) and bpu[0] > 0
    assert list((run / "samples" / "step-2").glob(f"sample*{tokenizer.file_suffix}"))
