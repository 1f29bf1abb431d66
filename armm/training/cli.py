"""``armm fit -c recipes/text.yaml``: LightningCLI over ``ARModule`` and ``TokenDataModule``.

Every recipe key can be overridden on the command line (``--trainer.max_steps 200``) and
``--print_config`` prints the resolved recipe. The optimizer is a top-level ``optimizer:`` section,
linked into the module, which builds decay / no-decay parameter groups from it. ``model.init_from`` (fine-tuning)
is linked into ``data.pretrained``, so the data are tokenised with the pretrained model's tokenizer.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from armm.training.callbacks import ExportModel, PlotCurves
from armm.training.checkpoint_io import AtomicCheckpointIO
from armm.training.data import TokenDataModule
from armm.training.module import ARModule


class ArmmCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_optimizer_args(torch.optim.AdamW, link_to="model.optimizer")
        parser.link_arguments("model.init_from", "data.pretrained")  # a fine-tuned model reads its own tokenizer's ids

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then make every checkpoint load refuse code: ``weights_only=True`` always (also against
        ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), and a ``--ckpt_path`` file is checked before Lightning opens it."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        section = self.config[subcommand]
        if section.get("weights_only") is False:
            raise ValueError("--weights_only false would let a checkpoint run code while it loads; armm loads "
                             "checkpoints with weights_only=True (tensors and plain data only): leave it unset")
        section["weights_only"] = True
        check_checkpoint(section.get("ckpt_path"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with at most one progress bar, so that the command line can choose it: none when
        ``--trainer.enable_progress_bar false``, else the last one listed in ``trainer.callbacks`` (one added with
        ``--trainer.callbacks+=TQDMProgressBar`` replaces the recipe's)."""
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = one_progress_bar(trainer.get("callbacks"), enabled=trainer.get("enable_progress_bar") is not False)
        return super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})


def one_progress_bar(callbacks: list[Callback] | Callback | None, enabled: bool) -> list[Callback]:
    """``callbacks`` (a list, one callback or none) without its progress bars but the last, or without any when the
    bar is not ``enabled``: Lightning refuses a bar that is turned off, and more than one."""
    listed = callbacks if isinstance(callbacks, list) else [] if callbacks is None else [callbacks]
    bars = [callback for callback in listed if isinstance(callback, ProgressBar)]
    dropped = bars[:-1] if enabled else bars
    return [callback for callback in listed if not any(callback is bar for bar in dropped)]


def check_checkpoint(path: str | Path | None) -> None:
    """Refuse a local checkpoint that is not a ``torch.save`` archive, or whose pickle names a class or function
    beyond tensors and plain data (how a malicious file runs code). Reads the pickle's opcodes, never runs them.
    Names Lightning resolves itself (``last``, ``best``, URLs) are left to its ``weights_only=True`` load."""
    if path is None or not Path(path).is_file():
        return
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # not a zip archive, no data.pkl, TorchScript…: torch raises several kinds
        raise ValueError(f"{path} is not a PyTorch Lightning checkpoint ({err}); pass a .ckpt armm fit wrote") from None
    if unsafe:
        raise _refused(f"checkpoint {path}", sorted(unsafe))


def _refused(checkpoint: str, names: Iterable[str]) -> ValueError:
    return ValueError(f"{checkpoint} was refused: loading it would import {', '.join(names)}; armm loads only tensors "
                      "and plain data (weights_only=True): resume from checkpoints armm fit wrote")


def run_training_cli(args: list[str], cli: type[ArmmCLI] = ArmmCLI, run: bool = True) -> ArmmCLI:
    """Run a LightningCLI subcommand (``fit``, ``validate``, ``test``) with armm's module, data module and callbacks; with
    ``run=False``, parse a recipe and its overrides (no subcommand) and build the objects without running."""
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # armm passes argv on
    try:
        return cli(
            ARModule,
            TokenDataModule,
            args=args,
            run=run,
            parser_kwargs={"exit_on_error": False},  # armm.cli.main reports parsing errors in one line
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "callbacks": [ExportModel(), PlotCurves()],
                "plugins": [AtomicCheckpointIO()],
                "use_distributed_sampler": False,  # TokenDataModule shards its own resumable sampler across ranks
            },
        )
    except pickle.UnpicklingError as err:  # torch refused a checkpoint Lightning found itself (--ckpt_path last)
        names = dict.fromkeys(re.findall(r"GLOBAL (\S+)", str(err))) or ["objects other than tensors and plain data"]
        raise _refused("the checkpoint", names) from None
