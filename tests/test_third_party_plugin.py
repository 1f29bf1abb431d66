"""The plugin tutorial's example (docs/examples/armm-dna) installed for real with pip, offline, then used end to end.

The example is copied to a temporary folder (so the build leaves nothing in the repository) and
installed with ``pip --target``; armm must then find it through its entry point, list it, round-trip
DNA with it, pass the example's own contract tests, and train a tiny model that learns a Markov chain
whose entropy is known exactly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import armm
from armm.cli import main
from armm.plugins import DISABLE_AUTOLOAD_ENV, Plugins

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "armm-dna"
TUTORIAL = ROOT / "docs" / "plugins.md"

FOLLOW = 0.9  # the chain follows A → C → G → T → A with this probability, else picks one of the 3 other bases
ENTROPY = -(FOLLOW * math.log(FOLLOW) + (1 - FOLLOW) * math.log((1 - FOLLOW) / 3))  # nats per base: 0.435
LENGTH = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Models this small train fastest on one thread; on a busy 2-core machine two were 27x slower per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[Path]:
    """``pip install`` a copy of the example into a fresh target folder, and put that folder on sys.path."""
    root = tmp_path_factory.mktemp("third_party")
    source, target = root / "armm-dna", root / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(target))
        mp.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
        yield target
    for module in [m for m in sys.modules if m == "armm_dna" or m.startswith("armm_dna.")]:
        del sys.modules[module]


@pytest.fixture
def plugins(installed) -> Iterator[Plugins]:
    armm.get_plugins.cache_clear()
    yield armm.get_plugins()
    armm.get_plugins.cache_clear()


@pytest.fixture
def tok(plugins):
    return plugins.tokenizers.get("dna")()


def load_example_script(name: str):
    spec = importlib.util.spec_from_file_location(f"armm_dna_example_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_blank_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.strip())


def follow_rate(sequence: str) -> float:
    """The fraction of steps that follow the cycle A → C → G → T → A."""
    steps = list(zip(sequence, sequence[1:]))
    return sum("ACGTA".find(a + b) >= 0 for a, b in steps) / len(steps)


# --- discovery and the CLI -------------------------------------------------------------------------
def test_armm_finds_the_installed_distribution_through_its_entry_point(plugins, installed):
    entry = next(entry for entry in plugins.tokenizers if entry.name == "dna")
    assert entry.provider == "armm-dna 0.1.0"
    assert Path(sys.modules[entry.obj.__module__].__file__).is_relative_to(installed)
    assert (entry.obj.modality, entry.obj.unit, entry.obj.file_suffix) == ("dna", "base", ".txt")


def test_armm_plugins_lists_the_dna_tokenizer_with_its_provider(plugins, capsys):
    main(["plugins"])
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in capsys.readouterr().out.splitlines()]
    assert ["tokenizer", "dna", "armm-dna 0.1.0"] in rows


def test_dna_round_trips_through_ids_and_files(tok, tmp_path):
    samples = ["GATTACA", "ACGTN" * 30, "T"]
    assert [tok.decode([tok.bos_id, *tok.encode(s), tok.eos_id]) for s in samples] == samples
    [path] = tok.write(samples, tmp_path / "reads")
    assert path == tmp_path / "reads.txt" and tok.read(path) == samples


def test_the_example_passes_its_own_contract_tests(installed, tmp_path):
    """The example's tests, run the way its author would, against the installed copy."""
    env = {key: value for key, value in os.environ.items() if key != DISABLE_AUTOLOAD_ENV}
    env["PYTHONPATH"] = str(installed)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(installed.parent / "armm-dna" / "tests")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed[1]) >= 14 and "skipped" not in result.stdout, result.stdout[-500:]


# --- training and sampling -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(installed):
    """A gpt2-tiny model trained by the example's own loop on the Markov chain: (model, tokenizer, script, losses)."""
    armm.get_plugins.cache_clear()
    script = load_example_script("train")
    tok = armm.get_plugins().tokenizers.get("dna")()
    rng = random.Random(0)
    torch.manual_seed(0)
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=tok.vocab_size))
    losses = script.train(model, tok, [script.markov_dna(LENGTH, rng, FOLLOW) for _ in range(512)], steps=60)
    armm.get_plugins.cache_clear()
    return model.eval(), tok, script, losses


def test_a_tiny_model_learns_the_chain_down_to_its_entropy(trained):
    model, tok, script, losses = trained
    assert losses[0] > 0.9 * math.log(tok.vocab_size)  # starts near uniform over the vocabulary
    rng = random.Random(1)  # held-out sequences
    nats = bases = 0.0
    for sequence in (script.markov_dna(LENGTH, rng, FOLLOW) for _ in range(32)):
        logprobs = armm.score(model, [tok.bos_id, *tok.encode(sequence)]).token_logprobs
        nats -= logprobs[1:].sum().item()  # bases 2..64: the first base is uniform by construction
        bases += LENGTH - 1
    assert nats / bases < ENTROPY + 0.05 < 0.5 * math.log(4), f"held-out loss {nats / bases:.4f} nats per base"


