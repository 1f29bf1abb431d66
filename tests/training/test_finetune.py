"""Fine-tuning (``model.init_from``) from a recipe: a Hugging Face folder or an armm export is the starting point, its
tokenizer tokenises the data, and the export keeps its chat template; wrong setups fail before any step."""

from __future__ import annotations

import json
import re
import shutil

import lightning as L
import pytest
import torch
import torch.nn.functional as F

import armm
from armm.cli import main
from armm.hf import load_hf
from armm.training.cli import run_training_cli
from armm.training.data import IGNORE_INDEX, TokenDataModule
from armm.training.module import ARModule
from tests.training.conftest import CHAT_TEMPLATE, cli_args, write_text

TINY = {"n_layer": 1, "n_head": 2, "d_model": 32, "max_seq_len": 64, "dropout": 0.0}


def val_loss(args: list[str]) -> float:
    return run_training_cli(args).trainer.callback_metrics["val/loss"].item()


def test_fine_tuning_an_imported_hugging_face_model_lowers_its_loss_on_new_text(hf_folder, tmp_path, one_thread):
    import transformers

    data = write_text(tmp_path / "text", "animals")
    pretrained = ["--model.init_from", str(hf_folder), "--model.overrides", "null"]
    before = run_training_cli(cli_args("validate", tmp_path, data, *pretrained))
    # the reference: transformers' own model scores the same validation windows
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for batch in list(before.datamodule.val_dataloader())[:4]:
            logits = hf(batch["input_ids"]).logits
            nats += F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="sum").item()
            tokens += int((batch["targets"] != IGNORE_INDEX).sum())
    untrained = before.trainer.callback_metrics["val/loss"].item()
    assert untrained == pytest.approx(nats / tokens, abs=1e-4)

    cli = run_training_cli(cli_args("fit", tmp_path, data, *pretrained, steps=30))
    assert cli.trainer.callback_metrics["val/loss"].item() < untrained - 1.0

    export = tmp_path / "run" / "export" / "final"
    model, tokenizer = armm.load_model(export)
    assert model.config == load_hf(hf_folder)[0].config  # the network is the pretrained one
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), cli.model.transformer.eval()(ids), rtol=0, atol=0)
    text = "the quick brown fox"
    assert tokenizer.encode(text) == load_hf(hf_folder)[1].encode(text)
    assert (export / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert json.loads((export / "tokenizer" / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE


def test_fine_tuning_an_armm_export_on_other_text(tmp_path, one_thread):
    base_args = ["--data.tokenizer_options", '{"vocab_size": 300}', "--model.overrides", json.dumps(TINY)]
    animals = write_text(tmp_path / "animals", "animals")
    run_training_cli(cli_args("fit", tmp_path / "base", animals, *base_args, steps=20))
    base = tmp_path / "base" / "run" / "export" / "best"
    (base / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (base / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))

    # the recipe's overrides may repeat the pretrained config; dropout alone may change
    pretrained = ["--model.init_from", str(base), "--model.overrides", json.dumps({**TINY, "dropout": 0.1})]
    numbers = write_text(tmp_path / "numbers", "numbers")
    before = val_loss(cli_args("validate", tmp_path, numbers, *pretrained))
    cli = run_training_cli(cli_args("fit", tmp_path, numbers, *pretrained, steps=20))
    assert cli.trainer.callback_metrics["val/loss"].item() < before - 0.5

    export = tmp_path / "run" / "export" / "final"
    model, tokenizer = armm.load_model(export)
    base_model, base_tokenizer = armm.load_model(base)
    assert model.config.to_dict() == {**base_model.config.to_dict(), "dropout": 0.1}
    assert tokenizer.encode("one plus two") == base_tokenizer.encode("one plus two")
    assert (export / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert (export / "tokenizer" / "tokenizer_config.json").read_text() == json.dumps({"chat_template": CHAT_TEMPLATE})


def fails(args: list[str], capsys) -> str:
    """The one-line error ``armm`` prints for ``args``, which must exit with code 2 before any step."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_a_data_tokenizer_other_than_the_pretrained_one_is_refused(hf_folder, tmp_path, capsys):
    args = cli_args("fit", tmp_path, write_text(tmp_path / "text", "animals"), "--model.init_from", str(hf_folder),
                    "--model.overrides", "null", "--data.tokenizer", "bytes", steps=5)
    assert re.search(r"data.tokenizer is 'bytes' but the pretrained model .* its tokenizer 'text-bpe'; set "
                     r"data.tokenizer: text-bpe", fails(args, capsys))
    assert not (tmp_path / "run" / "export").exists()


def test_conflicting_overrides_are_refused(hf_folder, tmp_path, capsys):
    text = write_text(tmp_path / "text", "animals")
    args = cli_args("fit", tmp_path, text, "--model.init_from", str(hf_folder), steps=5)
    err = fails(args, capsys)  # recipes/text.yaml's overrides describe another network
    assert "conflict with the config of model.init_from" in err and "'n_layer': 2" in err
    assert "--model.overrides null" in err


@pytest.mark.parametrize("kind", ["hf", "armm"])
def test_a_pretrained_folder_without_its_tokenizer_is_refused(kind, hf_folder, tmp_path, capsys):
    folder = tmp_path / "pretrained"
    if kind == "hf":
        shutil.copytree(hf_folder, folder, ignore=shutil.ignore_patterns("tokenizer*"))
        missing = "has no tokenizer.json"
    else:
        armm.save_model(folder, load_hf(hf_folder)[0])
        missing = "has no tokenizer/"
    args = cli_args("fit", tmp_path, write_text(tmp_path / "text", "animals"), "--model.init_from", str(folder),
                    "--model.overrides", "null", steps=5)
    assert f"{folder} {missing}" in fails(args, capsys)


def test_the_model_refuses_data_not_tokenised_for_it(hf_folder, tmp_path):
    """Outside armm fit nothing links the two: the module checks what the data module tokenises with."""
    data = write_text(tmp_path / "text", "animals")
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    bytes_data = TokenDataModule(tokenizer="bytes", path=str(data), seq_len=32, cache_dir=tmp_path / "cache")
    folder = re.escape(str(hf_folder))
    with pytest.raises(ValueError, match=f"model.init_from is {folder} but the data are tokenised by data.tokenizer "
                                         f"'bytes'.* set data.pretrained to {folder}"):
        trainer.fit(ARModule(init_from=hf_folder), datamodule=bytes_data)
    with pytest.raises(ValueError, match="the data's tokenizer 'bytes' has 259 ids but the model's vocab_size is 100"):
        trainer.fit(ARModule(preset="gpt2-tiny", vocab_size=100), datamodule=bytes_data)
