"""``armm new-plugin NAME`` writes a package that installs with pip, passes its own tests before any edit and trains
with its recipe; names, folders and installed plugins it would collide with are refused in one line.

The package is installed with ``pip --target`` into a temporary folder, never into the environment running the
tests, and used from subprocesses that find it (and its entry point) through PYTHONPATH.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import load_file

from armm.cli import main
from armm.plugins import DISABLE_AUTOLOAD_ENV, Plugins
from armm.registry import Registry
from armm.scaffold import TEMPLATE, check_unclaimed, plugin_names

ROOT = Path(__file__).resolve().parents[1]
NAME = "scaffolded-demo"  # a dash, so the package name (armm_scaffolded_demo) differs from it
FOLDER_NAME = "scaffold-folder"  # names no installed plugin is likely to claim


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """``armm new-plugin NAME`` run in a fresh folder: the package folder it wrote."""
    root = tmp_path_factory.mktemp("scaffold")
    main(["new-plugin", NAME, "--directory", str(root)])
    return root / NAME


@pytest.fixture(scope="module")
def installed(generated) -> Path:
    """The generated package installed with pip, offline, into a folder of its own: that folder."""
    target = generated.parent / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(generated)],
        capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return target


def run_with(installed: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` with the installed package on the path, plugins autoloaded, on one thread."""
    env = {key: value for key, value in os.environ.items() if key != DISABLE_AUTOLOAD_ENV}
    env |= {"PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)


def error_line(capsys, argv: list[str]) -> str:
    """The one line ``armm ARGV`` reports on stderr as it exits with status 2."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --- the package -----------------------------------------------------------------------------------
def test_the_package_holds_a_tokenizer_its_hooks_tests_a_recipe_and_a_readme(generated):
    files = sorted(path.relative_to(generated).as_posix() for path in generated.rglob("*") if path.is_file())
    assert files == ["README.md", "pyproject.toml", "scaffolded_demo.yaml", "src/armm_scaffolded_demo/__init__.py",
                     "src/armm_scaffolded_demo/plugin.py", "src/armm_scaffolded_demo/sample.txt",
                     "src/armm_scaffolded_demo/tokenizer.py", "tests/test_scaffolded_demo.py"]
    pyproject = load_file(generated / "pyproject.toml")
    assert pyproject["project"]["name"] == "armm-scaffolded-demo"
    assert pyproject["project"]["entry-points"]["armm.plugins"] == {NAME: "armm_scaffolded_demo.plugin"}
    assert "class ScaffoldedDemoTokenizer(armm.Tokenizer)" in (generated / "src/armm_scaffolded_demo/tokenizer.py").read_text()


def test_the_installed_package_passes_its_own_tests(installed, generated, tmp_path):
    """The package's tests, the contract suite among them, run as its author would (pytest FOLDER)."""
    result = run_with(installed, ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(generated)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed[1]) >= 16 and "skipped" not in result.stdout, result.stdout[-500:]


def test_its_recipe_trains_two_steps_and_the_model_samples_through_the_plugin(installed, generated):
    """``armm fit -c RECIPE`` on the plugin's sample dataset with a tiny model, then ``armm sample`` of the export."""
    tiny = '{"n_layer": 1, "n_head": 2, "d_model": 32}'
    fit = run_with(installed, ["-m", "armm.cli", "fit", "-c", "scaffolded_demo.yaml", "--trainer.max_steps", "2",
                               "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
                               "--trainer.enable_progress_bar", "false", "--model.overrides", tiny], cwd=generated)
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    export = generated / "runs" / NAME / "export" / "final"
    assert (export / "tokenizer" / "scaffolded_demo.json").is_file()
    sample = run_with(installed, ["-m", "armm.cli", "sample", str(export), "--prompt", "abc", "--max-new-tokens", "8",
                                  "--sampler", "temperature=1", "--seed", "0"], cwd=generated)
    assert sample.returncode == 0, sample.stdout[-3000:] + sample.stderr[-3000:]
    text = sample.stdout.strip()
    assert text.startswith("abc") and len(text) <= 3 + 8 and set(text) <= set("abcdefghijklmnopqrstuvwxyz "), text


def test_every_template_file_ships_with_armm():
    """setuptools packs what the package-data globs of pyproject.toml match (recursively), nothing else."""
    patterns = load_file(ROOT / "pyproject.toml")["tool"]["setuptools"]["package-data"]["armm"]
    shipped = {Path(p) for pattern in patterns for p in glob.glob(str(ROOT / "armm" / pattern), recursive=True)}
    templates = {path for path in TEMPLATE.rglob("*") if path.is_file()}
    assert templates and templates <= shipped


# --- names and folders -----------------------------------------------------------------------------
def test_a_name_gives_the_package_class_distribution_and_dataset_names():
    names = plugin_names("chess-moves")
    assert (names.module, names.package, names.distribution, names.class_name, names.dataset) == (
        "chess_moves", "armm_chess_moves", "armm-chess-moves", "ChessMovesTokenizer", "chess-moves-sample")


@pytest.mark.parametrize("name", ["Chess", "2d", "chess moves", "chess--moves", "chess-", "_chess", "échecs", "a.b"])
def test_an_unusable_name_is_refused_in_one_line(name, tmp_path, capsys):
    err = error_line(capsys, ["new-plugin", name, "--directory", str(tmp_path)])
    assert f"plugin name {name!r} is not usable: use lower-case letters" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("name", "taken"), [
    ("bytes", "the tokenizer 'bytes' is taken by armm (built-in)"),  # a tokenizer armm registers itself
    ("text", "the entry point 'text' of the armm.plugins group is taken by armm "),  # pluggy would skip a second
])
def test_a_name_an_installed_plugin_uses_is_refused(name, taken, tmp_path, capsys):
    err = error_line(capsys, ["new-plugin", name, "--directory", str(tmp_path)])
    assert taken in err and err.endswith("choose another plugin name")
    assert not any(tmp_path.iterdir())