def test_samples_decode_to_dna_that_follows_the_pattern(trained, plugins):
    model, tok, _, _ = trained
    new = armm.generate(model, [[tok.bos_id]] * 4, max_new_tokens=LENGTH + 1, sampler="temperature=1",
                        stop_tokens=[tok.eos_id], seed=[0, 1, 2, 3])
    samples = [tok.decode(ids) for ids in new]
    assert len(set(samples)) == 4
    assert all(set(s) <= set("ACGT") for s in samples), samples  # N is never in the training data
    assert sum(map(len, samples)) / len(samples) > LENGTH // 2, samples  # eos comes late on average (at temperature 1
    # one of four samples may still draw it early)
    assert follow_rate("".join(samples)) > 0.8  # 0.9 expected; the sd over ~250 steps is 0.02
    [greedy] = armm.generate(model, [[tok.bos_id, *tok.encode("ACG")]], max_new_tokens=20)
    assert tok.decode(greedy) == ("TACG" * 5)


def test_armm_sample_runs_on_a_saved_dna_model(trained, plugins, tmp_path, capsys):
    model, tok, _, _ = trained
    armm.save_model(tmp_path / "dna-model", model, tok)
    main(["sample", str(tmp_path / "dna-model"), "--prompt", "GTA", "--max-new-tokens", "9"])
    assert capsys.readouterr().out.strip() == "GTACGTACGTAC"
    main(["sample", str(tmp_path / "dna-model"), "--prompt", "c", "--num-samples", "3", "--seed", "0",
          "--sampler", "temperature=1", "--output", str(tmp_path / "generated.txt")])
    generated = tok.read(tmp_path / "generated.txt")
    assert len(generated) == 3 and all(s.startswith("C") and set(s) <= set("ACGT") for s in generated)


# --- the tutorial stays in sync with the example ---------------------------------------------------
def test_every_code_block_of_the_tutorial_is_in_the_example():
    example_files = [path.read_text() for path in EXAMPLE.rglob("*") if path.suffix in (".py", ".toml")]
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", TUTORIAL.read_text(), re.S)
    assert len(blocks) >= 5
    for block in blocks:
        assert any(block in text for text in example_files), f"not in docs/examples/armm-dna:\n{block}"
    quoted = without_blank_lines("".join(blocks))
    for whole_file in ("pyproject.toml", "armm_dna/plugin.py", "armm_dna/tokenizer.py", "tests/test_dna.py"):
        expected = without_blank_lines((EXAMPLE / whole_file).read_text())
        assert expected in quoted, f"the tutorial omits part of {whole_file}"


def test_the_tutorial_explains_every_member_of_the_tokenizer_contract():
    declared = {**vars(armm.Tokenizer), **armm.Tokenizer.__annotations__}  # `name` and `modality` are annotations only
    members = [name for name in declared if not name.startswith("_")]
    missing = [name for name in members if f"`{name}" not in TUTORIAL.read_text()]
    assert not missing and "name" in members and "check_ids" in members


# --- the tutorial's last section: armm fit on the plugin's own files, then armm baselines ------------------------
def test_armm_fit_trains_on_the_plugins_files_and_beats_the_baselines(plugins, tmp_path, monkeypatch, capsys):
    """Section 7 of the tutorial, shortened to 80 steps: files written by ``train.py --reads`` train through the
    plugin's ``read_file``; the held-out reads are recorded; the trained export beats the unigram baseline."""
    monkeypatch.chdir(tmp_path)
    load_example_script("train").write_reads("reads")
    recipe = str(EXAMPLE / "dna.yaml")
    main(["fit", "-c", recipe, "--trainer.max_steps", "80", "--trainer.val_check_interval", "80",
          "--trainer.enable_progress_bar", "false"])
    [meta] = Path("runs/cache").glob("dna-*/meta.json")
    split = json.loads(meta.read_text())
    assert (split["train"]["documents"], split["val"]["documents"]) == (1800, 200)
    held_out = split["split"]["val"]
    assert sum(len(entry["documents"]) for entry in held_out) == 200
    assert {Path(entry["source"]).name for entry in held_out} <= {f"reads-{i}.txt" for i in range(8)}
    capsys.readouterr()
    main(["baselines", "-c", recipe, "--trained", "runs/dna-fit/export/best"])
    rows = {line.split("|")[1].strip(): float(line.split("|")[3]) for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "bits" not in line}
    unigram = next(value for name, value in rows.items() if name.startswith("unigram"))
    trained = next(value for name, value in rows.items() if name.startswith("model"))
    assert 1.9 < unigram < 2.4 and trained < 0.75 * unigram, rows
