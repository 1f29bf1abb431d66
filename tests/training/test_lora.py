"""LoRA (``model.lora``): merged weights give the adapters' logits, only the adapters train and the base stays as it
was, both exports reload (merged: a plain model directory; adapters: with their base), and a LoRA run resumes
exactly from its checkpoint."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import armm
from armm.training.cli import run_training_cli
from armm.training.data import TokenDataModule
from armm.training.lora import (
    DEFAULT_TARGETS, TARGETS, LoraOptions, adapter_layers, add_adapters, load_adapters, merged,
)
from armm.training.module import ARModule
from tests.conftest import tiny_model
from tests.training.conftest import CHAT_TEMPLATE, cli_args, write_text
from tests.training.test_training import RecordLosses, StopAt

pytest.importorskip("peft", reason="LoRA needs peft: pip install 'armm[lora]'")


def randomise_adapters(model: armm.Transformer, seed: int = 0) -> None:
    """Give every adapter random A and B (B starts at zero, which would make any merge trivially right)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def ids(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def armm_base(tmp_path) -> Path:
    """An armm model directory: a random Llama-style model with the byte tokenizer."""
    tokenizer = armm.get_plugins().tokenizers.get("bytes")()
    model = tiny_model("llama-tiny", vocab_size=tokenizer.vocab_size, max_seq_len=64)
    return armm.save_model(tmp_path / "base", model, tokenizer)


def make_trainer(root: Path, steps: int, callbacks=(), **overrides) -> L.Trainer:
    options = dict(default_root_dir=root, max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                   num_sanity_val_steps=0, callbacks=list(callbacks))
    return L.Trainer(**{**options, **overrides})


@pytest.mark.parametrize("preset, targets", [("llama-tiny", list(TARGETS)), ("gpt2-tiny", list(DEFAULT_TARGETS))])
def test_merged_weights_give_the_adapters_logits(preset, targets):
    base = tiny_model(preset).double()
    model = add_adapters(copy.deepcopy(base), LoraOptions(rank=4, alpha=8.0, targets=targets))
    randomise_adapters(model)
    tokens = ids(base.config.vocab_size)
    reference = copy.deepcopy(base)  # LoRA's definition: W + alpha / rank * B @ A
    for name, layer in adapter_layers(model).items():
        delta = 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        reference.get_submodule(name).weight.data += delta
    with torch.no_grad():
        adapted, plain = model(tokens), merged(model)
        assert not adapter_layers(plain) and type(plain.blocks[0].attn.qkv) is torch.nn.Linear
        torch.testing.assert_close(plain(tokens), adapted, rtol=0, atol=1e-10)
        torch.testing.assert_close(reference(tokens), adapted, rtol=0, atol=1e-10)
        assert (adapted - base(tokens)).abs().max() > 1e-2  # the adapters do change the output
        torch.testing.assert_close(model(tokens), adapted, rtol=0, atol=0)  # merging a copy left the model alone


def test_only_the_adapters_train_and_the_base_stays_as_it_was(armm_base, tmp_path):
    module = ARModule(init_from=armm_base, lora=LoraOptions(rank=4), warmup_steps=1,
                      optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}})
    trainable = {name for name, param in module.named_parameters() if param.requires_grad}
    assert trainable == {f"net.blocks.{i}.{target}.lora_{half}.default.weight"
                         for i in range(2) for target in DEFAULT_TARGETS for half in "AB"}
    data = TokenDataModule(pretrained=armm_base, path=str(write_text(tmp_path / "text", "animals")), seq_len=32,
                           batch_size=8, val_fraction=0.2, cache_dir=tmp_path / "cache")
    trainer = make_trainer(tmp_path, 10)
    trainer.fit(module, datamodule=data)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.parameters() if p.requires_grad}

    frozen = {name.replace(".base_layer", ""): value for name, value in module.transformer.state_dict().items()
              if "lora_" not in name}
    base, _ = armm.load_model(armm_base)
    assert frozen.keys() == base.state_dict().keys()
    for name, value in base.state_dict().items():
        assert torch.equal(frozen[name], value), name
    assert all(layer.lora_B["default"].weight.abs().max() > 0 for layer in adapter_layers(module.transformer).values())


