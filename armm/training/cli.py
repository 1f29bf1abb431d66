"""``armm fit -c recipes/text.yaml``: LightningCLI over ``ARModule`` and ``TokenDataModule``.

Every recipe key can be overridden on the command line (``--trainer.max_steps 200``) and
``--print_config`` prints the resolved recipe. The optimizer is a top-level ``optimizer:`` section,
linked into the module, which builds decay / no-decay parameter groups from it.
"""

from __future__ import annotations

import warnings

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from armm.training.callbacks import ExportModel, PlotCurves
from armm.training.data import TokenDataModule
from armm.training.module import ARModule


class ArmmCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_optimizer_args(torch.optim.AdamW, link_to="model.optimizer")


def run_training_cli(args: list[str]) -> ArmmCLI:
    """Run a LightningCLI subcommand (``fit``, ``validate``) with armm's module, data module and callbacks."""
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # armm passes argv on
    return ArmmCLI(
        ARModule,
        TokenDataModule,
        args=args,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "callbacks": [ExportModel(), PlotCurves()],
            "use_distributed_sampler": False,  # TokenDataModule shards its own resumable sampler across ranks
        },
    )
