"""Hostile files: loading never runs code from a file, and nothing armm writes leaves its folder.

Every loader armm has is given a pickle that would create a marker file when unpickled (planted in a Lightning
checkpoint, in ``model.safetensors``, in Hugging Face and image-vq weights, in the data cache); each load is refused
with a clear error and the marker never appears. Elsewhere: chat templates that reach Python internals are refused
by the sandbox (tests/test_chat.py::test_the_sandbox_refuses_templates_that_reach_python_internals; here through the
server, from a model directory's own template), a layout part named like a path is refused
(tests/test_layout.py::test_loading_a_layout_that_names_a_part_outside_its_folder_is_refused), and ``armm sample
--output`` numbers its files beside the output (tests/test_cli.py::test_sample_writes_files_in_the_modality_format).
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch  # noqa: F401  (imported at collection: its log handler must not keep a test's stderr)
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import armm
from armm.chat import template_for_model
from armm.cli import main
from armm.hf import load_hf
from armm.layout import VocabLayout
from armm.serving.app import create_app
from armm.serving.engine import Engine
from armm.training.callbacks import ExportModel, WriteSamples
from armm.training.data import TokenDataModule
from armm_image import PixelTokenizer, VQTokenizer
from armm_text import BPETokenizer
from tests.conftest import tiny_recipe

VQ_OPTIONS = dict(size=4, channels=1, downsample=2, codebook_size=8, code_dim=4, hidden=8, res_blocks=1)


class Payload:
    """Unpickling this runs code: it creates ``marker``, as a malicious file would run ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "pwned"


def plant(path: Path, marker: Path, form: str) -> Path:
    """Write a payload at ``path`` as a bare pickle or as a ``torch.save`` archive."""
    if form == "pickle":
        path.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    else:
        torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    return path


def test_the_payload_runs_when_it_is_unpickled(marker):
    """The control: without armm's defences, loading the planted file would have created the marker."""
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.is_file()


def run_cli(args: list, capsys) -> str:
    """Run armm; it must fail as a user mistake does (exit 2, one error line, no traceback) → that line."""
    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


# --- weights: safetensors only ----------------------------------------------------------------------------------------
def model_dir(path: Path, tokenizer: armm.Tokenizer | None = None) -> Path:
    config = armm.ModelConfig.from_name("gpt2-tiny", vocab_size=tokenizer.vocab_size if tokenizer else 256)
    return armm.save_model(path, armm.Transformer(config), tokenizer)


def hf_dir(path: Path, weights_file: str) -> Path:
    path.mkdir()
    config = {"architectures": ["GPT2LMHeadModel"], "n_layer": 1, "n_head": 2, "n_embd": 8, "vocab_size": 16,
              "n_positions": 16}
    (path / "config.json").write_text(json.dumps(config))
    return path / weights_file


LOADERS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], object], type[Exception], str]] = {
    # name: (make a folder and return the file to plant, load the folder, error, message)
    "load_model": (lambda tmp: model_dir(tmp / "m") / "model.safetensors", lambda tmp: armm.load_model(tmp / "m"),
                   ValueError, "is corrupt or not a safetensors file"),
    "load_model, image-vq tokenizer": (
        lambda tmp: model_dir(tmp / "m", VQTokenizer(**VQ_OPTIONS)) / "tokenizer" / "image_vq.safetensors",
        lambda tmp: armm.load_model(tmp / "m"), ValueError, "is not a VQ-VAE matching"),
    "load_hf": (lambda tmp: hf_dir(tmp / "hf", "model.safetensors"), lambda tmp: load_hf(tmp / "hf"), ValueError,
                "cannot read the safetensors file"),
    "load_hf, pytorch_model.bin": (lambda tmp: hf_dir(tmp / "hf", "pytorch_model.bin"), lambda tmp: load_hf(tmp / "hf"),
                                   FileNotFoundError, "armm never unpickles"),
}


