"""What only a CUDA GPU exercises: cached decoding in float32 and bfloat16 on the GPU's kernels, the compiled
backend's CUDA graphs, bf16-mixed training of a recipe, and a checkpoint written on the GPU resumed on the CPU.

Run with ``pytest -m gpu`` on a machine with a CUDA device (CI has none; the default ``-m 'not slow and not gpu'``
deselects these). ``ARMM_GPU_TEST_DEVICE=cpu pytest -m gpu tests/gpu`` runs the same code on the CPU, a dry run
that checks the suite before a GPU's time is spent on it (the CUDA-graph assertion then has nothing to check).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import yaml
from torch._dynamo.utils import counters

import armm
from armm.cli import main
from tests.conftest import tiny_model
from tests.test_recipes import RECIPES, load_recipe, tiny_overrides

DEVICE = torch.device(os.environ.get("ARMM_GPU_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [42], [100, 101, 102]]
TEXT_RECIPE = next(path for path in RECIPES if path.stem == "text")


def error_against(reference: torch.Tensor, got: torch.Tensor) -> float:
    return (got.double().cpu() - reference).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_cached_decoding_equals_the_full_forward(preset, dtype):
    """Prefill then one token a step through the KV-cache, against one full causal pass over the same ragged batch.
    In bfloat16 both differ from the exact logits by rounding: the cached path may be off by no more than twice what
    the full pass itself is off (both measured against the float64 forward on the CPU)."""
    model = tiny_model(preset)
    exact = model.double()
    B, P, T = 3, 6, 40
    idx = torch.randint(0, model.config.vocab_size, (B, T))
    pad = torch.tensor([0, 2, 5])  # left padding per row: a ragged batch
    with torch.no_grad():
        reference = exact(idx, pad=pad)  # (B, T, V) in float64 on the CPU
        gpu = tiny_model(preset).to(DEVICE, dtype)
        gpu.load_state_dict(exact.state_dict())
        x, pad_d = idx.to(DEVICE), pad.to(DEVICE)
        full = gpu(x, pad=pad_d)
        cache = gpu.new_caches(B, T)
        steps = [gpu(x[:, :P], cache=cache, start=0, pad=pad_d)]
        steps += [gpu(x[:, t:t + 1], cache=cache, start=t, pad=pad_d) for t in range(P, T)]
        cached = torch.cat(steps, 1)
    valid = torch.arange(T)[None] >= pad[:, None]  # padded positions predict nothing
    full_error = error_against(reference[valid], full.cpu()[valid])
    cached_error = error_against(reference[valid], cached.cpu()[valid])
    if dtype == torch.float32:
        assert cached_error < 1e-4 and full_error < 1e-4
    else:
        assert cached_error <= 2 * full_error + 1e-3, (cached_error, full_error)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_compiled_generation_equals_eager_replays_cuda_graphs_and_compiles_once(preset):
    model = tiny_model(preset).to(DEVICE)
    for sampler, seed in (("greedy", None), ("temperature=0.8,top_k=20", 3)):
        expected = armm.generate(model, PROMPTS, max_new_tokens=24, sampler=sampler, seed=seed, backend="eager")
        assert armm.generate(model, PROMPTS, max_new_tokens=24, sampler=sampler, seed=seed,
                             backend="compiled") == expected
    graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
    other = [[9, 8], [1, 2, 3, 4], [77]]  # other lengths, another budget: the same compiled step
    expected = armm.generate(model, other, max_new_tokens=33, backend="eager")
    assert armm.generate(model, other, max_new_tokens=33, backend="compiled") == expected
    assert counters["stats"]["unique_graphs"] == graphs, "a second generation compiled the step again"
    if DEVICE.type == "cuda":  # inductor counts every compiled graph it could not record as a CUDA graph
        assert counters["inductor"]["cudagraph_skips"] == skips == 0, "the decode step ran without a CUDA graph"


def test_compiled_generation_in_bfloat16_draws_what_eager_draws_from_the_same_logits():
    """In bfloat16 the compiled kernels round differently from eager ones, so tokens of a random (nearly flat) model
    may part; each compiled greedy token must still be an argmax of eager's logits for the compiled prefix, up to
    bfloat16 rounding."""
    model = tiny_model("llama-tiny").to(DEVICE, torch.bfloat16)
    (tokens,) = armm.generate(model, PROMPTS[:1], max_new_tokens=24, backend="compiled")
    ids = torch.tensor(PROMPTS[0] + tokens, device=DEVICE)[None]
    with torch.no_grad():
        logits = model(ids)[0, len(PROMPTS[0]) - 1:-1].float()  # (24, V): what eager predicts at each step
    chosen = logits.gather(1, torch.tensor(tokens, device=DEVICE)[:, None])[:, 0]
    assert (logits.max(1).values - chosen).max().item() <= 0.05


def fit_text_recipe(root: Path, *extra: str, checkpoint_every: int = 100) -> Path:
    """The text recipe, shrunk, trained in ``root`` (its paths are relative), its checkpoint written every
    ``checkpoint_every`` steps; returns its run folder."""
    config = load_recipe(TEXT_RECIPE)
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["every_n_train_steps"] = checkpoint_every
    recipe = root / "text.yaml"
    recipe.write_text(yaml.safe_dump(config))
    main(["fit", "-c", str(recipe), *tiny_overrides(config), *extra])
    return root / config["trainer"]["default_root_dir"]


def metrics(run: Path, name: str) -> list[float]:
    """Every logged value of ``name`` in the run's CSV log."""
    (path,) = run.glob("logs/version_*/metrics.csv")
    with open(path, newline="") as handle:
        return [float(row[name]) for row in csv.DictReader(handle) if row.get(name)]


