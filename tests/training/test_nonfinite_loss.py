"""A NaN training loss stops the run with a message naming the step and the batch, or skips the batch, as
configured; either way no NaN reaches the weights."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from armm.training.module import ARModule

POISON = 7  # a batch holding this id gets NaN logits


class Poisoned(ARModule):
    def forward(self, input_ids):
        logits = super().forward(input_ids)
        return logits * float("nan") if (input_ids == POISON).any() else logits


def batches(poisoned_batch: int, count: int = 6) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for index in range(count):
        ids = torch.randint(10, 50, (2, 9), generator=generator)
        if index == poisoned_batch:
            ids[0, 3] = POISON
        out.append({"input_ids": ids[:, :-1], "targets": ids[:, 1:]})
    return out


class Snapshots(L.Callback):
    """The weights before and after each batch."""

    def __init__(self) -> None:
        self.before, self.after = {}, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before[batch_idx] = [p.detach().clone() for p in module.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after[batch_idx] = [p.detach().clone() for p in module.parameters()]


def fit(module: ARModule, data: list, *callbacks: L.Callback) -> L.Trainer:
    trainer = L.Trainer(max_steps=len(data), accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(module, DataLoader(data, batch_size=None))
    return trainer


def finite(module: ARModule) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def test_a_nan_loss_stops_the_run_naming_the_step_and_batch_before_the_weights_change():
    torch.manual_seed(0)
    module = Poisoned(preset="gpt2-tiny", vocab_size=64, overrides={"max_seq_len": 16}, warmup_steps=0)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at step 2, batch 2 of epoch 0"):
        fit(module, batches(poisoned_batch=2))
    assert finite(module)


def test_with_skip_the_nan_batch_is_skipped_with_a_warning_and_training_goes_on():
    torch.manual_seed(0)
    module = Poisoned(preset="gpt2-tiny", vocab_size=64, overrides={"max_seq_len": 16}, warmup_steps=0,
                      nonfinite_loss="skip")
    snapshots = Snapshots()
    with pytest.warns(RuntimeWarning, match="at step 2, batch 2 of epoch 0: batch skipped"):
        fit(module, batches(poisoned_batch=2, count=7), snapshots)
    assert finite(module)
    assert all(torch.equal(a, b) for a, b in zip(snapshots.before[2], snapshots.after[2]))  # batch 2 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(snapshots.before[3], snapshots.after[3]))  # batch 3 trained


def test_an_unknown_nonfinite_policy_is_refused():
    with pytest.raises(ValueError, match="model.nonfinite_loss must be 'stop' or 'skip'"):
        ARModule(preset="gpt2-tiny", vocab_size=64, nonfinite_loss="retry")
