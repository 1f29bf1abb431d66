"""Training end to end: learning, export/reload parity, exact resume, and errors before any step runs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import armm
from armm.cli import main
from armm.training.callbacks import ExportModel
from armm.training.data import TokenDataModule
from armm.training.module import ARModule, warmup_cosine

TINY = {"n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 64}


class RecordLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])


class StopAt(L.Callback):
    """Stops the run after ``step`` optimizer steps, as a crash or a Ctrl-C would part-way."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def make_data(root: Path, **overrides) -> TokenDataModule:
    options = dict(tokenizer="bytes", dataset="pydoc-topics", seq_len=32, batch_size=8, val_fraction=0.1,
                   cache_dir=root / "cache", seed=0)
    return TokenDataModule(**{**options, **overrides})


def make_trainer(root: Path, max_steps: int, callbacks=(), **overrides) -> L.Trainer:
    options = dict(default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, val_check_interval=max_steps,
                   check_val_every_n_epoch=None, limit_val_batches=4, num_sanity_val_steps=0,
                   use_distributed_sampler=False, callbacks=list(callbacks), enable_checkpointing=False)
    return L.Trainer(**{**options, **overrides})


def test_warmup_then_cosine_schedule():
    assert [round(warmup_cosine(s, 4, 14, 0.1), 4) for s in (0, 3)] == [0.25, 1.0]
    assert warmup_cosine(4, 4, 14, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(9, 4, 14, 0.1) == pytest.approx(0.55)  # halfway down the cosine
    assert warmup_cosine(14, 4, 14, 0.1) == pytest.approx(0.1) == warmup_cosine(50, 4, 14, 0.1)


def test_the_compiled_loss_equals_the_eager_loss_and_its_gradient():
    from armm.training.data import IGNORE_INDEX
    from armm.training.module import next_token_loss

    logits = torch.randn(3, 7, 50, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    targets[0, :4] = IGNORE_INDEX  # masked positions, as a prompt's or padding's
    eager = next_token_loss(logits, targets)
    (expected,) = torch.autograd.grad(eager, logits)
    compiled = torch.compile(next_token_loss)(logits, targets)
    (got,) = torch.autograd.grad(compiled, logits)
    assert compiled.dtype == torch.float32
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=1e-3)  # a bfloat16 gradient


def test_weight_decay_skips_biases_and_norms(tmp_path):
    module = ARModule(preset="gpt2-tiny", overrides=TINY, vocab_size=259)
    module.trainer = make_trainer(tmp_path, 10)  # estimated_stepping_batches needs a trainer
    optim = module.configure_optimizers()["optimizer"]
    decay, no_decay = optim.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.parameters()))


def test_a_short_run_learns_and_its_export_reloads_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    module = ARModule(preset="gpt2-tiny", overrides=TINY, warmup_steps=5,
                      optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}})
    data = make_data(tmp_path)
    untrained_val = None
    trainer = make_trainer(tmp_path, 60, callbacks=[ExportModel()])
    untrained_val = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer = make_trainer(tmp_path, 60, callbacks=[ExportModel()])
    trainer.fit(module, datamodule=data)
    trained_val = trainer.callback_metrics["val/loss"].item()
    assert untrained_val > math.log(200) and trained_val < untrained_val - 2.0  # well below uniform over bytes
    assert trainer.callback_metrics["val/bpu"].item() == pytest.approx(trained_val / math.log(2), rel=0.05)

    loaded, tok = armm.load_model(tmp_path / "export" / "final")
    ids = torch.randint(0, 259, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), module.transformer.eval()(ids), rtol=0, atol=0)
    assert tok.name == "bytes" and (tmp_path / "export" / "best" / "model.safetensors").is_file()
    text = tok.decode(armm.generate(loaded, [[tok.bos_id, *tok.encode("The ")]], max_new_tokens=20)[0])
    assert isinstance(text, str) and text


def test_a_resumed_run_continues_exactly_where_it_stopped(tmp_path):
    def run(root: Path, stop: int | None, ckpt_path: str | None = None) -> dict[int, float]:
        torch.manual_seed(0)
        module = ARModule(preset="gpt2-tiny", overrides=TINY, warmup_steps=3)
        record = RecordLosses()
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=4)
        callbacks = [record, checkpoint] + ([StopAt(stop)] if stop else [])
        trainer = make_trainer(root, 16, callbacks, enable_checkpointing=True, limit_val_batches=0)
        trainer.fit(module, datamodule=make_data(tmp_path), ckpt_path=ckpt_path)
        return record.losses

    straight = run(tmp_path / "straight", stop=None)
    first_half = run(tmp_path / "resumed", stop=8)
    assert max(first_half) == 8
    second_half = run(tmp_path / "resumed", stop=None, ckpt_path=str(tmp_path / "resumed" / "ckpt" / "last.ckpt"))
    assert sorted(second_half) == list(range(9, 17))  # the step count continues; nothing is repeated
    for step, loss in {**first_half, **second_half}.items():
        assert loss == pytest.approx(straight[step], abs=1e-5), step


def test_ddp_with_two_processes_on_cpu_trains(tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "text.yaml"
    command = [
        sys.executable, "-m", "armm.cli", "fit", "-c", str(recipe),
        "--data.tokenizer", "bytes", "--data.tokenizer_options", "{}", "--data.seq_len", "32", "--data.batch_size", "4",
        "--model.overrides", str(TINY), "--model.warmup_steps", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--trainer.max_steps", "40", "--trainer.val_check_interval", "40",
        "--trainer.limit_val_batches", "2", "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size=2" in result.stdout + result.stderr or "GLOBAL_RANK: 1" in result.stdout + result.stderr
    model, tok = armm.load_model(tmp_path / "run" / "export" / "final")
    ids = [tok.bos_id, *tok.encode("The Python language reference")]
    assert armm.score(model, ids).bits_per_token < 7.0  # learned something: uniform over bytes is 8.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--data.path", "no/such/folder", "--data.dataset", "null"], "data.path no/such/folder does not exist"),
        (["--data.path", "{empty}", "--data.dataset", "null"], "no text files"),
        (["--data.seq_len", "128", "--model.overrides", str(TINY)], "data.seq_len=128 is larger than the model's context"),
        (["--data.dataset", "wikipedia"], "unknown dataset 'wikipedia'; available: .*pydoc-topics"),
    ],
)
def test_bad_setups_fail_with_a_clear_error_before_training(tmp_path, capsys, overrides, message):
    (tmp_path / "empty").mkdir()
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "text.yaml"
    args = ["fit", "-c", str(recipe), "--data.tokenizer", "bytes", "--data.tokenizer_options", "{}",
            "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache"),
            *[o.replace("{empty}", str(tmp_path / "empty")) for o in overrides]]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err[-2000:]
    assert not (tmp_path / "run" / "export").exists()


def test_an_unknown_recipe_key_is_refused(tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "text.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(recipe), "--data.sequence_length", "64"])
    assert exit_info.value.code == 2
    assert "sequence_length" in capsys.readouterr().err
