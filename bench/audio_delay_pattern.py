"""MusicGen's delay pattern against the flattened layout, on the codes of a trained speech_digits codec: the
measurement behind armm's choice of codec token layout (issue 18). armm's core model is single-stream, so the
delay-pattern model here is a prototype built from armm's ``Block``; the flattened model is the recipe's own.

Run as ``python bench/audio_delay_pattern.py MODEL_DIR`` on a model trained with ``recipes/speech_digits.yaml``.

- **Flattened** (what armm builds): the recipe's model, one position per code, frame by frame (K·T positions a
  clip), sampled as ``bench/speech_digits.py`` does.
- **Delay pattern** (MusicGen, Copet et al. 2023): one position per step; step s holds codebook k's code of frame
  s − k for every k (an EMPTY id where that frame does not exist), so a clip is T + K − 1 steps. A step's input is
  the sum of K code embeddings (one table per codebook); K output heads give codebook k's next code. The label is
  the first position (a null label 10% of the time, as the recipe's condition dropout). Same width, depth, optimiser,
  schedule, steps and batch size as the recipe; trained here on the codec's codes of the espeak-digits training
  clips (5% held out for the validation loss).

Both are scored by the same classifier of real clips (``bench/speech_digits.py``): 30 clips per digit at
temperature 1.0, no guidance. The delay model samples with full recompute (no KV cache), so its time is an upper
bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import armm
from armm.config import ModelConfig
from armm.model import Block, make_norm
from armm.training.module import warmup_cosine

sys.path.insert(0, str(Path(__file__).parent))
import speech_digits as digits  # noqa: E402
from tables import cpu_summary, print_table  # noqa: E402


def delay(codes: torch.Tensor, empty: int) -> torch.Tensor:
    """Codes ``[M, K, T]`` → steps ``[M, T + K - 1, K]``: step s holds codebook k's code of frame s − k."""
    m, k_total, t = codes.shape
    steps = torch.full((m, t + k_total - 1, k_total), empty, dtype=torch.long)
    for k in range(k_total):
        steps[:, k:k + t, k] = codes[:, k]
    return steps


def undelay(steps: torch.Tensor, frames: int) -> torch.Tensor:
    """Steps ``[M, T + K - 1, K]`` → codes ``[M, K, T]``."""
    return torch.stack([steps[:, k:k + frames, k] for k in range(steps.shape[-1])], 1)


