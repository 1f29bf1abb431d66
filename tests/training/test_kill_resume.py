"""SIGKILL a training run at a random moment and during a checkpoint write, resume each time: the last checkpoint
always loads, the step never goes back, and the final weights equal an uninterrupted run's (bench/kill_resume.py
does the same with many more kills)."""

import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("kill_resume", Path(__file__).parents[2] / "bench" / "kill_resume.py")
kill_resume = sys.modules["kill_resume"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kill_resume)


def test_killed_and_resumed_training_loses_nothing_and_ends_where_an_uninterrupted_run_ends(tmp_path):
    cache = tmp_path / "cache"
    reference = tmp_path / "reference"
    timing = kill_resume.run_to_end(reference, kill_resume.write_recipe(reference, 400, 20, cache), resume=False,
                                    threads=1, every=20)
    killed = tmp_path / "killed"
    report = kill_resume.kill_and_resume(killed, kill_resume.write_recipe(killed, 400, 20, cache), steps=400, kills=3,
                                         timing=timing, seed=0, threads=1, log=print)
    assert report.violations == []
    assert report.kills >= 1, "every kill came too late: the run had already finished"
    assert all(step >= 0 for step in report.steps_seen[1:])  # once a checkpoint exists, last.ckpt loads
    assert sorted(report.steps_seen) == report.steps_seen  # the step never went back
    assert kill_resume.compare(kill_resume.final_weights(reference), kill_resume.final_weights(killed)) < 1e-5


def test_a_checkpoint_is_written_beside_its_name_then_renamed(tmp_path, monkeypatch):
    """The write goes to a temporary file in the same folder, which is renamed over the name only when complete."""
    import os

    import torch

    from armm.training.checkpoint_io import AtomicCheckpointIO

    target = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((Path(src).parent, Path(src).name, torch.load(src, weights_only=True)["step"]))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.ones(3)}, target)
    assert seen == [(target.parent, seen[0][1], 2)] and seen[0][1].startswith(".last.ckpt.")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"step": 3}, target)
    assert torch.load(target, weights_only=True)["step"] == 2  # the failed write left the previous checkpoint
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # and no temporary file


def test_a_checkpoint_is_readable_as_any_new_file_not_private(tmp_path):
    """mkstemp made every checkpoint 0600; Lightning's own and armm's model files get 0666 less the umask."""
    import os
    import stat

    import torch

    from armm.training.checkpoint_io import AtomicCheckpointIO

    target = tmp_path / "last.ckpt"
    umask = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