def test_a_recipe_trains_in_bf16_mixed_on_the_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    accelerator = "gpu" if DEVICE.type == "cuda" else "cpu"
    run = fit_text_recipe(tmp_path, "--trainer.accelerator", accelerator, "--trainer.precision", "bf16-mixed",
                          "--trainer.max_steps", "6", "--trainer.val_check_interval", "3")
    train, val = metrics(run, "train/loss"), metrics(run, "val/loss")
    assert len(train) == 6 and all(torch.isfinite(torch.tensor(train))), train
    assert len(val) == 2 and val[1] < val[0], val  # six steps of a fresh model already lower the loss
    model, _ = armm.load_model(run / "export" / "final")
    assert model.tok_emb.weight.dtype == torch.float32  # bf16-mixed keeps float32 master weights and saves them


def test_a_checkpoint_written_on_the_gpu_resumes_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    accelerator = "gpu" if DEVICE.type == "cuda" else "cpu"
    run = fit_text_recipe(tmp_path, "--trainer.accelerator", accelerator, "--trainer.max_steps", "4",
                          "--trainer.val_check_interval", "4", checkpoint_every=4)
    checkpoints = run / "checkpoints"
    written = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert written["global_step"] == 4
    on_gpu, _ = armm.load_model(run / "export" / "final")
    fit_text_recipe(tmp_path, "--trainer.accelerator", "cpu", "--trainer.max_steps", "8",
                    "--trainer.val_check_interval", "4", "--ckpt_path", str(checkpoints / "last.ckpt"),
                    checkpoint_every=4)
    resumed = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 8
    weights = {k: v for k, v in resumed["state_dict"].items() if k.startswith("net.")}
    assert weights and all(v.device.type == "cpu" for v in weights.values())
    moved = [k for k in weights if not torch.equal(weights[k], written["state_dict"][k])]
    assert moved, "four more steps on the CPU changed no weight"
    # The GPU's export loads on the CPU and predicts what it predicted on the GPU.
    ids = torch.randint(0, on_gpu.config.vocab_size, (2, 16))
    with torch.no_grad():
        here = on_gpu(ids)
        there = on_gpu.to(DEVICE)(ids.to(DEVICE)).cpu()
    torch.testing.assert_close(there, here, rtol=1e-3, atol=1e-3)


def test_nan_logits_on_the_gpu_are_an_error_not_token_zero():
    """The sampler does not wait for the GPU to check each step; generation raises where it reads the device."""
    model = tiny_model().to(DEVICE)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="the model's logits are NaN at position 7 of row 0"):
        armm.generate(model, PROMPTS, max_new_tokens=5, backend="eager")