@pytest.mark.parametrize("form", ["pickle", "torch.save"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_pickle_in_place_of_weights_is_refused_and_never_runs(loader, form, tmp_path, marker):
    make, load, error, message = LOADERS[loader]
    plant(make(tmp_path), marker, form)
    with pytest.raises(error, match=message):
        load(tmp_path)
    assert not marker.exists()


def test_armm_sample_refuses_planted_weights(tmp_path, marker, capsys):
    plant(model_dir(tmp_path / "m", armm.ByteTokenizer()) / "model.safetensors", marker, "torch.save")
    assert "is corrupt or not a safetensors file" in run_cli(["sample", tmp_path / "m"], capsys)
    assert not marker.exists()


# --- Lightning checkpoints: resuming `armm fit` ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    """Two steps of a tiny `armm fit` that keeps ``ckpt/last.ckpt``: a real checkpoint to resume from, or to poison."""
    root = tmp_path_factory.mktemp("run")
    (root / "data").mkdir()
    for i in range(3):
        (root / "data" / f"{i}.txt").write_text(f"document {i}: the cat sat on the mat. " * 8)
    recipe = tiny_recipe(root, max_steps=2, limit_val_batches=1, callbacks=[
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(root / "run" / "ckpt"), "save_last": True}}])
    (root / "recipe.yaml").write_text(json.dumps(recipe))
    main(["fit", "-c", str(root / "recipe.yaml")])
    last = root / "run" / "ckpt" / "last.ckpt"
    return SimpleNamespace(recipe=root / "recipe.yaml", last=last, checkpoint=torch.load(last, weights_only=True))


def test_a_checkpoint_armm_wrote_resumes_through_the_cli(run, tmp_path):
    """weights_only=True and the pre-check accept everything `armm fit` itself saves."""
    good = shutil.copy(run.last, tmp_path / "good.ckpt")
    main(["fit", "-c", str(run.recipe), "--ckpt_path", str(good), "--trainer.max_steps", "3",
          "--trainer.default_root_dir", str(tmp_path / "resumed"), "--trainer.callbacks", "[]",
          "--trainer.enable_checkpointing", "false"])
    model, _ = armm.load_model(tmp_path / "resumed" / "export" / "final")
    assert model.config.n_layer == 1


def test_a_checkpoint_with_a_planted_pickle_is_refused_before_lightning_reads_it(run, tmp_path, marker, capsys):
    poisoned = tmp_path / "poisoned.ckpt"
    torch.save({**run.checkpoint, "payload": Payload(marker)}, poisoned)
    line = run_cli(["fit", "-c", run.recipe, "--ckpt_path", poisoned], capsys)
    assert "was refused: loading it would import builtins.exec" in line
    assert not marker.exists()


def test_a_checkpoint_lightning_finds_itself_loads_with_weights_only_even_when_torch_is_told_otherwise(
        run, tmp_path, marker, capsys, monkeypatch):
    """`--ckpt_path last` is resolved by Lightning, past armm's pre-check; torch's own switch to unpickle freely
    (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) does not apply because armm passes weights_only=True explicitly."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({**run.checkpoint, "payload": Payload(marker)}, folder / "last.ckpt")
    callbacks = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": str(folder), "save_last": True}}])
    line = run_cli(["fit", "-c", run.recipe, "--ckpt_path", "last", "--trainer.callbacks", callbacks,
                    "--trainer.default_root_dir", tmp_path / "run"], capsys)
    assert "the checkpoint was refused: loading it would import exec" in line
    assert not marker.exists()


def test_checkpoint_hyper_parameters_naming_a_class_do_not_build_it(run, tmp_path, marker):
    """A checkpoint's hyper-parameters are merged into the recipe when resuming; an optimizer class named there
    (here one that runs a shell command) is never built: the recipe's own optimizer is linked over it."""
    hostile = {"class_path": "pydoc.pipepager", "init_args": {"cmd": f"touch {marker}"}}
    checkpoint = {**run.checkpoint, "hyper_parameters": {**run.checkpoint["hyper_parameters"], "optimizer": hostile}}
    torch.save(checkpoint, tmp_path / "hparams.ckpt")
    main(["fit", "-c", str(run.recipe), "--ckpt_path", str(tmp_path / "hparams.ckpt"), "--trainer.max_steps", "3",
          "--trainer.default_root_dir", str(tmp_path / "resumed"), "--trainer.callbacks", "[]",
          "--trainer.enable_checkpointing", "false"])
    assert not marker.exists()