class DelayPatternGPT(nn.Module):
    """Label embedding, then per step the sum of K code embeddings; causal blocks; K heads of ``codebook_size``."""

    def __init__(self, config: ModelConfig, num_codebooks: int, codebook_size: int, num_labels: int) -> None:
        super().__init__()
        self.config = config
        self.label = nn.Embedding(num_labels + 1, config.d_model)  # the last: null
        self.codes = nn.ModuleList(nn.Embedding(codebook_size + 1, config.d_model) for _ in range(num_codebooks))
        self.position = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.heads = nn.ModuleList(nn.Linear(config.d_model, codebook_size, bias=False) for _ in range(num_codebooks))

    def forward(self, labels: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Labels ``[B]``, steps ``[B, s, K]`` → logits ``[B, 1 + s, K, codebook_size]`` of the next step."""
        x = torch.cat([self.label(labels)[:, None], sum(e(steps[..., k]) for k, e in enumerate(self.codes))], 1)
        x = F.dropout(x + self.position(torch.arange(x.shape[1])), self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x, None, None, True, 0, None)
        x = self.norm(x)
        return torch.stack([head(x) for head in self.heads], 2)


def train(model: DelayPatternGPT, steps: torch.Tensor, labels: torch.Tensor, empty: int, args) -> float:
    """AdamW with the recipe's warm-up and cosine schedule; → the held-out loss (nats per code)."""
    order = torch.randperm(len(steps), generator=torch.Generator().manual_seed(0))
    held, kept = order[: len(steps) // 20], order[len(steps) // 20:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, 100, args.steps, 0.1))
    generator = torch.Generator().manual_seed(0)

    def loss_of(rows: torch.Tensor, dropout: bool) -> torch.Tensor:
        conditions = labels[rows].clone()
        if dropout:
            conditions[torch.rand(len(rows), generator=generator) < 0.1] = model.label.num_embeddings - 1
        targets = steps[rows]  # (B, S, K)
        logits = model(conditions, targets[:, :-1])  # position p predicts step p
        present = targets != empty
        return F.cross_entropy(logits[present], targets[present])

    for _ in range(args.steps):
        model.train()
        loss = loss_of(kept[torch.randint(len(kept), (args.batch_size,), generator=generator)], True)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        return loss_of(held, False).item()


@torch.no_grad()
def sample(model: DelayPatternGPT, digit: int, count: int, frames: int, empty: int, seed: int) -> torch.Tensor:
    """``count`` clips of ``digit`` at temperature 1 → codes ``[count, K, frames]``."""
    k_total = len(model.heads)
    torch.manual_seed(seed)
    labels = torch.full((count,), digit)
    steps = torch.zeros(count, 0, k_total, dtype=torch.long)
    for s in range(frames + k_total - 1):
        ids = torch.distributions.Categorical(logits=model(labels, steps)[:, -1]).sample()  # (count, K)
        for k in range(k_total):
            if not k <= s < k + frames:
                ids[:, k] = empty
        steps = torch.cat([steps, ids[:, None]], 1)
    return undelay(steps, frames)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a model trained with recipes/speech_digits.yaml")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of the delay-pattern model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-class", type=int, default=30)
    args = parser.parse_args(argv)
    print(f"{cpu_summary()}, {torch.get_num_threads()} threads")
    torch.manual_seed(0)

    flat_model, layout = armm.load_model(args.model_dir)
    codec = layout.parts[digits.audio_part(layout)]
    k_total, size = codec.num_codebooks, codec.codebook_size
    clips, labels = digits.real_clips(codec)
    with torch.no_grad():
        codes = torch.cat([codec.model.encode(clips[i:i + 256, None]) for i in range(0, len(clips), 256)])
    frames = codes.shape[-1]
    steps = delay(codes, empty=size)
    assert torch.equal(undelay(steps, frames), codes)
    config = flat_model.config
    delay_config = ModelConfig(vocab_size=1, n_layer=config.n_layer, n_head=config.n_head, d_model=config.d_model,
                               max_seq_len=frames + k_total, dropout=config.dropout)  # fmt: skip
    model = DelayPatternGPT(delay_config, k_total, size, num_labels=10)
    start = time.perf_counter()
    held_loss = train(model, steps, labels, size, args)
    train_seconds = time.perf_counter() - start
    classifier = digits.train_classifier(clips, labels, codec.sample_rate)
    wanted = torch.arange(10).repeat_interleave(args.samples_per_class)

    start = time.perf_counter()
    flat, _, complete = digits.sample_digits(flat_model, layout, args.samples_per_class, "temperature=1.0", None, 0)
    flat_seconds = time.perf_counter() - start
    start = time.perf_counter()
    delayed = torch.cat([sample(model, d, args.samples_per_class, frames, size, d * args.samples_per_class)
                         for d in range(10)])  # fmt: skip
    with torch.no_grad():
        delayed = codec.model.decode(delayed)[:, 0].clamp(-1, 1)
    delay_seconds = time.perf_counter() - start
    flat_score, _ = digits.assigned_fractions(classifier, flat, wanted, codec.sample_rate, complete)
    delay_score, _ = digits.assigned_fractions(classifier, delayed, wanted, codec.sample_rate)
    print_table(
        ["layout", "positions a clip", "parameters", "training", "held-out loss (nats/code)", "digits heard",
         "sampling s"],
        [["flattened (the recipe's model)", str(frames * k_total), f"{flat_model.num_params() / 1e6:.2f}M",
          "the recipe", "see its logs", f"{flat_score:.3f}", f"{flat_seconds:.0f}"],
         ["delay pattern, K embeddings summed, K heads", str(frames + k_total - 1),
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", f"{train_seconds:.0f} s", f"{held_loss:.3f}",
          f"{delay_score:.3f}", f"{delay_seconds:.0f}"]],
    )  # fmt: skip


if __name__ == "__main__":
    main()
