"""The LightningModule: next-token cross-entropy over the core ``Transformer``, AdamW, warmup + cosine."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import instantiate_class
from torch import Tensor

from armm.config import ModelConfig
from armm.model import Transformer
from armm.pretrained import load_pretrained
from armm.training.data import IGNORE_INDEX
from armm.training.lora import LoraOptions, add_adapters, merged

DEFAULT_OPTIMIZER = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}}


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits [B, T, V]`` against ``targets [B, T]`` in float32, ignored targets masked."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


class ARModule(L.LightningModule):
    """Trains a ``Transformer`` to predict each next token (teacher forcing; ignored targets are masked).

    Args:
        preset: A ``ModelConfig`` preset name (see ``armm.PRESETS``); not used with ``init_from``.
        overrides: ``ModelConfig`` fields that replace the preset's (e.g. ``{n_layer: 6, max_seq_len: 512}``). With
            ``init_from`` only ``dropout`` may differ from the pretrained config (other fields may repeat its values).
        vocab_size: Normally left unset: it is taken from the data module's tokenizer (or ``init_from``'s config).
        num_streams: Normally left unset: the tokenizer's ``num_streams`` (K ids a position, as MusicGen's delay
            pattern; such a model needs ``overrides: {tie_embeddings: false}``).
        init_from: Fine-tune a pretrained model: an armm model directory (an export such as
            ``runs/text/export/best``) or a Hugging Face GPT-2 / Llama / Mistral / Qwen2 folder. The network is built
            from its config and starts from its weights; the data are tokenised with its tokenizer (``armm fit``
            links this to ``data.pretrained``). A resumed run rebuilds the network from it, then loads the
            checkpoint's weights, so the folder must still be there.
        lora: Train LoRA adapters on the pretrained model of ``init_from`` instead of all its weights (see
            ``armm.training.lora.LoraOptions``: ``rank``, ``alpha``, ``dropout``, ``targets``, ``export``).
        optimizer: ``{class_path, init_args}`` of the optimizer (AdamW by default); weight decay applies to
            matrices and embeddings only, never to biases and norms.
        warmup_steps: Linear warmup of the learning rate from 0.
        min_lr_ratio: The cosine decay ends at this fraction of the peak learning rate, at the last step.
        scheduled_sampling: Highest probability of replacing an input token by the model's own prediction
            (0 = plain teacher forcing); it ramps up linearly over ``scheduled_sampling_ramp`` steps.
        scheduled_sampling_ramp: Steps over which the replacement probability grows from 0 to its highest value.
        compile: Compile the model and the loss with ``torch.compile``. Compiled, the loss is fused passes over the
            logits instead of float32 copies of them (a 124M GPT-2 on an H200: 83.0 → 66.5 ms a step).
        nonfinite_loss: What a NaN or infinite training loss does: ``stop`` the run with an error naming the step
            and the batch (the default: the weights and the last checkpoint stay as they were), or ``skip`` that
            batch (no backward, no optimizer step) with a warning and go on.
    """

    def __init__(
        self,
        preset: str = "gpt2-mini",
        overrides: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        num_streams: int | None = None,
        init_from: Path | None = None,
        lora: LoraOptions | None = None,
        optimizer: dict[str, Any] | None = None,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        scheduled_sampling: float = 0.0,
        scheduled_sampling_ramp: int = 1000,
        compile: bool = False,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
    ) -> None:
        super().__init__()
        if nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"model.nonfinite_loss must be 'stop' or 'skip', got {nonfinite_loss!r}")
        if not 0.0 <= scheduled_sampling <= 1.0:
            raise ValueError(f"model.scheduled_sampling must be in [0, 1], got {scheduled_sampling}")
        if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"model.warmup_steps must be >= 0 and model.min_lr_ratio in [0, 1], got {warmup_steps} and {min_lr_ratio}")
        options = LoraOptions(**lora) if isinstance(lora, dict) else lora  # a checkpoint's hyper-parameters: a dict
        if options is not None and init_from is None:
            raise ValueError("model.lora trains adapters on a pretrained model, but model.init_from is not set (the "
                             "base would be random weights): set model.init_from to the model to adapt")
        # save_hyperparameters reads these names: checkpoints hold plain data only, they load with weights_only=True
        init_from, lora = (str(init_from) if init_from is not None else None), (asdict(options) if options else None)
        self.save_hyperparameters()
        self.lora = options
        sizes = {key: value for key, value in (("vocab_size", vocab_size), ("num_streams", num_streams)) if value}
        if init_from is not None:
            self.net: Transformer | None = pretrained_network(Path(init_from), {**(overrides or {}), **sizes})
            self.config = self.net.config
        else:
            self.config = ModelConfig.from_name(preset, **(overrides or {}), **sizes)
            self.net = Transformer(self.config) if vocab_size else None
        if self.lora is not None:
            self.net = add_adapters(self.net, self.lora)
        self.next_token_loss = next_token_loss  # compiled by configure_model with compile=True
        self.units_per_token = 1.0

    # --- building the network once the tokenizer is known ------------------------------------------------
    def configure_model(self) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)  # no trainer in load_from_checkpoint
        if datamodule is not None:
            datamodule.setup("fit")
            self.units_per_token = datamodule.units_per_token
            check_fits(self.config, datamodule.seq_len, datamodule.tokenizer.num_streams,
                       pretrained=self.hparams.init_from is not None)
            self.check_tokenizer(datamodule)
        if self.net is None:
            if datamodule is None:
                raise ValueError("the model's vocab_size is unknown: pass vocab_size, or train with a TokenDataModule")
            tokenizer = datamodule.tokenizer
            if tokenizer.num_streams > 1 and self.config.tie_embeddings:
                raise ValueError(f"tokenizer {tokenizer.name!r} lays its ids out in {tokenizer.num_streams} streams, "
                                 f"which the model predicts with an output layer of its own: set "
                                 f"model.overrides.tie_embeddings: false")
            # kept in the hyper-parameters, so checkpoints rebuild the same network
            sizes = {"vocab_size": tokenizer.vocab_size, "num_streams": tokenizer.num_streams}
            self.hparams.update(sizes)
            self.config = ModelConfig.from_dict({**self.config.to_dict(), **sizes})
            self.net = Transformer(self.config)
        if self.hparams.compile and not hasattr(self.net, "_orig_mod"):
            self.net = torch.compile(self.net)
            self.next_token_loss = torch.compile(next_token_loss)

    def check_tokenizer(self, datamodule: L.LightningDataModule) -> None:
        """The data must be tokenised into ids the model knows: with ``init_from``, by its tokenizer."""
        init_from, pretrained = self.hparams.init_from, getattr(datamodule, "pretrained", None)
        tokenizer = datamodule.tokenizer
        if init_from is not None and (pretrained is None or Path(pretrained).resolve() != Path(init_from).resolve()):
            source = f"data.pretrained={pretrained}" if pretrained is not None else f"data.tokenizer {tokenizer.name!r}"
            raise ValueError(f"model.init_from is {init_from} but the data are tokenised by {source}; the ids must be "
                             f"those the pretrained model knows: set data.pretrained to {init_from} (armm fit links "
                             f"model.init_from to it)")
        if self.net is not None and tokenizer.num_streams != self.config.num_streams:
            raise ValueError(f"the data's tokenizer {tokenizer.name!r} lays its ids out in {tokenizer.num_streams} "
                             f"stream(s) but the model reads {self.config.num_streams} ids a position; train with the "
                             f"tokenizer the model was built for, or leave model.num_streams unset")
        if self.net is not None and tokenizer.vocab_size > self.config.vocab_size:
            raise ValueError(f"the data's tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but the model's "
                             f"vocab_size is {self.config.vocab_size}; train with the tokenizer the model was built "
                             f"for, or leave model.vocab_size unset")

    @property
    def transformer(self) -> Transformer:
        """The (uncompiled) core model being trained; with LoRA, its targeted layers are peft's LoRA layers."""
        return getattr(self.net, "_orig_mod", self.net)

    def merged_transformer(self) -> Transformer:
        """The core model as a plain ``Transformer``, for export and generation: with LoRA, a copy with the adapters
        merged into the weights (the native decode step reads the weights alone)."""
        return merged(self.transformer) if self.lora is not None else self.transformer

    # --- steps ---------------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor) -> Tensor:
        return self.net(input_ids)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.next_token_loss(logits, targets)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        inputs = batch["input_ids"]
        probability = self.scheduled_sampling_probability()
        if probability > 0:
            inputs = self.mix_in_predictions(inputs, batch["targets"], probability)
            self.log("train/scheduled_sampling", torch.tensor(probability))  # a CPU tensor: no copy to the GPU
        loss = self.loss(self(inputs), batch["targets"])
        if not torch.isfinite(loss):  # a host sync per step: the price of never stepping on a NaN
            where = (f"non-finite training loss ({loss.item()}) at step {self.global_step}, batch {batch_idx} of "
                     f"epoch {self.current_epoch}")
            if self.hparams.nonfinite_loss == "stop":
                raise FloatingPointError(f"{where}; the weights were not updated. Lower optimizer.lr, keep "
                                         "trainer.gradient_clip_val, or set model.nonfinite_loss: skip")
            warnings.warn(f"{where}: batch skipped (model.nonfinite_loss: skip)", RuntimeWarning, stacklevel=1)
            return None  # Lightning skips the backward pass and the optimizer step
        # Lightning turns every progress-bar metric into a Python number after every step (a host-device sync on
        # a GPU, which stops the CPU from queueing the next step), so ask for it only when a bar will show it.
        self.log("train/loss", loss, prog_bar=getattr(self._trainer, "progress_bar_callback", None) is not None)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._eval_sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # (summed nats, tokens)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        targets = batch["targets"]
        tokens = (targets != IGNORE_INDEX).sum()
        self._eval_sums += torch.stack([self.loss(self(batch["input_ids"]), targets) * tokens, tokens]).double()

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val", self.units_per_token)

    on_test_epoch_start = on_validation_epoch_start
    test_step = validation_step

    def on_test_epoch_end(self) -> None:
        """``armm test``: the loss on the data module's test split (``data.test_path``)."""
        datamodule = getattr(self._trainer, "datamodule", None)
        self.log_evaluation("test", datamodule.split_units_per_token("test") if datamodule else self.units_per_token)

    def log_evaluation(self, split: str, units_per_token: float) -> None:
        """``<split>/loss`` (nats per scored token, over every rank), ``/ppl`` and ``/bpu`` (bits per unit)."""
        nats, tokens = self.trainer.strategy.reduce(self._eval_sums, reduce_op="sum").tolist()
        loss = nats / max(tokens, 1)
        self.log(f"{split}/loss", loss, prog_bar=True)
        self.log(f"{split}/ppl", math.exp(min(loss, 50.0)))
        self.log(f"{split}/bpu", loss / math.log(2) / units_per_token, prog_bar=True)

    # --- scheduled sampling (Bengio et al. 2015) -----------------------------------------------------------
    def scheduled_sampling_probability(self) -> float:
        top, ramp = self.hparams.scheduled_sampling, self.hparams.scheduled_sampling_ramp
        return top * min(1.0, self.global_step / ramp) if ramp > 0 else top

    @torch.no_grad()
    def mix_in_predictions(self, inputs: Tensor, targets: Tensor, probability: float) -> Tensor:
        """Replace each input token after the first, with ``probability``, by a token sampled from the model's
        prediction for that position (from a first, teacher-forced pass). Ignored positions stay."""
        logits = self(inputs).float()  # (B, T, V)
        # validate_args=False: the check reads a device tensor back to the host, a GPU sync at every step
        predicted = torch.distributions.Categorical(logits=logits, validate_args=False).sample()  # (B, T): guess for t+1
        replace = torch.rand(inputs.shape, device=inputs.device) < probability
        replace[:, 0] = False  # the first token is never predicted
        replace[:, 1:] &= targets[:, :-1] != IGNORE_INDEX
        mixed = inputs.clone()
        mixed[:, 1:] = torch.where(replace[:, 1:], predicted[:, :-1], inputs[:, 1:])
        return mixed

    # --- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]  # matrices and embeddings
        no_decay = [p for p in params if p.dim() < 2]  # biases and norm gains
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = instantiate_class(groups, self.hparams.optimizer or DEFAULT_OPTIMIZER)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.hparams.warmup_steps, total, self.hparams.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step, then free the gradients at once. Lightning zeroes them only after the next step's forward, so they
        would sit through it: a float32 copy of the weights on top of the activations at the peak."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer.zero_grad(set_to_none=True)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear from 0 to 1 over ``warmup`` steps, then cosine down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def check_fits(config: ModelConfig, seq_len: int, streams: int = 1, pretrained: bool = False) -> None:
    """``seq_len`` ids, ``streams`` a position (the tokenizer's ``num_streams``), must fit the model's context."""
    positions = seq_len // streams
    if positions > config.max_seq_len:
        fix = "lower data.seq_len" + ("" if pretrained else f" or set model.overrides.max_seq_len >= {positions}")
        held = "" if streams == 1 else f" ({positions} positions of {streams} ids)"
        raise ValueError(f"data.seq_len={seq_len}{held} is larger than the model's context "
                         f"(max_seq_len={config.max_seq_len}); {fix}")


def pretrained_network(path: Path, overrides: dict[str, Any]) -> Transformer:
    """The network of ``model.init_from``, with its weights: built from its own config, which ``overrides`` may
    repeat but only change in ``dropout`` (the one field that leaves the weights' shapes and meaning alone)."""
    model, _ = load_pretrained(path)
    config = model.config
    conflicts = {key: value for key, value in overrides.items()
                 if key != "dropout" and getattr(config, key, value) != value}
    if conflicts:
        theirs = {key: getattr(config, key) for key in conflicts}
        raise ValueError(f"model.overrides {conflicts} conflict with the config of model.init_from {path} ({theirs}): "
                         f"a fine-tuned network is the pretrained one; drop them (--model.overrides null; only "
                         f"dropout may change)")
    wanted = ModelConfig.from_dict({**config.to_dict(), **overrides})
    if wanted == config:
        return model.train()
    network = Transformer(wanted)
    network.load_state_dict(model.state_dict())
    return network