def test_lora_fine_tunes_an_imported_model_from_a_recipe_and_exports_it_merged(hf_folder, tmp_path, one_thread):
    data = write_text(tmp_path / "text", "animals")
    lora = json.dumps({"rank": 8, "targets": list(TARGETS)})  # Qwen2 has an untied output layer: lm_head too
    pretrained = ["--model.init_from", str(hf_folder), "--model.overrides", "null", "--optimizer.lr", "0.01"]
    before = run_training_cli(cli_args("validate", tmp_path, data, *pretrained))
    cli = run_training_cli(cli_args("fit", tmp_path, data, *pretrained, "--model.lora", lora, steps=30))
    assert cli.trainer.callback_metrics["val/loss"].item() < before.trainer.callback_metrics["val/loss"].item() - 0.5

    export = tmp_path / "run" / "export" / "final"
    model, _ = armm.load_model(export)  # a plain model directory, which every armm command takes
    tokens = ids(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), cli.model.transformer.eval()(tokens), rtol=0, atol=1e-5)
    assert (export / "chat_template.jinja").read_text() == CHAT_TEMPLATE


def test_an_adapters_export_loads_with_its_base(armm_base, hf_folder, tmp_path, one_thread):
    data = write_text(tmp_path / "text", "animals")
    args = cli_args("fit", tmp_path, data, "--model.init_from", str(armm_base), "--model.overrides", "null",
                    "--data.tokenizer", "null", "--model.lora.rank", "4", "--model.lora.export", "adapters",
                    steps=10)
    module = run_training_cli(args).model.eval()
    export = tmp_path / "run" / "export" / "final"
    assert sorted(p.name for p in export.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                        "recipe.yaml"]
    config = json.loads((export / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(armm_base.resolve())

    tokens = ids(module.config.vocab_size)
    with torch.no_grad():
        adapted = module.transformer(tokens)
        model, tokenizer = load_adapters(export)
        assert not adapter_layers(model) and tokenizer.name == "bytes"
        torch.testing.assert_close(model(tokens), adapted, rtol=0, atol=1e-5)
        unmerged, _ = load_adapters(export, merge=False)
        torch.testing.assert_close(unmerged(tokens), adapted, rtol=0, atol=0)
        moved = shutil.copytree(armm_base, tmp_path / "moved")
        torch.testing.assert_close(load_adapters(export, base=moved)[0](tokens), model(tokens), rtol=0, atol=0)

    with pytest.raises(ValueError, match=f"do not fit the base model {hf_folder}.*base they were trained on"):
        load_adapters(export, base=hf_folder)
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapters: adapter_config.json is missing"):
        load_adapters(armm_base)


def test_a_resumed_lora_run_continues_exactly_and_its_checkpoint_rebuilds_the_module(armm_base, tmp_path):
    data = write_text(tmp_path / "text", "animals")

    def run(root: Path, stop: int | None, ckpt_path: str | None = None) -> tuple[dict[int, float], ARModule]:
        torch.manual_seed(0)
        module = ARModule(init_from=armm_base, lora=LoraOptions(rank=4), warmup_steps=3)
        record = RecordLosses()
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=4)
        trainer = make_trainer(root, 12, [record, checkpoint] + ([StopAt(stop)] if stop else []),
                               enable_checkpointing=True)
        datamodule = TokenDataModule(pretrained=armm_base, path=str(data), seq_len=32, batch_size=4, val_fraction=0.2,
                                     cache_dir=tmp_path / "cache")
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        return record.losses, module

    straight, _ = run(tmp_path / "straight", stop=None)
    first_half, _ = run(tmp_path / "resumed", stop=4)
    last = tmp_path / "resumed" / "ckpt" / "last.ckpt"
    second_half, module = run(tmp_path / "resumed", stop=None, ckpt_path=str(last))
    assert sorted(second_half) == list(range(5, 13))
    for step, loss in {**first_half, **second_half}.items():
        assert loss == pytest.approx(straight[step], abs=1e-5), step

    rebuilt = ARModule.load_from_checkpoint(last, weights_only=True)  # from the hyper-parameters alone
    tokens = ids(module.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().transformer(tokens), module.eval().transformer(tokens), rtol=0,
                                   atol=0)


def test_lora_setups_that_cannot_work_are_refused(armm_base, monkeypatch):
    with pytest.raises(ValueError, match="model.lora.targets must name one or more of attn.qkv, attn.proj"):
        LoraOptions(targets=["q_proj"])
    with pytest.raises(ValueError, match="model.lora.rank must be an integer >= 1"):
        LoraOptions(rank=0)
    with pytest.raises(ValueError, match="ties its output layer to the token embedding.*drop lm_head"):
        add_adapters(tiny_model("gpt2-tiny"), LoraOptions(targets=["lm_head"]))
    with pytest.raises(ValueError, match="model.init_from is not set.*set model.init_from to the model to adapt"):
        ARModule(preset="gpt2-tiny", vocab_size=259, lora=LoraOptions())
    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"needs the peft package: pip install 'armm\[lora\]'"):
        ARModule(init_from=armm_base, lora=LoraOptions())