# --- the data cache ---------------------------------------------------------------------------------------------------
def test_a_pickle_planted_in_the_data_cache_is_refused(tmp_path, marker):
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"{i}.txt").write_text("the cat sat on the mat. " * 10)
    options = dict(tokenizer="bytes", path=str(tmp_path / "data"), seq_len=8, val_fraction=0.4,
                   cache_dir=tmp_path / "cache")
    first = TokenDataModule(**options)
    first.prepare_data()
    np.save(first.cache_path / "train.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):  # numpy refuses object arrays without unpickling
        TokenDataModule(**options).setup("fit")
    assert not marker.exists()


# --- chat templates, through the server -------------------------------------------------------------------------------
def test_a_model_directory_template_that_reaches_python_internals_is_refused_by_the_server(tmp_path, marker):
    directory = model_dir(tmp_path / "m", armm.ByteTokenizer())
    (directory / "chat_template.jinja").write_text(
        f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}")
    model, tokenizer = armm.load_model(directory)
    before = sorted(directory.rglob("*"))
    app = create_app(Engine(model, tokenizer), "m", template_for_model(directory))
    with TestClient(app) as client:
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        response = client.post("/v1/chat/completions", json=chat)
        assert response.status_code == 400 and "refused by the sandbox" in response.json()["error"]["message"]
        assert client.post("/v1/completions", json={"model": "../../m", "prompt": "a"}).status_code == 404
    assert not marker.exists()
    assert sorted(directory.rglob("*")) == before  # the server writes nothing


# --- paths stay inside their folder -----------------------------------------------------------------------------------
def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


def test_a_tokenizer_name_read_from_a_model_directory_is_never_used_as_a_path(tmp_path):
    directory = model_dir(tmp_path / "m", armm.ByteTokenizer())
    meta = directory / "tokenizer" / "armm_tokenizer.json"
    meta.write_text(json.dumps({"name": "../../../m/tokenizer", "vocab_size": 259}))
    with pytest.raises(ValueError, match="unknown tokenizer '../../../m/tokenizer'"):
        armm.load_model(directory)


def fitted_bpe() -> BPETokenizer:
    tokenizer = BPETokenizer(vocab_size=270)
    tokenizer.fit(["the cat sat on the mat " * 20])
    return tokenizer


@pytest.mark.parametrize("make", [
    armm.ByteTokenizer, fitted_bpe, lambda: VQTokenizer(**VQ_OPTIONS),
    lambda: VocabLayout({"text": armm.ByteTokenizer(), "image": PixelTokenizer(size=2, channels=1, bits=2)}),
], ids=["bytes", "text-bpe", "image-vq", "mixed"])
def test_save_model_writes_only_inside_the_model_directory(make, tmp_path):
    model_dir(tmp_path / "out" / "m", make())
    assert all(path.is_relative_to(tmp_path / "out" / "m") for path in files_under(tmp_path))


def test_training_callbacks_write_only_inside_the_run_folder(tmp_path):
    """WriteSamples writes <run>/samples/step-N, ExportModel <run>/export/best: fixed names, whatever the prompt."""
    tokenizer = armm.ByteTokenizer()
    model = armm.Transformer(armm.ModelConfig.from_name("gpt2-tiny", vocab_size=tokenizer.vocab_size))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=3, log_dir=None,
                              default_root_dir=str(tmp_path / "run"), datamodule=SimpleNamespace(tokenizer=tokenizer))
    module = SimpleNamespace(transformer=model, merged_transformer=lambda: model, lora=None, hparams={})
    WriteSamples(num_samples=2, max_new_tokens=4, prompt="../../../escape").on_validation_end(trainer, module)
    ExportModel.export(trainer, module, "best")
    written = files_under(tmp_path)
    assert written and all(path.is_relative_to(tmp_path / "run") for path in written)
    assert {path.relative_to(tmp_path / "run").parts[:2] for path in written} == {("samples", "step-3"),
                                                                                  ("export", "best")}