def fake_plugins(tokenizer_provider: str, dataset_provider: str | None = None) -> Plugins:
    """Registries holding a tokenizer ``chess`` (and the dataset ``chess-sample``) from the given distributions."""
    tokenizers, datasets = Registry("tokenizer"), Registry("dataset")
    tokenizers.add("chess", object, provider=tokenizer_provider)
    if dataset_provider is not None:
        datasets.add("chess-sample", object, provider=dataset_provider)
    return Plugins(tokenizers=tokenizers, samplers=Registry("sampler"), datasets=datasets)


def test_the_plugins_own_names_are_not_taken_when_it_is_installed_itself(monkeypatch):
    """Regenerating an installed plugin (--overwrite) is allowed; another distribution's claim on a name is not."""
    monkeypatch.setattr("armm.scaffold.entry_points", lambda group: [])
    monkeypatch.setattr("armm.scaffold.get_plugins", lambda: fake_plugins("Armm_Chess 0.1.0", "armm-chess 0.2.0"))
    check_unclaimed(plugin_names("chess"))
    monkeypatch.setattr("armm.scaffold.get_plugins", lambda: fake_plugins("armm-chess 0.1.0", "chess-data 1.0"))
    with pytest.raises(ValueError, match="the dataset 'chess-sample' is taken by chess-data 1.0"):
        check_unclaimed(plugin_names("chess"))


def test_an_existing_folder_is_written_into_only_with_overwrite_and_keeps_other_files(tmp_path, capsys):
    folder = tmp_path / FOLDER_NAME
    folder.mkdir()
    (folder / "notes.md").write_text("mine")
    err = error_line(capsys, ["new-plugin", FOLDER_NAME, "--directory", str(tmp_path)])
    assert err == f"error: {folder} already exists: pass --overwrite to replace it, or choose another path"
    assert [path.name for path in folder.iterdir()] == ["notes.md"]
    main(["new-plugin", FOLDER_NAME, "--directory", str(tmp_path), "--overwrite"])
    (folder / "scaffold_folder.yaml").write_text("edited")
    main(["new-plugin", FOLDER_NAME, "--directory", str(tmp_path), "--overwrite"])
    assert (folder / "notes.md").read_text() == "mine"
    assert "tokenizer: scaffold-folder\n" in (folder / "scaffold_folder.yaml").read_text()  # no longer "edited"
    assert "wrote" in capsys.readouterr().out


def test_a_file_where_the_folder_would_go_is_never_replaced(tmp_path, capsys):
    (tmp_path / FOLDER_NAME).write_text("mine")
    err = error_line(capsys, ["new-plugin", FOLDER_NAME, "--directory", str(tmp_path), "--overwrite"])
    assert err == f"error: {tmp_path / FOLDER_NAME} is a file, not a folder: choose another plugin name or --directory"
    assert (tmp_path / FOLDER_NAME).read_text() == "mine"
