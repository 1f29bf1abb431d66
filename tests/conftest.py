from pathlib import Path

import pytest
import torch

import armm


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """A tiny model runs fastest on one thread, above all on a busy machine (generation is many small steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_recipe(root: Path, **trainer) -> dict:
    """A recipe training a one-layer byte-level model on the text files in ``root/data``, writing under ``root``;
    ``trainer`` adds or replaces trainer settings (``max_steps`` at least)."""
    return {
        "model": {"preset": "gpt2-tiny", "overrides": {"n_layer": 1, "n_head": 2, "d_model": 32, "max_seq_len": 32},
                  "warmup_steps": 1},
        "data": {"tokenizer": "bytes", "path": str(root / "data"), "seq_len": 16, "batch_size": 2, "val_fraction": 0.4,
                 "cache_dir": str(root / "cache")},
        "trainer": {"default_root_dir": str(root / "run"), "accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, **trainer},
    }  # fmt: skip


def tiny_model(preset: str = "gpt2-tiny", **overrides) -> armm.Transformer:
    """A small random model in eval mode (float32) for tests."""
    return armm.Transformer(armm.ModelConfig.from_name(preset, **overrides)).eval()


@pytest.fixture(autouse=True)
def _auto_backend_without_timing(monkeypatch):
    """``backend="auto"`` in tests: the native step wherever it runs, never a timing (which would make a test's
    path depend on the machine's load) and never the user's stored choices; tests/test_backend_auto.py measures."""
    from armm.backends import auto

    monkeypatch.setattr(auto, "_choices", {})
    monkeypatch.setattr(auto, "measure", lambda model, quantize, rows: "native")
    monkeypatch.setattr(auto, "_save", lambda choices: None)
