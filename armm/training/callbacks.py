"""Callbacks a training run uses: export model directories, write samples, plot the learning curves."""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from armm.checkpoint import TOKENIZER_DIR, save_model
from armm.generation import generate
from armm.hf import TOKENIZER_CONFIG_FILE, copy_chat_files
from armm.layout import sampler_for
from armm.pretrained import pretrained_kind
from armm.training.lora import save_adapters


def _run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.default_root_dir)


class ExportModel(L.Callback):
    """Exports ``config.json`` + ``model.safetensors`` + ``tokenizer/`` + ``recipe.yaml`` into ``<run>/export/best``
    at each new best validation loss and into ``<run>/export/final`` at the end. ``armm sample`` and ``armm score``
    load these directories. An export is written aside, then swapped in, so a crash leaves the previous one whole.

    A fine-tuned model (``model.init_from``) keeps the chat template and tokenizer settings of its pretrained folder;
    LoRA adapters are merged into the weights, or exported alone with ``model.lora.export: adapters``."""

    def __init__(self, monitor: str = "val/loss") -> None:
        self.monitor = monitor
        self.best: float | None = None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or (self.best is not None and float(value) >= self.best):
            return
        self.best = float(value)
        self.export(trainer, module, "best")

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.export(trainer, module, "final")

    def state_dict(self) -> dict[str, float | None]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.best = state["best"]

    @staticmethod
    def export(trainer: L.Trainer, module: L.LightningModule, name: str) -> Path | None:
        recipe = Path(trainer.log_dir or _run_dir(trainer)) / "config.yaml"  # log_dir is collective: every rank asks
        if not trainer.is_global_zero:
            return None
        target = _run_dir(trainer) / "export" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
        lora, init_from = module.lora, module.hparams.get("init_from")
        if lora is not None and lora.export == "adapters":
            save_adapters(staging, module.transformer, init_from)
        else:
            save_model(staging, module.merged_transformer(), trainer.datamodule.tokenizer)
            if init_from is not None:
                settings = TOKENIZER_CONFIG_FILE if pretrained_kind(init_from) == "hf" else f"{TOKENIZER_DIR}/{TOKENIZER_CONFIG_FILE}"
                copy_chat_files(Path(init_from), staging, settings)
        if recipe.is_file():
            shutil.copyfile(recipe, staging / "recipe.yaml")
        old = target.with_name(f".{name}-old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.replace(old)
        staging.replace(target)
        shutil.rmtree(old, ignore_errors=True)
        return target


class WriteSamples(L.Callback):
    """At each validation, generates samples and writes them in the modality's own format into
    ``<run>/samples/step-N`` (text is printed too)."""

    def __init__(self, num_samples: int = 4, max_new_tokens: int = 128, sampler: str = "temperature=0.8,top_k=50",
                 prompt: str = "", seed: int = 0) -> None:
        self.num_samples, self.max_new_tokens, self.sampler, self.prompt, self.seed = (
            num_samples, max_new_tokens, sampler, prompt, seed)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        tok = trainer.datamodule.tokenizer
        model = module.merged_transformer()
        prompt = tok.start_ids + tok.encode_prompt(self.prompt)
        budget = min(self.max_new_tokens, model.config.max_seq_len * model.config.num_streams - len(prompt))
        new = generate(model, [prompt] * self.num_samples, max_new_tokens=budget, sampler=sampler_for(tok, self.sampler),
                       stop_tokens=[tok.eos_id] if tok.eos_id is not None else [],
                       seed=[self.seed + i for i in range(self.num_samples)])
        samples = [tok.decode(prompt + ids) for ids in new]
        folder = _run_dir(trainer) / "samples" / f"step-{trainer.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        tok.write(samples, folder / "sample")
        if all(isinstance(s, str) for s in samples):
            for text in samples[:2]:
                print(f"\n--- sample at step {trainer.global_step} ---\n{text[:500]}")


class PlotCurves(L.Callback):
    """At the end of training, plots training and validation loss from the CSV log into ``<run>/curves.png``."""

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if not trainer.is_global_zero or csv_logger is None:
            return
        csv_logger.save()
        metrics = Path(csv_logger.log_dir) / "metrics.csv"
        if metrics.is_file():
            plot_curves(metrics, _run_dir(trainer) / "curves.png")


def plot_curves(metrics_csv: Path, output: Path) -> Path:
    """Training and validation loss (nats per token) against step, from a Lightning ``metrics.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            for key, points in curves.items():
                if row.get(key):
                    points.append((int(row["step"]), float(row[key])))
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in curves.items():
        if points:
            ax.plot(*zip(*points), label=key, marker="o" if key.startswith("val") else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
